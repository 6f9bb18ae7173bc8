//! Stored results found missing or corrupt by their reader: the tasks that
//! produced them run again (journaled, `Record::ResultsLost`), and the task
//! that needed them waits for them; nothing runs on a wrong value.

use super::compact::Stored;
use super::queue::requeue;
use super::{Core, Effects, Leave, TaskState};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{TaskReport, ToClient};

/// A worker could not start an attempt: some of its inputs' stored results
/// are missing or corrupt (`TaskReport::lost_inputs`). Only the worker
/// holding that attempt is heard; only inputs of that task that are stored
/// results count (a peer cannot void other outcomes).
pub(super) fn on_inputs_lost(core: &mut Core, fx: &mut impl Effects, wid: Option<WorkerId>, r: TaskReport) {
    let task = core.get_task(r.task);
    let Some(wid) = wid.filter(|w| task.state == TaskState::Assigned(*w) && task.held_attempt == r.attempt)
    else {
        return;
    };
    let deps = task.deps.clone();
    let mut by_job: rustc_hash::FxHashMap<JobId, Vec<u32>> = Default::default();
    for p in r.lost_inputs.iter().take(deps.len()) {
        let stored = core.find_task(*p).is_some_and(|t| matches!(t.outcome, Stored::Ref(_)));
        if deps.contains(p) && stored {
            by_job.entry(p.job).or_default().push(p.idx);
        }
    }
    core.unhold(wid, r.task, Leave::Unproduced);
    for (job, mut idx) in by_job {
        idx.sort_unstable();
        idx.dedup();
        for i in &idx {
            let lost = TaskId { job, idx: *i };
            tracing::warn!(task = %lost, reader = %r.task, worker = %wid, "stored result of {lost} is corrupt/missing: re-running");
        }
        fx.journal(Record::ResultsLost { job, idx: idx.clone() });
        for t in rerun_lost(core, job, &idx) {
            core.push_ready(t);
        }
    }
    requeue(core, r.task, false);
    core.ask_for_scheduling();
}

/// Task `task`'s stored result as the scheduler knows it: `None` while it
/// has no outcome (it runs again); an error for a task with another one.
pub fn stored_result_of(core: &Core, task: TaskId) -> Result<Option<crate::protocol::StoredResult>, String> {
    let job = core.jobs.find_job(task.job).ok_or_else(|| format!("no job {}", task.job))?;
    match job.tasks.get(task.idx as usize).map(|t| t.outcome) {
        Some(Stored::Ref(s)) => Ok(Some(job.stored[s as usize].clone())),
        // (Still to run, or running again: the client waits for it.)
        Some(Stored::None) => Ok(None),
        _ => Err(format!("task {task} has no stored result")),
    }
}

/// A client found task `task`'s stored result at `path` missing or
/// corrupt, and the scheduler's own read of it agrees (`why`): the task
/// runs again, and the client is told to wait for it (`StoredRerun`). A
/// reference the task no longer has (it ran again already) is answered the
/// same way; a task without a stored result is an error.
pub fn on_client_stored_lost(
    core: &mut Core,
    fx: &mut impl Effects,
    conn: ConnId,
    task: TaskId,
    path: &str,
    why: &str,
) {
    let Some(job) = core.jobs.find_job(task.job) else {
        let message = format!("no job {}", task.job);
        return fx.to_client(conn, ToClient::Error { job: Some(task.job), message });
    };
    let current = job.tasks.get(task.idx as usize).map(|t| t.outcome);
    match current {
        Some(Stored::Ref(s)) if job.stored[s as usize].path == path => {
            tracing::warn!(task = %task, reader = "a client", %why, "stored result of {task} is corrupt/missing: re-running");
            fx.journal(Record::ResultsLost { job: task.job, idx: vec![task.idx] });
            for t in rerun_lost(core, task.job, &[task.idx]) {
                core.push_ready(t);
            }
            core.ask_for_scheduling();
        }
        // Voided already (another reader found it), or running again.
        Some(Stored::Ref(_)) | Some(Stored::None) => {}
        _ => {
            let message = format!("task {task} has no stored result to run again");
            return fx.to_client(conn, ToClient::Error { job: Some(task.job), message });
        }
    }
    fx.to_client(conn, ToClient::StoredRerun { job: task.job, idx: task.idx });
}

/// Voids the stored outcomes of these finished tasks (live and in replay):
/// each is ready to run again (attempt numbers go on counting), and every
/// dependent without an outcome waits for it once more. Returns those ready.
pub(super) fn rerun_lost(core: &mut Core, job: JobId, idx: &[u32]) -> Vec<TaskId> {
    let mut again = Vec::new();
    let Some(j) = core.jobs.find_job_mut(job) else { return again };
    for &i in idx {
        let Some(t) = j.tasks.get_mut(i as usize) else { continue };
        if !matches!(t.outcome, Stored::Ref(_)) {
            continue;
        }
        t.outcome = Stored::None;
        t.void_attempts = t.attempts;
        t.state = TaskState::Ready;
        j.finished = j.finished.saturating_sub(1);
        j.done_at = None;
        again.push(TaskId { job, idx: i });
    }
    let mut ready = Vec::new();
    for &tid in &again {
        let t = core.get_task(tid);
        let (deps, dependents) = (t.deps.clone(), t.dependents.to_vec());
        // Its own inputs may have been lost too (in this record or before).
        let waiting =
            deps.iter().filter(|d| core.find_task(**d).is_some_and(|d| d.outcome.is_none())).count();
        let t = core.get_task_mut(tid);
        t.waiting = waiting as u32;
        if waiting == 0 {
            ready.push(tid);
        } else {
            t.state = TaskState::Waiting;
        }
        for d in dependents {
            let Some(dt) = core.jobs.find_task_mut(d) else { continue };
            if dt.outcome.is_none() {
                dt.waiting = dt.waiting.saturating_add(1);
                if dt.state == TaskState::Ready {
                    dt.state = TaskState::Waiting;
                }
            }
        }
    }
    ready
}
