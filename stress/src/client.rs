//! A minimal HTTP/1.1 keep-alive client on hyper's connection API.
//!
//! Each worker owns one `Conn`: one TCP connection it reuses for every request
//! and re-dials when the server closes it. Owning the connection (instead of a
//! shared pool) keeps `--connections` exact, needs no locking on the hot path
//! and costs nothing per request beyond building the request itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

/// One voucherd instance, resolved once at start-up.
#[derive(Debug)]
pub struct Target {
    pub base: String,
    addr: SocketAddr,
    host: HeaderValue,
    /// `Bearer <admin token>`, sent by [`Target::admin_request`] only.
    admin: Option<HeaderValue>,
}

impl Target {
    /// Accepts `http://host:port` (a trailing `/` is ignored). TLS is not
    /// supported: the harness drives services on the same host or network.
    /// `admin_token` goes on the admin routes the harness calls.
    pub async fn resolve(url: &str, admin_token: Option<&str>) -> Result<Arc<Target>> {
        let uri: Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => bail!("--url {url:?}: scheme {s:?} not supported (http only)"),
            None => bail!("--url {url:?}: expected http://host:port"),
        }
        if !matches!(uri.path(), "" | "/") {
            bail!("--url {url:?}: give only scheme, host and port");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--url {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("resolving {url}"))?
            .next()
            .ok_or_else(|| anyhow!("{url} resolves to no address"))?;
        let admin = admin_token
            .map(|token| {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the admin token is not a valid header value")?;
                value.set_sensitive(true);
                anyhow::Ok(value)
            })
            .transpose()?;
        Ok(Arc::new(Target {
            base: format!("http://{authority}"),
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            admin,
        }))
    }

    /// A request for this target. `path` is origin-form (`/api/...`).
    pub fn request(&self, method: Method, path: Uri, body: Option<Bytes>) -> Request<Body> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if body.is_some() {
            b = b.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        b.body(Full::new(body.unwrap_or_default()))
            .expect("request parts are valid by construction")
    }

    /// A request for an admin route: [`Target::request`] with the admin token, when
    /// one was given (a deployment without access control needs none).
    pub fn admin_request(&self, method: Method, path: Uri, body: Option<Bytes>) -> Request<Body> {
        let mut request = self.request(method, path, body);
        if let Some(admin) = &self.admin {
            request.headers_mut().insert(AUTHORIZATION, admin.clone());
        }
        request
    }
}

/// Why a request got no HTTP status; reported as pseudo status 0 with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Io,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Io => "io_error",
        }
    }
}

pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Body>>,
}

impl Conn {
    pub fn new(target: Arc<Target>) -> Self {
        Conn {
            target,
            sender: None,
        }
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    async fn dial(&self) -> Result<SendRequest<Body>, Failure> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        // Requests are tiny; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes or we drop the sender; nothing to report.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Makes sure a ready connection is at hand. A kept-alive connection the
    /// server has closed meanwhile is replaced silently: that is not a failure
    /// of the request we are about to send.
    async fn ready(&mut self) -> Result<&mut SendRequest<Body>, Failure> {
        if let Some(s) = self.sender.as_mut() {
            if s.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let mut s = self.dial().await?;
            s.ready().await.map_err(|_| Failure::Connect)?;
            self.sender = Some(s);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Connects ahead of the first request; a failure here is retried then.
    pub async fn warm_up(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ready()).await;
    }

    /// Sends one request and reads the whole (small) body.
    pub async fn send(
        &mut self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let res = tokio::time::timeout(timeout, async {
            let sender = self.ready().await?;
            let resp = sender.send_request(req).await.map_err(|_| Failure::Io)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Io)?
                .to_bytes();
            Ok((status, body))
        })
        .await;
        match res {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The connection is mid-response; it cannot be reused.
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }
}

/// Characters escaped in a path segment: everything but unreserved ones,
/// so `+` becomes `%2B` (a literal `+` might be read as a space).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode_segment(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, SEGMENT)
}

/// Encodes a query-string value (the same rules as a path segment).
pub fn encode_query(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, SEGMENT)
}

/// Builds an origin-form URI from a formatted path.
pub fn path_uri(path: String) -> Uri {
    Uri::try_from(path).expect("paths are built from encoded parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_percent_encoded() {
        assert_eq!(
            encode_segment("+989121234567").to_string(),
            "%2B989121234567"
        );
        assert_eq!(encode_segment("GOAL-2026_x").to_string(), "GOAL-2026_x");
    }

    #[tokio::test]
    async fn the_admin_token_goes_on_admin_requests_only() {
        let secured = Target::resolve("http://127.0.0.1:1", Some("s3cret-admin-token"))
            .await
            .expect("a loopback URL resolves");
        let admin = secured.admin_request(Method::POST, Uri::from_static("/api/vouchers"), None);
        let header = admin
            .headers()
            .get(AUTHORIZATION)
            .expect("the admin header");
        assert_eq!(header, "Bearer s3cret-admin-token");
        assert!(header.is_sensitive());
        let public = secured.request(Method::POST, Uri::from_static("/api/vouchers/redeem"), None);
        assert!(public.headers().get(AUTHORIZATION).is_none());

        let open = Target::resolve("http://127.0.0.1:1", None)
            .await
            .expect("resolves");
        let admin = open.admin_request(Method::POST, Uri::from_static("/api/vouchers"), None);
        assert!(admin.headers().get(AUTHORIZATION).is_none());
    }
}
