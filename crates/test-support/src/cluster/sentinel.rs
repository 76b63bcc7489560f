//! A private Sentinel group: a master, one replica and three sentinels (quorum 2), each
//! a child process on its own port with its own config file.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::process::{free_port, which, Proc};
use super::redis_server::{command, redis_server_binary, wait_for_ping, RedisServer};
use super::wait_until;

pub const MASTER_NAME: &str = "mymaster";

/// One sentinel process; its config file lives (and is rewritten by it) in `dir`.
struct SentinelNode {
    port: u16,
    proc: Proc,
}

pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<SentinelNode>,
    /// The sentinels' config files and logs; removed with the group.
    _dir: TempDir,
}

fn sentinel_command(config: &std::path::Path) -> Command {
    match which("redis-sentinel") {
        Some(binary) => {
            let mut command = Command::new(binary);
            command.arg(config);
            command
        }
        // `redis-server --sentinel` is the same program; without either, say which package.
        None if which("redis-server").is_some() => {
            let mut command = Command::new(redis_server_binary());
            command.arg(config).arg("--sentinel");
            command
        }
        None => panic!(
            "neither redis-sentinel nor redis-server is installed (PATH has neither); this test \
             runs a private Sentinel group with them (Debian packages `redis-sentinel` and \
             `redis-server`). Install them with `scripts/services.sh up` (or run everything \
             with `scripts/test.sh`)."
        ),
    }
}

impl SentinelGroup {
    /// Starts master, replica (waits for its link) and three sentinels, and waits until
    /// every sentinel knows the replica and the two other sentinels, so that a failover
    /// can be agreed on.
    pub async fn start() -> SentinelGroup {
        let master = RedisServer::start("master").await;
        let replica = RedisServer::start_replica_of("replica", &master).await;
        replica.wait_replica_link_up().await;
        let dir = tempfile::Builder::new()
            .prefix("cluster-sentinels-")
            .tempdir()
            .expect("create sentinel tempdir");
        let mut sentinels = Vec::new();
        for index in 0..3 {
            sentinels.push(Self::spawn_sentinel(&dir, index, master.port()).await);
        }
        let group = SentinelGroup {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        for node in &group.sentinels {
            let port = node.port;
            wait_until(
                &format!("sentinel {port} to see the replica and the two other sentinels"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async move {
                    let replicas: Vec<redis::Value> = command(
                        port,
                        redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME),
                    )
                    .await
                    .ok()?;
                    let others: Vec<redis::Value> = command(
                        port,
                        redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME),
                    )
                    .await
                    .ok()?;
                    (replicas.len() == 1 && others.len() == 2).then_some(())
                },
            )
            .await;
        }
        group
    }

    async fn spawn_sentinel(dir: &TempDir, index: usize, master_port: u16) -> SentinelNode {
        for attempt in 1..=3 {
            let port = free_port();
            let config = dir.path().join(format!("sentinel-{index}.conf"));
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 protected-mode no\n\
                 daemonize no\n\
                 dir {dir}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n",
                dir = dir.path().display()
            );
            std::fs::write(&config, text).expect("write sentinel config");
            let mut proc = Proc::spawn(
                &format!("sentinel {index} (port {port})"),
                sentinel_command(&config),
                &dir.path().join(format!("sentinel-{index}.log")),
                Signal::SIGKILL,
            );
            match wait_for_ping(&mut proc, port).await {
                Ok(()) => return SentinelNode { port, proc },
                Err(error) if attempt < 3 => eprintln!("retrying sentinel {index}: {error}"),
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The master's port as the first sentinel that answers reports it.
    pub async fn master_port_by_sentinels(&self) -> Option<u16> {
        for node in &self.sentinels {
            let reply: Result<Vec<String>, String> = command(
                node.port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME),
            )
            .await;
            if let Ok(address) = reply {
                if let Some(port) = address.get(1).and_then(|p| p.parse().ok()) {
                    return Some(port);
                }
            }
        }
        None
    }

    /// Waits up to `limit` until the sentinels name the replica as master and it says so
    /// itself; false when that did not happen in time.
    pub async fn wait_for_failover(&self, limit: Duration) -> bool {
        let replica_port = self.replica.port();
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.master_port_by_sentinels().await == Some(replica_port) {
                let role: Result<Vec<redis::Value>, String> =
                    command(replica_port, &redis::cmd("ROLE")).await;
                let promoted = match role.as_deref().map(|r| r.first()) {
                    Ok(Some(redis::Value::BulkString(kind))) => kind == b"master",
                    Ok(Some(redis::Value::SimpleString(kind))) => kind == "master",
                    _ => false,
                };
                if promoted {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The sentinels' logs, for failure messages.
    pub fn logs(&mut self) -> String {
        let mut out = String::new();
        for node in &mut self.sentinels {
            let state = if node.proc.is_running() {
                "running"
            } else {
                "EXITED"
            };
            out.push_str(&format!(
                "---- {} [{state}] ----\n{}\n",
                node.proc.name(),
                node.proc.log_tail(25)
            ));
        }
        out
    }
}
