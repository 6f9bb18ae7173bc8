//! Workers and nannies as the core keeps them: what a worker holds, its
//! resources and capacity.

use super::CoreConfig;
use crate::ids::{ConnId, JobId, TaskId};
use crate::protocol::SlotInfo;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

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
    /// When its allocation ends (µs since the epoch; `None`: no end known):
    /// it gets no task expected to run past that.
    pub ends_at: Option<u64>,
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

    /// Whether an attempt expected to run `need_us` (`None`: unknown),
    /// started at `now`, ends before this worker's allocation does.
    pub fn lasts(&self, need_us: Option<u64>, now: u64) -> bool {
        match (self.ends_at, need_us) {
            (Some(end), Some(need)) => now.saturating_add(need) <= end,
            _ => true,
        }
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
