//! A throwaway PostgreSQL database per test on the shared server
//! (`VOUCHERD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped with its connections when the test ends, so tests run in parallel. An
//! unreachable server fails the test, saying how to start one (`scripts/services.sh up`):
//! it never skips silently.

use uuid::Uuid;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test, dropped (with its connections) when
/// the test ends, whether it passed or not.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The database's URL, for `--store` or a ledger's `open`.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the server `VOUCHERD_TEST_POSTGRES` names
    /// (default [`DEFAULT_POSTGRES_URL`]); an unreachable server fails the test.
    pub async fn create() -> TestDatabase {
        let admin_url = std::env::var("VOUCHERD_TEST_POSTGRES")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let name = format!("voucherd_test_{}", Uuid::new_v4().simple());
        let admin = admin_client(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        let url = with_database(&admin_url, &name);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on another
        // future: a thread with a runtime of its own drops the database.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime to drop the test database");
            runtime.block_on(async {
                let admin = admin_client(&admin_url).await;
                // FORCE closes the ledger's pooled connections.
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            let cause = std::error::Error::source(&error)
                .map_or_else(|| error.to_string(), |source| format!("{error}: {source}"));
            panic!(
                "PostgreSQL is unreachable at {url}: {cause}. This test needs a PostgreSQL \
                 server: start it with `scripts/services.sh up` (or run everything with \
                 `scripts/test.sh`), or set VOUCHERD_TEST_POSTGRES to a server's URL."
            )
        });
    tokio::spawn(connection);
    client
}

/// `url` with its database name replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}
