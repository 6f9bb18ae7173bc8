//! The ready queue, and the two moves of a task between it and a worker:
//! `assign` (a new attempt, held there) and `requeue` (back in line).

use super::{Core, TaskState};
use crate::ids::{TaskId, WorkerId};
use crate::protocol::Assignment;
use std::cmp::Ordering;

/// A task a worker no longer holds goes back in line: ready, or waiting if
/// it was pinned there ahead of its inputs. `unstarted`: that attempt never
/// began, so the next one keeps its number.
pub(super) fn requeue(core: &mut Core, tid: TaskId, unstarted: bool) {
    core.stealing.remove(&tid);
    let task = core.get_task_mut(tid);
    if unstarted {
        task.attempts = task.attempts.saturating_sub(1);
    }
    if task.waiting > 0 {
        task.state = TaskState::Waiting;
    } else {
        task.state = TaskState::Ready;
        core.push_ready(tid);
    }
}

/// Hands one task to a worker: a new attempt, held there until reported.
pub(super) fn assign(
    core: &mut Core,
    wid: WorkerId,
    tid: TaskId,
    inputs: Vec<bytes::Bytes>,
    pending_inputs: Vec<(u32, TaskId)>,
) -> Assignment {
    core.next_assign_seq += 1;
    let seq = core.next_assign_seq;
    let process = core.workers.get_worker(wid).process;
    let task = core.get_task_mut(tid);
    // (A reclaiming worker may have claimed any attempt number.)
    task.attempts = task.attempts.saturating_add(1);
    task.held_attempt = task.attempts;
    task.assigned_seq = seq;
    task.state = TaskState::Assigned(wid);
    task.local_inputs = pending_inputs.iter().map(|(_, d)| *d).collect();
    task.repeat_here = task.holders.contains(process);
    task.add_holder(process);
    let job = core.jobs.get_job(tid.job);
    let task = &job.tasks[tid.idx as usize];
    let a = Assignment {
        task: tid,
        key: job.key(tid.idx).map(str::to_string),
        attempt: task.attempts,
        kind: job.kind(tid.idx),
        inputs,
        time_limit_ms: task.shape.time_limit_ms,
        resources: task.shape.resources.clone(),
        pending_inputs,
        has_dependents: !task.dependents.is_empty(),
        stored_inputs: stored_inputs(core, tid),
    };
    core.workers.find_worker_mut(wid).expect("a registered worker").hold(tid, &a.resources);
    a
}

/// An entry of the ready queue: higher priority first, then submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyEntry {
    pub priority: i32,
    /// `(job seq << 32) | index`: submission order across jobs, and the task
    /// (`Core::ready_task`), in 16 bytes an entry.
    pub order: u64,
}

impl Ord for ReadyEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.cmp(&other.priority).then_with(|| other.order.cmp(&self.order))
    }
}

impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Core {
    /// Queues a task that is `Ready`.
    pub fn push_ready(&mut self, tid: TaskId) {
        let Some(job) = self.jobs.find_job(tid.job) else { return };
        let priority = job.tasks[tid.idx as usize].priority;
        self.ready.push(ReadyEntry { priority, order: (job.seq << 32) | tid.idx as u64 });
    }

    /// The task a ready-queue entry stands for, if its job is still here.
    pub(super) fn ready_task(&self, e: &ReadyEntry) -> Option<TaskId> {
        let job = *self.job_by_seq.get(&(e.order >> 32))?;
        Some(TaskId { job, idx: e.order as u32 })
    }
}

/// The inputs of a task that are in the results store: (position, where).
fn stored_inputs(core: &Core, tid: TaskId) -> Vec<(u32, crate::protocol::StoredResult)> {
    let Some(task) = core.find_task(tid) else { return Vec::new() };
    let mut out = Vec::new();
    for (i, d) in task.deps.iter().enumerate() {
        let Some(job) = core.jobs.find_job(d.job) else { continue };
        if let Some(super::compact::Stored::Ref(s)) = job.tasks.get(d.idx as usize).map(|t| t.outcome) {
            out.push((i as u32, job.stored[s as usize].clone()));
        }
    }
    out
}
