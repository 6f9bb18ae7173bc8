//! Client ⇄ scheduler: `FromClient` (jobs, watches, admin requests) and
//! `ToClient` (answers, outcomes); the answers' tables are in `info`.

use super::{
    JobDetail, JobInfo, JournalInfo, NannyInfo, Outcome, StatusInfo, TaskInfo, TaskSpec, WorkerInfo,
};
use crate::ids::{JobId, WorkerId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromClient {
    /// A whole job; answered with `Submitted` once it is durable.
    Submit {
        job: JobId,
        name: String,
        tasks: Vec<TaskSpec>,
        /// The job's function table: one cloudpickled callable per entry,
        /// indexed by `TaskKind::Py::func`.
        #[serde(default)]
        functions: Vec<Bytes>,
    },
    /// Stream the job's outcomes: all finished so far, then each as it comes, then `JobDone`.
    Watch { job: JobId },
    /// List registered workers.
    Workers,
    /// List connected nannies and their slots.
    Nannies,
    /// Ask the worker's nanny to restart it.
    RestartWorker { worker: WorkerId },
    /// Drop a finished job and its results, here and in the journal.
    Forget { job: JobId },
    /// The state of every task of a job; answered with `Tasks`.
    Tasks { job: JobId },
    /// Every job with its progress; answered with `Jobs`.
    Jobs,
    /// Stop the scheduler for good: nannies and workers are told to exit;
    /// answered with `Done`.
    Shutdown,
    /// Why a task is where it is (waiting on what, needing what); answered with `Done`.
    Explain { job: JobId, key: String },
    /// The scheduler's state at a glance; answered with `Status`.
    Status,
    /// Stop streaming this job's outcomes; answered with `Unwatched`.
    Unwatch { job: JobId },
    /// Which index the task named `key` has in the job.
    Resolve { job: JobId, key: String },
    /// Cancel the job's unfinished tasks named by `keys` (all of them if empty).
    Cancel { job: JobId, keys: Vec<String> },
    /// One job's progress by state and its timing; answered with `Job`.
    Job { job: JobId },
    /// Run the job's failed and canceled tasks again (and the dependents
    /// that failed with them); answered with `Done`.
    Retry { job: JobId },
    /// Drain a worker: no new tasks, queued ones go elsewhere, running ones
    /// finish, then it stops (its nanny does not restart it); answered with `Done`.
    RetireWorker { worker: WorkerId },
    /// The journal: path, size, records, last flush; answered with `Journal`.
    Journal,
    /// Stop handing out tasks, wait for the running ones to finish and be
    /// journaled, then stop as `Shutdown` does; answered with `Done` at once.
    DrainAndShutdown,
    /// Stop the scheduler only (`Shutdown` or, with `drain`,
    /// `DrainAndShutdown`), as SIGTERM does: nannies and workers keep
    /// waiting for the next scheduler; answered with `Done`.
    StopKeepingWorkers { drain: bool },
    /// Change the scheduler's log filter (e.g. `debug`, `actord=trace`);
    /// answered with `Done`.
    LogLevel { level: String },
    /// Change the number of nanny-started worker processes to `workers`:
    /// nannies start new ones, or retire (drain, then stop) the least busy;
    /// answered with `Done`.
    Scale { workers: u32 },
    /// A piece (at most 1 MiB from `offset`) of a file of the results store,
    /// for a peer that cannot see the store; answered with `StoredChunk`.
    ReadStored { path: String, offset: u64 },
    /// The client found task `idx`'s stored result (`path`, as its outcome
    /// said) missing or corrupt. The scheduler reads it too, against its own
    /// reference; if it agrees, the task runs again. Answered with
    /// `StoredRerun` (wait for the task again) or `Error`.
    StoredLost { job: JobId, idx: u32, path: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToClient {
    Submitted {
        job: JobId,
        tasks: u32,
    },
    /// First answer to `Watch`: the job's size.
    Watching {
        job: JobId,
        tasks: u32,
    },
    Outcomes {
        job: JobId,
        outcomes: Vec<TaskOutcome>,
    },
    JobDone {
        job: JobId,
        finished: u32,
        failed: u32,
    },
    Workers {
        workers: Vec<WorkerInfo>,
    },
    Nannies {
        nannies: Vec<NannyInfo>,
    },
    Tasks {
        job: JobId,
        tasks: Vec<TaskInfo>,
    },
    Jobs {
        jobs: Vec<JobInfo>,
    },
    Status {
        status: StatusInfo,
    },
    /// Answer to `Unwatch`: no more outcomes of this job follow.
    Unwatched {
        job: JobId,
    },
    /// Answer to `Resolve`.
    Resolved {
        job: JobId,
        key: String,
        idx: u32,
    },
    /// An admin request was carried out.
    Done {
        message: String,
    },
    /// Answer to `Job`.
    Job {
        job: JobDetail,
    },
    /// Answer to `Journal`.
    Journal {
        journal: JournalInfo,
    },
    Error {
        job: Option<JobId>,
        message: String,
    },
    /// Answer to `ReadStored`: `data` from `offset` of a file of `total` bytes.
    StoredChunk {
        path: String,
        offset: u64,
        total: u64,
        data: bytes::Bytes,
    },
    /// Answer to `StoredLost`: the task runs again (or already did); watch
    /// its job for the new outcome.
    StoredRerun {
        job: JobId,
        idx: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub idx: u32,
    pub attempts: u32,
    pub outcome: Outcome,
}
