//! Accepts connections (its `Acceptor` child waits on the socket) and spawns
//! one linked session actor per connection. A session that fails is logged
//! and never restarted: its peer reconnects. The acceptor failing fails the
//! listener. At most `MAX_HANDSHAKING` connections may be waiting to
//! authenticate, and at most `max_connections` be open at once.

use super::msgs::{Established, Handshaking, SchedMsg};
use super::session::{Session, SessionArgs, SessionConfig};
use crate::ids::ConnId;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Connections that have not finished their handshake, at most: more are
/// closed at once, so unauthenticated peers cannot hold unbounded memory.
pub const MAX_HANDSHAKING: usize = 256;

pub enum ListenerMsg {
    Accepted(TcpStream, std::net::SocketAddr),
}

pub struct Listener;

pub struct ListenerArgs {
    pub listener: TcpListener,
    pub scheduler: ActorRef<SchedMsg>,
    pub config: SessionConfig,
    /// Open connections at most (`scheduler.max_connections`).
    pub max_connections: usize,
}

pub struct ListenerState {
    scheduler: ActorRef<SchedMsg>,
    config: SessionConfig,
    next_conn: u64,
    acceptor: ActorRef<AcceptorMsg>,
    handshaking: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    max_connections: usize,
    /// When a refused connection was last logged (one line a second at most).
    last_refusal_log: Option<std::time::Instant>,
    refused_since_log: u64,
}

impl ListenerState {
    /// Closes a connection over a limit, logging at most one line a second.
    fn refuse(&mut self, stream: TcpStream, addr: std::net::SocketAddr, limit: usize, why: &'static str) {
        drop(stream);
        self.refused_since_log += 1;
        if self.last_refusal_log.is_none_or(|t| t.elapsed().as_secs() >= 1) {
            tracing::warn!(peer = %addr, refused = self.refused_since_log, limit, "{why}");
            self.last_refusal_log = Some(std::time::Instant::now());
            self.refused_since_log = 0;
        }
    }
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
        let acceptor_args = AcceptorArgs { tcp: args.listener, listener: myself.clone() };
        let (acceptor, _) = Actor::spawn_linked(None, Acceptor, acceptor_args, myself.get_cell()).await?;
        Ok(ListenerState {
            scheduler: args.scheduler,
            config: args.config,
            next_conn: 0,
            acceptor,
            handshaking: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
            max_connections: args.max_connections,
            last_refusal_log: None,
            refused_since_log: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ListenerMsg>,
        msg: ListenerMsg,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        let ListenerMsg::Accepted(stream, addr) = msg;
        if st.open.fetch_add(1, Ordering::Relaxed) >= st.max_connections {
            st.open.fetch_sub(1, Ordering::Relaxed);
            st.refuse(
                stream,
                addr,
                st.max_connections,
                "too many open connections (scheduler.max_connections): closing new ones",
            );
            return Ok(());
        }
        let established = Established(st.open.clone());
        if st.handshaking.fetch_add(1, Ordering::Relaxed) >= MAX_HANDSHAKING {
            st.handshaking.fetch_sub(1, Ordering::Relaxed);
            st.refuse(
                stream,
                addr,
                MAX_HANDSHAKING,
                "too many connections waiting to authenticate: closing new ones",
            );
            return Ok(());
        }
        let handshaking = Handshaking(st.handshaking.clone());
        st.next_conn += 1;
        let args = SessionArgs {
            conn: ConnId(st.next_conn),
            stream,
            peer: addr.to_string(),
            scheduler: st.scheduler.clone(),
            config: st.config.clone(),
            handshaking,
            established,
        };
        // The handshake runs in the session's pre_start: off this actor's
        // loop, in a task that ends once the session has started (linked
        // here) or failed to.
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
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // Policy: sessions are never restarted; a failure is logged. The
        // acceptor ending ends the listener (its supervisor decides).
        match evt {
            SupervisionEvent::ActorFailed(cell, err) if cell.get_id() == st.acceptor.get_id() => {
                Err(format!("accepting connections failed: {err}").into())
            }
            SupervisionEvent::ActorTerminated(cell, _, _) if cell.get_id() == st.acceptor.get_id() => {
                Err("accepting connections stopped".into())
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(session = %cell.get_id(), error = %err, "session failed");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

pub enum AcceptorMsg {
    Next,
}

/// Waits on the listening socket, one connection per message, and hands
/// each to the listener (so the listener's own loop never blocks on accept).
pub struct Acceptor;

pub struct AcceptorArgs {
    tcp: TcpListener,
    listener: ActorRef<ListenerMsg>,
}

impl Actor for Acceptor {
    type Msg = AcceptorMsg;
    type State = AcceptorArgs;
    type Arguments = AcceptorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AcceptorMsg>,
        args: AcceptorArgs,
    ) -> Result<AcceptorArgs, ActorProcessingErr> {
        myself.cast(AcceptorMsg::Next)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<AcceptorMsg>,
        _: AcceptorMsg,
        st: &mut AcceptorArgs,
    ) -> Result<(), ActorProcessingErr> {
        match st.tcp.accept().await {
            Ok((stream, addr)) => {
                if st.listener.cast(ListenerMsg::Accepted(stream, addr)).is_err() {
                    myself.stop(Some("the listener stopped".into()));
                    return Ok(());
                }
            }
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        myself.cast(AcceptorMsg::Next)?;
        Ok(())
    }
}
