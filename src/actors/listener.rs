//! Accepts connections and spawns one linked session actor per connection.
//! A session that fails is logged and never restarted: its peer reconnects.

use super::scheduler::SchedMsg;
use super::session::{Session, SessionArgs, SessionConfig};
use crate::ids::ConnId;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::{TcpListener, TcpStream};

pub enum ListenerMsg {
    Accepted(TcpStream, std::net::SocketAddr),
}

pub struct Listener;

pub struct ListenerArgs {
    pub listener: TcpListener,
    pub scheduler: ActorRef<SchedMsg>,
    pub config: SessionConfig,
}

pub struct ListenerState {
    scheduler: ActorRef<SchedMsg>,
    config: SessionConfig,
    next_conn: u64,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Actor for Listener {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerMsg>,
        args: ListenerArgs,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let listener = args.listener;
        let accept_task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        if myself.cast(ListenerMsg::Accepted(stream, addr)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // e.g. EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(ListenerState { scheduler: args.scheduler, config: args.config, next_conn: 0, accept_task })
    }

    async fn handle(
        &self,
        myself: ActorRef<ListenerMsg>,
        msg: ListenerMsg,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        let ListenerMsg::Accepted(stream, addr) = msg;
        st.next_conn += 1;
        let args = SessionArgs {
            conn: ConnId(st.next_conn),
            stream,
            peer: addr.to_string(),
            scheduler: st.scheduler.clone(),
            config: st.config.clone(),
        };
        // The handshake runs in the session's pre_start: off this actor's loop.
        let cell = myself.get_cell();
        tokio::spawn(async move {
            if let Err(e) = Actor::spawn_linked(None, Session, args, cell).await {
                tracing::warn!(peer = %addr, error = %e, "session failed to start");
            }
        });
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerMsg>,
        evt: SupervisionEvent,
        _st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // Policy: sessions are never restarted; a failure is logged.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            tracing::warn!(session = %cell.get_id(), error = %err, "session failed");
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ListenerMsg>,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        st.accept_task.abort();
        Ok(())
    }
}
