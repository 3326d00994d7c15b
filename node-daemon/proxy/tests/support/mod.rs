//! A real origin for the cache's tests: a hyper server on 127.0.0.1:0 whose answers are
//! programmed per path, which counts the requests per path and can be stopped, and an
//! `Origin` that reaches it through hyper-util's client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edge_proxy::cache::{Origin, OriginError};
use edge_proxy::{Body, BodyError};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A latch the origin waits on before it answers (or before the rest of a body).
#[derive(Clone, Debug)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// The body an answer has.
#[derive(Clone, Debug)]
pub enum ReplyBody {
    Whole(Bytes),
    /// `first`, then `rest` once the gate opens; no length announced.
    Streamed {
        first: Bytes,
        gate: Gate,
        rest: Bytes,
    },
}

/// How the origin answers one path.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Answer `304` with these headers when the request's `If-None-Match` holds this
    /// answer's `ETag` or its `If-Modified-Since` is this answer's `Last-Modified`.
    pub not_modified: Option<Vec<(String, String)>>,
    /// Add this request header's value to the body.
    pub echo: Option<String>,
    /// Wait for this gate before answering.
    pub gate: Option<Gate>,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: ReplyBody::Whole(Bytes::copy_from_slice(body.as_bytes())),
            not_modified: None,
            echo: None,
            gate: None,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn not_modified(mut self, headers: &[(&str, &str)]) -> Self {
        let headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        self.not_modified = Some(headers);
        self
    }

    pub fn echo(mut self, header: &str) -> Self {
        self.echo = Some(header.to_owned());
        self
    }

    pub fn gated(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    pub fn body(mut self, body: ReplyBody) -> Self {
        self.body = body;
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request the origin received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    replies: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// The origin server.
pub struct TestOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TestOrigin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State::default());
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (state, connections) = (Arc::clone(&state), Arc::clone(&connections));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let state = Arc::clone(&state);
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let connection = tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    connections.lock().expect("lock").push(connection);
                }
            })
        };
        Self {
            addr,
            state,
            accept: Some(accept),
            connections,
        }
    }

    /// Answers `path` (with its query) with `reply` from now on.
    pub fn set(&self, path: &str, reply: Reply) {
        self.state
            .replies
            .lock()
            .expect("lock")
            .insert(path.to_owned(), reply);
    }

    /// How many requests for `path` (with its query) arrived.
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// The last request for `path`.
    pub fn last(&self, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.path == path)
            .expect("a request for the path")
    }

    /// Stops listening and drops every connection: the origin is down.
    pub async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let connections: Vec<_> = self.connections.lock().expect("lock").drain(..).collect();
        for connection in connections {
            connection.abort();
            let _ = connection.await;
        }
    }
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    state.seen.lock().expect("lock").push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        headers: req.headers().clone(),
    });
    let reply = state.replies.lock().expect("lock").get(&path).cloned();
    let Some(reply) = reply else {
        let mut response = Response::new(whole(Bytes::from_static(b"no such path")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
            .headers_mut()
            .insert("cache-control", http::HeaderValue::from_static("no-store"));
        return Ok(response);
    };
    if let Some(gate) = &reply.gate {
        gate.wait().await;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(headers) = &reply.not_modified {
        let etag_matches = reply
            .get("etag")
            .zip(header("if-none-match"))
            .is_some_and(|(etag, inm)| inm.split(',').any(|t| t.trim() == etag));
        let date_matches = reply
            .get("last-modified")
            .zip(header("if-modified-since"))
            .is_some_and(|(lm, ims)| lm == ims);
        if etag_matches || date_matches {
            let mut response = Response::new(whole(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    value.parse().expect("value"),
                );
            }
            return Ok(response);
        }
    }
    let echo = reply
        .echo
        .as_deref()
        .map(|name| header(name).unwrap_or("-").to_owned());
    let body = match reply.body {
        ReplyBody::Whole(bytes) => {
            let mut bytes = bytes.to_vec();
            if let Some(echo) = echo {
                bytes.extend_from_slice(echo.as_bytes());
            }
            whole(Bytes::from(bytes))
        }
        ReplyBody::Streamed { first, gate, rest } => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(first).await;
                gate.wait().await;
                let _ = tx.send(rest).await;
            });
            ChannelBody(rx).boxed_unsync()
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("status");
    for (name, value) in &reply.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    Ok(response)
}

pub fn whole(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body fed through a channel, chunk by chunk.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// The cache's origin: hyper-util's client to a [`TestOrigin`], without a connection pool
/// (so a stopped origin is refused at once), with a deadline per request.
pub struct ClientOrigin {
    client: Client<HttpConnector, Body>,
    base: String,
    timeout: Duration,
}

impl ClientOrigin {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Self {
            client,
            base: format!("http://{addr}"),
            timeout,
        }
    }
}

impl Origin for ClientOrigin {
    fn fetch(
        &self,
        mut req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, OriginError>> + Send + '_>> {
        Box::pin(async move {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("{}{target}", self.base)
                .parse()
                .map_err(|e: http::uri::InvalidUri| OriginError::Other(e.to_string()))?;
            match tokio::time::timeout(self.timeout, self.client.request(req)).await {
                Err(_) => Err(OriginError::Timeout),
                Ok(Err(error)) if error.is_connect() => Err(OriginError::Unreachable),
                Ok(Err(error)) => Err(OriginError::Other(error.to_string())),
                Ok(Ok(response)) => Ok(response.map(|body| {
                    body.map_err(|e| -> BodyError { Box::new(e) })
                        .boxed_unsync()
                })),
            }
        })
    }
}
