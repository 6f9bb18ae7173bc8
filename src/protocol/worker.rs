//! Worker ⇄ scheduler: `FromWorker` and `ToWorker`, and what they carry
//! (reports of finished attempts, assignments).

use super::{Outcome, PyFunction, Resources, StoredResult, TaskKind};
use crate::ids::{TaskId, WorkerId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// First message after the handshake.
    Register {
        slots: u32,
        host: String,
        pid: u32,
        /// Names of the `fn` tasks this worker can run.
        functions: Vec<String>,
        /// The nanny slot this worker runs in, if a nanny started it.
        #[serde(default)]
        nanny: Option<NannySlot>,
        /// Tasks this worker is running (as `[task, attempt]`), claimed back
        /// after a reconnect so that a new scheduler does not run them again.
        #[serde(default)]
        running: Vec<(TaskId, u32)>,
        /// What it has beyond its slots (e.g. `gpus: 2`).
        #[serde(default)]
        resources: Resources,
        /// When its allocation ends (its walltime), milliseconds since the
        /// Unix epoch: it is handed no task expected to run past that.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        walltime_end_ms: Option<u64>,
    },
    /// Finished attempts, many per frame.
    Reports {
        /// Numbers this worker's report frames on this connection (1, 2, …),
        /// so the scheduler can acknowledge many at once.
        batch: u64,
        reports: Vec<TaskReport>,
    },
    /// Sent every heartbeat interval, so a hung worker can be told from a
    /// busy one; carries the worker process's resident memory.
    Heartbeat {
        #[serde(default)]
        rss_kib: u64,
    },
    /// The worker is shutting down on purpose (its nanny or a signal asked).
    Goodbye,
    /// Answer to `Steal`: these queued tasks were taken out of its queue (the
    /// others had started already).
    Released { tasks: Vec<TaskId> },
    /// The worker is draining: it takes no new tasks and hands back these
    /// queued ones; it finishes and reports its running ones, then says `Goodbye`.
    Draining { returned: Vec<TaskId> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: Outcome,
    /// Run time of the attempt, for the scheduler's prefetch estimate.
    pub micros: u64,
    /// The attempt killed the process that ran it (its Python executor died
    /// mid-task): counted like a worker death for this task, not as a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executor_died: bool,
    /// The attempt could not start: these inputs' stored results are
    /// missing or corrupt. Their tasks run again; this one waits for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_inputs: Vec<TaskId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Registered {
        worker: WorkerId,
    },
    /// Tasks to run, many per frame.
    Assign {
        tasks: Vec<Assignment>,
        /// Functions of `py` tasks this worker connection has not been sent
        /// yet, needed by `tasks`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        functions: Vec<PyFunction>,
    },
    Error {
        message: String,
    },
    /// Every report frame up to and including `batch` is durable: the
    /// worker may forget those results.
    Ack {
        batch: u64,
    },
    /// This connection's worker incarnation was declared lost (e.g. it
    /// missed heartbeats): drop queued tasks and `Register` again.
    Reregister {
        reason: String,
    },
    /// Give back these tasks if they have not started (another worker is
    /// idle); answered with `Released`.
    Steal {
        tasks: Vec<TaskId>,
    },
    /// Stop these tasks: a running command is terminated, a running
    /// function is abandoned (its result will be dropped).
    Cancel {
        tasks: Vec<TaskId>,
    },
    /// Finish nothing more and exit: the scheduler shuts down for good
    /// (`ctl shutdown`; sent to workers without a nanny, whose nanny
    /// gets `ToNanny::Shutdown` instead).
    Shutdown,
    /// Retire: hand back queued tasks, finish the running ones, then exit
    /// (as on SIGTERM). Sent to workers without a nanny; a nanny's worker is
    /// retired through `ToNanny::RetireWorker`.
    Retire,
}

/// Which nanny (by pid, on the worker's host) and which of its slots a worker runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NannySlot {
    pub pid: u32,
    pub slot: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskId,
    /// The task's key, if the client named it (e.g. the array index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub attempt: u32,
    /// The results of its dependencies (msgpack), in `deps` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Bytes>,
    pub kind: TaskKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Inputs this worker produces itself: (position in `inputs`, the task
    /// whose result goes there). The task is pinned here ahead of them and
    /// runs as soon as they have finished here; if one of them fails here,
    /// the task is dropped (the scheduler decides what happens to it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_inputs: Vec<(u32, TaskId)>,
    /// Other tasks take its result: the worker keeps it until acknowledged,
    /// for tasks pinned here after it finished.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_dependents: bool,
    /// Inputs in the results store: (position in `inputs`, where it is);
    /// `inputs` holds an empty value there, which the worker fills by
    /// reading the store (checksum checked) before the task runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored_inputs: Vec<(u32, StoredResult)>,
}
