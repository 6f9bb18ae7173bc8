//! The page's HTTP side: routes, the access check in front of them, the
//! bounds (connections, body size, time per request), and the answers.

use super::feed::{Feed, Frame};
use super::PageInfo;
use crate::actors::msgs::SchedMsg;
use crate::ids::JobId;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ractor::ActorRef;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies larger than this are refused (the page sends none).
pub const MAX_BODY: u64 = 4096;
/// Open connections to the page at most; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a request (other than the stream) may take.
const REQUEST_TIME: Duration = Duration::from_secs(35);

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

#[derive(Clone)]
pub struct AppState {
    pub feed: Arc<Feed>,
    pub info: Arc<PageInfo>,
    pub scheduler: ActorRef<SchedMsg>,
}

/// An answer with a one-line JSON error.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json(body: String) -> Response {
    let headers = [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")];
    (headers, body).into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/health", get(|| async { "ok" }))
        .route("/api/snapshot", get(snapshot))
        .route("/api/stream", get(stream))
        .route("/api/workers", get(part))
        .route("/api/jobs", get(part))
        .route("/api/events", get(part))
        .route("/api/system", get(part))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/{action}", post(action))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// In front of every route: the size bound, the access rule, the time bound.
async fn guard(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if length.is_some_and(|l| l.parse::<u64>().map_or(true, |n| n > MAX_BODY))
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request bodies are limited to 4 KiB");
    }
    if req.uri().path() != "/health" {
        if let Err(why) = super::auth::check(&st.info, peer.0, req.method(), req.headers(), req.uri().query())
        {
            tracing::info!(peer = %peer.0, path = ?req.uri().path(), "status page request refused: {why}");
            return error(StatusCode::UNAUTHORIZED, why);
        }
    }
    if req.uri().path() == "/api/stream" {
        return next.run(req).await;
    }
    match tokio::time::timeout(REQUEST_TIME, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the scheduler did not answer in time"),
    }
}

async fn latest(st: &AppState) -> Result<Arc<Frame>, Response> {
    st.feed.fresh().await.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, &e))
}

async fn snapshot(State(st): State<AppState>) -> Response {
    match latest(&st).await {
        Ok(f) => json(f.json.to_string()),
        Err(r) => r,
    }
}

/// `/api/workers`, `/api/jobs`, `/api/events`, `/api/system`: that part of
/// the snapshot.
async fn part(State(st): State<AppState>, req: Request) -> Response {
    let f = match latest(&st).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let s = &f.snap;
    let body = match req.uri().path() {
        "/api/workers" => serde_json::to_string(&s.workers),
        "/api/jobs" => serde_json::to_string(&s.jobs),
        "/api/events" => serde_json::to_string(&s.events),
        _ => serde_json::to_string(&s.system),
    };
    match body {
        Ok(b) => json(b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn parse_job(id: &str) -> Result<JobId, Box<Response>> {
    let bad = || Box::new(error(StatusCode::BAD_REQUEST, "a job id is a uuid"));
    if id.len() > 64 {
        return Err(bad());
    }
    id.parse().map_err(|_| bad())
}

async fn job(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match st.feed.job(job).await {
        Ok(Some(detail)) => match serde_json::to_string(&detail) {
            Ok(b) => json(b),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no job {job} on this scheduler")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `POST /api/jobs/{id}/retry|cancel`: as `actord ctl retry|cancel`.
async fn action(State(st): State<AppState>, Path((id, action)): Path<(String, String)>) -> Response {
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let request = match action.as_str() {
        "retry" => crate::protocol::FromClient::Retry { job },
        "cancel" => crate::protocol::FromClient::Cancel { job, keys: Vec::new() },
        _ => return error(StatusCode::NOT_FOUND, "the actions are retry and cancel"),
    };
    match super::admin::request(&st.scheduler, request).await {
        Ok(message) => {
            tracing::info!(job = %job, action = %action, "status page action");
            json(serde_json::json!({ "message": message }).to_string())
        }
        Err(e) if e.starts_with("no job") => error(StatusCode::NOT_FOUND, &e),
        Err(e) => error(StatusCode::CONFLICT, &e),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    match latest(&st).await {
        Ok(f) => {
            let body = super::metrics::render(&f.snap, st.feed.subscribers());
            ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body)
                .into_response()
        }
        Err(r) => r,
    }
}

/// Server-sent events: `snapshot`, at most one per `PERIOD`, each the
/// latest (a slow reader skips the ones it missed), each with `retry: 1000`.
async fn stream(State(st): State<AppState>) -> Response {
    let Some((sub, mut rx)) = st.feed.subscribe() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many live pages open; close one");
    };
    rx.mark_changed();
    let events = futures::stream::unfold((sub, rx), |(sub, mut rx)| async move {
        loop {
            rx.changed().await.ok()?;
            let frame = rx.borrow_and_update().clone();
            if let Some(f) = frame {
                // `retry`: a page whose scheduler restarts reconnects within a
                // second (browsers wait 3 s by default).
                let event = Event::default().event("snapshot").retry(Duration::from_secs(1)).data(&*f.json);
                return Some((Ok::<_, std::convert::Infallible>(event), (sub, rx)));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// The peer's address (what the access rule looks at).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, Bounded>) -> Peer {
        Peer(*s.remote_addr())
    }
}

/// A listener with at most `MAX_CONNECTIONS` connections open.
pub struct Bounded {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A connection holding its permit.
pub struct Counted {
    io: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for Bounded {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => std::future::pending().await, // never closed
        };
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => return (Counted { io, _permit: permit }, addr),
                Err(e) => {
                    tracing::warn!(error = %e, "status page: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves the page on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    let bounded =
        Bounded { inner: listener, permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)) };
    axum::serve(bounded, app.into_make_service_with_connect_info::<Peer>()).await
}
