//! The stress harness end to end: a short open-loop flash crowd against the real
//! voucherd binary, with the bare-HTTP baseline and verification of I1–I5 on,
//! must exit 0 and write a result whose figures agree with the voucher.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_voucherd(store: &std::path::Path) -> (Server, String) {
    start_voucherd_with(store, &[])
}

fn start_voucherd_with(store: &std::path::Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_voucherd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("voucherd starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("voucherd prints its address");
    let url = line
        .trim()
        .strip_prefix("voucherd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (server, url)
}

#[test]
fn a_short_flash_crowd_verifies_clean() {
    // Goal: the harness drives the real binary, and its verification (I1-I5) passes.
    let store = tempfile::tempdir().expect("temporary store");
    let output = tempfile::tempdir().expect("temporary output");
    let (_server, url) = start_voucherd(store.path());
    let result = output.path().join("result.json");
    let page = output.path().join("report.html");
    let code = stress::main_from_args([
        "stress",
        "flash",
        "--url",
        &url,
        "--rate",
        "1500",
        "--duration",
        "2s",
        "--users",
        "40000000",
        "--repeat-share",
        "0.1",
        "--limit",
        "100",
        "--baseline",
        "--baseline-secs",
        "1",
        "--quiet",
        "--out",
        result.to_str().expect("utf-8 path"),
        "--html",
        page.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "the harness must run and verify I1-I5 clean");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result).expect("result file written"))
            .expect("result is JSON");
    assert_eq!(report["verify"]["passed"], true, "I1-I5 verification");
    assert_eq!(
        report["verify"]["redemptions"], 100,
        "I1: a limit-100 voucher under a 3,000-request crowd ends with exactly 100 redemptions"
    );
    assert_eq!(
        report["verify"]["seen_200"], 100,
        "I4: every 200 the harness saw is one of the 100"
    );
    let baseline = report["baseline"]["achieved_rate"]
        .as_f64()
        .expect("baseline rate");
    assert!(baseline > 0.0, "the baseline phase measured a rate");
    let html = std::fs::read_to_string(&page).expect("HTML report written");
    assert!(html.contains("<svg"), "the HTML report holds its charts");
}

#[test]
fn the_harness_drives_a_deployment_with_access_control() {
    // Goal: with the admin token the harness creates vouchers and profiles, moves money
    // and verifies through the admin routes; without it, it stops at setup.
    let store = tempfile::tempdir().expect("temporary store");
    let secrets = tempfile::tempdir().expect("temporary secrets");
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "stress-e2e-admin-token-0123456789\n").expect("token file");
    let token = token_file.to_str().expect("utf-8 path");
    let (_server, url) = start_voucherd_with(store.path(), &["--admin-token-file", token]);
    let mixed = |with_token: bool| {
        let mut args = vec![
            "stress",
            "mixed",
            "--url",
            &url,
            "--rate",
            "300",
            "--duration",
            "1s",
            "--users",
            "2000",
            "--limit",
            "50",
            "--quiet",
        ];
        if with_token {
            args.extend(["--admin-token-file", token]);
        }
        stress::main_from_args(args)
    };
    assert_ne!(
        mixed(false),
        0,
        "without the admin token the harness cannot create its voucher (401) and says so"
    );
    assert_eq!(
        mixed(true),
        0,
        "with the admin token: vouchers, profiles, transactions and verification all pass"
    );
}
