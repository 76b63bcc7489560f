//! The HTTP/1.1 server loop: accepting connections under a cap, timing out idle
//! and slow clients, and refusing malformed heads with JSON before any route runs.
//!
//! It protects one invariant: no client, however hostile, can stop the server or
//! hold its resources for long. Accept errors (descriptors exhausted, aborted
//! handshakes) are counted, logged at a bounded rate and waited out, never fatal;
//! connections past the cap are closed at once; every connection is in one of
//! three states (idle, reading a head, serving a request) and each of the first
//! two has a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_service::Service as _;
use warp::filters::BoxedFilter;

use crate::config::EdgeLimits;
use warp::http::{header, HeaderValue, Request};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use voucherd_core::limits::{
    ACCEPT_BACKOFF_MAX_MS, ACCEPT_BACKOFF_MIN_MS, EDGE_LOG_INTERVAL_MS, MAX_HEADER_BYTES,
    MAX_HEADER_COUNT, MAX_URI_BYTES, PARSER_MAX_HEADERS, PARSER_MAX_HEAD_BYTES,
};
use voucherd_metrics::{AcceptFailure, ConnectionEnd, Metrics};

/// Set when the instance drains: every answer from then on carries
/// `Connection: close`, so a client (or a load balancer's pooled connection) sends
/// its next request on a new connection, which the load balancer gives to another
/// instance once it has taken this one out.
#[derive(Debug, Clone, Default)]
pub struct Closing(Arc<AtomicBool>);

impl Closing {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting
/// and waits for open connections to finish their requests (idle ones close at
/// once). Returns only then: an accept error never ends it.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    limits: EdgeLimits,
    metrics: Arc<Metrics>,
    closing: Closing,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RateLimitedLog::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                let pause = backoff.failed();
                let kind = accept_failure(&error);
                metrics.edge.count_accept_error(kind);
                if let Some(suppressed) = backoff.log.due() {
                    tracing::warn!(%error, ?kind, suppressed, pause_ms = pause.as_millis() as u64, "accept failed; backing off and accepting again");
                }
                // Pausing lets in-flight connections finish and free descriptors.
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        backoff.succeeded();
        metrics.edge.connection_opened();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics
                .edge
                .count_connection_end(ConnectionEnd::refused_over_cap);
            metrics.edge.connection_closed();
            if let Some(suppressed) = refusals.due() {
                tracing::warn!(
                    %peer,
                    suppressed,
                    max_connections = limits.max_connections,
                    "connection refused: the connection cap is reached"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            routes: routes.clone(),
            limits,
            metrics: metrics.clone(),
            closing: closing.clone(),
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection.run(watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn accept_failure(error: &io::Error) -> AcceptFailure {
    // EMFILE (24) and ENFILE (23): no descriptor for the new socket.
    match error.raw_os_error() {
        Some(23 | 24) => AcceptFailure::descriptors_exhausted,
        _ if error.kind() == io::ErrorKind::ConnectionAborted => AcceptFailure::connection_aborted,
        _ => AcceptFailure::other,
    }
}

/// Exponential pause after consecutive accept failures.
#[derive(Default)]
struct AcceptBackoff {
    consecutive_failures: u32,
    log: RateLimitedLog,
}

impl AcceptBackoff {
    fn failed(&mut self) -> Duration {
        let exponent = self.consecutive_failures.min(16);
        self.consecutive_failures += 1;
        let pause = ACCEPT_BACKOFF_MIN_MS.saturating_mul(1 << exponent);
        Duration::from_millis(pause.min(ACCEPT_BACKOFF_MAX_MS))
    }

    fn succeeded(&mut self) {
        self.consecutive_failures = 0;
    }
}

/// Lets one log line through per [`EDGE_LOG_INTERVAL_MS`] and counts the rest.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// `Some(lines suppressed since the last one)` when a line may be written now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        let interval = Duration::from_millis(EDGE_LOG_INTERVAL_MS);
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One client connection with its deadlines.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    routes: BoxedFilter<(Response,)>,
    limits: EdgeLimits,
    metrics: Arc<Metrics>,
    closing: Closing,
}

impl Connection {
    /// Serves requests until the client closes, a deadline passes, or shutdown.
    async fn run(self, watcher: hyper_util::server::graceful::Watcher) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: self.stream,
            activity: activity.clone(),
        });
        let service = ConnectionService {
            routes: self.routes,
            activity: activity.clone(),
            closing: self.closing,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(PARSER_MAX_HEAD_BYTES)
            .max_headers(PARSER_MAX_HEADERS)
            .keep_alive(true);
        let connection = watcher.watch(builder.serve_connection(io, service));
        let mut connection = std::pin::pin!(connection);
        loop {
            let deadline = activity.deadline(&self.limits).map(|(at, _)| at);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    break;
                }
                () = sleep_until(deadline) => {
                    if let Some(reason) = activity.expired(&self.limits, Instant::now()) {
                        self.metrics.edge.count_connection_end(reason);
                        tracing::debug!(peer = %self.peer, ?reason, "closing a connection on its deadline");
                        break; // Dropping the connection closes the socket.
                    }
                }
            }
        }
        self.metrics.edge.connection_closed();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where a connection is in its request cycle, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request.
    Idle { since: Instant },
    /// Some bytes of a request head arrived, the head is not complete.
    ReadingHead { since: Instant },
    /// A request is being served (its body is read under the body timeout).
    Serving { requests: u32 },
}

/// The state a connection's socket and its service share, behind one lock: its
/// phase and what the head scanner has seen.
struct Activity {
    state: Mutex<(Phase, HeadScanner)>,
}

impl Activity {
    fn new() -> Self {
        let idle = Phase::Idle {
            since: Instant::now(),
        };
        Self {
            state: Mutex::new((idle, HeadScanner::default())),
        }
    }

    fn bytes_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        let (phase, heads) = &mut *state;
        if let Phase::Idle { .. } = phase {
            *phase = Phase::ReadingHead {
                since: Instant::now(),
            };
        }
        heads.scan(bytes);
    }

    fn request_started(&self) {
        let phase = &mut self.state.lock().0;
        *phase = match *phase {
            Phase::Serving { requests } => Phase::Serving {
                requests: requests + 1,
            },
            _ => Phase::Serving { requests: 1 },
        };
    }

    fn request_finished(&self) {
        let phase = &mut self.state.lock().0;
        *phase = match *phase {
            Phase::Serving { requests } if requests > 1 => Phase::Serving {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
    }

    /// When the current phase ends the connection, and why; `None` while serving.
    fn deadline(&self, limits: &EdgeLimits) -> Option<(Instant, ConnectionEnd)> {
        match self.state.lock().0 {
            Phase::Idle { since } => {
                Some((since + limits.idle_timeout, ConnectionEnd::idle_timeout))
            }
            Phase::ReadingHead { since } => Some((
                since + limits.header_read_timeout,
                ConnectionEnd::header_timeout,
            )),
            Phase::Serving { .. } => None,
        }
    }

    fn expired(&self, limits: &EdgeLimits, now: Instant) -> Option<ConnectionEnd> {
        self.deadline(limits)
            .filter(|(deadline, _)| now >= *deadline)
            .map(|(_, reason)| reason)
    }

    fn framing_conflict(&self) -> bool {
        self.state.lock().1.conflict
    }
}

/// Watches the raw bytes of request heads for `Content-Length` together with
/// `Transfer-Encoding` in one head (a request-smuggling vector behind proxies that
/// honour the other header). The parser drops `Content-Length` in that case, so
/// the request it hands on no longer shows the conflict; the raw bytes do.
///
/// A head is a run of non-empty lines ended by an empty line. Bodies are JSON, so
/// they rarely form such runs; if one does, it can only flag its own connection.
/// The flag is sticky: the parser closes such a connection after answering.
#[derive(Default)]
struct HeadScanner {
    /// The first bytes of the current line, lowercased.
    line: [u8; 18],
    line_length: usize,
    line_bytes: usize,
    saw_content_length: bool,
    saw_transfer_encoding: bool,
    conflict: bool,
}

impl HeadScanner {
    fn scan(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.end_line();
                continue;
            }
            if byte != b'\r' {
                self.line_bytes += 1;
            }
            if self.line_length < self.line.len() {
                self.line[self.line_length] = byte.to_ascii_lowercase();
                self.line_length += 1;
            }
        }
    }

    fn end_line(&mut self) {
        let line = &self.line[..self.line_length];
        if self.line_bytes == 0 {
            // An empty line ends a head.
            self.conflict |= self.saw_content_length && self.saw_transfer_encoding;
            self.saw_content_length = false;
            self.saw_transfer_encoding = false;
        } else if line.starts_with(b"content-length:") {
            self.saw_content_length = true;
        } else if line.starts_with(b"transfer-encoding:") {
            self.saw_transfer_encoding = true;
        }
        self.line_length = 0;
        self.line_bytes = 0;
    }
}

/// The socket of a connection, reporting what it reads to the connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.activity.bytes_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The per-connection service: checks the request head, then runs the routes.
struct ConnectionService {
    routes: BoxedFilter<(Response,)>,
    activity: Arc<Activity>,
    closing: Closing,
}

/// Marks a request finished when dropped (also if the client went away mid-request).
struct Serving(Arc<Activity>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let serving = Serving(self.activity.clone());
        if let Some(refusal) = refuse_head(&request, self.activity.framing_conflict()) {
            drop(serving);
            return Box::pin(std::future::ready(Ok(refusal)));
        }
        let answer = warp::service(self.routes.clone()).call(request);
        let closing = self.closing.clone();
        Box::pin(async move {
            let mut response = answer.await;
            drop(serving);
            if closing.is_set() {
                if let Ok(response) = &mut response {
                    // hyper closes the connection once this answer is written.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            response
        })
    }
}

/// The JSON answer to a head the routes must not see, if any.
fn refuse_head<B>(request: &Request<B>, framing_conflict: bool) -> Option<Response> {
    if framing_conflict {
        let mut response = ApiError::AmbiguousFraming.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(response);
    }
    let target_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target_bytes > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong.into_response());
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge.into_response());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict_after(chunks: &[&[u8]]) -> bool {
        let mut scanner = HeadScanner::default();
        for chunk in chunks {
            scanner.scan(chunk);
        }
        scanner.conflict
    }

    #[test]
    fn content_length_with_transfer_encoding_in_one_head_is_a_conflict() {
        let head = b"POST /api/vouchers/redeem HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(conflict_after(&[head]));
        // Split anywhere, in any case.
        let (first, second) = head.split_at(57);
        assert!(conflict_after(&[first, second]));
        assert!(conflict_after(&[
            b"POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\nCONTENT-length: 3\r\n\r\n"
        ]));
    }

    #[test]
    fn either_header_alone_or_in_different_heads_is_not_a_conflict() {
        assert!(!conflict_after(&[
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        ]));
        assert!(!conflict_after(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ]));
        assert!(!conflict_after(&[
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
    }

    #[test]
    fn accept_backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let first = backoff.failed();
        let second = backoff.failed();
        assert_eq!(first, Duration::from_millis(ACCEPT_BACKOFF_MIN_MS));
        assert_eq!(second, first * 2);
        for _ in 0..40 {
            backoff.failed();
        }
        assert_eq!(
            backoff.failed(),
            Duration::from_millis(ACCEPT_BACKOFF_MAX_MS)
        );
        backoff.succeeded();
        assert_eq!(backoff.failed(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_head_deadlines_follow_the_phase() {
        let limits = EdgeLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        };
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((start + limits.idle_timeout, ConnectionEnd::idle_timeout))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.bytes_read(b"GET / HT");
        let head_started = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((
                head_started + limits.header_read_timeout,
                ConnectionEnd::header_timeout
            ))
        );
        assert_eq!(
            activity.expired(&limits, head_started + limits.header_read_timeout),
            Some(ConnectionEnd::header_timeout)
        );
        activity.request_started();
        assert_eq!(activity.deadline(&limits), None);
        assert_eq!(
            activity.expired(&limits, start + Duration::from_secs(3600)),
            None
        );
        activity.request_finished();
        assert_eq!(
            activity.deadline(&limits),
            Some((
                Instant::now() + limits.idle_timeout,
                ConnectionEnd::idle_timeout
            ))
        );
    }
}
