//! One actor per accepted connection: performs the handshake, starts its
//! reader (a linked child that forwards decoded frames to the scheduler),
//! and writes the frames it is given.

use super::msgs::{Established, Handshaking, SchedMsg, SessionHandle, SessionMsg};
use super::reader::{Reader, ReaderArgs, ReaderMsg};
use crate::ids::ConnId;
use crate::security::ServerSecurity;
use futures::SinkExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::protocol::conn::FrameSink as Sink;

pub struct Session;

/// What the scheduler tells each session at start.
#[derive(Clone)]
pub struct SessionConfig {
    pub security: ServerSecurity,
    pub instance: uuid::Uuid,
    pub epoch: u64,
    pub max_frame: usize,
    /// The results store, read for `ReadStored` (streamed, never kept).
    pub store: Option<std::path::PathBuf>,
}

pub struct SessionArgs {
    pub conn: ConnId,
    pub stream: TcpStream,
    pub peer: String,
    pub scheduler: ActorRef<SchedMsg>,
    pub config: SessionConfig,
    /// Held until the handshake is over (either way).
    pub handshaking: Handshaking,
    /// Held while the connection is established.
    pub established: Established,
}

pub struct SessionState {
    conn: ConnId,
    /// `None` for a connection refused in its handshake.
    sink: Option<Sink>,
    queued: Arc<AtomicUsize>,
    abort: CancellationToken,
    reader: Option<ActorRef<ReaderMsg>>,
    scheduler: ActorRef<SchedMsg>,
    /// Set once the handshake succeeded and the scheduler knows this session.
    connected: bool,
    _established: Established,
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        // The handshake frame limit and deadline hold until the peer has
        // proved it knows the secret: nothing else is read before that.
        let c = &args.config;
        let accepted =
            crate::security::handshake::accept(args.stream, &c.security, c.epoch, c.instance).await;
        drop(args.handshaking);
        let queued = Arc::new(AtomicUsize::new(0));
        let abort = CancellationToken::new();
        let (mut conn, hello) = match accepted {
            Err(error) => {
                tracing::warn!(peer = %args.peer, error = ?error, "connection refused");
                myself.stop(Some("handshake refused".into()));
                return Ok(SessionState {
                    conn: args.conn,
                    sink: None,
                    queued: Default::default(),
                    abort: CancellationToken::new(),
                    reader: None,
                    scheduler: args.scheduler,
                    connected: false,
                    _established: args.established,
                });
            }
            Ok(ok) => ok,
        };
        tracing::debug!(peer = %args.peer, role = ?hello.role, host = ?hello.host, pid = hello.pid, "connection accepted");
        conn.set_max_frame(args.config.max_frame);
        args.scheduler.cast(SchedMsg::Connected {
            conn: args.conn,
            role: hello.role,
            session: SessionHandle { actor: myself.clone(), queued: queued.clone(), abort: abort.clone() },
        })?;
        let (sink, stream) = conn.into_split();
        let who = format!("{}@{} pid {} ({})", hello.user, hello.host, hello.pid, args.peer);
        let reader_args = ReaderArgs {
            stream,
            role: hello.role,
            conn: args.conn,
            peer: who,
            scheduler: args.scheduler.clone(),
            session: myself.clone(),
            store: args.config.store.clone(),
            queued: queued.clone(),
        };
        let (reader, _) = Actor::spawn_linked(None, Reader, reader_args, myself.get_cell()).await?;
        Ok(SessionState {
            conn: args.conn,
            sink: Some(sink),
            queued,
            abort,
            reader: Some(reader),
            scheduler: args.scheduler,
            connected: true,
            _established: args.established,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Frames(frames) => {
                let bytes: usize = frames.iter().map(|f| f.len()).sum();
                let Some(sink) = st.sink.as_mut() else { return Ok(()) };
                let write = async move {
                    for f in frames {
                        sink.feed(f).await?;
                    }
                    sink.flush().await
                };
                let written = tokio::select! {
                    r = write => r.is_ok(),
                    _ = st.abort.cancelled() => false,
                };
                st.queued.fetch_sub(bytes, Ordering::Relaxed);
                if !written {
                    let why = if st.abort.is_cancelled() { "send queue full" } else { "write failed" };
                    myself.stop(Some(why.into()));
                }
            }
            SessionMsg::Close => {
                if let Some(sink) = st.sink.as_mut() {
                    let _ = sink.close().await;
                }
                myself.stop(Some("closed by scheduler".into()));
            }
        }
        Ok(())
    }

    /// Policy: a reader that fails (it never should) closes its session;
    /// the peer reconnects.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SessionMsg>,
        evt: SupervisionEvent,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = evt {
            tracing::warn!(conn = %st.conn, error = %err, "connection reader failed; closing the connection");
            myself.stop(Some("reader failed".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // No frame of this connection reaches the scheduler after `Closed`.
        if let Some(r) = st.reader.take() {
            let _ = r.kill_and_wait(None).await;
        }
        if st.connected {
            let _ = st.scheduler.cast(SchedMsg::Closed { conn: st.conn });
        }
        Ok(())
    }
}
