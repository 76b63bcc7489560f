//! The seed's Postman collection (copied to tests/newman/challange.postman.json) run by a
//! pinned newman against the real binary: the seed's clients must keep working.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use serde_json::Value;

/// Upper bound for `npm ci` (only when node_modules is missing) and for one newman run.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
const NEWMAN_TIMEOUT: Duration = Duration::from_secs(120);
/// The seed collection holds seven requests: three wallet calls and four voucher calls.
const SEED_REQUESTS: usize = 7;

fn newman_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/newman")
}

/// Path to the pinned newman, installing it with `npm ci` when it is missing. Fails (never
/// skips) when npm is not installed.
async fn newman_binary() -> PathBuf {
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
            "newman is not installed in {} and `npm` could not be run ({error}); \
             install Node.js and npm (e.g. `apt-get install -y nodejs npm`) or run \
             `npm ci` in tests/newman",
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

#[tokio::test(flavor = "multi_thread")]
async fn seed_collection_runs_green_under_newman() {
    // Goal: every request of the seed's Postman collection answers 2xx and newman exits 0.
    let newman = newman_binary().await;
    let server = TestServer::start().await;
    let out = tempfile::tempdir().expect("tempdir");
    let report_path = out.path().join("newman-report.json");
    let collection = newman_dir().join("challange.postman.json");
    let address = server.base_url().to_string();
    let child = tokio::process::Command::new(&newman)
        .arg("run")
        .arg(&collection)
        .arg("--env-var")
        .arg(format!("voucherURL={address}"))
        .arg("--env-var")
        .arg(format!("walletURL={address}"))
        .args(["--reporters", "cli,json", "--reporter-json-export"])
        .arg(&report_path)
        .args([
            "--color",
            "off",
            "--disable-unicode",
            "--timeout-request",
            "30000",
        ])
        .current_dir(newman_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", newman.display()));
    let output = tokio::time::timeout(NEWMAN_TIMEOUT, child.wait_with_output())
        .await
        .expect("newman finished in time")
        .expect("newman ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "newman exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("newman wrote its JSON report"),
    )
    .expect("the newman report is JSON");
    let executions = report["run"]["executions"]
        .as_array()
        .expect("run.executions in the newman report");
    assert_eq!(
        executions.len(),
        SEED_REQUESTS,
        "every request of the collection ran\n{stdout}"
    );
    for execution in executions {
        let name = execution["item"]["name"].as_str().unwrap_or("?");
        let code = execution["response"]["code"].as_u64();
        assert!(
            matches!(code, Some(200..=299)),
            "seed request {name:?} answered {code:?}, wanted 2xx\n{stdout}"
        );
    }
    assert_eq!(
        report["run"]["failures"].as_array().map(Vec::len),
        Some(0),
        "newman reports no failures\n{stdout}"
    );
    common::assert_no_panic_in_log(&server);
}

#[test]
fn collection_copy_matches_the_seed() {
    // Goal: tests/newman/challange.postman.json is the seed's collection, unchanged.
    let copy = newman_dir().join("challange.postman.json");
    let copy: Value = serde_json::from_str(&std::fs::read_to_string(&copy).expect("read the copy"))
        .expect("the copy is JSON");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/challange.postman.json");
    match std::fs::read_to_string(&seed) {
        Ok(text) => {
            let seed: Value = serde_json::from_str(&text).expect("the seed is JSON");
            assert_eq!(copy, seed, "the copy drifted from {}", seed_display(&seed));
        }
        Err(_) => eprintln!(
            "collection_copy_matches_the_seed: {} is absent here; only the copy was checked",
            seed.display()
        ),
    }
    assert_eq!(copy["item"].as_array().map(Vec::len), Some(2));
}

fn seed_display(seed: &Value) -> String {
    seed["info"]["name"]
        .as_str()
        .unwrap_or("the seed")
        .to_string()
}
