//! Jobs: submission (checked before anything changes), watching their
//! outcomes, and forgetting them.

use super::compact::{ArgsRef, Holders, RareVec, Stored};
use super::graph::{self, Completed};
use super::views::no_job;
use super::{Core, Effects, Job, Shape, Task, TaskState};
use crate::ids::{ConnId, JobId, TaskId};
use crate::journal_record::Record;
use crate::protocol::{Outcome, TaskKind, TaskOutcome, TaskSpec, ToClient};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

/// Most of one resource a task may ask for (far beyond any real machine, far
/// below what could overflow the accounting of what workers hold).
pub const MAX_RESOURCE_AMOUNT: u64 = u32::MAX as u64;

/// Most bytes of arguments one job's tasks may have in all (their arena
/// is indexed by `u32`; a submission is one frame, far smaller anyway).
pub const MAX_JOB_ARGS: u64 = u32::MAX as u64;

/// Longest time limit a task may have: a year.
pub const MAX_TIME_LIMIT_MS: u64 = 365 * 24 * 3600 * 1000;

/// Checks a submission before anything is changed and resolves its
/// dependencies; `Err` is the one-line message for the client.
fn validate_submit(core: &Core, job: JobId, msg: &SubmitMsg) -> Result<Vec<Vec<TaskId>>, String> {
    let tasks = &msg.tasks;
    if tasks.is_empty() {
        return Err("a job needs at least one task".into());
    }
    if tasks.len() > u32::MAX as usize {
        return Err("too many tasks in one job".into());
    }
    // Function names found on some worker (each is looked up once).
    let mut known = HashSet::default();
    let mut args_total = 0u64;
    for (i, t) in tasks.iter().enumerate() {
        match &t.kind {
            crate::protocol::TaskKind::Fn { name, .. } if name.is_empty() => {
                return Err(format!("task {i}: empty function name"))
            }
            crate::protocol::TaskKind::Cmd { argv, .. } if argv.is_empty() => {
                return Err(format!("task {i}: empty argv"))
            }
            crate::protocol::TaskKind::Py { func, .. } if *func as usize >= msg.functions.len() => {
                return Err(format!(
                    "task {i}: function {func} is not in the job's function table ({} entries)",
                    msg.functions.len()
                ))
            }
            _ => {}
        }
        if let crate::protocol::TaskKind::Fn { name, .. } = &t.kind {
            if known.insert(name.as_str()) {
                unknown_function(core, i, name)?;
            }
        }
        args_total = args_total.saturating_add(match &t.kind {
            TaskKind::Fn { args, .. } => args.len() as u64,
            TaskKind::Py { args, .. } => args.len() as u64,
            TaskKind::Cmd { .. } => 0,
        });
        if args_total > MAX_JOB_ARGS {
            return Err(format!("task {i}: the job's arguments exceed {MAX_JOB_ARGS} bytes in all"));
        }
        if let Some((k, n)) = t.resources.iter().find(|(_, n)| **n > MAX_RESOURCE_AMOUNT) {
            return Err(format!(
                "task {i}: resource {k:?} = {n} is out of range (at most {MAX_RESOURCE_AMOUNT})"
            ));
        }
        if let Some(ms) = t.time_limit_ms.filter(|ms| *ms > MAX_TIME_LIMIT_MS) {
            return Err(format!(
                "task {i}: time limit {ms} ms is out of range (at most {MAX_TIME_LIMIT_MS} ms, a year)"
            ));
        }
    }
    graph::resolve(core, job, tasks)
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

/// A job as a client submits it.
pub struct SubmitMsg {
    pub job: JobId,
    pub name: String,
    pub tasks: Vec<TaskSpec>,
    /// The function table of its `py` tasks (`TaskKind::Py::func` indexes it).
    pub functions: Vec<bytes::Bytes>,
}

impl SubmitMsg {
    /// A job with no `py` tasks.
    pub fn new(job: JobId, name: String, tasks: Vec<TaskSpec>) -> SubmitMsg {
        SubmitMsg { job, name, tasks, functions: Vec::new() }
    }
}

pub fn on_submit_job(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, msg: SubmitMsg) {
    let job = msg.job;
    if let Some(existing) = core.jobs.find_job(job) {
        let tasks = &msg.tasks;
        // A resubmission after a lost reply: same job, nothing new to do.
        if existing.digest == submission_digest(tasks, &msg.functions) {
            fx.to_client(conn, ToClient::Submitted { job, tasks: tasks.len() as u32 });
        } else {
            let message = format!(
                "job {job} exists with other tasks ({} tasks; this submission has {}): \
                 choose another job id, or forget the job first",
                existing.tasks.len(),
                tasks.len()
            );
            fx.to_client(conn, ToClient::Error { job: Some(job), message });
        }
        return;
    }
    let deps = match validate_submit(core, job, &msg) {
        Ok(deps) => deps,
        Err(message) => {
            fx.to_client(conn, ToClient::Error { job: Some(job), message });
            return;
        }
    };
    let seq = core.next_job_seq;
    let SubmitMsg { name, tasks, functions, .. } = msg;
    let digest = submission_digest(&tasks, &functions);
    // The core keeps its compact records; the specs go to the journal.
    let head = JobHead { job, seq, name: name.clone() };
    let doomed = insert_job(core, now, head, &tasks, deps);
    let j = core.jobs.get_job_mut(job);
    j.functions = functions.clone();
    j.digest = digest;
    let tasks = tasks.into_iter().map(Into::into).collect();
    fx.journal(Record::JobSubmitted { job, seq, name, tasks, functions, digest });
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
    specs: &[TaskSpec],
    deps: Vec<Vec<TaskId>>,
) -> Vec<(TaskId, String)> {
    let JobHead { job, seq, name } = head;
    core.next_job_seq = core.next_job_seq.max(seq + 1);
    core.job_by_seq.insert(seq, job);
    let (tasks, args, keys, key_of) = compact_tasks(specs, deps, core.replaying);
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
    for idx in 0..n as u32 {
        let tid = TaskId { job, idx };
        let waiting = wait_for_deps(core, tid, &mut doomed);
        let task = core.get_task_mut(tid);
        task.waiting = waiting;
        if waiting > 0 {
            task.state = TaskState::Waiting;
        } else if !core.replaying {
            // (Replay builds the ready queue once, at its end.)
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

type Compacted = (Vec<Task>, Vec<u8>, HashMap<String, u32>, HashMap<u32, String>);

/// The tasks' records: what they share stored once (`Shape`), their
/// arguments one after the other in one arena, keys out of line.
fn compact_tasks(specs: &[TaskSpec], deps: Vec<Vec<TaskId>>, replaying: bool) -> Compacted {
    let mut keys = HashMap::default();
    let mut key_of = HashMap::default();
    let mut args = Vec::new();
    let mut shapes: Vec<Arc<Shape>> = Vec::new();
    let mut tasks: Vec<Task> = Vec::with_capacity(specs.len());
    // (No lists at all when no task has dependencies.)
    let deps = deps.into_iter().chain(std::iter::repeat_with(Vec::new));
    for (idx, (s, deps)) in specs.iter().zip(deps).enumerate() {
        if let Some(k) = &s.key {
            keys.insert(k.clone(), idx as u32);
            key_of.insert(idx as u32, k.clone());
        }
        let own: &[u8] = match &s.kind {
            TaskKind::Fn { args, .. } => args,
            TaskKind::Py { args, .. } => args,
            TaskKind::Cmd { .. } => &[],
        };
        // (Submissions are checked to fit: at most `MAX_JOB_ARGS` bytes.)
        let at = ArgsRef { start: args.len() as u32, len: own.len() as u32 };
        args.extend_from_slice(own);
        tasks.push(Task {
            shape: shape_of(&mut shapes, s),
            args: at,
            state: TaskState::Ready,
            attempts: 0,
            held_attempt: 0,
            assigned_seq: 0,
            killed: RareVec::new(),
            outcome: Stored::None,
            deps: deps.into_boxed_slice(),
            dependents: RareVec::new(),
            waiting: 0,
            priority: s.priority,
            failures: 0,
            local_inputs: RareVec::new(),
            // Replayed: an attempt may still run on a worker of the last run.
            holders: if replaying { Holders::one(super::ANY_PROCESS) } else { Holders::default() },
            void_attempts: 0,
            repeat_here: false,
        });
    }
    (tasks, args, keys, key_of)
}

/// Most distinct shapes looked through for one the job has already: an
/// array or a map has one; a job mixing many kinds stores some twice.
const RECENT_SHAPES: usize = 8;

/// The shape of task `s`, shared with an earlier task of the job if one of
/// the last few shapes is the same.
fn shape_of(shapes: &mut Vec<Arc<Shape>>, s: &TaskSpec) -> Arc<Shape> {
    let same = |sh: &Shape| {
        same_kind(&sh.kind, &s.kind)
            && sh.resources == s.resources
            && sh.time_limit_ms == s.time_limit_ms
            && sh.max_worker_kills == s.max_worker_kills
            && sh.retries == s.retries
    };
    if let Some(sh) = shapes.iter().rev().find(|sh| same(sh)) {
        return sh.clone();
    }
    let kind = match &s.kind {
        TaskKind::Fn { name, .. } => TaskKind::Fn { name: name.clone(), args: Vec::new() },
        TaskKind::Py { func, .. } => TaskKind::Py { func: *func, args: bytes::Bytes::new() },
        cmd @ TaskKind::Cmd { .. } => cmd.clone(),
    };
    let sh = Arc::new(Shape {
        kind,
        resources: s.resources.clone(),
        time_limit_ms: s.time_limit_ms,
        max_worker_kills: s.max_worker_kills,
        retries: s.retries,
    });
    if shapes.len() >= RECENT_SHAPES {
        shapes.remove(0);
    }
    shapes.push(sh.clone());
    sh
}

/// Whether a shape's kind is that of `kind`, but for its own arguments.
fn same_kind(shape: &TaskKind, kind: &TaskKind) -> bool {
    match (shape, kind) {
        (TaskKind::Fn { name: a, .. }, TaskKind::Fn { name: b, .. }) => a == b,
        (TaskKind::Py { func: a, .. }, TaskKind::Py { func: b, .. }) => a == b,
        (a @ TaskKind::Cmd { .. }, b @ TaskKind::Cmd { .. }) => a == b,
        _ => false,
    }
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
