//! The seed's Postman collection (tests/newman/challange.postman.json) run by the pinned
//! newman of tests/newman, installed there with `npm ci` when it is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// Upper bound for `npm ci` (only when node_modules is missing) and for one newman run.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
const NEWMAN_TIMEOUT: Duration = Duration::from_secs(120);
/// The seed collection holds seven requests: three wallet calls and four voucher calls.
pub const SEED_REQUESTS: usize = 7;

/// The workspace's `tests/newman` (this crate is `crates/test-support`).
pub fn newman_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/newman")
}

/// Path to the pinned newman, installing it with `npm ci` when it is missing. Fails (never
/// skips) when npm is not installed.
pub async fn newman_binary() -> PathBuf {
    let dir = newman_dir();
    let newman = dir.join("node_modules/.bin/newman");
    if newman.exists() {
        return newman;
    }
    let mut command = tokio::process::Command::new("npm");
    command
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => panic!(
            "newman is not installed in {} and `npm` could not be run ({error}): the Postman \
             test runs newman, which needs Node.js and npm (Debian packages `nodejs` and \
             `npm`). Install them with `scripts/services.sh up` (or run everything with \
             `scripts/test.sh`, which also runs `npm ci` in tests/newman).",
            dir.display()
        ),
    };
    let output = tokio::time::timeout(NPM_TIMEOUT, child.wait_with_output())
        .await
        .expect("npm ci finished in time")
        .expect("npm ci ran");
    assert!(
        output.status.success(),
        "`npm ci` in {} failed with {:?}",
        dir.display(),
        output.status
    );
    assert!(
        newman.exists(),
        "npm ci did not install {}",
        newman.display()
    );
    newman
}

/// A finished newman run of the seed collection.
pub struct Run {
    /// `run.executions` of newman's JSON report, one per request, in order.
    pub executions: Vec<Value>,
    /// newman's CLI output, for failure messages.
    pub stdout: String,
}

impl Run {
    /// The HTTP status each request got, by request name, in order.
    pub fn statuses(&self) -> Vec<(String, Option<u64>)> {
        self.executions
            .iter()
            .map(|execution| {
                let name = execution["item"]["name"].as_str().unwrap_or("?");
                (name.to_owned(), execution["response"]["code"].as_u64())
            })
            .collect()
    }
}

/// Runs the seed collection with `voucherURL` and `walletURL` set. newman must exit 0,
/// report no failure and have run every request of the collection.
pub async fn run_seed_collection(voucher_url: &str, wallet_url: &str) -> Run {
    let newman = newman_binary().await;
    let out = tempfile::tempdir().expect("tempdir");
    let report_path = out.path().join("newman-report.json");
    let child = tokio::process::Command::new(&newman)
        .arg("run")
        .arg(newman_dir().join("challange.postman.json"))
        .arg("--env-var")
        .arg(format!("voucherURL={voucher_url}"))
        .arg("--env-var")
        .arg(format!("walletURL={wallet_url}"))
        .args(["--reporters", "cli,json", "--reporter-json-export"])
        .arg(&report_path)
        .args(["--color", "off", "--disable-unicode"])
        .args(["--timeout-request", "30000"])
        .current_dir(newman_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {}: {e} (newman needs Node.js, Debian package `nodejs`: \
                 `scripts/services.sh up` installs it)",
                newman.display()
            )
        });
    let output = tokio::time::timeout(NEWMAN_TIMEOUT, child.wait_with_output())
        .await
        .expect("newman finished in time")
        .expect("newman ran");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "newman exited with {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("newman wrote its JSON report"),
    )
    .expect("the newman report is JSON");
    assert_eq!(
        report["run"]["failures"].as_array().map(Vec::len),
        Some(0),
        "newman reports no failures\n{stdout}"
    );
    let executions = report["run"]["executions"]
        .as_array()
        .cloned()
        .expect("run.executions in the newman report");
    assert_eq!(
        executions.len(),
        SEED_REQUESTS,
        "every request of the collection ran\n{stdout}"
    );
    Run { executions, stdout }
}
