//! The voucher service's client of the wallet service: credits, batched.
//!
//! A win does not pay a network round trip of its own: credits go into a
//! bounded queue, and a batching task takes whatever is queued (up to
//! [`MAX_CREDITS_PER_CALL`]) into one `POST /internal/credits` call, over
//! pooled keep-alive connections, with up to [`MAX_WALLET_CALLS_IN_FLIGHT`]
//! calls at once. Several wallet URLs (a wallet fleet behind no balancer) are
//! used in turn. Whatever goes wrong with a call (refused connection, timeout,
//! a 5xx, an unreadable answer) answers `Unknown` for each of its credits:
//! the protocol leaves them pending and recovery asks again. Only the wallet's
//! own per-credit answers are ever `Applied` or `Refused`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::http::endpoints::credits::{CreditBatch, CreditItem, CreditResultItem, CreditResults};
use voucherd_core::limits::{
    MAX_CREDITS_PER_CALL, MAX_QUEUED_CREDITS, MAX_WALLET_CALLS_IN_FLIGHT, WALLET_CALL_TIMEOUT_MS,
    WALLET_CONNECT_TIMEOUT_MS,
};
use voucherd_core::redemption::{Credit, CreditAnswer, CreditPort};
use voucherd_metrics::Metrics;

/// The path of the wallet service's credit endpoint.
pub const CREDITS_PATH: &str = "/internal/credits";

/// A credit waiting for its call, and where its answer goes.
struct Queued {
    credit: Credit,
    answer: oneshot::Sender<CreditAnswer>,
}

/// The wallet service as the protocol reaches it. Cheap to share.
pub struct HttpWalletClient {
    queue: mpsc::Sender<Queued>,
}

impl HttpWalletClient {
    /// A client of the wallet service at `urls` (base URLs, used in turn),
    /// presenting `token` (the service token) when one is given. Starts the
    /// batching task; needs a Tokio runtime.
    pub fn start(
        urls: Vec<String>,
        token: Option<String>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "no wallet service URL");
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(WALLET_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(WALLET_CALL_TIMEOUT_MS))
            .pool_max_idle_per_host(MAX_WALLET_CALLS_IN_FLIGHT)
            .build()?;
        let caller = Arc::new(Caller {
            http,
            urls: urls
                .into_iter()
                .map(|url| format!("{}{CREDITS_PATH}", url.trim_end_matches('/')))
                .collect(),
            next: AtomicUsize::new(0),
            token,
            metrics,
        });
        let (queue, receiver) = mpsc::channel(MAX_QUEUED_CREDITS);
        tokio::spawn(batch_calls(receiver, caller));
        Ok(Self { queue })
    }
}

impl CreditPort for HttpWalletClient {
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>> {
        let waiting: Vec<_> = credits
            .into_iter()
            .map(|credit| {
                let (answer, answered) = oneshot::channel();
                // A full queue: this credit is left to recovery.
                match self.queue.try_send(Queued { credit, answer }) {
                    Ok(()) => Some(answered),
                    Err(_) => None,
                }
            })
            .collect();
        Box::pin(async move {
            let mut answers = Vec::with_capacity(waiting.len());
            for answered in waiting {
                let answer = match answered {
                    Some(answered) => answered.await.unwrap_or(CreditAnswer::Unknown),
                    None => CreditAnswer::Unknown,
                };
                answers.push(answer);
            }
            answers
        })
    }
}

/// Takes whatever is queued into calls of up to [`MAX_CREDITS_PER_CALL`]
/// credits, each on its own task, at most [`MAX_WALLET_CALLS_IN_FLIGHT`] at once.
async fn batch_calls(mut queue: mpsc::Receiver<Queued>, caller: Arc<Caller>) {
    let calls = Arc::new(Semaphore::new(MAX_WALLET_CALLS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = calls.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_CREDITS_PER_CALL {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let caller = caller.clone();
        tokio::spawn(async move {
            let credits: Vec<Credit> = batch.iter().map(|q| q.credit.clone()).collect();
            let answers = caller.call(&credits).await;
            for (queued, answer) in batch.into_iter().zip(answers) {
                let _ = queued.answer.send(answer);
            }
            drop(permit);
        });
    }
}

/// What one call needs: the pooled HTTP client, the endpoints and the token.
struct Caller {
    http: reqwest::Client,
    urls: Vec<String>,
    next: AtomicUsize,
    token: Option<String>,
    metrics: Arc<Metrics>,
}

impl Caller {
    /// One call; one answer per credit, `Unknown` for all if the call failed.
    async fn call(&self, credits: &[Credit]) -> Vec<CreditAnswer> {
        let started = Instant::now();
        let answers = match self.try_call(credits).await {
            Ok(answers) => answers,
            Err(error) => {
                tracing::warn!(%error, credits = credits.len(), "wallet call failed; credits stay pending");
                vec![CreditAnswer::Unknown; credits.len()]
            }
        };
        self.metrics
            .protocol
            .observe_call(&answers, started.elapsed());
        answers
    }

    /// Sends the batch to the next wallet URL; when that one cannot answer (its
    /// connection is refused or reset, it answers a 5xx: a wallet service stopping
    /// or restarting), to the following ones in turn, each at most once. A credit
    /// is applied at most once by its id, so sending it again is safe; a call that
    /// timed out is not repeated (the redeem's deadline is already spent).
    async fn try_call(&self, credits: &[Credit]) -> anyhow::Result<Vec<CreditAnswer>> {
        let body = CreditBatch {
            credits: credits.iter().map(item_of).collect(),
        };
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failure = None;
        for attempt in 0..self.urls.len() {
            let url = &self.urls[(first + attempt) % self.urls.len()];
            match self.call_one(url, &body).await {
                Ok(results) => return answers_in_order(credits, results.results),
                Err(Failed::TimedOut(error)) => return Err(error),
                Err(Failed::Elsewhere(error)) => {
                    if attempt + 1 < self.urls.len() {
                        tracing::debug!(%url, %error, "wallet call failed; trying the next wallet service");
                    }
                    failure = Some(error);
                }
            }
        }
        Err(failure.unwrap_or_else(|| anyhow::anyhow!("no wallet URL is configured")))
    }

    async fn call_one(&self, url: &str, body: &CreditBatch) -> Result<CreditResults, Failed> {
        let mut request = self.http.post(url).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(Failed::of)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failed::Elsewhere(anyhow::anyhow!(
                "the wallet service at {url} answered {status}"
            )));
        }
        response.json().await.map_err(Failed::of)
    }
}

/// Why one wallet call failed, as far as trying another wallet service goes.
enum Failed {
    /// The call used up its time: the redeem waiting on it is answered pending.
    TimedOut(anyhow::Error),
    /// Anything else: another wallet service may answer.
    Elsewhere(anyhow::Error),
}

impl Failed {
    fn of(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Failed::TimedOut(error.into())
        } else {
            Failed::Elsewhere(error.into())
        }
    }
}

fn item_of(credit: &Credit) -> CreditItem {
    CreditItem {
        id: credit.id,
        phone_number: credit.phone.to_string(),
        amount: credit.amount,
        reference: credit.reference.clone(),
    }
}

/// The answers matched to the credits by id: a wallet that answers another
/// credit, or too few, gets `Unknown` for the unmatched ones (never a guess).
fn answers_in_order(
    credits: &[Credit],
    results: Vec<CreditResultItem>,
) -> anyhow::Result<Vec<CreditAnswer>> {
    anyhow::ensure!(
        results.len() == credits.len(),
        "the wallet answered {} of {} credits",
        results.len(),
        credits.len()
    );
    Ok(credits
        .iter()
        .zip(results)
        .map(|(credit, result)| {
            if result.id() == credit.id {
                result.into_answer()
            } else {
                CreditAnswer::Unknown
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use voucherd_core::domain::{PhoneNumber, Timestamp};

    fn credit(n: u128) -> Credit {
        Credit {
            id: uuid::Uuid::from_u128(n),
            phone: PhoneNumber::from_stored(989_120_000_000 + n as u64),
            amount: 100,
            reference: "voucher:A".to_owned(),
            at: Timestamp(1),
        }
    }

    #[test]
    fn answers_are_matched_by_id_and_never_guessed() {
        let credits = [credit(1), credit(2)];
        let results = vec![
            CreditResultItem::Applied {
                id: credits[0].id,
                balance: 100,
            },
            CreditResultItem::Refused {
                id: uuid::Uuid::from_u128(9),
                reason: "x".to_owned(),
            },
        ];
        let answers = answers_in_order(&credits, results).unwrap();
        assert_eq!(
            answers,
            vec![
                CreditAnswer::Applied { balance: 100 },
                CreditAnswer::Unknown
            ]
        );
        assert!(answers_in_order(&credits, Vec::new()).is_err());
    }

    #[test]
    fn the_wire_format_names_each_answer() {
        let json = serde_json::to_value(CreditResultItem::Refused {
            id: uuid::Uuid::from_u128(1),
            reason: "overflow".to_owned(),
        })
        .unwrap();
        assert_eq!(json["status"], "refused");
        assert_eq!(json["reason"], "overflow");
    }

    #[tokio::test]
    async fn a_refused_wallet_url_is_passed_over_for_the_next_one() {
        // A stand-in wallet service on a free port: it applies every credit it is sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let calls = served.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let body = loop {
                    let read = socket.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break body.to_owned();
                        }
                    }
                };
                let batch: CreditBatch = serde_json::from_str(&body).unwrap();
                let results = CreditResults {
                    results: batch
                        .credits
                        .iter()
                        .map(|item| CreditResultItem::Applied {
                            id: item.id,
                            balance: item.amount,
                        })
                        .collect(),
                };
                let json = serde_json::to_string(&results).unwrap();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                socket.write_all(answer.as_bytes()).await.unwrap();
                calls.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Port 9 (discard) on loopback refuses: a wallet service that has stopped.
        let client = HttpWalletClient::start(
            vec!["http://127.0.0.1:9".to_owned(), live],
            None,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        for n in 0..4 {
            let answers = client.credit(vec![credit(n)]).await;
            assert!(
                matches!(answers[..], [CreditAnswer::Applied { .. }]),
                "call {n}: the refused URL is passed over for the live one: {answers:?}"
            );
        }
        assert_eq!(served.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn an_unreachable_wallet_answers_unknown() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let client = HttpWalletClient::start(
            vec!["http://127.0.0.1:9".to_owned()],
            None,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let answers = client.credit(vec![credit(1), credit(2)]).await;
        assert_eq!(answers, vec![CreditAnswer::Unknown, CreditAnswer::Unknown]);
    }
}
