//! A session's reader, its child actor: decodes the peer's frames for its
//! role and forwards them to the scheduler, one frame per message; on a bad
//! frame it tells the peer why and closes this connection only.

use super::msgs::{SchedMsg, SessionMsg};
use crate::ids::ConnId;
use crate::protocol::conn::{decode, encode, next_frame, ConnError, FrameStream};
use crate::protocol::{FromClient, FromNanny, FromWorker, Role, ToClient, ToNanny, ToWorker};
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub enum ReaderMsg {
    /// Read, decode and forward the next frame.
    Next,
}

pub struct Reader;

pub struct ReaderArgs {
    pub stream: FrameStream,
    pub role: Role,
    pub conn: ConnId,
    /// Who the peer is, for the log: `user@host pid N (addr)`.
    pub peer: String,
    pub scheduler: ActorRef<SchedMsg>,
    pub session: ActorRef<SessionMsg>,
    /// The results store, for `ReadStored`.
    pub store: Option<std::path::PathBuf>,
    /// The session's count of bytes queued for writing.
    pub queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Actor for Reader {
    type Msg = ReaderMsg;
    type State = ReaderArgs;
    type Arguments = ReaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReaderMsg>,
        args: ReaderArgs,
    ) -> Result<ReaderArgs, ActorProcessingErr> {
        myself.cast(ReaderMsg::Next)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<ReaderMsg>,
        _: ReaderMsg,
        st: &mut ReaderArgs,
    ) -> Result<(), ActorProcessingErr> {
        let error = match next_frame(&mut st.stream).await {
            Ok(frame)
                if st.role == Role::Client && is_read_stored(&frame) && read_stored(st, &frame).await =>
            {
                return Ok(myself.cast(ReaderMsg::Next)?);
            }
            Ok(frame) => match forward(st, &frame) {
                Ok(true) => return Ok(myself.cast(ReaderMsg::Next)?),
                Ok(false) => None, // the scheduler is stopping
                Err(message) => Some(message),
            },
            Err(ConnError::Closed) => None,
            Err(e) => Some(e.to_string()),
        };
        finish(st, error);
        myself.stop(Some("connection closed".into()));
        Ok(())
    }
}

/// Decodes one frame and hands it to the scheduler: `Ok(false)` if the
/// scheduler is gone, `Err` (what to tell the peer) if it does not decode.
fn forward(st: &ReaderArgs, frame: &[u8]) -> Result<bool, String> {
    let conn = st.conn;
    let sent = match st.role {
        Role::Worker => {
            let msg = decode::<FromWorker>(frame).map_err(|e| format!("bad worker message: {e}"))?;
            st.scheduler.cast(SchedMsg::Worker { conn, msg })
        }
        Role::Client if super::submit_frame::is_submit(frame) => {
            // Straight into the job's compact records, off the scheduler's loop.
            let msg =
                super::submit_frame::decode_submit(frame).map_err(|e| format!("bad client message: {e}"))?;
            st.scheduler.cast(SchedMsg::Submit { conn, msg })
        }
        Role::Client => {
            let msg = decode::<FromClient>(frame).map_err(|e| format!("bad client message: {e}"))?;
            log_admin(&st.peer, &msg);
            st.scheduler.cast(SchedMsg::Client { conn, msg })
        }
        Role::Nanny => {
            let msg = decode::<FromNanny>(frame).map_err(|e| format!("bad nanny message: {e}"))?;
            st.scheduler.cast(SchedMsg::Nanny { conn, msg })
        }
    };
    Ok(sent.is_ok())
}

/// A `ReadStored` request (its variant name is in the frame's first bytes):
/// answered here, off the scheduler actor, one piece at a time.
fn is_read_stored(frame: &[u8]) -> bool {
    frame.get(..16).is_some_and(|head| head.windows(10).any(|w| w == b"ReadStored"))
}

/// Answers `ReadStored` with one piece of the file, read on a blocking
/// thread; the next request is read only once this answer is queued, so a
/// connection holds at most one piece (1 MiB) of a stored result at a time.
/// `false`: the frame is something else (forwarded as usual).
async fn read_stored(st: &ReaderArgs, frame: &[u8]) -> bool {
    use std::sync::atomic::Ordering;
    let reply = match (decode::<FromClient>(frame), st.store.clone()) {
        (Ok(FromClient::ReadStored { path, offset }), Some(dir)) => {
            let p = path.clone();
            let read =
                tokio::task::spawn_blocking(move || crate::results_store::read_chunk(&dir, &p, offset)).await;
            match read {
                Ok(Ok((data, total))) => ToClient::StoredChunk { path, offset, total, data: data.into() },
                Ok(Err(e)) => ToClient::Error { job: None, message: e.to_string() },
                Err(e) => ToClient::Error { job: None, message: format!("reading {path:?} failed: {e}") },
            }
        }
        (Ok(FromClient::ReadStored { .. }), None) => {
            ToClient::Error { job: None, message: "this scheduler has no results store".into() }
        }
        _ => return false,
    };
    if let Ok(bytes) = encode(&reply) {
        st.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = st.session.cast(SessionMsg::Frames(vec![bytes]));
    }
    true
}

/// Tells the peer why (after a bad frame), then asks the session to close.
fn finish(st: &ReaderArgs, error: Option<String>) {
    if let Some(message) = error {
        tracing::warn!(peer = ?st.peer, conn = %st.conn, error = ?message, "closing connection after a bad frame");
        let reply = match st.role {
            Role::Worker => encode(&ToWorker::Error { message }),
            Role::Client => encode(&ToClient::Error { job: None, message }),
            Role::Nanny => encode(&ToNanny::Error { message }),
        };
        if let Ok(bytes) = reply {
            let _ = st.session.cast(SessionMsg::Frames(vec![bytes]));
        }
    }
    let _ = st.session.cast(SessionMsg::Close);
}

/// Admin requests are logged with who asked: those that change things at
/// info, those that only look at debug.
fn log_admin(peer: &str, msg: &FromClient) {
    let (what, changes) = match msg {
        FromClient::Cancel { job, keys } => (format!("cancel {job} {keys:?}"), true),
        FromClient::Forget { job } => (format!("forget {job}"), true),
        FromClient::RestartWorker { worker } => (format!("restart-worker {worker}"), true),
        FromClient::RetireWorker { worker } => (format!("retire-worker {worker}"), true),
        FromClient::Retry { job } => (format!("retry {job}"), true),
        FromClient::Shutdown => ("shutdown".into(), true),
        FromClient::DrainAndShutdown => ("shutdown --drain".into(), true),
        FromClient::StopKeepingWorkers { drain } => {
            let drain = if *drain { " --drain" } else { "" };
            (format!("shutdown{drain} --keep-workers"), true)
        }
        FromClient::LogLevel { level } => (format!("log-level {level}"), true),
        FromClient::Scale { workers } => (format!("scale {workers}"), true),
        FromClient::Status => ("status".into(), false),
        FromClient::Workers => ("workers".into(), false),
        FromClient::Nannies => ("nannies".into(), false),
        FromClient::Jobs => ("jobs".into(), false),
        FromClient::Job { job } => (format!("job {job}"), false),
        FromClient::Tasks { job } => (format!("tasks {job}"), false),
        FromClient::Explain { job, key } => (format!("explain {job} {key}"), false),
        FromClient::Journal => ("journal".into(), false),
        _ => return,
    };
    if changes {
        tracing::info!(who = ?peer, request = ?what, "admin request");
    } else {
        tracing::debug!(who = ?peer, request = ?what, "admin request");
    }
}
