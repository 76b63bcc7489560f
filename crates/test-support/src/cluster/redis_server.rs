//! A private `redis-server` child on its own port, without persistence, that a test can
//! stop, start again on the same port, flush or kill.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::process::{free_port, which, Proc};
use super::wait_until;

/// How long a fresh redis-server may take to answer PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one command sent by the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// The redis-server binary; the test fails (never skips) when it is missing.
pub fn redis_server_binary() -> std::path::PathBuf {
    which("redis-server").unwrap_or_else(|| {
        panic!(
            "redis-server is not installed (PATH has no redis-server); this test runs private \
             Redis servers with it (Debian package `redis-server`). Install it with \
             `scripts/services.sh up` (or run everything with `scripts/test.sh`)."
        )
    })
}

/// Sends one command to 127.0.0.1:`port` on a fresh connection, bounded in time.
pub async fn command<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let attempt = async {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        cmd.query_async::<T>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {COMMAND_TIMEOUT:?}")),
    }
}

/// Waits until 127.0.0.1:`port` answers PING. Err(log tail) when `proc` exits first;
/// fails the test when it neither answers nor exits in time.
pub async fn wait_for_ping(proc: &mut Proc, port: u16) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(pong) = command::<String>(port, &redis::cmd("PING")).await {
            if pong == "PONG" {
                return Ok(());
            }
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "{} exited ({status}) before answering PING on port {port}; log tail:\n{}",
                proc.name(),
                proc.log_tail(30)
            ));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not answer PING on port {port} within {STARTUP_TIMEOUT:?}; log tail:\n{}",
            proc.name(),
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One private redis-server.
pub struct RedisServer {
    name: String,
    port: u16,
    extra_args: Vec<String>,
    proc: Option<Proc>,
    dir: TempDir,
}

impl RedisServer {
    /// A stand-alone server on a free port.
    pub async fn start(name: &str) -> RedisServer {
        Self::start_with(name, &[]).await
    }

    /// A server with extra command-line arguments (e.g. `--replicaof 127.0.0.1 PORT`).
    pub async fn start_with(name: &str, extra_args: &[String]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cluster-{name}-"))
            .tempdir()
            .expect("create redis tempdir");
        let mut server = RedisServer {
            name: name.to_owned(),
            port: free_port(),
            extra_args: extra_args.to_vec(),
            proc: None,
            dir,
        };
        // A port found free can be taken before the server binds it: try another one.
        for attempt in 1..=3 {
            let mut proc = server.spawn_proc();
            match wait_for_ping(&mut proc, server.port).await {
                Ok(()) => {
                    server.proc = Some(proc);
                    return server;
                }
                Err(error) if attempt < 3 => {
                    eprintln!("retrying {name} on another port: {error}");
                    server.port = free_port();
                }
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_proc(&self) -> Proc {
        let mut command = Command::new(redis_server_binary());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args);
        Proc::spawn(
            &format!("redis-server {} (port {})", self.name, self.port),
            command,
            &self.dir.path().join("redis.log"),
            Signal::SIGKILL,
        )
    }

    async fn spawn(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let mut proc = self.spawn_proc();
        if let Err(error) = wait_for_ping(&mut proc, self.port).await {
            panic!("{error}");
        }
        self.proc = Some(proc);
    }

    /// A server replicating `master` (`--replicaof`), on a free port.
    pub async fn start_replica_of(name: &str, master: &RedisServer) -> RedisServer {
        let replicaof = [
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ];
        Self::start_with(name, &replicaof).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for a proxy in front of it.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.dir.path().join("redis.log"), lines)
    }

    /// Graceful stop (SIGTERM; nothing is saved) and wait for the exit.
    pub async fn stop(&mut self) {
        let mut proc = self.proc.take().expect("redis is not running");
        proc.stop_with(Signal::SIGTERM, Duration::from_secs(15))
            .await;
    }

    /// SIGKILL: the server dies with whatever it had not sent anywhere.
    pub async fn kill_hard(&mut self) {
        let mut proc = self.proc.take().expect("redis is not running");
        proc.kill_hard().await;
    }

    /// Starts again on the same port (empty: there is no persistence).
    pub async fn start_again(&mut self) {
        assert!(
            !super::process::port_open(self.port),
            "port {} of {} was taken by another process while it was down",
            self.port,
            self.name
        );
        self.spawn().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Sends one command, failing the test on error.
    pub async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        command(self.port, cmd)
            .await
            .unwrap_or_else(|e| panic!("{} on {}: {e}", self.name, self.port))
    }

    pub async fn flushall(&self) {
        let reply: String = self.cmd(&redis::cmd("FLUSHALL")).await;
        assert_eq!(reply, "OK", "FLUSHALL on {}", self.name);
    }

    /// Keys matching `pattern` (KEYS: fine for the few keys of a test).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        self.cmd(redis::cmd("KEYS").arg(pattern)).await
    }

    /// `INFO replication` as text.
    pub async fn replication_info(&self) -> String {
        self.cmd(redis::cmd("INFO").arg("replication")).await
    }

    /// Waits (bounded) until this replica's link to its master is up.
    pub async fn wait_replica_link_up(&self) {
        let port = self.port;
        wait_until(
            &format!("replica {} to report master_link_status:up", self.name),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async move {
                let info: String = command(port, redis::cmd("INFO").arg("replication"))
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            },
        )
        .await;
    }
}
