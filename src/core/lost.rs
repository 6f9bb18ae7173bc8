//! Stored results found missing or corrupt by their reader: the tasks that
//! produced them run again (journaled, `Record::ResultsLost`), and the task
//! that needed them waits for them; nothing runs on a wrong value.

use super::compact::Stored;
use super::queue::requeue;
use super::{Core, Effects, Leave, TaskState};
use crate::ids::{JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::TaskReport;

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
