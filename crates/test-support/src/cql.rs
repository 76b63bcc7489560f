//! The CQL clusters the tests run against: Apache Cassandra 5.0 started by
//! `scripts/cassandra.sh` (which `scripts/test.sh` runs), one node and three.
//! A test that needs one fails, never skips, when it does not answer, and says
//! the command that starts it.

use uuid::Uuid;
use voucherd_store::scylla::CqlOptions;

/// One CQL cluster: its contact points and the replication factor its test
/// keyspaces get (the node count, at most 3).
#[derive(Debug, Clone)]
pub struct CqlCluster {
    pub hosts: Vec<String>,
    pub replication_factor: u32,
    /// How to start it, for the failure message.
    pub start: &'static str,
}

/// The one-node cluster: `VOUCHERD_TEST_CASSANDRA`, default 127.0.0.1:9042.
pub fn one_node() -> CqlCluster {
    cluster(
        "VOUCHERD_TEST_CASSANDRA",
        "127.0.0.1:9042",
        "scripts/cassandra.sh start 1",
    )
}

/// The three-node cluster: `VOUCHERD_TEST_CASSANDRA_CLUSTER`, default
/// 127.0.0.11:9042,127.0.0.12:9042,127.0.0.13:9042.
pub fn three_nodes() -> CqlCluster {
    cluster(
        "VOUCHERD_TEST_CASSANDRA_CLUSTER",
        "127.0.0.11:9042,127.0.0.12:9042,127.0.0.13:9042",
        "scripts/cassandra.sh start 3 --first 127.0.0.11",
    )
}

fn cluster(variable: &str, default: &str, start: &'static str) -> CqlCluster {
    let hosts: Vec<String> = std::env::var(variable)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    let replication_factor = hosts.len().clamp(1, 3) as u32;
    CqlCluster {
        hosts,
        replication_factor,
        start,
    }
}

impl CqlCluster {
    pub fn options(&self) -> CqlOptions {
        CqlOptions {
            replication_factor: self.replication_factor,
            ..CqlOptions::default()
        }
    }

    /// The `--store` value of the binary over `keyspace` on this cluster:
    /// `scylla://HOST:PORT,…/KEYSPACE?replication_factor=N`.
    pub fn store_url(&self, keyspace: &TestKeyspace) -> String {
        format!(
            "scylla://{}/{}?replication_factor={}",
            self.hosts.join(","),
            keyspace.name,
            self.replication_factor
        )
    }

    /// A fresh keyspace with the ledger's schema, dropped with the returned
    /// guard; panics with the command that starts the cluster when it does
    /// not answer.
    pub async fn fresh_keyspace(&self, prefix: &str) -> TestKeyspace {
        let keyspace = format!("{prefix}_{}", Uuid::new_v4().simple());
        if let Err(error) =
            voucherd_store::scylla::migrate(&self.hosts, &keyspace, &self.options()).await
        {
            panic!(
                "Cassandra is needed at {} and did not take the schema: {error:#}. \
                 Start it with `{}` (or run everything with `scripts/test.sh`).",
                self.hosts.join(","),
                self.start
            );
        }
        TestKeyspace {
            hosts: self.hosts.clone(),
            name: keyspace,
        }
    }
}

/// A test's keyspace; dropped when the test ends, so that a cluster serving
/// hundreds of tests does not keep hundreds of tables in memory.
#[derive(Debug)]
pub struct TestKeyspace {
    hosts: Vec<String>,
    pub name: String,
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        let hosts = self.hosts.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on another
        // future: a thread with a runtime of its own drops the keyspace.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime to drop the test keyspace");
            runtime.block_on(async {
                let session = scylla::client::session_builder::SessionBuilder::new()
                    .known_nodes(&hosts)
                    .build()
                    .await
                    .map_err(|error| error.to_string())?;
                session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                    .await
                    .map_err(|error| error.to_string())?;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test keyspace {}: {error}", self.name);
        }
    }
}
