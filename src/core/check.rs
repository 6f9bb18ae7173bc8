//! `Core::sanity_check`: the invariants that tie the core's structures
//! together, asserted by the tests and the simulation after every step.

use super::{Core, TaskState};
use crate::ids::{TaskId, WorkerId};
use crate::protocol::Resources;
use rustc_hash::FxHashSet as HashSet;

impl Core {
    /// Asserts the invariants that tie the structures together.
    pub fn sanity_check(&self) {
        self.check_workers();
        let ready: HashSet<TaskId> = self.ready.iter().filter_map(|e| self.ready_task(e)).collect();
        let delayed: HashSet<TaskId> = self.deadlines.retries().map(|(_, t)| t).collect();
        let mut n_assigned = 0;
        for (jid, job) in &self.jobs {
            let (mut fin, mut failed) = (0, 0);
            for (idx, t) in job.tasks.iter().enumerate() {
                let id = TaskId { job: *jid, idx: idx as u32 };
                let open = t.deps.iter().filter(|d| self.find_task(**d).is_some_and(|d| d.outcome.is_none()));
                match &t.state {
                    TaskState::Ready => assert!(ready.contains(&id), "{id} ready, not queued"),
                    TaskState::Delayed => assert!(delayed.contains(&id), "{id} delayed, not scheduled"),
                    TaskState::Waiting => {
                        assert!(t.waiting > 0, "{id} waiting on nothing");
                        assert_eq!(open.count(), t.waiting as usize, "{id} waiting count");
                    }
                    TaskState::Canceled => {
                        failed += 1;
                        assert!(t.outcome.is_err(), "{id}");
                    }
                    TaskState::Assigned(wid) => {
                        n_assigned += 1;
                        assert_eq!(open.count(), t.waiting as usize, "{id} waiting count");
                        self.check_assigned(id, *wid);
                    }
                    TaskState::Finished => {
                        fin += 1;
                        assert!(t.outcome.is_ok(), "{id}");
                    }
                    TaskState::Failed => {
                        failed += 1;
                        assert!(t.outcome.is_err(), "{id}");
                    }
                }
            }
            assert_eq!((fin, failed), (job.finished, job.failed), "counts of job {jid:?}");
        }
        assert_eq!(n_assigned, self.assigned_count(), "assigned tasks vs tasks held by workers");
        for t in &self.stealing {
            let task = self.find_task(*t).unwrap_or_else(|| panic!("stealing unknown {t}"));
            assert!(matches!(task.state, TaskState::Assigned(_)), "stealing {t}, which is {:?}", task.state);
        }
    }

    /// Connection maps, and what each worker holds and uses.
    fn check_workers(&self) {
        self.workers.check();
        for (wid, w) in self.workers.iter() {
            assert_eq!(self.workers.by_conn(w.conn), Some(*wid), "conn map of {wid}");
            assert_eq!(self.conn_process.get(&w.conn), Some(&w.process), "process of {wid}");
            let mut used = Resources::new();
            for t in &w.assigned {
                let task = self.find_task(*t).unwrap_or_else(|| panic!("{wid} holds unknown {t}"));
                assert_eq!(task.state, TaskState::Assigned(*wid), "{t} on {wid}");
                for (k, n) in task.shape.resources.iter().filter(|(_, n)| **n > 0) {
                    let u = used.entry(k.clone()).or_default();
                    *u = u.saturating_add(*n);
                }
            }
            assert_eq!(used, w.used, "resources in use on {wid}");
        }
        for c in self.stale_conns.keys() {
            assert!(self.conn_process.contains_key(c), "stale {c} of no process");
            assert!(self.workers.by_conn(*c).is_none(), "stale {c} has a worker");
        }
        assert_eq!(self.nanny_by_conn.len(), self.nannies.len());
        for (id, n) in &self.nannies {
            assert_eq!(self.nanny_by_conn.get(&n.conn), Some(id), "conn map of nanny {id}");
        }
    }

    /// A task held by one live worker: that worker's process may report it,
    /// and if it is pinned there ahead of its inputs, those are produced there.
    fn check_assigned(&self, id: TaskId, wid: WorkerId) {
        let t = self.find_task(id).expect("checked task");
        let w = self.workers.find_worker(wid).unwrap_or_else(|| panic!("{id} on gone {wid}"));
        assert!(w.assigned.contains(&id), "{id} on {wid}, which does not hold it");
        assert!(t.may_report(w.process, t.held_attempt), "{wid} may not report {id}, which it holds");
        for d in &t.deps {
            // (A dependency of a job forgotten since counts as done.)
            let Some(dep) = self.find_task(*d) else { continue };
            if dep.outcome.is_none() {
                assert!(t.local_inputs.contains(d), "{id} on {wid} waits for {d}, not pinned behind it");
            }
        }
        for d in &t.local_inputs {
            let dep = self.find_task(*d).expect("local input");
            assert!(
                dep.outcome.is_none() && dep.state == TaskState::Assigned(wid),
                "{id} pinned to {wid} behind {d}, which is {:?} there",
                dep.state
            );
        }
    }
}
