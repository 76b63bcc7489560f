//! Child processes that die with the test: free ports, log files, bounded stops.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Ports handed out by [`free_port`] come from this range, below Linux's default
/// ephemeral range (32768–60999), so that an outgoing connection never takes the port of
/// a server that is down for a moment and is about to start again on it.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port on 127.0.0.1 that nothing listens on right now. Each test process walks the
/// range from a pid-dependent start, so concurrent test binaries rarely try the same port.
pub fn free_port() -> u16 {
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let _ = NEXT_PORT.compare_exchange(
        0,
        ((std::process::id() * 7_919) % u32::from(span)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT_PORT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PORT_RANGE.start + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORT_RANGE:?}");
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The last `lines` lines of a log file (empty when it does not exist).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds `name` in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A server child process whose stdout and stderr go to a log file. On Drop it gets
/// `drop_signal`, then SIGKILL if it has not exited within a few seconds.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    drop_signal: Signal,
}

impl Proc {
    /// Spawns `command` with stdin closed and output appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path, drop_signal: Signal) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {} for {name}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({command:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            drop_signal,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The exit status when the process has ended (it is then reaped), None while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` to the process (nothing when it is not running).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Sends `signal` and waits (bounded by `limit`) for the exit; on timeout the process is
    /// killed and the test fails. Returns the exit status; the Proc is then empty.
    pub async fn stop_with(&mut self, signal: Signal, limit: Duration) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("{} is not running", self.name);
        };
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {limit:?} of {signal}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill_hard(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGKILL, Duration::from_secs(10))
            .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), self.drop_signal);
        for _ in 0..250 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
