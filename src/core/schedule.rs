//! The scheduling pass: ready tasks to workers with room (round robin,
//! resources, pinning), and work stealing when the queue runs dry.

use super::graph::{self};
use super::queue::{assign, requeue};
use super::{Core, Effects, Leave, TaskState, Worker};
use crate::ids::{ConnId, TaskId, WorkerId};
use crate::protocol::{Assignment, PyFunction, TaskKind, ToWorker};

impl Core {
    /// Handlers only ask for a scheduling pass (see `Core::ask_for_scheduling`);
    /// this runs it, once, at the end of each event: the actor calls it after
    /// every message it hands to the core, as the tests and the simulation do.
    pub fn finish_step(&mut self, fx: &mut impl Effects) {
        if std::mem::take(&mut self.schedule_asked) {
            schedule(self, fx);
        } else {
            super::pins::send_unpinned(self, fx);
        }
    }
}

/// Hands ready tasks to workers with free capacity, spreading them one at
/// a time across workers (round robin), one `Assign` message per worker. A
/// task that needs resources goes to a worker that has them free, and one
/// expected to run for a while (`Shape::expected_us`) to a worker whose
/// allocation lasts that long; if none has right now, it waits in the queue.
fn schedule(core: &mut Core, fx: &mut impl Effects) {
    // Dropped pins first: the same task may be handed to the same worker below.
    super::pins::send_unpinned(core, fx);
    if core.workers.is_empty() || core.hold_until.is_some() || core.stopping {
        return;
    }
    let cfg = core.config.clone();
    let mut free: Vec<(WorkerId, usize, Vec<Assignment>)> = core
        .workers
        .iter()
        .filter_map(|(id, w)| {
            let free = w.capacity(&cfg).saturating_sub(w.assigned.len());
            (free > 0).then(|| (*id, free, Vec::new()))
        })
        .collect();
    // The least loaded workers pick first (an idle one before a busy one).
    free.sort_by_key(|(id, _, _)| {
        let w = core.workers.get_worker(*id);
        (w.assigned.len() * 1024 / w.slots.max(1) as usize, *id)
    });
    let mut skipped = Vec::new();
    let mut next = 0;
    let mut open = free.len();
    while open > 0 {
        let Some(entry) = core.ready.pop() else { break };
        let Some(tid) = core.ready_task(&entry) else { continue };
        let Some(task) = core.find_task(tid).filter(|t| t.state == TaskState::Ready) else { continue };
        // The next worker (round robin) with room that has what the task needs.
        let n = free.len();
        let need = task.shape.expected_us();
        let pick = (0..n).map(|k| (next + k) % n).find(|&k| {
            let w = core.workers.get_worker(free[k].0);
            free[k].1 > 0
                && (task.shape.resources.is_empty() || w.fits(&task.shape.resources))
                && w.lasts(need, core.clock)
                && !w.dropped.contains_key(&tid)
        });
        let Some(k) = pick else {
            skipped.push(entry);
            continue;
        };
        next = (k + 1) % n;
        let wid = free[k].0;
        let inputs = graph::inputs(core, tid);
        free[k].2.push(assign(core, wid, tid, inputs, Vec::new()));
        free[k].1 -= 1;
        if free[k].1 == 0 {
            open -= 1;
        }
    }
    core.ready.extend(skipped);
    // Pinning: a dependent whose unfinished inputs are all produced on one
    // worker goes there ahead of them, and runs the moment they finish there
    // (no round trip through the scheduler per link of a chain).
    for (wid, room, batch) in &mut free {
        let roots: Vec<TaskId> = batch.iter().map(|a| a.task).collect();
        super::pins::pin(core, *wid, roots, room, batch);
    }
    for (wid, _, batch) in free {
        if !batch.is_empty() {
            let functions = functions_to_send(core, wid, &batch);
            fx.to_worker(core.workers.get_worker(wid).conn, ToWorker::Assign { tasks: batch, functions });
        }
    }
    if core.ready.is_empty() {
        steal(core, fx);
    }
}

/// The function table entries `batch` needs that worker `wid` has not been
/// sent on this connection (each goes to each worker connection once).
fn functions_to_send(core: &mut Core, wid: WorkerId, batch: &[Assignment]) -> Vec<PyFunction> {
    let mut out = Vec::new();
    for a in batch {
        let TaskKind::Py { func, .. } = a.kind else { continue };
        let key = (a.task.job, func);
        let w = core.workers.find_worker_mut(wid).expect("a registered worker");
        if w.functions_sent.contains(&key) {
            continue;
        }
        let pickle = core.jobs.find_job(a.task.job).and_then(|j| j.functions.get(func as usize));
        if let Some(pickle) = pickle {
            w.functions_sent.insert(key);
            out.push(PyFunction { job: a.task.job, func, pickle: pickle.clone() });
        }
    }
    out
}

/// Least estimated work (µs per slot) queued on a worker for stealing from
/// it to pay for the round trip.
const STEAL_MIN_QUEUED_US: f64 = 1_000.0;

/// Work stealing: when nothing is queued here but a worker has idle slots
/// while another holds tasks queued beyond its slots, ask the busy one to
/// give back its newest queued tasks (about half), for the idle ones to take
/// — unless what it has queued is so short that it finishes it sooner.
fn steal(core: &mut Core, fx: &mut impl Effects) {
    let idle: usize = core
        .workers
        .values()
        .filter(|w| !w.draining)
        .map(|w| (w.slots as usize).saturating_sub(w.assigned.len()))
        .sum();
    if idle == 0 {
        return;
    }
    let Some((&busy, w)) = core
        .workers
        .iter()
        .filter(|(_, w)| w.assigned.len() > w.slots as usize)
        .max_by_key(|(_, w)| w.assigned.len() - w.slots as usize)
    else {
        return;
    };
    let queued = w.assigned.len() - w.slots as usize;
    // Not worth a round trip: the busy worker gets through its queue sooner.
    if w.avg_task_us.is_some_and(|avg| avg * queued as f64 / f64::from(w.slots.max(1)) < STEAL_MIN_QUEUED_US)
    {
        return;
    }
    let want = idle.min(queued.div_ceil(2));
    let takers: Vec<&Worker> =
        core.workers.values().filter(|w| !w.draining && w.assigned.len() < w.slots as usize).collect();
    let newest: Vec<(u64, TaskId)> = w
        .assigned
        .iter()
        .filter(|t| !core.stealing.contains(t))
        // A pinned task waits for inputs produced there: it stays; and one
        // that no idle worker has the resources or the time for would only come back.
        .filter(|t| {
            core.find_task(**t).is_some_and(|t| {
                let need = t.shape.expected_us();
                t.waiting == 0
                    && takers.iter().any(|w| {
                        (t.shape.resources.is_empty() || w.fits(&t.shape.resources))
                            && w.lasts(need, core.clock)
                    })
            })
        })
        .map(|t| (core.find_task(*t).map_or(0, |t| t.assigned_seq), *t))
        .collect();
    let mut newest = newest;
    newest.sort_unstable_by(|a, b| b.cmp(a));
    let tasks: Vec<TaskId> = newest.into_iter().take(want).map(|(_, t)| t).collect();
    if tasks.is_empty() {
        return;
    }
    tracing::debug!(worker = %busy, tasks = tasks.len(), idle, queued, "asking a busy worker to give back queued tasks");
    core.stealing.extend(tasks.iter().copied());
    let conn = w.conn;
    fx.to_worker(conn, ToWorker::Steal { tasks });
}

/// A worker gave back queued tasks it was asked for: they go to others.
pub fn on_released(core: &mut Core, conn: ConnId, tasks: Vec<TaskId>) {
    let Some(wid) = core.workers.by_conn(conn) else { return };
    tracing::debug!(worker = %wid, given = tasks.len(), "worker gave back tasks");
    for tid in &tasks {
        core.stealing.remove(tid);
        let Some(task) = core.find_task(*tid) else { continue };
        if task.state != TaskState::Assigned(wid) {
            continue;
        }
        core.unhold(wid, *tid, Leave::Unproduced);
        // That attempt never started: the next one keeps its number.
        requeue(core, *tid, true);
    }
    // Asked-for tasks it did not give back had started (or run where they
    // were pinned): they stay in `stealing`, so nobody asks for them again
    // until they are reported.
    core.ask_for_scheduling();
}
