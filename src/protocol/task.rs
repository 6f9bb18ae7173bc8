//! What a task is on the wire: its spec as a client submits it, its kind,
//! its dependencies, and how an attempt ended.

use crate::ids::JobId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Named amounts (`gpus`, `mem` in bytes, …) a worker has or a task needs.
pub type Resources = std::collections::BTreeMap<String, u64>;

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
    /// How long one attempt is expected to run (milliseconds): it goes only
    /// to a worker whose allocation lasts that long (its time limit counts
    /// when it has none). Unlike the limit, nothing is stopped for outlasting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_request_ms: Option<u64>,
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
            time_request_ms: None,
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
    /// A result too large to travel inline (over `worker.inline_result`):
    /// the worker wrote it to the results store; this says where.
    Stored(StoredResult),
}

/// A result in the results store (`crate::results_store`): its file,
/// relative to the store (`<job>/<task>-<attempt>.bin`), its size, and the
/// SHA-256 of its bytes (lowercase hex), checked by whoever reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    pub path: String,
    pub size: u64,
    pub checksum: String,
}

impl Outcome {
    /// The task succeeded (its result inline or in the store).
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. } | Outcome::Stored(_))
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
