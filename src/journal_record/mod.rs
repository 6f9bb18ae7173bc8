//! The journal's records and the types they hold, owned here and not by the
//! wire protocol: a change to a message cannot change the journal's bytes
//! unnoticed. Conversions from and to wire types are in `protocol::record`.

mod done;
#[cfg(test)]
mod golden_tests;
pub mod msgpack;
mod tasks;
pub mod view;

pub use done::{each_done, DoneList, DoneView, OutcomeView};
pub use tasks::{EncodedTasks, PartTasks, StoredPart, TaskList, TASKS_PER_PART};

use crate::ids::JobId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bump when `Record`, the types below, `JobPart`, the framing or the mark
/// change shape (`golden_tests` fails when their bytes change); opening a
/// journal of another version is refused (no migration).
/// 2: framed records (crc32 + lsn), tombstones, the high-water mark.
pub const JOURNAL_VERSION: u32 = 2;

/// One journal record. Replay applies them through the core: every
/// `JobSubmitted` (in submission order), then every `TasksDone`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// `seq` orders jobs by submission across restarts.
    JobSubmitted {
        job: JobId,
        seq: u64,
        name: String,
        tasks: TaskList,
        /// The job's function table for its `py` tasks.
        #[serde(default)]
        functions: Vec<Bytes>,
        /// The submission's digest (`core::submission_digest`), kept so
        /// that replay need not recompute it; 0 when not known (journals
        /// written before it was kept): replay computes it then.
        #[serde(default)]
        digest: u64,
    },
    /// The first outcomes of some tasks of one job.
    TasksDone { job: JobId, done: DoneList },
    /// The job and its results are gone for good.
    JobForgotten { job: JobId },
    /// An operator asked to run these failed tasks again (`ctl retry`):
    /// their outcomes so far are void, the next ones count.
    TasksRetried { job: JobId, idx: Vec<u32> },
    /// What the status page shows of the past (events, per-job timing),
    /// kept apart from the jobs' records and bounded (see `persistence`).
    History(HistoryRecord),
    /// These finished tasks' stored results were found missing or corrupt
    /// by a reader: their outcomes are void and they run again.
    ResultsLost { job: JobId, idx: Vec<u32> },
}

/// A history record: journaled so that a restarted scheduler still shows
/// what happened before it. Times are µs since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HistoryRecord {
    /// Something an operator wants to see afterwards: a worker joined, was
    /// lost or respawned, the scheduler started, the journal was replayed.
    Event { at: u64, kind: String, text: String },
    /// When a job was submitted and when it finished (if it has).
    JobTimes { job: JobId, submitted_at: u64, done_at: Option<u64> },
}

/// One finished task in a `TasksDone` record (written positionally: the
/// order of the fields is part of the format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoneTask {
    pub idx: u32,
    pub attempt: u32,
    pub outcome: Outcome,
    /// The failure is a cancellation.
    #[serde(default)]
    pub canceled: bool,
}

/// How a task ended, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// msgpack-encoded return value.
    Ok { result: Bytes },
    Err {
        error: String,
        /// The pickled Python exception of a failed `py` task, if any.
        #[serde(default)]
        exception: Option<Bytes>,
    },
    /// A result in the results store: its path relative to the store,
    /// size and SHA-256 (hex). The bytes are never journaled.
    Stored { path: String, size: u64, checksum: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. } | Outcome::Stored { .. })
    }
}

/// Named amounts a task needs (`gpus`, `mem` in bytes, …).
pub type Resources = std::collections::BTreeMap<String, u64>;

/// One task as submitted, as journaled (with named fields; defaults left out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kind: TaskKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_worker_kills: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<Dep>,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Added after version 2 was fixed: left out when none, so older
    /// journals read as they were and none of their bytes change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_request_ms: Option<u64>,
}

impl TaskSpec {
    /// A task of this kind with every option at its default.
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
            time_request_ms: None,
        }
    }

    /// A command task with nothing but its argv.
    pub fn cmd(argv: Vec<String>) -> TaskSpec {
        TaskSpec::new(TaskKind::Cmd { argv, env: Vec::new(), discard_output: false, cwd: None })
    }
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// What a task runs, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    Fn {
        name: String,
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    Cmd {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        discard_output: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    Py {
        func: u32,
        args: Bytes,
    },
}

/// A dependency by key, on this job (`job` nil) or an earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dep {
    #[serde(default)]
    pub job: Option<JobId>,
    pub key: String,
}
