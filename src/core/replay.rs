//! Rebuilding the core from the journal, through the same state changes
//! live events make.

use super::admin::retry_tasks;
use super::graph::{self};
use super::submit::{insert_job, submission_digest, JobHead};
use super::{Core, TaskState};
use crate::ids::TaskId;
use crate::journal_record::Record;

/// Rebuilds the core from journal records, through the same state changes
/// live events make. Tasks without an outcome end up queued again, in
/// submission order.
pub fn replay(core: &mut Core, now: u64, records: Vec<Record>) {
    core.replaying = true;
    let mut order = Vec::new();
    for r in records {
        match r {
            Record::JobSubmitted { job, seq, name, tasks, functions, digest } => {
                if !core.jobs.contains(job) {
                    let tasks: Vec<crate::protocol::TaskSpec> = tasks.into_iter().map(Into::into).collect();
                    let deps = graph::resolve(core, job, &tasks).unwrap_or_else(|e| {
                        // e.g. a dependency on a job forgotten since: run without it.
                        tracing::warn!(job = %job, error = %e, "journaled dependencies no longer resolve");
                        Vec::new()
                    });
                    // Failures it caused were journaled too, and come later.
                    // (Journals written before the digest was kept: computed.)
                    let digest = if digest != 0 { digest } else { submission_digest(&tasks, &functions) };
                    let _ = insert_job(core, now, JobHead { job, seq, name }, &tasks, deps);
                    drop(tasks);
                    let j = core.jobs.get_job_mut(job);
                    j.functions = functions;
                    j.digest = digest;
                    order.push(job);
                }
            }
            Record::TasksDone { job, done } => {
                for d in done {
                    let tid = TaskId { job, idx: d.idx };
                    if core.find_task(tid).map(|t| t.outcome.is_none()) == Some(true) {
                        let t = core.get_task_mut(tid);
                        t.attempts = t.attempts.max(d.attempt);
                        graph::set_outcome(core, now, tid, d.outcome.into(), d.canceled);
                    }
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
}
