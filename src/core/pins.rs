//! Pinning: dependents sent to a worker ahead of inputs it produces itself,
//! and the one way a task leaves a worker (`Core::unhold`), which takes back
//! whatever was pinned there behind it.

use super::compact::Stored;
use super::queue::{assign, requeue};
use super::{Core, Effects, TaskState};
use crate::ids::{TaskId, WorkerId};
use crate::protocol::{Assignment, Outcome, ToWorker};

impl Core {
    /// The one way a task leaves a worker that holds it: reported, given
    /// back, handed back by a draining worker, canceled, failed, or
    /// finished by another worker's report. The worker no longer holds it,
    /// nobody asks for it back, and the tasks pinned there behind it
    /// (transitively) are taken back too: they wait again, or are ready if
    /// their inputs are all done, and the worker is told to drop them (sent
    /// by `schedule`). False if `wid` did not hold it.
    pub fn unhold(&mut self, wid: WorkerId, tid: TaskId, how: Leave) -> bool {
        self.stealing.remove(&tid);
        let Some(task) = self.find_task(tid) else { return false };
        let shape = task.shape.clone();
        let Some(w) = self.workers.find_worker_mut(wid) else { return false };
        if !w.release(&tid, &shape.resources) {
            return false;
        }
        self.get_task_mut(tid).local_inputs.clear();
        // (Per report: no list is made unless something pinned is dropped.)
        let mut stack = Vec::new();
        let mut next = Some(tid);
        while let Some(t) = next.take().or_else(|| stack.pop()) {
            // `t`'s dependents do not change below: they are read in place.
            let n = self.find_task(t).map_or(0, |t| t.dependents.len());
            for i in 0..n {
                let d = self.get_task(t).dependents[i];
                let Some(dt) = self.find_task(d) else { continue };
                if dt.state != TaskState::Assigned(wid) || !dt.local_inputs.contains(&t) {
                    continue;
                }
                if how == Leave::ResultHere && t == tid {
                    self.get_task_mut(d).local_inputs.retain(|x| *x != tid);
                    continue;
                }
                let shape = dt.shape.clone();
                self.workers
                    .find_worker_mut(wid)
                    .expect("holds its pinned task")
                    .release(&d, &shape.resources);
                self.stealing.remove(&d);
                self.get_task_mut(d).local_inputs.clear();
                self.unpinned.push((wid, d));
                if how == Leave::Elsewhere {
                    // It may have started there (its input finished there)
                    // and will report "canceled": that attempt is void.
                    let task = self.get_task_mut(d);
                    task.void_attempts = task.void_attempts.max(task.attempts);
                    self.mark_dropped(wid, d);
                    requeue(self, d, false);
                } else {
                    requeue(self, d, true); // it never started there
                }
                stack.push(d);
            }
        }
        true
    }
}

/// Why a task leaves a worker, for what was pinned there behind it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Leave {
    /// It reported the task's result: what is pinned behind it runs there.
    ResultHere,
    /// It did not produce a result there (it failed there, or was given
    /// back unstarted): nothing pinned behind it started there.
    Unproduced,
    /// Anything else (given back, canceled, finished by another worker):
    /// what is pinned behind it may have started there, and is dropped.
    Elsewhere,
}

impl Core {
    /// `wid` may still hold a copy of `tid` that it will report as canceled:
    /// nothing of `tid` goes back to it until then (see `Worker::dropped`).
    pub fn mark_dropped(&mut self, wid: WorkerId, tid: TaskId) {
        let now = self.last_tick.unwrap_or(0);
        if let Some(w) = self.workers.find_worker_mut(wid) {
            w.dropped.insert(tid, now);
        }
    }
}

/// Tells workers to drop the pinned tasks taken back from them (one message
/// per worker), before anything new is handed to them.
pub(super) fn send_unpinned(core: &mut Core, fx: &mut impl Effects) {
    if core.unpinned.is_empty() {
        return;
    }
    let mut list = std::mem::take(&mut core.unpinned);
    list.sort();
    list.dedup();
    for chunk in list.chunk_by(|a, b| a.0 == b.0) {
        if let Some(w) = core.workers.find_worker(chunk[0].0) {
            fx.to_worker(w.conn, ToWorker::Cancel { tasks: chunk.iter().map(|(_, t)| *t).collect() });
        }
    }
}

/// Pins, breadth first from `roots` (tasks held by `wid`), the dependents
/// whose unfinished dependencies are all held by `wid`, while it has room;
/// at most one per slot of each root, so that a fan-out still spreads
/// across workers. Roots left unexplored wait in `pin_frontier`.
pub(super) fn pin(
    core: &mut Core,
    wid: WorkerId,
    roots: Vec<TaskId>,
    room: &mut usize,
    batch: &mut Vec<Assignment>,
) {
    let slots = core.workers.get_worker(wid).slots.max(1) as usize;
    // This round's roots (and what gets pinned behind them) first, then
    // those left from earlier rounds; only the new ones are looked at when
    // room runs out, so a long frontier costs nothing per round.
    let mut queue: std::collections::VecDeque<TaskId> = roots.into();
    let mut frontier = core.pin_frontier.remove(&wid).unwrap_or_default();
    // Roots with a dependent that could be pinned but for room.
    let worth = |core: &Core, t: TaskId| {
        core.find_task(t).is_some_and(|t| t.dependents.iter().any(|d| pinnable(core, wid, *d).is_some()))
    };
    loop {
        let (root, old) = match queue.pop_front() {
            Some(r) => (r, false),
            None => match frontier.pop_front() {
                Some(r) => (r, true),
                None => break,
            },
        };
        let Some(r) = core.find_task(root).filter(|t| t.state == TaskState::Assigned(wid)) else { continue };
        if *room == 0 {
            if old || worth(core, root) {
                frontier.push_front(root);
            }
            for t in queue {
                if worth(core, t) {
                    frontier.push_back(t);
                }
            }
            break;
        }
        let mut pinned_here = 0;
        // `root`'s dependents do not change below: they are read in place.
        for i in 0..r.dependents.len() {
            if *room == 0 || pinned_here == slots {
                break;
            }
            let d = core.get_task(root).dependents[i];
            let Some(pending) = pinnable(core, wid, d) else { continue };
            let dt = core.find_task(d).expect("pinnable task");
            let inputs = dt
                .deps
                .iter()
                .map(|x| match core.outcome(*x) {
                    Some(Outcome::Ok { result }) => result,
                    _ => bytes::Bytes::new(),
                })
                .collect();
            batch.push(assign(core, wid, d, inputs, pending));
            *room -= 1;
            pinned_here += 1;
            queue.push_back(d);
        }
    }
    // Bounded: forgetting old roots only loses chances to pin.
    while frontier.len() > MAX_PIN_FRONTIER {
        frontier.pop_front();
    }
    if !frontier.is_empty() {
        core.pin_frontier.insert(wid, frontier);
    }
}

/// Roots kept per worker for pinning once it has room again.
const MAX_PIN_FRONTIER: usize = 65_536;

/// A waiting task whose one unfinished dependency is held by `wid` (its
/// other dependencies finished): the (position, task) of the input still to
/// come; `None` otherwise. One, so that pinning follows chains without
/// gathering whole subtrees of a reduction on one worker.
fn pinnable(core: &Core, wid: WorkerId, tid: TaskId) -> Option<Vec<(u32, TaskId)>> {
    let t = core.find_task(tid)?;
    if t.state != TaskState::Waiting
        || !t.shape.resources.is_empty()
        || core.workers.get_worker(wid).dropped.contains_key(&tid)
    {
        return None;
    }
    let mut pending = Vec::new();
    for (i, d) in t.deps.iter().enumerate() {
        let dep = core.find_task(*d)?;
        match (dep.outcome, &dep.state) {
            (Stored::Ok(_) | Stored::Ref(_), _) => {}
            (Stored::None, TaskState::Assigned(w)) if *w == wid && pending.is_empty() && !dep.repeat_here => {
                pending.push((i as u32, *d))
            }
            _ => return None,
        }
    }
    Some(pending)
}
