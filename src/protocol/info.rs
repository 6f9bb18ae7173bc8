//! What the scheduler answers admin requests with (`actord ctl …`): workers,
//! tasks, jobs, the journal, the status at a glance.

use super::{NannySlot, Resources};
use crate::ids::{JobId, WorkerId};
use serde::{Deserialize, Serialize};

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
    /// The results store, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_dir: Option<String>,
    /// The stored results the journal refers to: how many, how many bytes.
    #[serde(default)]
    pub results: StoredSize,
}

/// Files and bytes of the results store that the scheduler's jobs refer to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSize {
    pub files: u64,
    pub bytes: u64,
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
