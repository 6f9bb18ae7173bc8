//! Tasks and jobs as the core keeps them: a task's state, attempts and
//! holders; a job's tasks, keys, shared shapes, argument arena and function
//! table. A task's record is kept short: a million of them are common.

use super::compact::{ArgsRef, Holders, RareVec, ResultArena, Stored, TaskKeys};
use crate::ids::{ConnId, TaskId, WorkerId};
use crate::protocol::{Outcome, Resources, TaskKind};
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Some dependencies have not finished yet.
    Waiting,
    Ready,
    /// Failed, and waiting out its retry backoff.
    Delayed,
    Assigned(WorkerId),
    Finished,
    Failed,
    Canceled,
}

/// What the tasks of a job have in common, stored once per job and shared
/// by every task submitted with it (an array or a map has one).
#[derive(Debug, PartialEq)]
pub struct Shape {
    /// The task's kind without its own arguments (`Fn::args` and `Py::args`
    /// are in the job's arena, see `Task::args`).
    pub kind: TaskKind,
    pub resources: Resources,
    pub time_limit_ms: Option<u64>,
    /// How long an attempt is expected to run: it goes only to a worker
    /// whose allocation lasts that long.
    pub time_request_ms: Option<u64>,
    /// Per-task override of `CoreConfig::max_worker_kills`.
    pub max_worker_kills: Option<u32>,
    /// Failed attempts it may retry.
    pub retries: u32,
}

pub struct Task {
    pub shape: Arc<Shape>,
    /// Its `Fn`/`Py` arguments in `Job::args`.
    pub args: ArgsRef,
    pub state: TaskState,
    /// Attempts handed out so far (the current one is `attempts`).
    pub attempts: u32,
    /// The attempt its worker runs while `Assigned` (a reclaimed one may be
    /// older than `attempts`).
    pub held_attempt: u32,
    /// Order of its latest assignment among all assignments: tells which of
    /// a dead worker's tasks were running and which only queued.
    pub assigned_seq: u64,
    /// Workers lost while running this task, to stop a poison task.
    pub killed: RareVec<WorkerId>,
    /// Set once, by the first report of any attempt (`Job::outcome` has it).
    pub outcome: Stored,
    /// Tasks whose results it takes, in order.
    pub deps: Box<[TaskId]>,
    /// Tasks that take its result.
    pub dependents: RareVec<TaskId>,
    /// Dependencies not finished yet.
    pub waiting: u32,
    pub priority: i32,
    /// Failed attempts so far.
    pub failures: u32,
    /// Pinned ahead of its inputs: the dependencies its worker produces
    /// itself and has not reported yet (each `Assigned` to that worker).
    pub local_inputs: RareVec<TaskId>,
    /// Worker processes (see `process_key`) handed an attempt of it, or
    /// reclaiming one: only their reports count. `ANY_PROCESS` after a
    /// restart, when any worker may hold an attempt of the previous run.
    pub holders: Holders,
    /// Attempts up to this one were voided by `ctl retry`: late reports of
    /// them are dropped.
    pub void_attempts: u32,
    /// Its worker was handed an earlier attempt too, whose result or copy it
    /// may still hold (a worker knows tasks by id): nothing is pinned behind it.
    pub repeat_here: bool,
}

impl Shape {
    /// How long an attempt is expected to run (µs): its time request, else
    /// its time limit; `None` when it has neither.
    pub fn expected_us(&self) -> Option<u64> {
        self.time_request_ms.or(self.time_limit_ms).map(|ms| ms.saturating_mul(1000))
    }
}

/// Most worker processes remembered per task as holders of an attempt.
pub const MAX_HOLDERS: usize = 8;

/// A holder that stands for every worker process (a task replayed from the
/// journal: an attempt may run anywhere since before the restart).
pub const ANY_PROCESS: u64 = u64::MAX;

/// A worker process, the same across its connections and registrations:
/// its host and pid (distinct pids on one host never collide).
pub fn process_key(host: &str, pid: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    host.hash(&mut h);
    pid.hash(&mut h);
    // (Never `ANY_PROCESS`, nor the one below it that marks no holder.)
    h.finish().min(ANY_PROCESS - 2)
}

impl Task {
    /// Whether a report from worker process `process` may be recorded.
    pub fn may_report(&self, process: u64, attempt: u32) -> bool {
        attempt > self.void_attempts && self.holders.iter().any(|h| h == process || h == ANY_PROCESS)
    }

    /// Remembers that worker process `process` got an attempt.
    pub fn add_holder(&mut self, process: u64) {
        if !self.holders.contains(process) {
            if self.holders.len() >= MAX_HOLDERS {
                // Oldest first; a replayed task keeps accepting anyone.
                let at = usize::from(self.holders.get(0) == Some(ANY_PROCESS));
                self.holders.remove(at.min(self.holders.len() - 1));
            }
            self.holders.push(process);
        }
    }
}

pub struct Job {
    pub name: String,
    pub tasks: Vec<Task>,
    pub finished: u32,
    pub failed: u32,
    /// Connections that asked to see this job's outcomes as they come.
    pub watchers: Vec<ConnId>,
    pub submitted_at: u64,
    /// Submission order across restarts (journaled).
    pub seq: u64,
    /// When its last task got its outcome.
    pub done_at: Option<u64>,
    /// Explicit task keys → index (tasks without one go by their index).
    pub keys: HashMap<String, u32>,
    /// ... and index → key, for the few tasks that have one.
    pub key_of: TaskKeys,
    /// The `Fn` and `Py` arguments of its tasks, one after the other.
    pub args: Vec<u8>,
    /// Its tasks' results, and their errors (with the pickled exception).
    pub results: ResultArena,
    pub errors: Vec<(String, Option<bytes::Bytes>)>,
    /// Where its tasks' stored results are (the bytes are in the store).
    pub stored: Vec<crate::protocol::StoredResult>,
    /// The function table of its `py` tasks (opaque pickles), by `func`.
    pub functions: Vec<bytes::Bytes>,
    /// Digest of the tasks and functions it was submitted with: tells a
    /// resubmission after a lost reply from another job under the same id.
    pub digest: u64,
}

impl Job {
    pub fn is_done(&self) -> bool {
        (self.finished + self.failed) as usize == self.tasks.len()
    }

    /// Task `idx`'s outcome, if it has one.
    pub fn outcome(&self, idx: u32) -> Option<Outcome> {
        match self.tasks[idx as usize].outcome {
            Stored::None => None,
            Stored::Ok(r) => Some(Outcome::Ok { result: bytes::Bytes::copy_from_slice(self.results.get(r)) }),
            Stored::Err(e) => {
                let (error, exception) = self.errors[e as usize].clone();
                Some(Outcome::Err { error, exception })
            }
            Stored::Ref(s) => Some(Outcome::Stored(self.stored[s as usize].clone())),
        }
    }

    /// Task `idx`'s error, if it failed.
    pub fn error(&self, idx: u32) -> Option<&str> {
        match self.tasks[idx as usize].outcome {
            Stored::Err(e) => Some(&self.errors[e as usize].0),
            _ => None,
        }
    }

    /// Keeps an outcome in the job's arena (or list of errors), for a task.
    pub fn store(&mut self, outcome: &Outcome) -> Stored {
        match outcome {
            Outcome::Ok { result } => Stored::Ok(self.results.push(result)),
            Outcome::Err { error, exception } => {
                self.errors.push((error.clone(), exception.clone()));
                Stored::Err((self.errors.len() - 1) as u32)
            }
            Outcome::Stored(s) => {
                self.stored.push(s.clone());
                Stored::Ref((self.stored.len() - 1) as u32)
            }
        }
    }

    /// The key task `idx` was submitted with, if any.
    pub fn key(&self, idx: u32) -> Option<&str> {
        self.key_of.get(idx)
    }

    /// Task `idx`'s kind with its arguments, as a worker gets it.
    pub fn kind(&self, idx: u32) -> TaskKind {
        let t = &self.tasks[idx as usize];
        let args = &self.args[t.args.range()];
        match &t.shape.kind {
            TaskKind::Fn { name, .. } => TaskKind::Fn { name: name.clone(), args: args.to_vec() },
            TaskKind::Py { func, .. } => {
                TaskKind::Py { func: *func, args: bytes::Bytes::copy_from_slice(args) }
            }
            cmd @ TaskKind::Cmd { .. } => cmd.clone(),
        }
    }
}
