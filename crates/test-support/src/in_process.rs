//! The app run in-process on a free port, for tests that reach inside it through
//! the library (an injected actor panic, the readiness reasons) while still
//! talking to it over real HTTP. Used by `tests/supervision.rs` and
//! `tests/supervisor_recovery.rs`.

use std::sync::Arc;

use tokio::sync::oneshot;
use voucherd::{App, Settings};
use voucherd_service::service::Service;

/// A running app with its base URL and its service.
pub struct InProcess {
    pub base: String,
    pub service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Builds the app from `settings` on `127.0.0.1:0` and runs it until
    /// [`InProcess::shutdown`] or its own failure.
    pub async fn start(mut settings: Settings) -> Self {
        // No load balancer waits to take it out: a stop does not wait the drain delay.
        settings.drain_delay = std::time::Duration::ZERO;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let app = App::build(settings, listener).await.expect("app builds");
        let base = format!("http://{}", app.local_addr().expect("bound address"));
        let service = app.service();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            service,
            stop: Some(stop),
            task,
        }
    }

    /// The voucher `code` as `GET /api/vouchers/{code}` shows it.
    pub async fn voucher(&self, client: &reqwest::Client, code: &str) -> serde_json::Value {
        client
            .get(format!("{}/api/vouchers/{code}", self.base))
            .send()
            .await
            .expect("voucher read")
            .json()
            .await
            .expect("JSON")
    }

    /// Stops the app and asserts it stopped cleanly.
    pub async fn shutdown(self) {
        let result = self.stop_and_wait().await;
        result.expect("app stops cleanly");
    }

    /// Stops the app (if it still runs) and returns how it ended.
    async fn stop_and_wait(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.expect("app task")
    }

    /// True once the app stopped by itself.
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits up to `within` for the app to stop by itself (without asking it
    /// to); `None` if it is still running then.
    pub async fn stopped_by_itself(
        &mut self,
        within: std::time::Duration,
    ) -> Option<anyhow::Result<()>> {
        let ended = tokio::time::timeout(within, &mut self.task).await.ok()?;
        Some(ended.expect("app task"))
    }
}
