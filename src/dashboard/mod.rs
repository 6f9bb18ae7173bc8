//! The status page served by the scheduler process: an actor linked to the
//! root that runs the HTTP server (axum) and the snapshot feed; binding,
//! the access token, and what the page knows of its scheduler.

mod admin;
mod auth;
mod feed;
mod metrics;
mod routes;

pub use auth::token;

use crate::actors::msgs::SchedMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the page listens when no flag says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8787";

/// `--dashboard ADDR` / `--no-dashboard` / the configuration's.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    pub addr: String,
    /// Given on the command line (or in a configuration file): a busy
    /// address is then an error; the default one busy is only a warning.
    pub explicit: bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve the status page on {addr}: {source} (give another --dashboard ADDR, or --no-dashboard)"
)]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds the page's socket: `Ok(None)` when the default address is taken
/// (warned: a second scheduler on a node is common), an error when an
/// address asked for cannot be had.
pub fn bind(opts: &DashboardOptions) -> Result<Option<std::net::TcpListener>, BindError> {
    let err = |source| BindError { addr: opts.addr.clone(), source };
    let bound = std::net::TcpListener::bind(&opts.addr).and_then(|l| l.set_nonblocking(true).map(|()| l));
    match bound {
        Ok(l) => Ok(Some(l)),
        Err(e) if !opts.explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                addr = %opts.addr,
                "the status page's default address is in use (another scheduler on this node?); running \
                 without a status page (give --dashboard ADDR for one)"
            );
            Ok(None)
        }
        Err(e) => Err(err(e)),
    }
}

/// What the page says of its scheduler, and who may see it.
#[derive(Clone, Debug)]
pub struct PageInfo {
    /// `None`: an `--insecure` scheduler, which has no secret: no token.
    pub token: Option<String>,
    /// The page listens on loopback only: read-only requests from loopback
    /// need no token.
    pub loopback: bool,
    /// The page's address as others reach it, `http://HOST:PORT/`.
    pub url: String,
    /// The scheduler's address (`tcp://…`) and mode, for the system view.
    pub scheduler: String,
    pub security: String,
}

impl PageInfo {
    /// The page's link with its token (what `actord ctl dashboard` prints).
    pub fn link(&self) -> String {
        link(&self.url, self.token.as_deref())
    }
}

/// `url` with `?token=` appended when there is one.
pub fn link(url: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{url}?token={t}"),
        None => url.to_string(),
    }
}

pub struct DashboardArgs {
    pub listener: std::net::TcpListener,
    pub scheduler: ActorRef<SchedMsg>,
    pub info: PageInfo,
}

/// The status page's actor: owns the server and the feed tasks; either
/// ending fails it (its supervisor, the root, logs that and runs on).
pub struct Dashboard;

pub enum DashboardMsg {
    /// One of its tasks ended (with why).
    Ended(String),
}

pub struct DashboardState {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Actor for Dashboard {
    type Msg = DashboardMsg;
    type State = DashboardState;
    type Arguments = DashboardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DashboardMsg>,
        args: DashboardArgs,
    ) -> Result<DashboardState, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::from_std(args.listener)?;
        let local: SocketAddr = listener.local_addr()?;
        let info = Arc::new(args.info);
        let feed = Arc::new(feed::Feed::new(args.scheduler.clone(), info.clone()));
        let app = routes::router(routes::AppState { feed: feed.clone(), info, scheduler: args.scheduler });
        let me = myself.clone();
        let server = tokio::spawn(async move {
            let why = match routes::serve(listener, app).await {
                Ok(()) => "the status page's server stopped".to_string(),
                Err(e) => format!("the status page's server failed: {e}"),
            };
            let _ = me.cast(DashboardMsg::Ended(why));
        });
        let me = myself.clone();
        let aggregator = tokio::spawn(async move {
            feed.run().await;
            let _ = me.cast(DashboardMsg::Ended("the status page's feed stopped".into()));
        });
        tracing::debug!(addr = %local, "status page serving");
        Ok(DashboardState { tasks: vec![server, aggregator] })
    }

    async fn handle(
        &self,
        _: ActorRef<DashboardMsg>,
        msg: DashboardMsg,
        _: &mut DashboardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DashboardMsg::Ended(why) => Err(why.into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<DashboardMsg>,
        st: &mut DashboardState,
    ) -> Result<(), ActorProcessingErr> {
        for t in &st.tasks {
            t.abort();
        }
        Ok(())
    }
}
