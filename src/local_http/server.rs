//! The sidecars' local HTTP server (loopback or a Unix socket): where it listens, the accept
//! loop with HTTP/1.1 keep-alive within its [`Limits`] (connections at once, the time to send
//! headers, their size, a backoff on accept errors), and the JSON and text answers.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

use super::client::Target;

/// An answer's body.
pub type Body = Full<Bytes>;

/// Where a sidecar's API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    /// `unix:/path`: a Unix socket, for an app in the same pod that shares the volume.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err(format!(
                "{text:?}: a Unix socket needs an absolute path, unix:/path"
            )),
            None => text.parse().map(Listen::Tcp).map_err(|_| {
                format!("{text:?} is neither host:port (127.0.0.1:8478) nor unix:/path")
            }),
        }
    }
}

impl Listen {
    /// Where a local client sends a request for `path`, and how to name it in a message.
    pub fn target(&self, path: &str) -> (Target, String) {
        match self {
            Listen::Tcp(addr) => {
                let url = format!("http://{addr}{path}");
                (Target::Url(url.clone()), url)
            }
            Listen::Unix(socket) => (
                Target::Unix {
                    socket: socket.clone(),
                    path: path.to_owned(),
                },
                format!("unix:{}{path}", socket.display()),
            ),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "http://{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds `listen`; a Unix socket left by an earlier run is replaced, anything else at that
    /// path is left alone (the bind then fails).
    pub async fn bind(listen: &Listen) -> std::io::Result<Listener> {
        match listen {
            Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr).await.map(Listener::Tcp),
            Listen::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                tokio::net::UnixListener::bind(path).map(Listener::Unix)
            }
        }
    }

    /// Serves every connection with `handler`, within [`Limits::for_this_process`], until the
    /// task is aborted.
    pub async fn serve<H, F>(self, handler: Arc<H>)
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let limits = Limits::for_this_process();
        match self {
            Listener::Tcp(listener) => accept_loop(listener, handler, limits).await,
            Listener::Unix(listener) => accept_loop(listener, handler, limits).await,
        }
    }
}

/// The most connections served at once. Local clients (an app's keep-alive pool, probes) need
/// a few dozen; 2,048 idle ones take about 26 MiB (12.8 KiB each, measured), within the chart's
/// 64 MiB limit.
pub const MAX_CONNECTIONS: usize = 2048;
/// How long a client has to send a request's headers once the connection waits for one: on a
/// new connection, and between requests on a keep-alive one (so it also bounds idle time).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head (request line and headers); a larger one gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The first wait after an accept error that is not one connection's (out of descriptors or
/// memory), doubling up to [`ACCEPT_BACKOFF_CAP`] while the errors last.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How often accept errors are logged while they last.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The bounds of a sidecar's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once. Past it, new connections wait in the kernel's listen backlog
    /// until one closes: accepting them only to close them would turn a burst into failed
    /// reports, and waiting costs this process no descriptor.
    pub connections: usize,
    pub header_read: Duration,
}

impl Limits {
    /// [`MAX_CONNECTIONS`], but never more than half the descriptor limit, so that connections
    /// alone cannot run the process out of descriptors (the state file, AWS connections and the
    /// runtime need the rest).
    pub fn for_this_process() -> Limits {
        Limits {
            connections: connection_cap(descriptor_limit()),
            header_read: HEADER_READ_TIMEOUT,
        }
    }
}

/// The connection cap for a soft descriptor limit of `descriptors` (unknown: none).
fn connection_cap(descriptors: Option<u64>) -> usize {
    descriptors.map_or(MAX_CONNECTIONS, |limit| {
        usize::try_from(limit / 2)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_CONNECTIONS)
    })
}

/// The process's soft limit on open descriptors (`RLIMIT_NOFILE`).
fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Where connections come from: a listener, or in tests anything that fails like one.
trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Small answers: send them now rather than wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Whether an accept error concerns only the connection being accepted (it went away first),
/// so the next accept may follow at once; any other (out of descriptors or memory) persists
/// until something is released, and is waited out.
fn concerns_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Accepts connections for as long as it runs, at most `limits.connections` at once, each
/// served by `handler` on a task of its own.
async fn accept_loop<A, H, F>(source: A, handler: Arc<H>, limits: Limits)
where
    A: Accept,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    // Failures in a row (they set the backoff), and those not logged yet.
    let (mut failures, mut unlogged) = (0u32, 0u64);
    let mut next_log = tokio::time::Instant::now();
    loop {
        // Taken before accepting: past the cap a connection waits in the kernel's backlog and
        // holds no descriptor of this process.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match source.accept().await {
            Ok(stream) => {
                failures = 0;
                tokio::spawn(serve_connection(
                    handler.clone(),
                    stream,
                    limits.header_read,
                    slot,
                ));
            }
            Err(error) if concerns_one_connection(&error) => {}
            Err(error) => {
                unlogged += 1;
                let now = tokio::time::Instant::now();
                // Once a minute at most: as descriptors free up one at a time, accepts succeed
                // and fail in turn.
                if now >= next_log {
                    tracing::warn!(error = %error, failures = unlogged, max_connections = limits.connections,
                        "cannot accept connections; retrying with a backoff until it can");
                    (unlogged, next_log) = (0, now + ACCEPT_WARNING_EVERY);
                }
                let delay = ACCEPT_BACKOFF_FIRST
                    .saturating_mul(1 << failures.min(16))
                    .min(ACCEPT_BACKOFF_CAP);
                failures = failures.saturating_add(1);
                drop(slot);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Serves one accepted connection until the client closes it, its headers are late, or it
/// stays idle past `header_read`; the connection's slot is freed when it ends.
async fn serve_connection<S, H, F>(
    handler: Arc<H>,
    stream: S,
    header_read: Duration,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answer = handler(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    // An error here is a client that went away mid-request, or one too slow to send its headers.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A JSON answer.
pub fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    text(status, "application/json", body.to_string())
}

/// `{"error": message}`.
pub fn error(status: StatusCode, message: String) -> Response<Body> {
    respond(status, &json!({ "error": message }))
}

pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::{timeout, Instant};

    type Handler = fn(Request<Incoming>) -> std::future::Ready<Response<Body>>;

    fn ok() -> Arc<Handler> {
        Arc::new(|_| std::future::ready(text(StatusCode::OK, "text/plain", "ok\n".to_owned())))
    }

    /// A listener out of descriptors: every accept fails with EMFILE, each attempt's time noted.
    /// An accept loop that spins is stopped after 1,000 attempts (they all happen at once).
    struct OutOfDescriptors(Arc<Mutex<Vec<Instant>>>);

    impl Accept for OutOfDescriptors {
        type Stream = tokio::io::DuplexStream;

        async fn accept(&self) -> std::io::Result<Self::Stream> {
            let attempts = {
                let mut attempts = self.0.lock().unwrap();
                attempts.push(Instant::now());
                attempts.len()
            };
            if attempts > 1000 {
                std::future::pending::<()>().await;
            }
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let limits = Limits {
            connections: 4,
            header_read: HEADER_READ_TIMEOUT,
        };
        let serving = tokio::spawn(accept_loop(
            OutOfDescriptors(attempts.clone()),
            ok(),
            limits,
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        serving.abort();
        let attempts = attempts.lock().unwrap().clone();
        let per_second = |second: u64| {
            attempts
                .iter()
                .filter(|at| (**at - started).as_secs() == second)
                .count()
        };
        // 10 ms doubling to 1 s: eight attempts in the first 1.3 s, then one a second.
        assert!(
            per_second(0) <= 8,
            "{} attempts in the first second",
            per_second(0)
        );
        for second in 2..60 {
            assert_eq!(per_second(second), 1, "second {second}");
        }
    }

    async fn get(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: meter\r\n\r\n")
            .await
            .unwrap();
        answer(stream).await
    }

    /// Reads one answer (its head and a short body) from a keep-alive connection.
    async fn answer(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while !answer.ends_with(b"ok\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8(answer).unwrap()
    }

    async fn serving(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept_loop(listener, ok(), limits));
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn connections_past_the_cap_wait_in_the_backlog_until_one_closes() {
        let addr = serving(Limits {
            connections: 2,
            header_read: Duration::from_secs(3600),
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"));
        // The kernel completes the connection, but nobody accepts it while two are open: the
        // clock only moves when every task waits, so the server had every chance to answer.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: meter\r\n\r\n")
            .await
            .unwrap();
        assert!(
            timeout(Duration::from_secs(600), answer(&mut third))
                .await
                .is_err(),
            "a third connection was served past a cap of two"
        );
        drop(first);
        tokio::time::resume();
        let answered = timeout(Duration::from_secs(30), answer(&mut third)).await;
        assert!(answered
            .expect("served once a slot freed")
            .starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"));
    }

    /// Whether the server closed `stream`: an end of file, or a reset.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                // An error answer (408) before the close is read past.
                Ok(_) => {}
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn late_headers_and_idle_connections_are_closed_at_the_header_read_timeout() {
        let addr = serving(Limits {
            connections: 8,
            header_read: Duration::from_secs(30),
        })
        .await;
        // Slowloris: a request head that never ends.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /readyz HTTP/1.1\r\nhost: meter\r\n")
            .await
            .unwrap();
        // A connection that never sends anything.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A keep-alive connection left idle after its request.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut idle).await.starts_with("HTTP/1.1 200"));
        // All three at once: the clock moves for all of them together.
        let open_until = Duration::from_secs(29);
        let (slow_closed, silent_closed, idle_closed) = tokio::join!(
            timeout(open_until, closed(&mut slow)),
            timeout(open_until, closed(&mut silent)),
            timeout(open_until, closed(&mut idle)),
        );
        assert!(
            slow_closed.is_err() && silent_closed.is_err() && idle_closed.is_err(),
            "closed before the timeout"
        );
        let closing = Duration::from_secs(2);
        let (slow_closed, silent_closed, idle_closed) = tokio::join!(
            timeout(closing, closed(&mut slow)),
            timeout(closing, closed(&mut silent)),
            timeout(closing, closed(&mut idle)),
        );
        assert!(slow_closed.is_ok(), "a late request head is cut off");
        assert!(silent_closed.is_ok(), "a silent connection is closed");
        assert!(
            idle_closed.is_ok(),
            "an idle keep-alive connection is closed"
        );
    }

    #[tokio::test]
    async fn a_request_head_over_16_kib_is_refused_with_431() {
        let addr = serving(Limits {
            connections: 8,
            header_read: HEADER_READ_TIMEOUT,
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let padding = "a".repeat(MAX_HEADER_BYTES);
        let head = format!("GET /readyz HTTP/1.1\r\nhost: meter\r\nx-padding: {padding}\r\n\r\n");
        // The server may stop reading (and reset) before the whole head is written.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }

    #[test]
    fn the_connection_cap_is_half_the_descriptor_limit_at_most_2048() {
        assert_eq!(connection_cap(Some(1024)), 512);
        assert_eq!(connection_cap(Some(20_000)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(1)), 1);
        assert_eq!(connection_cap(None), MAX_CONNECTIONS);
    }

    #[test]
    fn listen_addresses_are_tcp_or_an_absolute_unix_path() {
        assert_eq!(
            "127.0.0.1:8478".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:8478".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/meter.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/meter.sock".into()))
        );
        assert!("unix:relative.sock".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
        assert_eq!(
            Listen::Tcp("127.0.0.1:8478".parse().unwrap()).to_string(),
            "http://127.0.0.1:8478"
        );
    }
}
