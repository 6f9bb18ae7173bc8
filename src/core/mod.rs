//! The scheduler's state machine. Pure: no I/O, no clock, no async. Handlers
//! update `Core` and record what must happen in an `Effects` sink; the
//! scheduler actor executes those effects (journal first, then messages).

mod check;
mod graph;
mod handlers;
mod pins;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_py;
#[cfg(test)]
mod tests_submit;

pub use graph::{key_index, task_name, ReadyEntry};
pub use handlers::*;
pub use pins::Leave;

use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{Outcome, SlotInfo, TaskKind, ToClient, ToNanny, ToWorker};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, BinaryHeap};

/// Everything a handler may cause outside the core.
pub trait Effects {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker);
    fn to_client(&mut self, conn: ConnId, msg: ToClient);
    fn to_nanny(&mut self, conn: ConnId, msg: ToNanny);
    /// Appended and flushed before any message of the same step is sent.
    fn journal(&mut self, record: Record);
    /// Close a connection after its pending messages are sent.
    fn close(&mut self, conn: ConnId);
}

/// Tunables of the scheduling policy (from config/actord.toml).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How much queued work (µs of estimated run time) each slot may hold
    /// beyond the task it runs, so that workers never wait for the scheduler.
    pub prefetch_target_us: u64,
    /// Upper bound on queued tasks per slot, whatever the estimate.
    pub max_prefetch_per_slot: u32,
    /// A task that has killed this many workers fails instead of looping.
    pub max_worker_kills: u32,
    /// A worker silent for this long is declared lost (hung, or stopped).
    pub heartbeat_timeout_us: u64,
    /// First delay before a failed task is retried; doubles per failure.
    pub retry_backoff_us: u64,
    /// Finished jobs are forgotten this long after they finish (`None`: kept
    /// until forgotten by hand).
    pub retention_us: Option<u64>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            prefetch_target_us: 20_000,
            max_prefetch_per_slot: 2048,
            max_worker_kills: 3,
            heartbeat_timeout_us: 10_000_000,
            retry_backoff_us: 1_000_000,
            retention_us: None,
        }
    }
}

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

pub struct Task {
    pub key: Option<String>,
    /// Per-task override of `CoreConfig::max_worker_kills`.
    pub max_worker_kills: Option<u32>,
    pub kind: TaskKind,
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
    pub killed: Vec<WorkerId>,
    /// Set once, by the first report of any attempt.
    pub outcome: Option<Outcome>,
    /// Tasks whose results it takes, in order.
    pub deps: Vec<TaskId>,
    /// Tasks that take its result.
    pub dependents: Vec<TaskId>,
    /// Dependencies not finished yet.
    pub waiting: u32,
    pub priority: i32,
    /// Failed attempts it may still retry, and failed attempts so far.
    pub retries: u32,
    pub failures: u32,
    pub time_limit_ms: Option<u64>,
    pub resources: crate::protocol::Resources,
    /// Pinned ahead of its inputs: the dependencies its worker produces
    /// itself and has not reported yet (each `Assigned` to that worker).
    pub local_inputs: Vec<TaskId>,
    /// Worker processes (see `process_key`) handed an attempt of it, or
    /// reclaiming one: only their reports count. `ANY_PROCESS` after a
    /// restart, when any worker may hold an attempt of the previous run.
    pub holders: Vec<u64>,
    /// Attempts up to this one were voided by `ctl retry`: late reports of
    /// them are dropped.
    pub void_attempts: u32,
    /// Its worker was handed an earlier attempt too, whose result or copy it
    /// may still hold (a worker knows tasks by id): nothing is pinned behind it.
    pub repeat_here: bool,
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
    h.finish().min(ANY_PROCESS - 1)
}

impl Task {
    /// Whether a report from worker process `process` may be recorded.
    pub fn may_report(&self, process: u64, attempt: u32) -> bool {
        attempt > self.void_attempts && self.holders.iter().any(|h| *h == process || *h == ANY_PROCESS)
    }

    /// Remembers that worker process `process` got an attempt.
    pub fn add_holder(&mut self, process: u64) {
        if !self.holders.contains(&process) {
            if self.holders.len() >= MAX_HOLDERS {
                // Oldest first; a replayed task keeps accepting anyone.
                let at = usize::from(self.holders[0] == ANY_PROCESS);
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
}

pub struct Worker {
    pub conn: ConnId,
    pub host: String,
    pub pid: u32,
    pub slots: u32,
    pub functions: Vec<String>,
    pub nanny: Option<crate::protocol::NannySlot>,
    /// Tasks handed to this worker and not yet reported.
    pub assigned: HashSet<TaskId>,
    /// Moving average of its tasks' run time; `None` until it reports one.
    pub avg_task_us: Option<f64>,
    pub last_seen: u64,
    /// Draining: finishing what it runs, taking nothing new.
    pub draining: bool,
    /// Resident memory of its process, from its last heartbeat.
    pub rss_kib: u64,
    /// What it has beyond its slots, and how much of it its tasks hold.
    pub resources: crate::protocol::Resources,
    pub used: crate::protocol::Resources,
    /// Function table entries (job, func) sent to it on this connection.
    pub functions_sent: HashSet<(JobId, u32)>,
    /// Its process (`process_key`): whose earlier attempts it may report.
    pub process: u64,
    /// Tasks it was told to drop (and when) that it may still hold and
    /// report as canceled: none goes back to it meanwhile, as it knows tasks
    /// by id, not by attempt. Cleared by a report, or after a heartbeat timeout.
    pub dropped: HashMap<TaskId, u64>,
}

/// A nanny connected to this scheduler, and what its slots are doing.
pub struct NannyRecord {
    pub conn: ConnId,
    pub host: String,
    pub pid: u32,
    pub slots: Vec<SlotInfo>,
}

impl Worker {
    /// Whether a task needing `req` fits next to what this worker holds now.
    pub fn fits(&self, req: &crate::protocol::Resources) -> bool {
        req.iter().all(|(k, n)| {
            let used = self.used.get(k).copied().unwrap_or(0);
            used.checked_add(*n).is_some_and(|total| total <= self.resources.get(k).copied().unwrap_or(0))
        })
    }

    /// Whether a task needing `req` could ever run here.
    pub fn could_run(&self, req: &crate::protocol::Resources) -> bool {
        req.iter().all(|(k, n)| self.resources.get(k).copied().unwrap_or(0) >= *n)
    }

    pub fn hold(&mut self, tid: TaskId, req: &crate::protocol::Resources) {
        if self.assigned.insert(tid) {
            for (k, n) in req.iter().filter(|(_, n)| **n > 0) {
                let u = self.used.entry(k.clone()).or_default();
                *u = u.saturating_add(*n);
            }
        }
    }

    /// Forgets a task this worker held; false if it did not hold it.
    pub fn release(&mut self, tid: &TaskId, req: &crate::protocol::Resources) -> bool {
        if !self.assigned.remove(tid) {
            return false;
        }
        for (k, n) in req {
            if let Some(u) = self.used.get_mut(k) {
                *u = u.saturating_sub(*n);
                if *u == 0 {
                    self.used.remove(k);
                }
            }
        }
        true
    }

    /// How many tasks this worker may hold at once (running + prefetched).
    pub fn capacity(&self, cfg: &CoreConfig) -> usize {
        if self.draining {
            return 0;
        }
        let per_slot = match self.avg_task_us {
            None => 1,
            Some(avg) => ((cfg.prefetch_target_us as f64 / avg.max(1.0)) as u64)
                .min(cfg.max_prefetch_per_slot as u64) as usize,
        };
        (self.slots as usize).saturating_mul(1 + per_slot)
    }
}

/// The scheduler's whole state.
#[derive(Default)]
pub struct Core {
    pub config: CoreConfig,
    pub jobs: HashMap<JobId, Job>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub worker_by_conn: HashMap<ConnId, WorkerId>,
    /// Tasks waiting for a worker: highest priority, then submission order.
    /// Entries whose task is no longer `Ready` are skipped when popped.
    pub ready: BinaryHeap<ReadyEntry>,
    /// Failed tasks waiting out their retry backoff: (due time, task).
    pub delayed: Vec<(u64, TaskId)>,
    /// After a restart, nothing is scheduled until this time, so that workers
    /// can reclaim the tasks they kept running.
    pub hold_until: Option<u64>,
    pub next_job_seq: u64,
    /// Tasks some worker was asked to give back (work stealing).
    pub stealing: HashSet<TaskId>,
    pub next_assign_seq: u64,
    pub next_worker: u64,
    /// Reports dropped because the task already had its outcome (record-once).
    pub duplicate_reports: u64,
    /// Reports dropped because the reporting worker never held the task.
    pub foreign_reports: u64,
    /// The worker process behind each worker connection, registered or stale.
    pub conn_process: HashMap<ConnId, u64>,
    /// Pinned tasks taken back from their workers, to tell them (see `unhold`).
    pub unpinned: Vec<(WorkerId, TaskId)>,
    /// When the last tick ran: a tick much later than that means the
    /// scheduler itself was stopped (see `on_tick`).
    pub last_tick: Option<u64>,
    /// Connections whose worker was declared lost while the connection
    /// stayed open; `true` once told to re-register.
    pub stale_conns: HashMap<ConnId, bool>,
    pub nannies: BTreeMap<u64, NannyRecord>,
    pub nanny_by_conn: HashMap<ConnId, u64>,
    pub next_nanny: u64,
    /// Outcomes recorded since start-up (replay included): for throughput.
    pub outcomes_total: u64,
    /// Draining for a shutdown: no task is handed out any more.
    pub stopping: bool,
    /// Tasks on a worker whose dependents may still be pinned there once it
    /// has room (see `schedule`).
    pub pin_frontier: HashMap<WorkerId, std::collections::VecDeque<TaskId>>,
    /// Inside `replay`: tasks are queued once, at its end.
    pub replaying: bool,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Core { config, ..Default::default() }
    }

    /// Worker ids of journal epoch `epoch` start past those of all earlier
    /// epochs, so that an id never names two processes (`w1` at epoch 0,
    /// `w4294967297` at epoch 1, ...).
    pub fn start_epoch(&mut self, epoch: u64) {
        self.next_worker = self.next_worker.max(epoch.saturating_mul(1 << 32).min(u64::MAX >> 1));
    }

    /// The earliest time something is due that no message will trigger: a
    /// retry whose backoff is over, the end of the reclaim grace period.
    pub fn next_deadline(&self) -> Option<u64> {
        let retry = self.delayed.iter().map(|(t, _)| *t).min();
        match (retry, self.hold_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The tasks a worker runs now: it runs them in the order it got them,
    /// one per slot, so the `slots` oldest it holds that wait for no input
    /// (a pinned task waits for one it produces itself). The rest are queued.
    pub fn running_on(&self, w: &Worker) -> Vec<TaskId> {
        let mut held: Vec<(u64, TaskId)> = w
            .assigned
            .iter()
            .filter_map(|tid| self.find_task(*tid).filter(|t| t.waiting == 0).map(|t| (t.assigned_seq, *tid)))
            .collect();
        held.sort_unstable();
        held.into_iter().take(w.slots as usize).map(|(_, tid)| tid).collect()
    }

    /// How many of a worker's tasks run now and how many wait in its queue.
    pub fn running_queued(&self, w: &Worker) -> (u32, u32) {
        let held = w.assigned.len().min(u32::MAX as usize) as u32;
        let running = (self.running_on(w).len() as u32).min(held);
        (running, held - running)
    }

    /// Every task running on some worker now (see `running_on`).
    pub fn running_tasks(&self) -> HashSet<TaskId> {
        self.workers.values().flat_map(|w| self.running_on(w)).collect()
    }

    /// Tasks handed to workers and not yet reported.
    pub fn assigned_count(&self) -> usize {
        self.workers.values().map(|w| w.assigned.len()).sum()
    }

    pub fn find_task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.idx as usize)
    }

    pub fn get_task_mut(&mut self, id: TaskId) -> &mut Task {
        match self.jobs.get_mut(&id.job).and_then(|j| j.tasks.get_mut(id.idx as usize)) {
            Some(t) => t,
            None => panic!("task {id} is not in the core"),
        }
    }
}
