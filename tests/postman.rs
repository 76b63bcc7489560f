//! The seed's Postman collection (copied to tests/newman/challange.postman.json) run by a
//! pinned newman against the real binary: the seed's clients must keep working.

use std::path::Path;

use serde_json::Value;
use voucherd_test_support::binary::Binary;
use voucherd_test_support::newman::{newman_dir, run_seed_collection};
use voucherd_test_support::server::{assert_no_panic_in_log, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

#[tokio::test(flavor = "multi_thread")]
async fn seed_collection_runs_green_under_newman() {
    // Goal: every request of the seed's Postman collection answers 2xx and newman exits 0.
    let server = TestServer::start(VOUCHERD).await;
    let address = server.base_url();
    let run = run_seed_collection(address, address).await;
    for (name, code) in run.statuses() {
        assert!(
            matches!(code, Some(200..=299)),
            "seed request {name:?} answered {code:?}, wanted 2xx\n{}",
            run.stdout
        );
    }
    assert_no_panic_in_log(&server);
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
