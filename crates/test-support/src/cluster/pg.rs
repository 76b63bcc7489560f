//! A private PostgreSQL cluster: `initdb` into a tempdir, then `postgres` as a child
//! process on its own port, which a test can restart (fast shutdown, start again on the
//! same port and data directory).
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root: then initdb and the
//! server run as the `postgres` user (the child drops to its uid/gid before exec, which
//! is what `runuser -u postgres` does, but keeps the server itself as our direct child so
//! that signals reach it and nothing is left behind). Missing binaries or a missing
//! `postgres` user fail the test with a message naming the package and
//! `scripts/services.sh up`, which installs it; nothing is skipped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::process::{free_port, port_open, which, Proc};

/// How long a fresh or restarted server may take to accept queries.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding `initdb` and `postgres`: PATH first, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(initdb) = which("initdb") {
        if let Some(dir) = initdb.parent() {
            if dir.join("postgres").is_file() {
                return dir.to_owned();
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found: no initdb+postgres in PATH or under \
             /usr/lib/postgresql/*/bin; this test runs a private PostgreSQL server with them \
             (Debian package `postgresql`). Install them with `scripts/services.sh up` (or run \
             everything with `scripts/test.sh`)."
        ),
    }
}

/// The uid and gid to run PostgreSQL as: the `postgres` user when we are root, else ourselves.
fn run_as() -> Option<(u32, u32)> {
    let euid = Command::new("id").arg("-u").output().expect("run `id -u`");
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap_or_else(|e| panic!("run `id {flag} postgres`: {e}"));
        assert!(
            out.status.success(),
            "the tests run as root and PostgreSQL refuses to run as root, but there is no \
             `postgres` user to run it as (`id {flag} postgres`: {}); the Debian package \
             `postgresql` creates it: install it with `scripts/services.sh up` (or run \
             everything with `scripts/test.sh`)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("`id {flag} postgres` printed no number: {e}"))
    };
    Some((id("-u"), id("-g")))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}

/// One private PostgreSQL server with trust authentication for user `postgres`.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    proc: Option<Proc>,
    /// Holds the data directory, the Unix socket and the logs.
    dir: TempDir,
}

impl PgServer {
    /// initdb into a fresh tempdir and start the server on a free port.
    pub async fn start() -> PgServer {
        let bin = bin_dir();
        let user = run_as();
        let mut builder = tempfile::Builder::new();
        builder.prefix("cluster-pg-");
        // The postgres user must reach the directory: under /tmp rather than a TMPDIR
        // that may sit inside root's home.
        let dir = match user {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .expect("create postgres tempdir");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the postgres tempdir to the postgres user");
        }
        let data = dir.path().join("data");
        let initdb_log = dir.path().join("initdb.log");
        let log = std::fs::File::create(&initdb_log).expect("create initdb log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            // No fsync of the fresh cluster files: the server itself runs with fsync=on.
            .arg("-N")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        as_user(&mut initdb, user);
        let status = initdb
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.join("initdb").display()));
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            super::process::log_tail(&initdb_log, 40)
        );
        let mut server = PgServer {
            port: free_port(),
            bin,
            user,
            proc: None,
            dir,
        };
        // A port found free can be taken before the server binds it: try another one.
        for attempt in 1..=3 {
            match server.spawn().await {
                Ok(()) => return server,
                Err(error) if attempt < 3 => {
                    eprintln!("retrying postgres on another port: {error}");
                    server.port = free_port();
                }
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log_path(), lines)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        assert!(self.proc.is_none(), "postgres is already running");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=on"])
            .args(["-c", "max_connections=200"]);
        as_user(&mut command, self.user);
        // SIGQUIT on Drop: immediate shutdown, the postmaster takes its backends with it.
        let mut proc = Proc::spawn(
            &format!("postgres (port {})", self.port),
            command,
            &self.log_path(),
            Signal::SIGQUIT,
        );
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.select_one().await.is_ok() {
                self.proc = Some(proc);
                return Ok(());
            }
            if let Some(status) = proc.exited() {
                return Err(format!(
                    "postgres exited ({status}) before accepting queries on port {}; log tail:\n{}",
                    self.port,
                    self.log_tail(30)
                ));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not accept queries on port {} within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                self.port,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `SELECT 1` on a fresh connection (bounded).
    pub async fn select_one(&self) -> Result<(), String> {
        let config = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.port
        );
        let attempt = async {
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let outcome = client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            outcome
        };
        tokio::time::timeout(Duration::from_secs(3), attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `--store` URL for voucherd.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn data_path(&self) -> &Path {
        self.dir.path()
    }

    /// Fast shutdown (SIGINT: open sessions are ended, nothing committed is lost).
    pub async fn stop(&mut self) {
        let mut proc = self.proc.take().expect("postgres is not running");
        let status = proc.stop_with(Signal::SIGINT, SHUTDOWN_TIMEOUT).await;
        assert!(
            status.success(),
            "postgres fast shutdown ended with {status}; log tail:\n{}",
            self.log_tail(30)
        );
    }

    /// Starts again on the same port and data directory.
    pub async fn start_again(&mut self) {
        assert!(
            !port_open(self.port),
            "port {} of postgres was taken by another process while it was down",
            self.port
        );
        if let Err(error) = self.spawn().await {
            panic!("{error}");
        }
    }

    /// Fast shutdown, then start again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}
