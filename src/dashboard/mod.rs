//! The status page served by the scheduler process: an actor linked to the
//! root that runs the HTTP server (axum) and the snapshot feed; binding,
//! the access token, and what the page knows of its scheduler.

mod admin;
mod auth;
mod feed;
mod metrics;
pub mod page;
mod routes;

pub use page::{bind, link, token, BindError, DashboardOptions, PageInfo, DEFAULT_ADDR};

use crate::actors::msgs::SchedMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::Arc;

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

/// Its tasks, aborted when the state goes (a stop, a failure or a kill).
pub struct DashboardState {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DashboardState {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
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
}
