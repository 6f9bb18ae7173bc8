//! The wire protocol: one serde enum per direction, msgpack with named
//! fields, in 4-byte big-endian length-prefixed frames (see docs/protocol.md).

pub mod conn;

use crate::ids::{JobId, TaskId, WorkerId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use conn::{Conn, ConnError};

/// Named amounts (`gpus`, `mem` in bytes, …) a worker has or a task needs.
pub type Resources = std::collections::BTreeMap<String, u64>;

/// Bump when any message below changes shape.
pub const PROTOCOL_VERSION: u32 = 2;
/// First field of every `Hello`, so a stray connection is told apart at once.
pub const MAGIC: &str = "actord";
/// Default largest frame either side accepts (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Who opens a connection; decides which enums the two sides speak after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    Worker,
    Nanny,
}

/// The first frame of every connection, from the side that connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: String,
    pub protocol: u32,
    pub role: Role,
    /// A fresh random nonce (32 bytes) that the scheduler's proof must cover.
    #[serde(default, with = "serde_bytes")]
    pub nonce: Vec<u8>,
    pub host: String,
    pub pid: u32,
    /// Who runs the peer ($USER), for the scheduler's log of admin requests.
    #[serde(default)]
    pub user: String,
    /// The scheduler epoch the peer read from the scheduler file (0 if none):
    /// a scheduler older than that has been replaced and refuses the peer.
    #[serde(default)]
    pub epoch: u64,
}

/// The scheduler's answer to `Hello`; after `Rejected` it closes the connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        protocol: u32,
        instance: Uuid,
        epoch: u64,
    },
    Rejected {
        error: String,
    },
    /// The scheduler's nonce and its proof of the secret (see
    /// `security::handshake`); the peer answers with `HelloProof`.
    Challenge {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
}

/// The connecting side's proof that it knows the secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloProof {
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A named function from the worker's registry with msgpack arguments.
    Fn {
        name: String,
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    /// An argv run as a child process. `{task}`, `{attempt}`, `{job}` and
    /// `{entry}` in argv and env values are replaced when it runs.
    Cmd {
        argv: Vec<String>,
        /// Extra environment, e.g. `ACTORD_ENTRY` for `--each-line`.
        #[serde(default)]
        env: Vec<(String, String)>,
        /// Send stdout and stderr to /dev/null instead of files.
        #[serde(default)]
        discard_output: bool,
        /// Directory to run in (absolute); `None`: the job's directory
        /// under the worker's work dir.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// A Python callable run by the worker's Python executor: `func` indexes
    /// the job's function table (`Submit::functions`), `args` is opaque to
    /// Rust (the client's pickled arguments).
    Py { func: u32, args: Bytes },
}

/// One task as a client submits it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Optional name, unique in the job; the task's index names it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kind: TaskKind,
    /// Fail the task once this many workers died running it (default:
    /// the scheduler's `max_worker_kills`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_worker_kills: Option<u32>,
    /// Tasks whose results this one takes, in order; it runs once they finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<Dep>,
    /// Higher runs first; equal priorities run in submission order.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// How often a failed attempt is tried again (with backoff) before the
    /// task fails.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    /// An attempt running longer than this (milliseconds) is stopped and
    /// fails with "time limit exceeded".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// What one attempt needs of its worker beyond a slot (e.g. `gpus: 1`).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl TaskSpec {
    pub fn new(kind: TaskKind) -> TaskSpec {
        TaskSpec {
            key: None,
            kind,
            max_worker_kills: None,
            deps: Vec::new(),
            priority: 0,
            retries: 0,
            time_limit_ms: None,
            resources: Resources::new(),
        }
    }
}

/// A dependency: a task of this job (`job` nil) or of an earlier job, by key
/// (the task's `key`, or its index as a string when it has none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dep {
    #[serde(default)]
    pub job: Option<JobId>,
    pub key: String,
}

impl Dep {
    pub fn key(key: impl Into<String>) -> Dep {
        Dep { job: None, key: key.into() }
    }
}

/// How one attempt of a task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// msgpack-encoded return value.
    Ok { result: Bytes },
    Err {
        error: String,
        /// The pickled Python exception of a failed `py` task, when it could
        /// be pickled; the client raises it again. Always sent (nil for
        /// other errors), so a client can read it without checking.
        #[serde(default)]
        exception: Option<Bytes>,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    /// A failure with no Python exception attached.
    pub fn err(error: impl Into<String>) -> Outcome {
        Outcome::Err { error: error.into(), exception: None }
    }
}

/// One entry of a job's function table, sent to a worker the first time one
/// of its tasks needs it on this connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PyFunction {
    pub job: JobId,
    pub func: u32,
    /// The cloudpickled callable, opaque to Rust.
    pub pickle: Bytes,
}

// ---- worker <-> scheduler ----

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
}

// ---- client <-> scheduler ----

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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub idx: u32,
    pub attempts: u32,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub slots: u32,
    /// Tasks it runs now: at most one per slot.
    pub running: u32,
    /// Tasks handed to it beyond those, waiting in its queue.
    #[serde(default)]
    pub queued: u32,
    /// Nanny pid and slot, for workers a nanny started.
    pub nanny: Option<NannySlot>,
    #[serde(default)]
    pub resources: Resources,
    /// Milliseconds since the scheduler last heard from it.
    #[serde(default)]
    pub last_heard_ms: u64,
    /// Resident memory of the worker process, from its last heartbeat (0: none yet).
    #[serde(default)]
    pub rss_kib: u64,
    /// Retiring or shutting down: it takes no new tasks.
    #[serde(default)]
    pub draining: bool,
}

// ---- nanny <-> scheduler ----

/// What a nanny slot is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    Running {
        pid: u32,
    },
    /// The worker exited; a new one starts after `in_ms` (backoff).
    Restarting {
        in_ms: u64,
        last_exit: String,
    },
    /// Too many restarts within the restart window: the slot is left empty.
    Failed {
        reason: String,
    },
    /// An operator retired its worker: the slot is left empty.
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub slot: u32,
    pub state: SlotState,
    /// Restarts since the nanny started.
    pub restarts: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromNanny {
    /// First message after the handshake, and again after a reconnect.
    Register { host: String, pid: u32, slots: Vec<SlotInfo> },
    /// A slot changed state.
    Slot { info: SlotInfo },
    /// The worker of this slot is over the memory limit and is killed right
    /// after this message: its running tasks fail (or retry) saying so.
    OverMemory { slot: u32, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToNanny {
    Registered {
        nanny: u64,
    },
    /// Restart the worker in this slot (an operator asked).
    RestartWorker {
        slot: u32,
    },
    /// Retire the worker in this slot: SIGTERM (it drains), no restart.
    RetireWorker {
        slot: u32,
    },
    /// The scheduler shuts down for good (`ctl shutdown`): stop every
    /// worker and exit, instead of waiting for another scheduler.
    Shutdown,
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NannyInfo {
    pub id: u64,
    pub host: String,
    pub pid: u32,
    pub slots: Vec<SlotInfo>,
}

/// One task as `actord ctl tasks` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub idx: u32,
    pub key: Option<String>,
    /// waiting, ready, unschedulable, retrying, running, finished, failed, canceled
    pub state: String,
    pub attempts: u32,
    pub worker: Option<WorkerId>,
    /// The failure, or why it cannot be scheduled.
    pub error: Option<String>,
}

/// One job as `actord ctl job` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub info: JobInfo,
    /// Tasks by state (the states of `TaskInfo`), only those with some.
    pub states: std::collections::BTreeMap<String, u32>,
    /// Seconds from submission to its last outcome, or to now.
    pub elapsed_s: f64,
    /// Outcomes per second since submission.
    pub tasks_per_s: f64,
    /// Attempts beyond the first, over all its tasks.
    pub retried_attempts: u64,
}

/// The journal as `actord ctl journal` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalInfo {
    /// `None`: results are kept in memory only (`--no-journal`).
    pub path: Option<String>,
    pub bytes: u64,
    /// Records replayed at start-up plus those appended since.
    pub records: u64,
    pub records_replayed: u64,
    /// Flushes (fsyncs) since start-up, and how long ago the last one ended.
    pub flushes: u64,
    pub last_flush_ms_ago: Option<u64>,
    pub epoch: u64,
}

/// One job as `actord ctl jobs` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub name: String,
    pub tasks: u32,
    pub finished: u32,
    pub failed: u32,
    /// Tasks running on workers now (see `ctl workers`).
    pub running: u32,
    /// Tasks handed to workers and waiting in their queues.
    #[serde(default)]
    pub queued: u32,
    /// Microseconds since the Unix epoch.
    pub submitted_at: u64,
    pub done_at: Option<u64>,
}

/// The scheduler at a glance (`actord ctl status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub epoch: u64,
    pub workers: u32,
    pub slots: u32,
    pub nannies: u32,
    pub jobs: u32,
    pub jobs_done: u32,
    pub tasks: u64,
    pub tasks_finished: u64,
    pub tasks_failed: u64,
    /// Tasks running on workers (at most one per slot).
    pub tasks_running: u64,
    /// Tasks handed to workers beyond their slots, waiting in their queues.
    #[serde(default)]
    pub tasks_prefetched: u64,
    /// Tasks ready and waiting for a worker.
    pub tasks_queued: u64,
    /// Late reports dropped by the record-once rule.
    pub duplicate_reports: u64,
    #[serde(default)]
    pub uptime_s: u64,
    #[serde(default)]
    pub journal_path: Option<String>,
    #[serde(default)]
    pub journal_bytes: u64,
    /// Outcomes per second over the last ten seconds or so.
    #[serde(default)]
    pub tasks_per_s: f64,
    /// Draining before a shutdown: no new tasks are handed out.
    #[serde(default)]
    pub draining: bool,
    /// Reports dropped because the reporting worker was never handed the task.
    #[serde(default)]
    pub foreign_reports: u64,
}
