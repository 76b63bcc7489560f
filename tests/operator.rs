//! What an operator meets first: the help text, the log format, and the message
//! when two instances share one embedded store. Every test runs the real binary.

use std::process::Stdio;

use voucherd_test_support::binary::Binary;
use voucherd_test_support::server::{StartOptions, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

fn voucherd() -> std::process::Command {
    let mut command = std::process::Command::new(VOUCHERD.path());
    command
        .env_remove("VOUCHERD_ADMIN_TOKEN")
        .env_remove("VOUCHERD_LOG_FORMAT")
        .stdin(Stdio::null());
    command
}

/// Goal: `serve --help` says what `--store` accepts, tokens and limits included.
#[test]
fn serve_help_names_every_store_and_the_access_options() {
    let output = voucherd().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "postgres://",
        "--admin-token-file",
        "VOUCHERD_ADMIN_TOKEN",
        "--insecure-no-auth",
        "--metrics-listen",
        "--max-connections",
        "--header-timeout-secs",
        "--redeem-rate-per-phone",
        "--log-format",
    ] {
        assert!(
            help.contains(expected),
            "`{expected}` missing from:\n{help}"
        );
    }
}

/// Goal: logs written to a file carry no ANSI colour codes; `--log-format json`
/// writes one JSON object per line.
#[tokio::test]
async fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let mut server = TestServer::start(VOUCHERD).await;
    server.stop().await;
    let log = server.log();
    assert!(log.contains("serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log}"
    );

    let mut server =
        TestServer::start_with(VOUCHERD, StartOptions::args(&["--log-format", "json"])).await;
    server.stop().await;
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
}

/// Goal: a second instance on the same embedded store fails at once, naming the
/// directory and the cause; the first keeps serving.
#[tokio::test]
async fn a_second_instance_on_one_embedded_store_is_told_why() {
    let mut first = TestServer::start(VOUCHERD).await;
    let output = voucherd()
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(first.store_path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "a second instance started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&first.store_path().display().to_string())
            && stderr.contains("already open in another process"),
        "{stderr}"
    );
    first.wait_ready().await;
    first.stop().await;
}

/// Goal: a SIGTERM right after the listening line (a supervisor that stops what it
/// just started) is a clean stop with exit code 0, never a kill by the signal.
#[tokio::test]
async fn sigterm_right_after_start_is_a_clean_stop() {
    for _ in 0..5 {
        let mut server = TestServer::start(VOUCHERD).await;
        server.stop().await;
    }
}
