//! Starting the real `voucherd` binary and learning its address from the one line
//! it prints on stdout. Used by [`crate::server`] (one instance per test) and
//! [`crate::cluster`] (several instances per test).

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What the binary prints once it listens, before `http://ADDR`.
pub const LISTENING_PREFIX: &str = "voucherd listening on ";

/// How long the binary may take from spawn to printing its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of every environment variable voucherd reads (its flags' `env`, the
/// tokens): none reaches a test's voucherd, so the command line alone decides, whatever
/// the shell running the tests exports.
const VOUCHERD_ENV_PREFIX: &str = "VOUCHERD_";

/// The `voucherd` binary under test. Cargo tells its path only to the root package's
/// integration tests (`CARGO_BIN_EXE_voucherd`, set when it compiles them, not when
/// it compiles this library), so each test crate names it once, as
/// `const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));`,
/// and hands it to whatever starts an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    path: &'static str,
}

impl Binary {
    pub const fn new(path: &'static str) -> Binary {
        Binary { path }
    }

    pub fn path(&self) -> &'static Path {
        Path::new(self.path)
    }

    /// `voucherd serve` on an ephemeral loopback port over the store `store` (a
    /// directory or a database URL), its stderr to `stderr`, stdout piped for
    /// [`start`], killed when dropped.
    pub fn serve_command(
        &self,
        store: impl AsRef<std::ffi::OsStr>,
        stderr: std::fs::File,
    ) -> Command {
        self.serve_command_on("127.0.0.1:0", store, stderr)
    }

    /// [`Binary::serve_command`] listening on `listen` (a fixed address, for a test
    /// whose load balancer names the instances by port).
    pub fn serve_command_on(
        &self,
        listen: &str,
        store: impl AsRef<std::ffi::OsStr>,
        stderr: std::fs::File,
    ) -> Command {
        let mut command = Command::new(self.path());
        command
            .args(["serve", "--listen", listen, "--store"])
            .arg(store)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(stderr))
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with(VOUCHERD_ENV_PREFIX) {
                command.env_remove(name);
            }
        }
        // No load balancer waits to take a test's instance out, so a stop does not
        // wait the drain delay; a test with one passes `--drain-delay-ms`, which wins.
        command.env("VOUCHERD_DRAIN_DELAY_MS", "0");
        command
    }
}

/// How long the binary may take from SIGTERM to its exit.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends SIGTERM to `child` and waits for its exit status (no assertion on it);
/// kills it and panics naming `name`, with `log_text()`, if it does not exit in
/// time.
pub async fn terminate(mut child: Child, name: &str, log_text: impl Fn() -> String) -> ExitStatus {
    let pid = child.id().expect("child has a pid") as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("wait for voucherd"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "{name} did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                log_text()
            );
        }
    }
}

/// Spawns `command` (the binary with its arguments; stdout must be piped) and waits
/// for its listening line. Returns the child and its base URL without a trailing
/// slash; panics naming `name`, with `log_text()` (its stderr), if it does not start.
pub async fn start(
    command: &mut Command,
    name: &str,
    log_text: impl Fn() -> String,
) -> (Child, String) {
    let mut child = command.spawn().expect("spawn the voucherd binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(STARTUP_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            if let Some(url) = line.trim().strip_prefix(LISTENING_PREFIX) {
                return Some(url.to_owned());
            }
        }
        None
    })
    .await;
    let url = match found {
        Ok(Some(url)) => url,
        Ok(None) => {
            let status = child.wait().await;
            panic!(
                "{name} exited ({status:?}) before printing its listening line; stderr:\n{}",
                log_text()
            );
        }
        Err(_) => panic!(
            "{name} did not print `{LISTENING_PREFIX}http://ADDR` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
            log_text()
        ),
    };
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "listening line names an unexpected address: {url}"
    );
    // Keep draining stdout so the child can never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url.trim_end_matches('/').to_owned())
}
