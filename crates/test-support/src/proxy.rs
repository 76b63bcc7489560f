//! A TCP proxy the test controls, in process (tokio), between two services: it listens
//! on an ephemeral loopback port and forwards each connection to a target that the test
//! may change at any time (a restarted service on another port). Its mode, switchable at
//! runtime, decides what the network does:
//!
//! - [`Mode::Pass`]: bytes flow both ways as they come.
//! - [`Mode::Blackhole`]: a partition. New connections are accepted and held without
//!   connecting to the target; existing ones stall (a chunk read is held, not written),
//!   in both directions. Nothing is closed: when the mode changes back, held connections
//!   connect and held bytes flow, as a healed network delivers what it buffered (also
//!   for a client that gave up meanwhile: a late request still reaches the target).
//! - [`Mode::Delay`]: each chunk of a request (client to target) waits the given time
//!   before it is forwarded, with whatever else arrived meanwhile (one delay per burst:
//!   a request written in two parts is not delayed twice); answers flow at once.
//!
//! A target that refuses the connection (a service that is down) closes the client's
//! connection, as a refused connection would. The proxy stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read at once on each side of a connection.
const CHUNK_BYTES: usize = 16 * 1024;

/// What the proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    /// Each chunk of a request waits this long before it is forwarded.
    Delay(Duration),
}

/// The mode and the target, shared by every connection.
struct Control {
    mode: watch::Sender<Mode>,
    target: parking_lot::Mutex<SocketAddr>,
    /// Chunks read and not yet written (held by a partition or a delay).
    held: AtomicUsize,
}

/// A running proxy; stops accepting (and its connections end) when dropped.
pub struct Proxy {
    address: SocketAddr,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` in [`Mode::Pass`] on an ephemeral loopback port.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let control = Arc::new(Control {
            mode: watch::channel(Mode::Pass).0,
            target: parking_lot::Mutex::new(target),
            held: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, control.clone()));
        Proxy {
            address,
            control,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, the URL to give the client side.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// From now on, bytes are handled as `mode` says (also on open connections).
    pub fn set_mode(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.control.mode.borrow()
    }

    /// Chunks the proxy has read and not yet written: 0 once it delivered everything it
    /// held back (connections still held by a partition are not counted).
    pub fn held(&self) -> usize {
        self.control.held.load(Ordering::SeqCst)
    }

    /// New connections go to `target` (open ones stay where they are).
    pub fn set_target(&self, target: SocketAddr) {
        *self.control.target.lock() = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The address of `http://HOST:PORT` (a base URL as the binary prints it).
pub fn socket_address(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url} is not http://IP:PORT: {e}"))
}

/// Accepts connections until aborted; each runs on its own task, aborted with the loop.
async fn accept_loop(listener: TcpListener, control: Arc<Control>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(connection(client, control.clone()));
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

/// One client connection: held while the network is partitioned, then connected to the
/// current target and carried both ways.
async fn connection(client: TcpStream, control: Arc<Control>) {
    let mut mode = control.mode.subscribe();
    passable(&mut mode).await;
    let target = *control.target.lock();
    let Ok(upstream) = TcpStream::connect(target).await else {
        return; // Dropping the client's stream closes it: the target refused.
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let requests = pump(client_read, upstream_write, &control, true);
    let answers = pump(upstream_read, client_write, &control, false);
    // Either side ending ends the connection (a closed target closes the client).
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}

/// Copies `from` to `to` chunk by chunk, each chunk held while the mode is
/// [`Mode::Blackhole`], and a request's chunk delayed in [`Mode::Delay`]. Ends at EOF or
/// on an error of either side.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: &Control,
    is_request: bool,
) {
    let mut mode = control.mode.subscribe();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let mut read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let held = Held::new(&control.held);
        let now = passable(&mut mode).await;
        if let (Mode::Delay(delay), true) = (now, is_request) {
            tokio::time::sleep(delay).await;
            // What came meanwhile is the rest of the chunk: one delay per burst.
            while let Ok(more @ 1..) = from.try_read(&mut buffer[read..]) {
                read += more;
            }
            passable(&mut mode).await;
        }
        let written = to.write_all(&buffer[..read]).await;
        drop(held);
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Counts one chunk as held while it lives (also when its connection's task is aborted).
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits while the network is partitioned; returns the mode that let the bytes through.
async fn passable(mode: &mut watch::Receiver<Mode>) -> Mode {
    let passed = mode
        .wait_for(|m| *m != Mode::Blackhole)
        .await
        .map(|now| *now);
    match passed {
        Ok(now) => now,
        // The proxy is gone: nothing will ever pass again.
        Err(_) => std::future::pending().await,
    }
}
