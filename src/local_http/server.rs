//! The sidecars' local HTTP server (loopback or a Unix socket): where it listens, the accept
//! loop with HTTP/1.1 keep-alive, and the JSON and text answers.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

    /// Serves every connection with `handler` until the task is aborted.
    pub async fn serve<H, F>(self, handler: Arc<H>)
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        loop {
            match &self {
                Listener::Tcp(listener) => {
                    if let Ok((stream, _)) = listener.accept().await {
                        // Small answers: send them now rather than wait for Nagle.
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(handler.clone(), stream));
                    }
                }
                Listener::Unix(listener) => {
                    if let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve_connection(handler.clone(), stream));
                    }
                }
            }
        }
    }
}

/// Serves one accepted connection until the client closes it (keep-alive).
async fn serve_connection<S, H, F>(handler: Arc<H>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answer = handler(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    // An error here is a client that went away mid-request.
    let _ = hyper::server::conn::http1::Builder::new()
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
