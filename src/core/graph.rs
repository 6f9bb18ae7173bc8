//! Task graphs: dependencies resolved at submit (unknown keys and cycles
//! refused), readiness as dependencies finish, failure propagating to
//! dependents, and the ready queue (priority, then submission order).

use super::build::JobBuilder;
use super::compact::Stored;
use super::{Core, Effects, Job, TaskState};
use crate::ids::{JobId, TaskId};
use crate::journal_record::{DoneTask, Record};
use crate::protocol::{Outcome, TaskOutcome, ToClient};
use rustc_hash::FxHashMap as HashMap;

/// The index of the task named `key` in `job`: its own key, or its index.
pub fn key_index(job: &Job, key: &str) -> Option<u32> {
    if let Some(i) = job.keys.get(key) {
        return Some(*i);
    }
    let i: u32 = key.parse().ok()?;
    job.tasks.get(i as usize)?;
    job.key(i).is_none().then_some(i)
}

/// The name a task goes by in messages: its key, or its index.
pub fn task_name(job: &Job, idx: u32) -> String {
    job.key(idx).map_or_else(|| idx.to_string(), str::to_string)
}

/// Resolves the dependencies of the tasks that have any to task ids (none
/// at all for a job whose tasks have none); refuses duplicate keys, unknown
/// keys (or jobs), self-dependencies and cycles.
pub fn resolve(core: &Core, job: JobId, b: &JobBuilder) -> Result<Vec<(u32, Vec<TaskId>)>, String> {
    let n = b.len();
    if b.pending.is_empty() {
        check_keys(b)?;
        return Ok(Vec::new());
    }
    let idx_names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let name = |i: usize| b.key_of.get(i as u32).unwrap_or(idx_names[i].as_str());
    let mut keys: HashMap<&str, u32> = HashMap::default();
    for i in 0..n {
        if keys.insert(name(i), i as u32).is_some() {
            return Err(format!("task key {:?} appears twice (task {i})", name(i)));
        }
    }
    let mut out = Vec::with_capacity(b.pending.len());
    for (i, ds) in &b.pending {
        let i = *i as usize;
        let mut deps = Vec::with_capacity(ds.len());
        for d in ds {
            match d.job {
                Some(other) if other != job => {
                    let Some(oj) = core.jobs.find_job(other) else {
                        return Err(format!(
                            "task {i} depends on job {other}, which this scheduler does not know"
                        ));
                    };
                    let Some(j) = key_index(oj, &d.key) else {
                        return Err(format!(
                            "task {i} depends on {:?}, which is not a task of job {other}",
                            d.key
                        ));
                    };
                    deps.push(TaskId { job: other, idx: j });
                }
                _ => {
                    let Some(&j) = keys.get(d.key.as_str()) else {
                        return Err(format!(
                            "task {i} depends on {:?}, which is not a task of this job",
                            d.key
                        ));
                    };
                    if j as usize == i {
                        return Err(format!("task {i} depends on itself"));
                    }
                    deps.push(TaskId { job, idx: j });
                }
            }
        }
        out.push((i as u32, deps));
    }
    check_acyclic(job, n, &out, name)?;
    Ok(out)
}

/// Kahn's algorithm over the edges inside this job: what is left is a cycle.
fn check_acyclic<'a>(
    job: JobId,
    n: usize,
    deps: &[(u32, Vec<TaskId>)],
    name: impl Fn(usize) -> &'a str,
) -> Result<(), String> {
    let mut indegree = vec![0u32; n];
    let mut children: HashMap<u32, Vec<u32>> = HashMap::default();
    for (i, ds) in deps {
        for d in ds.iter().filter(|d| d.job == job) {
            indegree[*i as usize] += 1;
            children.entry(d.idx).or_default().push(*i);
        }
    }
    let mut stack: Vec<u32> = (0..n as u32).filter(|i| indegree[*i as usize] == 0).collect();
    let mut seen = 0;
    while let Some(t) = stack.pop() {
        seen += 1;
        for c in children.get(&t).into_iter().flatten() {
            indegree[*c as usize] -= 1;
            if indegree[*c as usize] == 0 {
                stack.push(*c);
            }
        }
    }
    if seen < n {
        let mut in_cycle: Vec<&str> = (0..n).filter(|i| indegree[*i] > 0).map(name).collect();
        in_cycle.truncate(5);
        return Err(format!("the dependencies form a cycle (through {})", in_cycle.join(", ")));
    }
    Ok(())
}

/// Refuses duplicate names without building a map of every task's name:
/// explicit keys must differ from each other and from the index of any task
/// without a key.
fn check_keys(b: &JobBuilder) -> Result<(), String> {
    let n = b.len();
    let clashes_with_index = |k: &str| {
        k.parse::<usize>().is_ok_and(|j| j < n && !b.key_of.contains(j as u32) && j.to_string() == k)
    };
    let first =
        b.key_of.iter().filter(|(_, k)| clashes_with_index(k)).map(|(i, _)| i).chain(b.first_dup_key).min();
    match first {
        Some(i) => {
            Err(format!("task key {:?} appears twice (task {i})", b.key_of.get(i).unwrap_or_default()))
        }
        None => Ok(()),
    }
}

/// Outcomes of one step, journaled and told to watchers together.
#[derive(Default)]
pub struct Completed {
    by_job: HashMap<JobId, Vec<TaskOutcome>>,
    done: HashMap<JobId, Vec<DoneTask>>,
}

/// Records the first outcome of a task and everything it decides: on
/// failure, every task that depends on it (transitively) fails too.
pub fn complete(
    core: &mut Core,
    now: u64,
    tid: TaskId,
    outcome: Outcome,
    canceled: bool,
    out: &mut Completed,
) {
    let root = tid;
    let mut queue = vec![(tid, outcome, canceled)];
    while let Some((tid, outcome, canceled)) = queue.pop() {
        // Reached twice (two failed dependencies): the first outcome stays.
        if core.find_task(tid).is_none_or(|t| t.outcome.is_some()) {
            continue;
        }
        // A dependent pinned to a worker ahead of its inputs: drop it there.
        if let Some(TaskState::Assigned(w)) = core.find_task(tid).map(|t| t.state.clone()) {
            if tid != root {
                core.unhold(w, tid, super::Leave::Elsewhere);
                core.unpinned.push((w, tid));
                core.mark_dropped(w, tid);
            }
        }
        let attempt = core.find_task(tid).map_or(0, |t| t.attempts);
        out.done.entry(tid.job).or_default().push(DoneTask {
            idx: tid.idx,
            attempt,
            outcome: (&outcome).into(),
            canceled,
        });
        let reason = match &outcome {
            Outcome::Err { error, .. } => Some(error.clone()),
            Outcome::Ok { .. } | Outcome::Stored(_) => None,
        };
        let told = set_outcome(core, now, tid, outcome, canceled);
        out.by_job.entry(tid.job).or_default().push(told);
        if let Some(error) = reason {
            let job = &core.jobs.get_job(tid.job);
            let name = task_name(job, tid.idx);
            let how = if canceled { "was canceled".to_string() } else { format!("failed: {error}") };
            for d in job.tasks[tid.idx as usize].dependents.clone() {
                if core.find_task(d).is_some_and(|t| t.outcome.is_none()) {
                    let error = format!("dependency {name} {how}");
                    queue.push((d, Outcome::err(error), false));
                }
            }
        }
    }
}

/// Journals the step's outcomes (one record per job) and tells watchers.
pub fn flush_completed(core: &mut Core, fx: &mut impl Effects, out: Completed) {
    super::pins::send_unpinned(core, fx);
    for (job, done) in out.done {
        fx.journal(Record::TasksDone { job, done: done.into() });
    }
    for (job, outcomes) in out.by_job {
        notify_watchers(core, fx, job, outcomes);
    }
}

/// Sets a task's outcome (live and in replay): state, counts, and, when it
/// finished, the readiness of the tasks waiting for it.
pub fn set_outcome(core: &mut Core, now: u64, tid: TaskId, outcome: Outcome, canceled: bool) -> TaskOutcome {
    let stored = core.jobs.get_job_mut(tid.job).store(&outcome);
    let attempts = set_stored(core, now, tid, stored, canceled);
    TaskOutcome { idx: tid.idx, attempts, outcome }
}

/// `set_outcome` of an outcome the job keeps already (`Job::store`); the
/// task's attempts.
pub fn set_stored(core: &mut Core, now: u64, tid: TaskId, stored: Stored, canceled: bool) -> u32 {
    let job = core.jobs.get_job_mut(tid.job);
    let task = &mut job.tasks[tid.idx as usize];
    let ok = stored.is_ok();
    task.state = match (ok, canceled) {
        (true, _) => TaskState::Finished,
        (false, true) => TaskState::Canceled,
        (false, false) => TaskState::Failed,
    };
    if ok {
        job.finished += 1;
    } else {
        job.failed += 1;
    }
    task.outcome = stored;
    let attempts = task.attempts;
    core.outcomes_total += 1;
    let dependents = if ok { task.dependents.to_vec() } else { Vec::new() };
    if job.is_done() {
        job.done_at = Some(now);
        let times = crate::journal_record::HistoryRecord::JobTimes {
            job: tid.job,
            submitted_at: job.submitted_at,
            done_at: Some(now),
        };
        core.history.job_times(core.replaying, times);
        if let Some(retention) = core.config.retention_us {
            let at = now.saturating_add(retention).saturating_add(1);
            core.deadlines.add(at, super::deadlines::Due::Retention(tid.job));
        }
    }
    for d in dependents {
        let Some(t) = core.jobs.find_job_mut(d.job).and_then(|j| j.tasks.get_mut(d.idx as usize)) else {
            continue;
        };
        t.waiting = t.waiting.saturating_sub(1);
        if t.waiting == 0 && t.state == TaskState::Waiting {
            t.state = TaskState::Ready;
            core.push_ready(d);
        }
    }
    attempts
}

/// The results of a task's dependencies, for its assignment (an empty
/// value for one in the results store: see `stored_inputs`).
pub fn inputs(core: &Core, tid: TaskId) -> Vec<bytes::Bytes> {
    let Some(task) = core.find_task(tid) else { return Vec::new() };
    task.deps
        .iter()
        .filter_map(|d| match core.outcome(*d) {
            Some(Outcome::Ok { result }) => Some(result.clone()),
            Some(Outcome::Stored(_)) => Some(bytes::Bytes::new()),
            _ => None,
        })
        .collect()
}

pub(super) fn notify_watchers(
    core: &mut Core,
    fx: &mut impl Effects,
    job: JobId,
    outcomes: Vec<TaskOutcome>,
) {
    let Some(j) = core.jobs.find_job_mut(job) else {
        return;
    };
    let done = j.is_done();
    let watchers = if done { std::mem::take(&mut j.watchers) } else { j.watchers.clone() };
    for w in &watchers {
        fx.to_client(*w, ToClient::Outcomes { job, outcomes: outcomes.clone() });
        if done {
            fx.to_client(*w, ToClient::JobDone { job, finished: j.finished, failed: j.failed });
        }
    }
    if done {
        tracing::info!(job = %job, finished = j.finished, failed = j.failed, "job finished");
    }
}
