//! Real `voucherd serve` processes sharing one ledger and one Redis (or Sentinel group).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitStatus;

use tempfile::TempDir;
use tokio::process::Child;

use crate::binary::{self, Binary};

/// One running `voucherd serve`; killed (SIGKILL) on Drop.
pub struct Instance {
    pub name: String,
    binary: Binary,
    child: Option<Child>,
    base_url: String,
    log: PathBuf,
    /// What it was started with, to start it again: the address, the store and the
    /// other arguments.
    listen: String,
    store: String,
    args: Vec<String>,
}

impl Instance {
    /// Starts `voucherd serve --listen 127.0.0.1:0 --store STORE --redis REDIS` of
    /// `binary`, logging stderr to `log_dir/NAME.log`, and waits for its listening line.
    pub async fn start(
        binary: Binary,
        name: &str,
        store: &str,
        redis: &str,
        log_dir: &std::path::Path,
    ) -> Instance {
        let args = vec!["--redis".to_owned(), redis.to_owned()];
        Instance::start_with(binary, name, store, args, log_dir).await
    }

    /// Starts `voucherd serve --listen 127.0.0.1:0 --store STORE ARGS…` of `binary`,
    /// logging stderr to `log_dir/NAME.log`, and waits for its listening line.
    pub async fn start_with(
        binary: Binary,
        name: &str,
        store: &str,
        args: Vec<String>,
        log_dir: &std::path::Path,
    ) -> Instance {
        Instance::start_on(binary, name, "127.0.0.1:0", store, args, log_dir).await
    }

    /// As [`Instance::start_with`], listening on `listen`: the same address again on
    /// every start (a load balancer in front names it).
    pub async fn start_on(
        binary: Binary,
        name: &str,
        listen: &str,
        store: &str,
        args: Vec<String>,
        log_dir: &std::path::Path,
    ) -> Instance {
        let mut instance = Instance {
            name: name.to_owned(),
            binary,
            child: None,
            base_url: String::new(),
            log: log_dir.join(format!("{name}.log")),
            listen: listen.to_owned(),
            store: store.to_owned(),
            args,
        };
        instance.spawn().await;
        instance
    }

    async fn spawn(&mut self) {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open voucherd log");
        let mut command = self
            .binary
            .serve_command_on(&self.listen, &self.store, file);
        command.args(&self.args);
        let log = self.log.clone();
        let (child, url) = binary::start(&mut command, &format!("voucherd {}", self.name), || {
            // Without the backtrace's frames, so that the error itself shows.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| {
                    let line = line.trim_start();
                    let frame = line.split_once(':').is_some_and(|(n, _)| {
                        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                    });
                    !frame && !line.starts_with("at ")
                })
                .collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        })
        .await;
        self.child = Some(child);
        self.base_url = url;
    }

    /// Starts it again with the same address, store and arguments after a kill or a
    /// stop; started on port 0, it listens on another port: re-read
    /// [`Instance::base_url`].
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "voucherd {} is running", self.name);
        self.spawn().await;
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Everything the instance wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log, lines)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap: a crash with no chance to give anything back.
    pub async fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("instance is not running");
        child.start_kill().expect("send SIGKILL");
        let _ = child.wait().await;
    }

    /// SIGTERM and the exit status (bounded).
    async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.take().expect("voucherd is not running");
        let name = format!("voucherd {}", self.name);
        binary::terminate(child, &name, || self.log_tail(60)).await
    }

    /// Sends SIGTERM and returns at once: the instance drains while the test looks
    /// at it; [`Instance::stopped`] then waits for its exit.
    pub fn begin_stop(&self) {
        let child = self.child.as_ref().expect("voucherd is not running");
        let pid = child.id().expect("a running child has a pid") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
    }

    /// Waits (bounded by [`binary::SHUTDOWN_TIMEOUT`]) for the exit a
    /// [`Instance::begin_stop`] asked for; it must be exit code 0.
    pub async fn stopped(&mut self) {
        let mut child = self.child.take().expect("voucherd is not running");
        let status = tokio::time::timeout(binary::SHUTDOWN_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "voucherd {} did not exit within {:?} of SIGTERM; stderr:\n{}",
                    self.name,
                    binary::SHUTDOWN_TIMEOUT,
                    self.log_tail(60)
                )
            })
            .expect("wait for voucherd");
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must end voucherd {} with exit code 0, got {status:?}; stderr:\n{}",
            self.name,
            self.log_tail(60)
        );
    }

    /// Graceful stop: SIGTERM, and the process must exit with code 0.
    pub async fn stop(&mut self) {
        let status = self.terminate().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must end voucherd {} with exit code 0, got {status:?}; stderr:\n{}",
            self.name,
            self.log_tail(60)
        );
    }
}

/// Several instances on one store and one Redis target, with their logs in one tempdir.
pub struct Cluster {
    pub instances: Vec<Instance>,
    /// The instances' logs; removed with the cluster (unless `CLUSTER_LOG_DIR` keeps it).
    _log_dir: TempDir,
}

impl Cluster {
    /// Starts `count` instances of `binary` at once (they migrate the shared database
    /// concurrently).
    pub async fn start(binary: Binary, count: usize, store: &str, redis: &str) -> Cluster {
        // CLUSTER_LOG_DIR=dir keeps the instances' logs there after the test.
        let mut builder = tempfile::Builder::new();
        builder.prefix("cluster-voucherd-");
        let log_dir = match std::env::var_os("CLUSTER_LOG_DIR") {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("create CLUSTER_LOG_DIR");
                builder.disable_cleanup(true).tempdir_in(dir)
            }
            None => builder.tempdir(),
        }
        .expect("create voucherd log dir");
        let path = log_dir.path().to_owned();
        let names: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
        let instances = futures::future::join_all(
            names
                .iter()
                .map(|name| Instance::start(binary, name, store, redis, &path)),
        )
        .await;
        Cluster {
            instances,
            _log_dir: log_dir,
        }
    }

    /// Base URLs of every instance, live or not, by index.
    pub fn urls(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| i.base_url().to_owned())
            .collect()
    }

    /// Base URLs of the instances still running.
    pub fn live_urls(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| i.is_running())
            .map(|i| i.base_url().to_owned())
            .collect()
    }

    /// Fails the test if any instance's log shows a panic.
    pub fn assert_no_panic(&self) {
        for instance in &self.instances {
            let log = instance.log();
            assert!(
                !log.contains("panicked"),
                "voucherd {} logged a panic:\n{}",
                instance.name,
                instance.log_tail(80)
            );
        }
    }

    /// SIGTERM every running instance; each must exit 0.
    pub async fn stop_all(&mut self) {
        for instance in &mut self.instances {
            if instance.is_running() {
                let started = std::time::Instant::now();
                instance.stop().await;
                eprintln!(
                    "voucherd {} stopped (exit 0) in {:.1?}",
                    instance.name,
                    started.elapsed()
                );
            }
        }
    }

    /// Log tails of every instance, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.instances
            .iter()
            .map(|i| format!("---- voucherd {} ----\n{}\n", i.name, i.log_tail(lines)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(40));
        }
        for instance in &mut self.instances {
            if let Some(child) = instance.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
