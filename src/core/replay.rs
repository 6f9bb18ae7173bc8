//! Rebuilding the core from the journal, through the same state changes
//! live events make.

use super::admin::retry_tasks;
use super::build::{Build, JobBuilder};
use super::compact::Stored;
use super::graph::{self};
use super::submit::{insert_job, JobHead};
use super::{Core, TaskState};
use crate::ids::TaskId;
use crate::journal_record::{DoneView, HistoryRecord, OutcomeView, Record, TaskList};

/// A journaled event goes back into the page's history; a job's timing
/// back onto the job (its finish only if it is still finished: a retry
/// after it opened it again).
fn replay_history(core: &mut Core, h: HistoryRecord) {
    match h {
        HistoryRecord::Event { at, kind, text } => core.history.replayed(at, kind, text),
        HistoryRecord::JobTimes { job, submitted_at, done_at } => {
            if let Some(j) = core.jobs.find_job_mut(job) {
                j.submitted_at = submitted_at;
                if j.is_done() {
                    j.done_at = done_at.or(j.done_at);
                }
            }
        }
    }
}

/// Rebuilds the core from journal records, through the same state changes
/// live events make. Tasks without an outcome end up queued again, in
/// submission order. `false`: a batch of outcomes did not decode (those
/// tasks run again; a journal that left that check to replay checks itself).
pub fn replay(core: &mut Core, now: u64, records: Vec<Record>) -> bool {
    core.replaying = true;
    let mut sound = true;
    let mut order = Vec::new();
    for r in records {
        match r {
            Record::JobSubmitted { job, seq, name, tasks, functions, digest } => {
                if !core.jobs.contains(job) {
                    replay_job(core, now, JobHead { job, seq, name }, tasks, functions, digest);
                    order.push(job);
                }
            }
            Record::TasksDone { job, done } => {
                if let Err(e) = done.for_each_view(|d| replay_done(core, now, job, d)) {
                    sound = false;
                    tracing::warn!(job = %job, error = %e, "journaled outcomes do not decode; those tasks run again");
                }
            }
            Record::JobForgotten { job } => {
                if let Some(j) = core.jobs.remove(job) {
                    core.job_by_seq.remove(&j.seq);
                }
            }
            Record::TasksRetried { job, idx } => {
                retry_tasks(core, job, &idx);
            }
            Record::History(h) => replay_history(core, h),
            Record::ResultsLost { job, idx } => {
                super::lost::rerun_lost(core, job, &idx);
            }
        }
    }
    core.replaying = false;
    core.ready.clear();
    for job in order {
        let Some(j) = core.jobs.find_job(job) else { continue };
        let ready: Vec<u32> =
            (0..j.tasks.len() as u32).filter(|i| j.tasks[*i as usize].state == TaskState::Ready).collect();
        for idx in ready {
            core.push_ready(TaskId { job, idx });
        }
    }
    sound
}

/// A journaled outcome, its result kept straight from the record's bytes.
fn replay_done(core: &mut Core, now: u64, job: crate::ids::JobId, d: DoneView<'_>) {
    let tid = TaskId { job, idx: d.idx };
    let Some(j) = core.jobs.find_job_mut(job) else { return };
    let Some(t) = j.tasks.get_mut(d.idx as usize).filter(|t| t.outcome.is_none()) else { return };
    t.attempts = t.attempts.max(d.attempt);
    let stored = match d.outcome {
        OutcomeView::Ok(result) => Stored::Ok(j.results.push(result)),
        OutcomeView::Other(o) => j.store(&o.into()),
    };
    graph::set_stored(core, now, tid, stored, d.canceled);
}

/// A journaled job, built spec by spec from its record (each spec dropped
/// as soon as it is compacted).
fn replay_job(
    core: &mut Core,
    now: u64,
    head: JobHead,
    tasks: TaskList,
    functions: Vec<bytes::Bytes>,
    digest: u64,
) {
    let job = head.job;
    // (Journals written before the digest was kept: computed.)
    let mut b = JobBuilder::new(tasks.len(), Build::Replay { digest: digest == 0 }, tasks.len());
    // The digest kept: each spec read in place (nothing decoded that the job stores once).
    let built =
        if digest != 0 { tasks.for_each_view(|s| b.push_view(s)) } else { tasks.for_each(|s| b.push(s)) };
    if let Err(e) = built {
        tracing::warn!(job = %job, error = %e, "a journaled job's tasks do not decode; it is left out");
        return;
    }
    let digest = if digest != 0 { digest } else { b.digest(&functions) };
    let deps = graph::resolve(core, job, &b).unwrap_or_else(|e| {
        // e.g. a dependency on a job forgotten since: run without it.
        tracing::warn!(job = %job, error = %e, "journaled dependencies no longer resolve");
        Vec::new()
    });
    // Failures it caused were journaled too, and come later.
    let _ = insert_job(core, now, head, b, deps);
    let j = core.jobs.get_job_mut(job);
    j.functions = functions;
    j.digest = digest;
}
