//! `Core`: the scheduler's whole state, and the queries over it that
//! handlers and views share.

use super::deadlines::{Deadlines, Lane};
use super::{CoreConfig, Job, NannyRecord, ReadyEntry, Task, Worker};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, BinaryHeap};

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
    /// Retries, the end of the grace period, retention, heartbeat timeouts.
    pub deadlines: Deadlines,
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
    /// A handler asked for a scheduling pass: `finish_step` runs it.
    pub schedule_asked: bool,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Core { config, ..Default::default() }
    }

    /// Something changed that may let tasks go to workers (a task became
    /// ready, a worker got room): the pass runs once, in `finish_step`.
    pub fn ask_for_scheduling(&mut self) {
        self.schedule_asked = true;
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
        self.deadlines.next(Lane::Wake)
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
