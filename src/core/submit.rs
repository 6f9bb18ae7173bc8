//! Jobs: submission (checked before anything changes), watching their
//! outcomes, and forgetting them.

use super::build::JobBuilder;
use super::compact::Stored;
use super::graph::{self, Completed};
use super::views::no_job;
use super::{Core, Effects, Job, Shape, TaskState};
use crate::ids::{ConnId, JobId, TaskId};
use crate::journal_record::{Record, TaskList};
use crate::protocol::{Outcome, TaskKind, TaskOutcome, TaskSpec, ToClient};
use rustc_hash::FxHashSet as HashSet;
use std::sync::Arc;

/// Most of one resource a task may ask for (far beyond any real machine, far
/// below what could overflow the accounting of what workers hold).
pub const MAX_RESOURCE_AMOUNT: u64 = u32::MAX as u64;

pub use super::build::MAX_JOB_ARGS;

/// Longest time limit a task may have: a year.
pub const MAX_TIME_LIMIT_MS: u64 = 365 * 24 * 3600 * 1000;

/// Checks a submission before anything is changed and resolves its
/// dependencies; `Err` is the one-line message for the client.
fn validate_submit(
    core: &Core,
    job: JobId,
    b: &JobBuilder,
    functions: &[bytes::Bytes],
) -> Result<Vec<(u32, Vec<TaskId>)>, String> {
    if b.is_empty() {
        return Err("a job needs at least one task".into());
    }
    if b.len() > u32::MAX as usize {
        return Err("too many tasks in one job".into());
    }
    // Function names found on some worker (each is looked up once).
    let mut known = HashSet::default();
    let mut args_total = 0u64;
    // (Tasks sharing a shape pass or fail its checks together.)
    let mut last: Option<&Arc<Shape>> = None;
    for (i, t) in b.tasks.iter().enumerate() {
        let new_shape = !last.is_some_and(|l| Arc::ptr_eq(l, &t.shape));
        if new_shape {
            check_kind(core, i, &t.shape.kind, functions, &mut known)?;
        }
        args_total = args_total.saturating_add(u64::from(t.args.len));
        if args_total > MAX_JOB_ARGS {
            return Err(format!("task {i}: the job's arguments exceed {MAX_JOB_ARGS} bytes in all"));
        }
        if new_shape {
            check_limits(i, &t.shape)?;
            last = Some(&t.shape);
        }
    }
    graph::resolve(core, job, b)
}

/// A task's kind: a function name, an argv, a function table entry.
fn check_kind<'a>(
    core: &Core,
    i: usize,
    kind: &'a TaskKind,
    functions: &[bytes::Bytes],
    known: &mut HashSet<&'a str>,
) -> Result<(), String> {
    match kind {
        TaskKind::Fn { name, .. } if name.is_empty() => Err(format!("task {i}: empty function name")),
        TaskKind::Cmd { argv, .. } if argv.is_empty() => Err(format!("task {i}: empty argv")),
        TaskKind::Py { func, .. } if *func as usize >= functions.len() => Err(format!(
            "task {i}: function {func} is not in the job's function table ({} entries)",
            functions.len()
        )),
        TaskKind::Fn { name, .. } if known.insert(name.as_str()) => unknown_function(core, i, name),
        _ => Ok(()),
    }
}

/// A task's resources, time limit and time request.
fn check_limits(i: usize, shape: &Shape) -> Result<(), String> {
    if let Some((k, n)) = shape.resources.iter().find(|(_, n)| **n > MAX_RESOURCE_AMOUNT) {
        return Err(format!(
            "task {i}: resource {k:?} = {n} is out of range (at most {MAX_RESOURCE_AMOUNT})"
        ));
    }
    if let Some(ms) = shape.time_limit_ms.filter(|ms| *ms > MAX_TIME_LIMIT_MS) {
        return Err(format!(
            "task {i}: time limit {ms} ms is out of range (at most {MAX_TIME_LIMIT_MS} ms, a year)"
        ));
    }
    if let Some(ms) = shape.time_request_ms.filter(|ms| *ms > MAX_TIME_LIMIT_MS) {
        return Err(format!(
            "task {i}: time request {ms} ms is out of range (at most {MAX_TIME_LIMIT_MS} ms, a year)"
        ));
    }
    Ok(())
}

/// Refuses a function no registered worker has (with no worker registered
/// yet, any name is taken: the workers to come may have it).
fn unknown_function(core: &Core, i: usize, name: &str) -> Result<(), String> {
    if core.workers.is_empty() || core.workers.values().any(|w| w.functions.iter().any(|f| f == name)) {
        return Ok(());
    }
    let mut known: Vec<&str> =
        core.workers.values().flat_map(|w| w.functions.iter().map(String::as_str)).collect();
    known.sort_unstable();
    known.dedup();
    let list = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    Err(format!("task {i}: no registered worker has function {name:?} (they have: {list})"))
}

/// A digest of a submission's tasks and functions, the same for the same
/// submission in any process (it survives restarts through the journal).
pub fn submission_digest(tasks: &[TaskSpec], functions: &[bytes::Bytes]) -> u64 {
    use std::hash::Hasher;
    struct HashWriter(rustc_hash::FxHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(rustc_hash::FxHasher::default());
    // Writing into a hasher cannot fail; specs always serialize.
    let _ = rmp_serde::encode::write_named(&mut w, &(tasks, functions));
    w.0.finish()
}

/// A job as a client submits it, its tasks already in their compact form.
pub struct SubmitMsg {
    pub job: JobId,
    pub name: String,
    pub tasks: JobBuilder,
    /// The function table of its `py` tasks (`TaskKind::Py::func` indexes it).
    pub functions: Vec<bytes::Bytes>,
}

impl SubmitMsg {
    /// A job with no `py` tasks.
    pub fn new(job: JobId, name: String, tasks: Vec<TaskSpec>) -> SubmitMsg {
        SubmitMsg::with_functions(job, name, tasks, Vec::new())
    }

    /// A job of these specs and function table.
    pub fn with_functions(
        job: JobId,
        name: String,
        tasks: Vec<TaskSpec>,
        functions: Vec<bytes::Bytes>,
    ) -> SubmitMsg {
        SubmitMsg { job, name, tasks: JobBuilder::from_specs(tasks), functions }
    }
}

pub fn on_submit_job(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, msg: SubmitMsg) {
    let job = msg.job;
    let digest = msg.tasks.digest(&msg.functions);
    if let Some(existing) = core.jobs.find_job(job) {
        let n = msg.tasks.len();
        // A resubmission after a lost reply: same job, nothing new to do.
        if existing.digest == digest {
            fx.to_client(conn, ToClient::Submitted { job, tasks: n as u32 });
        } else {
            let message = format!(
                "job {job} exists with other tasks ({} tasks; this submission has {n}): \
                 choose another job id, or forget the job first",
                existing.tasks.len(),
            );
            fx.to_client(conn, ToClient::Error { job: Some(job), message });
        }
        return;
    }
    let deps = match validate_submit(core, job, &msg.tasks, &msg.functions) {
        Ok(deps) => deps,
        Err(message) => {
            fx.to_client(conn, ToClient::Error { job: Some(job), message });
            return;
        }
    };
    let seq = core.next_job_seq;
    let SubmitMsg { name, mut tasks, functions, .. } = msg;
    // The core keeps its compact records; the specs' bytes go to the journal.
    let journaled = TaskList::Encoded(tasks.take_journal());
    let head = JobHead { job, seq, name: name.clone() };
    let doomed = insert_job(core, now, head, tasks, deps);
    let j = core.jobs.get_job_mut(job);
    j.functions = functions.clone();
    j.digest = digest;
    fx.journal(Record::JobSubmitted { job, seq, name, tasks: journaled, functions, digest });
    let times = crate::journal_record::HistoryRecord::JobTimes { job, submitted_at: now, done_at: None };
    core.history.job_times(false, times);
    // Tasks that depend on a task of an earlier job that already failed.
    let mut failed = Completed::default();
    for (tid, error) in doomed {
        graph::complete(core, now, tid, Outcome::err(error), false, &mut failed);
    }
    let n = core.jobs.get_job(job).tasks.len() as u32;
    tracing::info!(job = %job, tasks = n, "job submitted");
    fx.to_client(conn, ToClient::Submitted { job, tasks: n });
    graph::flush_completed(core, fx, failed);
    core.ask_for_scheduling();
}

/// Adds a job: tasks whose dependencies are all finished are ready, the
/// others wait. Returns the tasks that depend on an already failed task,
/// with the error they fail with.
pub(super) fn insert_job(
    core: &mut Core,
    now: u64,
    head: JobHead,
    b: JobBuilder,
    deps: Vec<(u32, Vec<TaskId>)>,
) -> Vec<(TaskId, String)> {
    let JobHead { job, seq, name } = head;
    core.next_job_seq = core.next_job_seq.max(seq + 1);
    core.job_by_seq.insert(seq, job);
    let JobBuilder { mut tasks, args, keys, key_of, .. } = b;
    // Tasks with dependencies, in order.
    let mut with_deps: Vec<u32> = deps.iter().filter(|(_, d)| !d.is_empty()).map(|(i, _)| *i).collect();
    with_deps.sort_unstable();
    for (idx, d) in deps {
        tasks[idx as usize].deps = d.into_boxed_slice();
    }
    let n = tasks.len();
    core.jobs.insert(
        job,
        Job {
            name,
            tasks,
            finished: 0,
            failed: 0,
            watchers: Vec::new(),
            submitted_at: now,
            seq,
            done_at: None,
            keys,
            key_of,
            args,
            results: Default::default(),
            errors: Vec::new(),
            stored: Vec::new(),
            functions: Vec::new(),
            digest: 0,
        },
    );
    let mut doomed = Vec::new();
    let mut next_dep = with_deps.iter().copied().peekable();
    // (Replay builds the ready queue once, at its end: only tasks with dependencies here.)
    let all: Box<dyn Iterator<Item = u32>> =
        if core.replaying { Box::new(with_deps.iter().copied()) } else { Box::new(0..n as u32) };
    for idx in all {
        let tid = TaskId { job, idx };
        if next_dep.next_if_eq(&idx).is_none() {
            // No dependencies: ready.
            core.push_ready(tid);
            continue;
        }
        let waiting = wait_for_deps(core, tid, &mut doomed);
        let task = core.get_task_mut(tid);
        task.waiting = waiting;
        if waiting > 0 {
            task.state = TaskState::Waiting;
        } else if !core.replaying {
            core.push_ready(tid);
        }
    }
    doomed
}

/// Who a new job is: its id, submission order and name.
pub(super) struct JobHead {
    pub job: JobId,
    pub seq: u64,
    pub name: String,
}

/// Counts the unfinished dependencies of a new task (and becomes their
/// dependent); one that failed dooms it.
fn wait_for_deps(core: &mut Core, tid: TaskId, doomed: &mut Vec<(TaskId, String)>) -> u32 {
    let mut waiting = 0;
    for k in 0..core.get_task(tid).deps.len() {
        let d = core.get_task(tid).deps[k];
        let Some(dep) = core.jobs.find_task_mut(d) else { continue };
        match dep.outcome {
            Stored::Ok(_) => {}
            // Told if its stored result is found lost (`lost::rerun_lost`).
            Stored::Ref(_) => dep.dependents.push(tid),
            Stored::Err(_) => {
                let dj = core.jobs.get_job(d.job);
                let (name, error) = (graph::task_name(dj, d.idx), dj.error(d.idx).unwrap_or_default());
                doomed.push((tid, format!("dependency {name} failed: {error}")));
            }
            Stored::None => {
                dep.dependents.push(tid);
                waiting += 1;
            }
        }
    }
    waiting
}

/// Most outcomes sent to a watcher in one message when it catches up.
const CATCH_UP_CHUNK: usize = 4096;
/// ... and at most about this many bytes of results and errors per frame.
const CATCH_UP_BYTES: usize = 16 << 20;

pub fn on_watch(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.find_job_mut(job) else { return no_job(fx, conn, job) };
    fx.to_client(conn, ToClient::Watching { job, tasks: j.tasks.len() as u32 });
    if j.watchers.contains(&conn) {
        // Watched already: its outcomes stream to this connection anyway.
        return;
    }
    let done: Vec<TaskOutcome> = j
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(idx, t)| {
            j.outcome(idx as u32).map(|outcome| TaskOutcome {
                idx: idx as u32,
                attempts: t.attempts,
                outcome,
            })
        })
        .collect();
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for o in done {
        let size = match &o.outcome {
            Outcome::Ok { result } => result.len(),
            Outcome::Err { error, .. } => error.len(),
            Outcome::Stored(s) => s.path.len() + s.checksum.len(),
        };
        if !chunk.is_empty() && (chunk.len() >= CATCH_UP_CHUNK || bytes.saturating_add(size) > CATCH_UP_BYTES)
        {
            fx.to_client(conn, ToClient::Outcomes { job, outcomes: std::mem::take(&mut chunk) });
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        chunk.push(o);
    }
    if !chunk.is_empty() {
        fx.to_client(conn, ToClient::Outcomes { job, outcomes: chunk });
    }
    if j.is_done() {
        fx.to_client(conn, ToClient::JobDone { job, finished: j.finished, failed: j.failed });
    } else {
        j.watchers.push(conn);
    }
}

pub fn on_unwatch(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    if let Some(j) = core.jobs.find_job_mut(job) {
        j.watchers.retain(|c| *c != conn);
    }
    fx.to_client(conn, ToClient::Unwatched { job });
}

/// Drops a finished job and its results, here and in the journal.
pub fn on_forget(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let reply = match core.jobs.find_job(job) {
        None => Err(format!("no job {job} on this scheduler")),
        Some(j) if !j.is_done() => Err(format!(
            "job {job} still has {} unfinished tasks; only finished jobs can be forgotten",
            j.tasks.len() - (j.finished + j.failed) as usize
        )),
        Some(_) => {
            forget(core, fx, job, "forgotten by request");
            Ok(format!("forgot job {job}"))
        }
    };
    match reply {
        Ok(message) => fx.to_client(conn, ToClient::Done { message }),
        Err(message) => fx.to_client(conn, ToClient::Error { job: Some(job), message }),
    }
}

pub(super) fn forget(core: &mut Core, fx: &mut impl Effects, job: JobId, why: &str) {
    if let Some(j) = core.jobs.remove(job) {
        core.job_by_seq.remove(&j.seq);
        if !j.functions.is_empty() {
            for w in core.workers.values_mut() {
                w.functions_sent.retain(|(jb, _)| *jb != job);
            }
        }
        fx.journal(Record::JobForgotten { job });
        tracing::info!(job = %job, tasks = j.tasks.len(), reason = why, "job forgotten");
    }
}
