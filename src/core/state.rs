//! `Core`: the scheduler's whole state, and the queries over it that
//! handlers and views share.

use super::deadlines::{Deadlines, Lane};
use super::maps::{TaskMap, WorkerMap};
use super::{CoreConfig, NannyRecord, ReadyEntry, Task, Worker};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, BinaryHeap};

/// The scheduler's whole state.
#[derive(Default)]
pub struct Core {
    pub(super) config: CoreConfig,
    pub(super) jobs: TaskMap,
    pub(super) workers: WorkerMap,
    /// Tasks waiting for a worker: highest priority, then submission order.
    /// Entries whose task is no longer `Ready` are skipped when popped.
    pub(super) ready: BinaryHeap<ReadyEntry>,
    /// Each job by its submission order (`ReadyEntry::order` names it so).
    pub(super) job_by_seq: HashMap<u64, JobId>,
    /// Retries, the end of the grace period, retention, heartbeat timeouts.
    pub(super) deadlines: Deadlines,
    /// After a restart, nothing is scheduled until this time, so that workers
    /// can reclaim the tasks they kept running.
    pub(super) hold_until: Option<u64>,
    pub(super) next_job_seq: u64,
    /// Tasks some worker was asked to give back (work stealing).
    pub(super) stealing: HashSet<TaskId>,
    pub(super) next_assign_seq: u64,
    pub(super) next_worker: u64,
    /// Reports dropped because the task already had its outcome (record-once).
    pub(super) duplicate_reports: u64,
    /// Reports dropped because the reporting worker never held the task.
    pub(super) foreign_reports: u64,
    /// The worker process behind each worker connection, registered or stale.
    pub(super) conn_process: HashMap<ConnId, u64>,
    /// Pinned tasks taken back from their workers, to tell them (see `unhold`).
    pub(super) unpinned: Vec<(WorkerId, TaskId)>,
    /// When the last tick ran: a tick much later than that means the
    /// scheduler itself was stopped (see `on_tick`).
    pub(super) last_tick: Option<u64>,
    /// Connections whose worker was declared lost while the connection
    /// stayed open; `true` once told to re-register.
    pub(super) stale_conns: HashMap<ConnId, bool>,
    pub(super) nannies: BTreeMap<u64, NannyRecord>,
    pub(super) nanny_by_conn: HashMap<ConnId, u64>,
    pub(super) next_nanny: u64,
    /// Outcomes recorded since start-up (replay included): for throughput.
    pub(super) outcomes_total: u64,
    /// Draining for a shutdown: no task is handed out any more.
    pub(super) stopping: bool,
    /// Tasks on a worker whose dependents may still be pinned there once it
    /// has room (see `schedule`).
    pub(super) pin_frontier: HashMap<WorkerId, std::collections::VecDeque<TaskId>>,
    /// Inside `replay`: tasks are queued once, at its end.
    pub(super) replaying: bool,
    /// A handler asked for a scheduling pass: `finish_step` runs it.
    pub(super) schedule_asked: bool,
    /// Bounded aggregates of the recent past, for the status page.
    pub(super) history: super::history::History,
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
        self.jobs.find_task(id)
    }

    pub fn get_task(&self, id: TaskId) -> &Task {
        self.jobs.get_task(id)
    }

    pub fn get_task_mut(&mut self, id: TaskId) -> &mut Task {
        self.jobs.get_task_mut(id)
    }

    /// A task's outcome, if it has one (its result is copied out of the arena).
    pub fn outcome(&self, id: TaskId) -> Option<crate::protocol::Outcome> {
        self.jobs
            .find_job(id.job)
            .filter(|j| (id.idx as usize) < j.tasks.len())
            .and_then(|j| j.outcome(id.idx))
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The worker registered on `conn`, if any.
    pub fn worker_by_conn(&self, conn: ConnId) -> Option<WorkerId> {
        self.workers.by_conn(conn)
    }

    /// Outcomes recorded since start-up (replay included): for throughput.
    pub fn outcomes_total(&self) -> u64 {
        self.outcomes_total
    }

    /// Draining for a shutdown (`ctl shutdown --drain`).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Jobs, and tasks over all jobs.
    pub fn job_count(&self) -> (usize, usize) {
        (self.jobs.len(), self.jobs.values().map(|j| j.tasks.len()).sum())
    }

    /// The connections of the nannies, and of the workers no nanny started:
    /// whom to tell when the scheduler shuts down for good.
    pub fn farewell_conns(&self) -> (Vec<ConnId>, Vec<ConnId>) {
        let nannies = self.nannies.values().map(|n| n.conn).collect();
        let alone = self.workers.values().filter(|w| w.nanny.is_none()).map(|w| w.conn).collect();
        (nannies, alone)
    }
}
