//! The API socket's connections: bounded in number and in time, and every answer that is
//! not 2xx JSON with a code, whichever layer refused the request.
//!
//! hyper answers a request it cannot parse, or whose URI or headers are too long, on its
//! own, with an empty body, and waits for a head as long as the client likes. So each
//! connection's request head is read here first, within [`HEAD_TIMEOUT`], and checked with
//! httparse (hyper's own parser: what passes here parses there); a refusal is answered here
//! in JSON, and only a well-formed head reaches hyper, with the rest of the connection
//! behind it. One request per connection (the CLI opens one per request), the whole of it
//! within [`REQUEST_TIMEOUT`] unless its answer is a stream ([`STREAMS`]: it lasts as long
//! as the client reads it); beyond [`MAX_CONNECTIONS`] at once, a connection is answered
//! E_BUSY at once.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    extract::ConnectInfo,
    http::{HeaderValue, StatusCode, header::CONTENT_TYPE},
    response::Response,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
    task::JoinSet,
};
use tower_service::Service as _;

use super::access::Peer;
use crate::api::{ErrorBody, ErrorCode};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a whole request (head, body, answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Paths whose answer is a stream for as long as the client reads it (`nve monitor`): not
/// bound by [`REQUEST_TIMEOUT`]. The stream writes at least once a second, so a client that
/// left is noticed.
const STREAMS: &[&str] = &["/v1/monitor"];
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request target.
pub const MAX_URI: usize = 4096;
const MAX_HEADERS: usize = 64;
/// Time in-flight requests get to finish when the daemon stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in
/// flight finish (for up to [`DRAIN`]). When it returns, no connection holds `app`.
pub async fn serve(listener: UnixListener, app: Router, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting an API connection: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            connections.spawn(refuse(stream, busy()));
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            connection(stream, app).await;
            drop(permit);
        });
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.shutdown().await;
    }
}

/// An answer that is not 2xx and not JSON already (a route without that method, a path or
/// query the extractors refused, ...) becomes JSON with the code of its status, its text
/// and what was `asked` as the message.
async fn json_errors(asked: String, response: Response) -> Response {
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if response.status().is_success() || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match (parts.status, text.trim()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allowed = parts.headers.get(axum::http::header::ALLOW);
            let allowed = allowed.and_then(|a| a.to_str().ok()).unwrap_or("none");
            format!("{asked}: method not allowed here (allowed: {allowed})")
        }
        (status, "") => format!("{asked}: {status}"),
        (_, text) => format!("{asked}: {text}"),
    };
    let body =
        serde_json::to_vec(&ErrorBody::new(code_for(parts.status), message)).unwrap_or_default();
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A refusal this layer answers itself.
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

fn busy() -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: ErrorBody::new(
            ErrorCode::EBusy,
            format!("{MAX_CONNECTIONS} API connections are open already: try again"),
        ),
    }
}

async fn connection(mut stream: UnixStream, app: Router) {
    let peer = Peer::of(&stream);
    let head = match read_head(&mut stream).await {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(refusal) => return refuse(stream, refusal).await,
    };
    let streams = is_stream(&head);
    let io = TokioIo::new(Prefixed {
        head,
        read: 0,
        inner: stream,
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let asked = format!("{} {}", req.method(), req.uri().path());
        let answer = app.clone().call(req);
        async move { Ok::<_, std::convert::Infallible>(json_errors(asked, answer.await?).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service);
    if streams {
        if let Err(e) = served.await {
            tracing::debug!("API stream: {e}");
        }
        return;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("API connection: {e}"),
        Err(_) => tracing::info!("API request not done within {REQUEST_TIMEOUT:?}: closed"),
    }
}

/// Reads a request head within [`HEAD_TIMEOUT`]: the bytes read (the head and whatever
/// followed it), `None` if the client left before sending anything.
async fn read_head(stream: &mut UnixStream) -> Result<Option<Vec<u8>>, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if !buf.is_empty() && check_head(&buf)? {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Err(refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        let mut chunk = [0u8; 4096];
        let want = chunk.len().min(MAX_HEAD - buf.len());
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await;
        match read {
            Err(_) => {
                return Err(refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("no complete request head within {HEAD_TIMEOUT:?}"),
                ));
            }
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => {
                return Err(refusal(
                    StatusCode::BAD_REQUEST,
                    "connection closed within the request head",
                ));
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            // The client is gone: nobody to answer.
            Ok(Err(_)) => return Ok(None),
        }
    }
}

/// Whether `buf` starts with a complete, acceptable request head (`false`: not complete
/// yet); the refusal if it cannot become one.
fn check_head(buf: &[u8]) -> Result<bool, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf);
    if req.path.is_some_and(|p| p.len() > MAX_URI) {
        return Err(refusal(
            StatusCode::URI_TOO_LONG,
            format!("request target over {MAX_URI} bytes"),
        ));
    }
    match status {
        Ok(httparse::Status::Complete(_)) => check_framing(req.headers).map(|()| true),
        Ok(httparse::Status::Partial) => Ok(false),
        Err(httparse::Error::TooManyHeaders) => Err(refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {MAX_HEADERS} headers"),
        )),
        Err(e) => Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("malformed HTTP request: {e}"),
        )),
    }
}

/// Whether the (complete, checked) request head `head` asks for one of [`STREAMS`].
fn is_stream(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(head);
    let path = req.path.map(|p| p.split('?').next().unwrap_or(p));
    req.method == Some("GET") && path.is_some_and(|p| STREAMS.contains(&p))
}

/// The body's framing, as hyper would refuse it: one valid Content-Length, or chunked.
fn check_framing(headers: &[httparse::Header]) -> Result<(), Refusal> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let lengths: Vec<&[u8]> = named("content-length").collect();
    let valid = |v: &&[u8]| std::str::from_utf8(v).is_ok_and(|s| s.trim().parse::<u64>().is_ok());
    if !lengths.iter().all(valid) || lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(refusal(StatusCode::BAD_REQUEST, "invalid Content-Length"));
    }
    let codings: Vec<&[u8]> = named("transfer-encoding").collect();
    let chunked = |v: &&[u8]| v.eq_ignore_ascii_case(b"chunked");
    if !codings.iter().all(chunked) || (!codings.is_empty() && !lengths.is_empty()) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "Transfer-Encoding: only chunked, and not with a Content-Length",
        ));
    }
    Ok(())
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        body: ErrorBody::new(code_for(status), message),
    }
}

/// Answers `refusal` and closes the connection.
async fn refuse(mut stream: UnixStream, refusal: Refusal) {
    let body = serde_json::to_vec(&refusal.body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        refusal.status.as_u16(),
        refusal.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(HEAD_TIMEOUT, write).await;
}

/// A connection whose first bytes were read already: they are read again first.
struct Prefixed {
    head: Vec<u8>,
    read: usize,
    inner: UnixStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.read);
            buf.put_slice(&this.head[this.read..this.read + n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The code of an answer with HTTP status `status` that no handler gave a code (one
/// the HTTP layers refused).
pub fn code_for(status: StatusCode) -> ErrorCode {
    use StatusCode as S;
    match status {
        S::NOT_FOUND => ErrorCode::ENotFound,
        S::METHOD_NOT_ALLOWED => ErrorCode::EMethod,
        S::REQUEST_TIMEOUT => ErrorCode::ETimeout,
        S::FORBIDDEN => ErrorCode::EPermission,
        S::SERVICE_UNAVAILABLE | S::TOO_MANY_REQUESTS => ErrorCode::EBusy,
        s if s.is_client_error() => ErrorCode::EFormat,
        _ => ErrorCode::EHost,
    }
}
