//! Starting the real `voucherd` binary and learning its address from the one line
//! it prints on stdout. Shared by `tests/common` (one instance per test) and
//! `tests/cluster` (several instances per test).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What the binary prints once it listens, before `http://ADDR`.
pub const LISTENING_PREFIX: &str = "voucherd listening on ";

/// How long the binary may take from spawn to printing its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

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
