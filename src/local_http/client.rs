//! Plain HTTP/1.1 GETs to endpoints on this host or task: the ECS task metadata endpoint, and
//! the metering sidecar's own API (over TCP or a Unix socket). Bounded in time and size.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port/...`
    Url(String),
    /// A Unix socket, and the path to request on it.
    Unix { socket: PathBuf, path: String },
}

/// An answer: the status and at most the limit of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// One GET to `target` within `timeout`, reading at most `limit` bytes of body.
pub async fn get(target: &Target, timeout: Duration, limit: usize) -> Result<Answer, String> {
    tokio::time::timeout(timeout, fetch(target, limit))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn fetch(target: &Target, limit: usize) -> Result<Answer, String> {
    let (request, sender) = match target {
        Target::Url(url) => {
            let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL ({e})"))?;
            if uri.scheme_str() != Some("http") {
                return Err("only http:// URLs are supported".to_owned());
            }
            let host = uri.host().ok_or("the URL has no host")?.to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("cannot connect ({e})"))?;
            let authority = uri.authority().map_or(host, |a| a.to_string());
            (request(uri, &authority)?, handshake(stream).await?)
        }
        Target::Unix { socket, path } => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("cannot connect to {} ({e})", socket.display()))?;
            let uri: hyper::Uri = path.parse().map_err(|e| format!("invalid path ({e})"))?;
            (request(uri, "localhost")?, handshake(stream).await?)
        }
    };
    let mut sender = sender;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed ({e})"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("cannot read the answer ({e})"))?;
    Ok(Answer { status, body })
}

fn request(uri: hyper::Uri, host: &str) -> Result<hyper::Request<Empty<Bytes>>, String> {
    hyper::Request::get(uri)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())
}

async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed ({e})"))?;
    tokio::spawn(connection);
    Ok(sender)
}
