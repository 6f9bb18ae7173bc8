//! The simulated worker process: what the worker (`src/actors/worker/`) does with each
//! message (queue, pins, cancels, steals, re-registration, acknowledged
//! reports), without threads or sockets; and the simulation's effect sink.

use crate::core::Effects;
use crate::ids::{ConnId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{Assignment, Outcome, Resources, TaskReport, ToClient, ToNanny, ToWorker};
use bytes::Bytes;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;

/// What a simulated worker sends back while handling a message.
pub enum Reply {
    Released(Vec<TaskId>),
    Register,
}

pub struct SimWorker {
    pub pid: u32,
    pub slots: u32,
    pub resources: Resources,
    /// `None`: the process lives but has lost its connection.
    pub conn: Option<ConnId>,
    pub wid: Option<WorkerId>,
    /// Stopped (SIGSTOP): it reads, runs and sends nothing.
    pub hung: bool,
    pub ignores_steals: bool,
    /// Forges reports for tasks it was never given.
    pub hostile: bool,
    pub draining: bool,
    /// Messages from the scheduler not read yet, in order.
    pub inbox: VecDeque<ToWorker>,
    /// Tasks received, in order; the first `slots` of them are running.
    pub queue: Vec<Assignment>,
    /// Pinned tasks waiting for inputs produced here, with those missing.
    pub pinned: Vec<(Assignment, Vec<TaskId>)>,
    /// Results of tasks run here (`false`: failed), until acknowledged.
    pub results: HashMap<TaskId, bool>,
    /// Tasks told to stop: reported as canceled when their slot gets to them.
    pub canceled: HashSet<TaskId>,
    pub unsent: Vec<TaskReport>,
    pub unacked: Vec<(u64, Vec<TaskReport>)>,
    pub next_batch: u64,
    pub last_beat: u64,
    /// Every task it was ever handed (a hostile one forges only others).
    pub given: HashSet<TaskId>,
}

impl SimWorker {
    pub fn new(pid: u32, slots: u32, resources: Resources) -> SimWorker {
        SimWorker {
            pid,
            slots,
            resources,
            conn: None,
            wid: None,
            hung: false,
            ignores_steals: false,
            hostile: false,
            draining: false,
            inbox: VecDeque::new(),
            queue: Vec::new(),
            pinned: Vec::new(),
            results: HashMap::default(),
            canceled: HashSet::default(),
            unsent: Vec::new(),
            unacked: Vec::new(),
            next_batch: 1,
            last_beat: 0,
            given: HashSet::default(),
        }
    }

    /// Running tasks, as `Register` lists them.
    pub fn running(&self) -> Vec<(TaskId, u32)> {
        let n = (self.slots as usize).min(self.queue.len());
        self.queue[..n]
            .iter()
            .filter(|a| !self.canceled.contains(&a.task))
            .map(|a| (a.task, a.attempt))
            .collect()
    }

    /// A new connection (or a `Reregister`): queued and pinned tasks are
    /// dropped (the scheduler requeues them), running ones are kept.
    pub fn drop_queued(&mut self) {
        let n = (self.slots as usize).min(self.queue.len());
        for a in self.queue.drain(n..) {
            self.canceled.remove(&a.task);
        }
        self.pinned.clear();
    }

    /// A new connection: unacknowledged reports are sent again, renumbered.
    pub fn reconnected(&mut self, conn: ConnId) {
        self.drop_queued();
        self.results.clear();
        self.conn = Some(conn);
        self.wid = None;
        self.inbox.clear();
        let mut again: Vec<TaskReport> = self.unacked.drain(..).flat_map(|(_, r)| r).collect();
        again.append(&mut self.unsent);
        self.unsent = again;
        self.next_batch = 1;
    }

    /// Handles one message; returns what it sends back.
    pub fn handle(&mut self, msg: ToWorker) -> Option<Reply> {
        match msg {
            ToWorker::Registered { worker } => self.wid = Some(worker),
            ToWorker::Assign { tasks, .. } if !self.draining => {
                let (pins, plain): (Vec<_>, Vec<_>) =
                    tasks.into_iter().partition(|t| !t.pending_inputs.is_empty());
                self.queue.extend(plain);
                for a in pins {
                    self.pin(a);
                }
            }
            ToWorker::Assign { .. } => {}
            ToWorker::Ack { batch } => {
                while self.unacked.first().is_some_and(|(b, _)| *b <= batch) {
                    for r in self.unacked.remove(0).1 {
                        self.results.remove(&r.task);
                    }
                }
            }
            ToWorker::Steal { tasks } => {
                if self.ignores_steals {
                    return None;
                }
                let n = (self.slots as usize).min(self.queue.len());
                let mut given = Vec::new();
                let mut i = n;
                while i < self.queue.len() {
                    if tasks.contains(&self.queue[i].task) {
                        given.push(self.queue.remove(i).task);
                    } else {
                        i += 1;
                    }
                }
                return Some(Reply::Released(given));
            }
            ToWorker::Cancel { tasks } => {
                for t in tasks {
                    let before = self.pinned.len();
                    self.pinned.retain(|(a, _)| a.task != t);
                    if self.pinned.len() == before && self.queue.iter().any(|a| a.task == t) {
                        self.canceled.insert(t);
                    }
                }
            }
            ToWorker::Reregister { .. } => {
                self.drop_queued();
                self.wid = None;
                return Some(Reply::Register);
            }
            ToWorker::Retire => self.draining = true,
            ToWorker::Error { .. } | ToWorker::Shutdown => {}
        }
        None
    }

    fn pin(&mut self, a: Assignment) {
        let mut missing = Vec::new();
        for (_, dep) in &a.pending_inputs {
            match self.results.get(dep) {
                Some(true) => {}
                Some(false) => return, // an input failed here: dropped
                None => missing.push(*dep),
            }
        }
        if missing.is_empty() {
            self.queue.push(a);
        } else {
            self.pinned.push((a, missing));
        }
    }

    /// Finishes running task `i` (< slots) with `ok`, or as canceled.
    pub fn finish(&mut self, i: usize, ok: bool) {
        let a = self.queue.remove(i);
        let outcome = if self.canceled.remove(&a.task) {
            Outcome::err("canceled")
        } else if ok {
            Outcome::Ok { result: Bytes::from(rmp_serde::to_vec(&(a.task.idx, a.attempt)).expect("encodes")) }
        } else {
            Outcome::err("boom")
        };
        let done = outcome.is_ok();
        self.results.insert(a.task, done);
        self.unsent.push(TaskReport {
            task: a.task,
            attempt: a.attempt,
            outcome,
            micros: 1_000,
            executor_died: false,
            lost_inputs: Vec::new(),
        });
        // Pinned tasks waiting for it: run when complete, dropped if it failed.
        let mut failed = vec![a.task];
        if done {
            failed.clear();
            for (_, missing) in &mut self.pinned {
                missing.retain(|t| *t != a.task);
            }
            let (ready, waiting): (Vec<_>, Vec<_>) = self.pinned.drain(..).partition(|(_, m)| m.is_empty());
            self.pinned = waiting;
            self.queue.extend(ready.into_iter().map(|(a, _)| a));
        }
        while let Some(f) = failed.pop() {
            let (gone, kept): (Vec<_>, Vec<_>) = self.pinned.drain(..).partition(|(_, m)| m.contains(&f));
            self.pinned = kept;
            failed.extend(gone.into_iter().map(|(a, _)| a.task));
        }
    }

    /// Tasks it may hand back when draining: queued, not running, and pinned.
    pub fn take_unstarted(&mut self) -> Vec<TaskId> {
        let n = (self.slots as usize).min(self.queue.len());
        let mut out: Vec<TaskId> = self.queue.drain(n..).map(|a| a.task).collect();
        out.extend(self.pinned.drain(..).map(|(a, _)| a.task));
        for t in &out {
            self.canceled.remove(t);
        }
        out
    }
}

#[derive(Default)]
/// The simulation's effect sink: messages to workers are routed, the
/// journal is kept for restarts; the rest is dropped.
pub(super) struct SimFx {
    pub(super) workers: Vec<(ConnId, ToWorker)>,
    pub(super) journal: Vec<Record>,
}

impl Effects for SimFx {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        self.workers.push((conn, msg));
    }
    fn to_worker_after_flush(&mut self, conn: ConnId, msg: ToWorker) {
        self.workers.push((conn, msg));
    }
    fn to_client(&mut self, _: ConnId, _: ToClient) {}
    fn to_nanny(&mut self, _: ConnId, _: ToNanny) {}
    fn journal(&mut self, record: Record) {
        self.journal.push(record);
    }
    fn close(&mut self, _: ConnId) {}
}
