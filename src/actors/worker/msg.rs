//! What the parts of a worker tell each other: the `Worker`'s messages and
//! the attempts that travel between it and its slots; the worker's errors.

use crate::ids::{TaskId, WorkerId};
use crate::protocol::{Assignment, TaskReport, ToWorker};
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no scheduler reachable for {0:?} (--death-timeout): {1}")]
    SchedulerGone(Duration, String),
    #[error("the worker failed: {0}")]
    Failed(String),
}

/// How long a canceled command (or a stopped executor) has between SIGTERM
/// and SIGKILL.
pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(3);

pub(super) enum WorkerMsg {
    /// The connection is through: register, send what is unacknowledged.
    Connected { address: String, results_dir: Option<String> },
    /// A frame from the scheduler.
    Frame(ToWorker),
    /// The slots queued events (`SlotEvents`): take them all.
    SlotEvents,
    /// Send the reports gathered so far (queued behind the reports already
    /// in the mailbox, so that one frame carries them all).
    Flush,
    /// The `Connection` wrote the report frames it was given: the next
    /// ones may go (one batch at a time, so that reports finished while
    /// one is written share the next frame).
    Written,
    /// Fail functions past their time limit.
    CheckLimits,
    /// The grace of a canceled child is over.
    KillChild { task: TaskId, pid: u32 },
    /// SIGTERM or Ctrl-C: drain, then exit.
    Stop,
    /// The drain took too long: leave the rest to other workers.
    DrainTimeout,
    /// The allocation ends within the walltime margin: drain and leave.
    Walltime,
    /// A slot's executor has imported the preloaded modules (`all`: the
    /// wait for them is over, whatever their state).
    Warmed { all: bool },
}

/// What a slot tells its worker, in order.
pub(super) enum SlotEvent {
    /// It finished an attempt.
    Done(Done),
    /// What an attempt runs as.
    Running(Running),
    /// Pinned tasks its result completed, beyond the one it runs itself.
    Ready(Vec<Assignment>),
}

/// The slots' events for the `Worker`, in one queue: a slot sends the
/// `Worker` a message only when the queue was empty, and the `Worker` takes
/// the whole queue, so a burst of short attempts costs one message (and
/// one wake-up of the worker's thread), not one per attempt.
#[derive(Default)]
pub(super) struct SlotEvents(std::sync::Mutex<Vec<SlotEvent>>);

impl SlotEvents {
    /// Queues an event; `false` if the `Worker` is gone.
    pub(super) fn push(&self, e: SlotEvent, worker: &ractor::ActorRef<WorkerMsg>) -> bool {
        let first = {
            let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
            q.push(e);
            q.len() == 1
        };
        !first || worker.cast(WorkerMsg::SlotEvents).is_ok()
    }

    /// Everything queued, oldest first.
    pub(super) fn take(&self) -> Vec<SlotEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An attempt handed to the slots, with what they need to run it.
pub(super) struct Run {
    pub a: Assignment,
    /// This worker's id when it was handed out (`ACTORD_WORKER`).
    pub worker: WorkerId,
    /// A py task's function: its key in the executors' cache and its pickle.
    pub function: Option<(u64, Bytes)>,
}

/// An attempt a slot finished.
pub(super) struct Done {
    pub report: TaskReport,
    /// Its result is an input of other tasks (kept for pins).
    pub keep: bool,
    /// The slot gave its result to the pins already.
    pub pins_done: bool,
}

/// What a slot says to its worker while it runs an attempt.
pub(super) enum Running {
    /// A child process runs the attempt (cmd, py): what a cancel stops.
    Child { task: TaskId, pid: u32, cmd: bool },
    /// A function with a time limit started.
    Deadline { task: TaskId, attempt: u32, limit_ms: u64 },
}

/// A slot's thread panicked while it ran this attempt: the error its
/// actor fails with, for the worker to report.
#[derive(Debug, thiserror::Error)]
#[error("slot {slot} panicked running {task} (attempt {attempt}): {message}")]
pub(super) struct SlotPanic {
    pub slot: u32,
    pub task: TaskId,
    pub attempt: u32,
    pub keep: bool,
    /// `NAME panicked: MESSAGE`, the task's error.
    pub message: String,
}
