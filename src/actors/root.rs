//! The scheduler process's root supervisor: links the scheduler actor and
//! the listener, and stops the process when either fails (no restart).

use super::listener::{Listener, ListenerArgs, ListenerMsg};
use super::msgs::SchedMsg;
use super::scheduler::{SchedulerActor, SchedulerArgs};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::{Arc, Mutex};

/// How long a graceful stop waits for each child (the scheduler's last
/// journal flush included) before it is killed.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Root;

pub struct RootArgs {
    pub scheduler: SchedulerArgs,
    pub listener: tokio::net::TcpListener,
    pub session: super::session::SessionConfig,
    /// Open connections at most (`scheduler.max_connections`).
    pub max_connections: usize,
    /// Why the process must stop, once a child failed (shared with the
    /// scheduler actor, which sets it first when its journal fails).
    pub failure: Arc<Mutex<Option<String>>>,
    /// The status page's socket and what it shows, if it has one.
    pub dashboard: Option<(std::net::TcpListener, crate::dashboard::page::PageInfo)>,
}

pub struct RootState {
    scheduler: ActorRef<SchedMsg>,
    listener: ActorRef<ListenerMsg>,
    dashboard: Option<ActorCell>,
    failure: Arc<Mutex<Option<String>>>,
}

impl RootState {
    fn which(&self, cell: &ActorCell) -> &'static str {
        if cell.get_id() == self.scheduler.get_id() {
            "scheduler"
        } else if cell.get_id() == self.listener.get_id() {
            "listener"
        } else if self.dashboard.as_ref().is_some_and(|d| d.get_id() == cell.get_id()) {
            "status page"
        } else {
            "unknown child"
        }
    }

    /// Keeps the first reason given: the scheduler's own, if it said one.
    fn fail(&self, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(reason);
    }
}

impl Actor for Root {
    type Msg = ();
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(&self, myself: ActorRef<()>, args: RootArgs) -> Result<RootState, ActorProcessingErr> {
        let (scheduler, _) =
            Actor::spawn_linked(None, SchedulerActor, args.scheduler, myself.get_cell()).await?;
        let listener_args = ListenerArgs {
            listener: args.listener,
            scheduler: scheduler.clone(),
            config: args.session,
            max_connections: args.max_connections,
        };
        let (listener, _) = Actor::spawn_linked(None, Listener, listener_args, myself.get_cell()).await?;
        let dashboard = match args.dashboard {
            None => None,
            Some((socket, info)) => {
                let dash =
                    crate::dashboard::DashboardArgs { listener: socket, scheduler: scheduler.clone(), info };
                let spawned =
                    Actor::spawn_linked(None, crate::dashboard::Dashboard, dash, myself.get_cell()).await;
                match spawned {
                    Ok((d, _)) => Some(d.get_cell()),
                    Err(e) => {
                        tracing::error!(error = %e, "the status page cannot start; the scheduler runs without it");
                        None
                    }
                }
            }
        };
        Ok(RootState { scheduler, listener, dashboard, failure: args.failure })
    }

    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut RootState) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    /// Policy: neither child is restarted. A failure, or a child stopping
    /// on its own, is logged and stops the root, so the process ends with
    /// an error instead of running half-alive (a restarted scheduler
    /// replays the journal: that is the restart). The status page is the
    /// exception: its failure is logged, and the scheduler runs on without it.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let why = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => format!("the {} failed: {err}", st.which(cell)),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.as_deref().unwrap_or("no reason given");
                format!("the {} stopped unexpectedly ({reason})", st.which(cell))
            }
            _ => return Ok(()),
        };
        let child = match &evt {
            SupervisionEvent::ActorFailed(cell, _) | SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.which(cell)
            }
            _ => "unknown child",
        };
        if child == "status page" {
            tracing::error!(error = %why, "the status page ended; the scheduler runs on without it");
            st.dashboard = None;
            return Ok(());
        }
        tracing::error!(actor = child, error = %why, "a root child ended; the scheduler process stops");
        st.fail(why.clone());
        myself.stop(Some(why));
        Ok(())
    }

    /// Stops the children in order: no new connections, then the scheduler
    /// (which finishes its journal flush).
    async fn post_stop(&self, _: ActorRef<()>, st: &mut RootState) -> Result<(), ActorProcessingErr> {
        if let Some(d) = st.dashboard.take() {
            d.kill();
        }
        for child in [st.listener.get_cell(), st.scheduler.get_cell()] {
            if child.get_status() < ractor::ActorStatus::Stopping
                && child.stop_and_wait(None, Some(STOP_WAIT)).await.is_err()
            {
                tracing::warn!(actor = st.which(&child), "did not stop in time; killing it");
                child.kill();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{bind, start, SchedulerOptions};
    use super::*;
    use crate::schedfile::SchedulerFile;
    use std::time::Duration;

    fn options(dir: &std::path::Path) -> SchedulerOptions {
        SchedulerOptions {
            scheduler_file: dir.join("scheduler.json"),
            journal: None,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_send_queue: 1 << 20,
            flush_timeout: Duration::from_secs(5),
            core: Default::default(),
            reclaim_grace: Duration::from_secs(1),
            commit_interval: Duration::from_millis(1),
            journal_repair: false,
            advertise: None,
            security: Default::default(),
            max_connections: 64,
            dashboard: None,
            results_dir: None,
        }
    }

    /// Starts a scheduler, ends the root's child that takes `Msg`, and
    /// returns how `serve` ended and what the scheduler file says then.
    async fn end_child<Msg: ractor::Message>(kill: bool) -> (Result<(), String>, SchedulerFile) {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let path = opts.scheduler_file.clone();
        let scheduler = start(bind("127.0.0.1:0").await.unwrap(), opts).await.unwrap();
        let children = scheduler.root.get_children();
        assert_eq!(children.len(), 2, "the root links the scheduler and the listener");
        let child = children.into_iter().find(|c| c.is_message_type_of::<Msg>() == Some(true)).unwrap();
        match kill {
            true => child.kill(),
            false => child.stop(Some("test".into())),
        }
        let served =
            tokio::time::timeout(Duration::from_secs(10), scheduler.serve(std::future::pending())).await;
        (served.expect("the root stops by itself"), SchedulerFile::read(&path).unwrap())
    }

    #[tokio::test]
    async fn a_listener_that_dies_ends_the_scheduler_with_an_error_in_its_file() {
        let (served, file) = end_child::<ListenerMsg>(true).await;
        let reason = served.unwrap_err();
        assert!(reason.starts_with("the listener stopped unexpectedly"), "{reason}");
        assert!(file.stopped.as_deref().is_some_and(|s| s.starts_with(&reason)), "{:?}", file.stopped);
    }

    #[tokio::test]
    async fn a_scheduler_actor_that_stops_by_itself_ends_the_process_too() {
        let (served, file) = end_child::<SchedMsg>(false).await;
        let reason = served.unwrap_err();
        assert_eq!(reason, "the scheduler stopped unexpectedly (test)");
        assert!(file.stopped.is_some());
    }

    #[tokio::test]
    async fn a_status_page_that_dies_leaves_the_scheduler_running() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.dashboard =
            Some(crate::dashboard::page::DashboardOptions { addr: "127.0.0.1:0".into(), explicit: true });
        let scheduler = start(bind("127.0.0.1:0").await.unwrap(), opts).await.unwrap();
        let url = scheduler.file.dashboard.clone().expect("the file names the page");
        let children = scheduler.root.get_children();
        assert_eq!(children.len(), 3, "the root links the page too");
        let page =
            children.iter().find(|c| c.is_message_type_of::<crate::dashboard::DashboardMsg>() == Some(true));
        page.unwrap().kill();
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let gone = async {
            while tokio::net::TcpStream::connect(&addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the page stops serving");
        let served =
            tokio::time::timeout(Duration::from_millis(300), scheduler.serve(std::future::pending())).await;
        assert!(served.is_err(), "the scheduler runs on: {served:?}");
    }

    #[tokio::test]
    async fn a_shutdown_signal_stops_everything_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let path = opts.scheduler_file.clone();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheduler = start(listener, opts).await.unwrap();
        let children = scheduler.root.get_children();
        assert!(path.exists());
        scheduler.serve(std::future::ready(())).await.unwrap();
        assert!(!path.exists(), "the scheduler file is removed");
        for c in children {
            assert_eq!(c.get_status(), ractor::ActorStatus::Stopped);
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens any more");
    }
}
