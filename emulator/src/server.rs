//! HTTP plumbing: hyper on a loopback port, in-process for tests or as the binary's server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::service::{self, Answer, Service};
use crate::{Config, Faults, LedgerSnapshot, LicenseUsage, Operation};

/// Request bodies above this are refused, as AWS refuses a BatchMeterUsage request of 1 MB.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
const IMDS_ROLE: &str = "emulated-node-role";

/// Answers one connection's requests until the client closes it.
async fn serve_connection(service: Arc<Service>, stream: tokio::net::TcpStream) {
    let handler = hyper::service::service_fn(move |request| handle(service.clone(), request));
    // An Err here is a dropped connection: injected, or the client went away.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), handler)
        .await;
}

/// Serves RegisterUsage (and, if configured, IMDS) on `listener` forever.
pub async fn serve(config: Config, listener: TcpListener) -> std::io::Result<()> {
    accept_loop(Arc::new(Service::new(config)), listener).await
}

async fn accept_loop(service: Arc<Service>, listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Small answers: send them now rather than wait for Nagle.
        stream.set_nodelay(true)?;
        tokio::spawn(serve_connection(service.clone(), stream));
    }
}

/// Why a request got no answer: the connection is closed instead.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body that sends `sent` and then fails, so hyper closes the connection mid-response.
struct TruncatedBody {
    sent: Option<Bytes>,
}

impl hyper::body::Body for TruncatedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(match self.sent.take() {
            Some(bytes) => Ok(Frame::data(bytes)),
            None => Err("connection cut mid-response by fault injection".into()),
        }))
    }
}

async fn handle(
    service: Arc<Service>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    if request.method() == Method::GET {
        match request.uri().path() {
            "/_emulator/stats" => return Ok(json_response(200, &service.stats())),
            "/_emulator/status" => return Ok(json_response(200, &service.status())),
            "/_emulator/ledger" => {
                let ledger = serde_json::to_value(service.ledger().snapshot())
                    .expect("the ledger serializes");
                return Ok(json_response(200, &ledger));
            }
            "/_emulator/licenses" => {
                let usage = service.license_usage(SystemTime::now());
                let licenses = serde_json::json!({ "licenses": usage });
                return Ok(json_response(200, &licenses));
            }
            _ => {}
        }
    }
    if service.config.imds && request.uri().path().starts_with("/latest/") {
        return Ok(imds(
            &service.config,
            request.method(),
            request.uri().path(),
        ));
    }
    let control = match (request.method(), request.uri().path()) {
        (&Method::POST, "/") => false,
        (&Method::POST, "/_emulator/faults") => true,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "not found")),
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let target = header("x-amz-target");
    let content_type = header("content-type");
    let authorization = header("authorization");
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))
        }
    };
    if control {
        return Ok(replace_faults(&service, &body));
    }
    let reply = service.handle(
        &service::Request {
            target: target.as_deref(),
            content_type: content_type.as_deref(),
            authorization: authorization.as_deref(),
            body: &body,
        },
        SystemTime::now(),
    );
    // Processed on arrival, answered late: tests can see a slow call is in flight.
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let response = Response::builder().header("x-amzn-requestid", reply.request_id);
    let response = match reply.answer {
        Answer::Drop => return Err(Dropped),
        // Every AWS answer names its request, errors included; clients log the ID.
        Answer::Json { status, body } => response
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .body(full(body.to_string())),
        Answer::ErrorHeader { status, code } => response
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amzn-errortype",
                format!("{code}:http://internal.amazon.com/coral/emulated/"),
            )
            .body(full("{}")),
        Answer::Raw {
            status,
            content_type,
            body,
        } => match content_type {
            Some(content_type) => response.header("content-type", content_type),
            None => response,
        }
        .status(status)
        .body(full(body)),
        Answer::Truncated {
            content_type,
            sent,
            declared,
        } => response
            .status(200)
            .header("content-type", content_type)
            .header("content-length", declared)
            .body(
                TruncatedBody {
                    sent: Some(Bytes::from(sent)),
                }
                .boxed(),
            ),
    };
    Ok(response.expect("valid response"))
}

/// `POST /_emulator/faults`: the new faults as JSON (see [`crate::Faults`]).
fn replace_faults(service: &Service, body: &[u8]) -> Response<Body> {
    match serde_json::from_slice(body) {
        Ok(faults) => {
            service.set_faults(faults);
            plain(StatusCode::NO_CONTENT, "")
        }
        Err(e) => plain(
            StatusCode::BAD_REQUEST,
            &format!("the body is not a faults object: {e}\n"),
        ),
    }
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(full(body.to_string()))
        .expect("valid response")
}

/// The IMDSv2 paths the AWS SDK's instance-profile credential and Region providers read.
fn imds(config: &Config, method: &Method, path: &str) -> Response<Body> {
    let credentials_path = "/latest/meta-data/iam/security-credentials/";
    match (method, path) {
        (&Method::PUT, "/latest/api/token") => {
            let mut response = plain(StatusCode::OK, "emulated-imds-session-token");
            response.headers_mut().insert(
                "x-aws-ec2-metadata-token-ttl-seconds",
                hyper::header::HeaderValue::from_static("21600"),
            );
            response
        }
        (&Method::GET, "/latest/meta-data/placement/region") => {
            plain(StatusCode::OK, &config.region)
        }
        (&Method::GET, p) if p == credentials_path => plain(StatusCode::OK, IMDS_ROLE),
        (&Method::GET, p) if p.strip_prefix(credentials_path) == Some(IMDS_ROLE) => {
            let expiration = service::iso8601(SystemTime::now() + Duration::from_secs(6 * 3600));
            let body = serde_json::json!({
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAEMULATEDNODEROLE",
                "SecretAccessKey": "emulated-node-role-secret",
                "Token": "emulated-node-role-session-token",
                "Expiration": expiration,
            });
            plain(StatusCode::OK, &body.to_string())
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(body.to_owned()))
        .expect("valid response")
}

/// An emulator serving on a loopback port from its own thread; dropping it stops the server.
pub struct RunningEmulator {
    addr: SocketAddr,
    service: Arc<Service>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningEmulator {
    /// The value for `AWS_ENDPOINT_URL_MARKETPLACE_METERING`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// RegisterUsage calls received so far, faulted ones included.
    pub fn calls(&self) -> u64 {
        self.calls_to(Operation::RegisterUsage)
    }

    /// Calls to `operation` received so far, faulted ones included.
    pub fn calls_to(&self, operation: Operation) -> u64 {
        self.service.calls(operation)
    }

    /// The metering records accepted so far, and the idempotency counters.
    pub fn ledger(&self) -> LedgerSnapshot {
        self.service.ledger().snapshot()
    }

    /// Every license's seats in use and its checkouts, now.
    pub fn licenses(&self) -> Vec<LicenseUsage> {
        self.service.license_usage(SystemTime::now())
    }

    /// Replaces the faults while serving (a chaos harness turns them off for the final flush);
    /// counted faults start counting again.
    pub fn set_faults(&self, faults: Faults) {
        self.service.set_faults(faults);
    }

    /// The SPKI PEM of the key that signs its tokens.
    pub fn public_key_pem(&self) -> &str {
        &self.service.config.signing_key.public_spki_pem
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts an emulator on `127.0.0.1` and an ephemeral port, in a background thread.
/// Callable from async code too: the server's runtime lives on its own thread.
pub fn spawn(config: Config) -> RunningEmulator {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind loopback");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = listener.local_addr().expect("local addr");
    let service = Arc::new(Service::new(config));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server_service = service.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            tokio::select! {
                _ = accept_loop(server_service, listener) => {}
                _ = stopped => {}
            }
        });
    });
    RunningEmulator {
        addr,
        service,
        shutdown: Some(shutdown),
        thread: Some(thread),
    }
}
