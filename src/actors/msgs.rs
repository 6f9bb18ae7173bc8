//! The messages between the scheduler process's actors (scheduler,
//! listener, sessions, readers), the scheduler's handle on a session, and
//! the guards that count connections: the files of those actors share them.

use crate::ids::ConnId;
use crate::protocol::{FromClient, FromNanny, FromWorker, Role};
use bytes::Bytes;
use ractor::ActorRef;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub enum SchedMsg {
    /// A session finished its handshake; messages from it follow.
    Connected {
        conn: ConnId,
        role: Role,
        session: SessionHandle,
    },
    Worker {
        conn: ConnId,
        msg: FromWorker,
    },
    Client {
        conn: ConnId,
        msg: FromClient,
    },
    Nanny {
        conn: ConnId,
        msg: FromNanny,
    },
    /// A client's `Submit`, decoded into the job's compact records.
    Submit {
        conn: ConnId,
        msg: crate::core::SubmitMsg,
    },
    Closed {
        conn: ConnId,
    },
    /// Execute the effects gathered since the last flush.
    Flush,
    /// Periodic: check heartbeats.
    Tick,
    /// The group-commit interval is over: flush what has gathered.
    FlushTimer,
    /// `Core::next_deadline` is reached (a retry's backoff is over, ...).
    Deadline,
    /// The journal flush of the group in flight is done (or failed).
    Flushed(Result<(), String>),
    /// Shutting down: stop waiting for nannies and workers to hang up.
    FarewellOver,
    /// A client's `StoredLost`, after the scheduler read the file itself:
    /// `lost` says why it is lost, `None` if the scheduler found it intact.
    StoredChecked {
        conn: ConnId,
        task: crate::ids::TaskId,
        path: String,
        lost: Result<String, String>,
    },
    /// The status page asks for a view (read-only).
    Dashboard {
        query: DashQuery,
        reply: tokio::sync::oneshot::Sender<DashAnswer>,
    },
}

/// What the status page asks the scheduler actor for.
#[derive(Debug)]
pub enum DashQuery {
    Snapshot,
    Job(crate::ids::JobId),
}

/// The scheduler actor's answer to a `DashQuery`.
pub enum DashAnswer {
    Snapshot(Box<crate::core::Snapshot>),
    /// `None`: no such job.
    Job(Option<Box<crate::core::JobDetailView>>),
}

pub enum SessionMsg {
    /// Frames to write, in order, with one flush.
    Frames(Vec<Bytes>),
    /// Write what is queued, then close.
    Close,
}

/// The scheduler's end of a session: where to send frames, and the bytes
/// queued for it but not yet written, so a peer that does not read cannot
/// make the scheduler queue without bound.
#[derive(Clone)]
pub struct SessionHandle {
    pub actor: ActorRef<SessionMsg>,
    pub queued: Arc<AtomicUsize>,
    /// Cancelled to drop the connection at once, even mid-write.
    pub abort: CancellationToken,
}

impl SessionHandle {
    /// Queues frames for writing; `false` (and nothing queued) if that would
    /// put more than `limit` bytes in its queue: the caller cuts it off.
    pub fn deliver(&self, frames: Vec<Bytes>, limit: usize) -> bool {
        if self.abort.is_cancelled() {
            return false;
        }
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let queued = self.queued.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if queued > limit {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        if self.actor.cast(SessionMsg::Frames(frames)).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        true
    }
}

/// Counts one connection in its handshake; dropping it ends the count.
pub struct Handshaking(pub(crate) Arc<AtomicUsize>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one open connection (from accept to close).
pub struct Established(pub(crate) Arc<AtomicUsize>);

impl Drop for Established {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
