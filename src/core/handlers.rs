//! Event handlers of the core: one free function per event, as
//! `on_x(core, fx, now, …)`. `now` is microseconds on the host's clock.

use super::graph::{self, Completed};
use super::{Core, Effects, Job, Leave, NannyRecord, Task, TaskState, Worker};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{
    Assignment, NannyInfo, Outcome, PyFunction, SlotInfo, SlotState, TaskKind, TaskOutcome, TaskReport,
    TaskSpec, ToClient, ToNanny, ToWorker, WorkerInfo,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Most outcomes sent to a watcher in one message when it catches up.
const CATCH_UP_CHUNK: usize = 4096;
/// ... and at most about this many bytes of results and errors per frame.
const CATCH_UP_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct NewWorker {
    pub slots: u32,
    pub host: String,
    pub pid: u32,
    pub functions: Vec<String>,
    pub nanny: Option<crate::protocol::NannySlot>,
    /// Tasks the worker says it is running (after a reconnect).
    pub running: Vec<(TaskId, u32)>,
    pub resources: crate::protocol::Resources,
}

pub fn on_worker_joined(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    w: NewWorker,
) -> WorkerId {
    if let Some(old) = core.worker_by_conn.get(&conn).copied() {
        // Registering again on the same connection replaces the incarnation.
        on_worker_lost(core, fx, now, old, "re-registered");
    }
    core.stale_conns.remove(&conn);
    core.next_worker += 1;
    let id = WorkerId(core.next_worker);
    let process = super::process_key(&w.host, w.pid);
    core.conn_process.insert(conn, process);
    tracing::info!(worker = %id, host = ?w.host, pid = w.pid, slots = w.slots, "worker registered");
    core.workers.insert(
        id,
        Worker {
            conn,
            host: w.host,
            pid: w.pid,
            slots: w.slots.max(1),
            functions: w.functions,
            nanny: w.nanny.clone(),
            assigned: Default::default(),
            avg_task_us: None,
            last_seen: now,
            draining: false,
            rss_kib: 0,
            resources: w.resources,
            used: Default::default(),
            functions_sent: Default::default(),
            process,
            dropped: Default::default(),
        },
    );
    core.worker_by_conn.insert(conn, id);
    fx.to_worker(conn, ToWorker::Registered { worker: id });
    claim(core, id, w.running);
    schedule(core, fx);
    id
}

/// A (re)connected worker keeps the tasks it is still running: those not
/// finished and not yet handed to anyone else become its own again.
fn claim(core: &mut Core, id: WorkerId, running: Vec<(TaskId, u32)>) {
    let mut claimed = 0;
    for (tid, attempt) in running {
        let Some(task) = core.jobs.get_mut(&tid.job).and_then(|j| j.tasks.get_mut(tid.idx as usize)) else {
            continue;
        };
        // (An attempt voided by `ctl retry` would never count.)
        if task.state == TaskState::Ready && attempt > task.void_attempts {
            let w = core.workers.get_mut(&id).expect("just registered");
            task.state = TaskState::Assigned(id);
            task.attempts = task.attempts.max(attempt);
            task.held_attempt = attempt;
            task.local_inputs.clear();
            task.repeat_here = false;
            task.add_holder(w.process);
            w.hold(tid, &task.resources);
            claimed += 1;
        } else if task.outcome.is_none() {
            // It runs an attempt that no longer counts: nothing more of
            // that task goes to it until that one has reported.
            core.mark_dropped(id, tid);
        }
    }
    if claimed > 0 {
        tracing::info!(worker = %id, claimed, "worker reclaimed its running tasks");
    }
}

/// A worker is gone (connection closed, or declared dead): its unreported
/// tasks go back to the queue, except those that have now killed too many.
pub fn on_worker_lost(core: &mut Core, fx: &mut impl Effects, now: u64, id: WorkerId, why: &str) {
    let Some(w) = core.workers.remove(&id) else {
        return;
    };
    core.worker_by_conn.remove(&w.conn);
    core.pin_frontier.remove(&id);
    if why == GOODBYE && w.assigned.is_empty() {
        tracing::info!(worker = %id, "worker left");
    } else {
        tracing::warn!(worker = %id, in_flight = w.assigned.len(), reason = why, "worker lost");
    }
    // A worker runs its tasks in the order it got them: the `slots` oldest
    // unreported ones were running when it died; the rest were only queued.
    let mut lost: Vec<(u64, TaskId)> =
        w.assigned.into_iter().map(|t| (core.find_task(t).map_or(0, |t| t.assigned_seq), t)).collect();
    lost.sort();
    let mut failed = Completed::default();
    // A worker that left on purpose killed nobody: its tasks just go back.
    let died = why != GOODBYE;
    for (n, (_, tid)) in lost.into_iter().enumerate() {
        core.stealing.remove(&tid);
        let default_kills = core.config.max_worker_kills;
        let task = core.get_task_mut(tid);
        if task.outcome.is_some() {
            continue; // pinned there, and failed with a dependency given up on above
        }
        let max_kills = task.max_worker_kills.unwrap_or(default_kills).max(1);
        if died && n < w.slots as usize {
            task.killed.push(id);
        }
        if task.killed.len() as u32 >= max_kills {
            let names: Vec<String> = task.killed.iter().map(|w| w.to_string()).collect();
            let workers = if names.len() == 1 { "worker" } else { "workers" };
            // A death the scheduler was told the reason of says it.
            let last = if why.starts_with("it exceeded") { format!("; {id}: {why}") } else { String::new() };
            let error = format!(
                "task {tid} was running on {} {workers} that died ({}){last}; giving up",
                names.len(),
                names.join(", ")
            );
            graph::complete(core, now, tid, Outcome::err(error), false, &mut failed);
        } else {
            requeue(core, tid, false);
        }
    }
    graph::flush_completed(core, fx, failed);
    schedule(core, fx);
}

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

/// The reason `on_worker_lost` gets when a worker said goodbye.
pub const GOODBYE: &str = "worker shut down";

pub fn on_connection_closed(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId) {
    if let Some(wid) = core.worker_by_conn.get(&conn).copied() {
        on_worker_lost(core, fx, now, wid, "connection closed");
    }
    core.stale_conns.remove(&conn);
    core.conn_process.remove(&conn);
    on_nanny_left(core, conn);
    for job in core.jobs.values_mut() {
        job.watchers.retain(|c| *c != conn);
    }
}

pub fn on_heartbeat(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, rss_kib: u64) {
    if let Some(w) = core.worker_by_conn.get(&conn).and_then(|id| core.workers.get_mut(id)) {
        w.last_seen = now;
        w.rss_kib = rss_kib;
    } else {
        tell_stale(core, fx, conn);
    }
}

/// A connection whose worker was declared lost is told, once, to register
/// again as a new incarnation.
fn tell_stale(core: &mut Core, fx: &mut impl Effects, conn: ConnId) {
    if let Some(told) = core.stale_conns.get_mut(&conn) {
        if !*told {
            *told = true;
            let reason = "this worker was declared lost (missed heartbeats); register again".into();
            fx.to_worker(conn, ToWorker::Reregister { reason });
        }
    }
}

/// Periodic check: workers silent for longer than the heartbeat timeout are
/// lost (hung or stopped); their connection stays open, marked stale.
/// Silence counts only while the scheduler itself runs (see `note_stall`).
pub fn on_tick(core: &mut Core, fx: &mut impl Effects, now: u64) {
    note_stall(core, now);
    let timeout = core.config.heartbeat_timeout_us;
    for w in core.workers.values_mut().filter(|w| !w.dropped.is_empty()) {
        w.dropped.retain(|_, at| now.saturating_sub(*at) <= timeout);
    }
    on_deadline(core, fx, now);
    if let Some(retention) = core.config.retention_us {
        let expired: Vec<JobId> = core
            .jobs
            .iter()
            .filter(|(_, j)| j.done_at.is_some_and(|t| now.saturating_sub(t) > retention))
            .map(|(id, _)| *id)
            .collect();
        for job in expired {
            forget(core, fx, job, "retention period over");
        }
    }
    let silent: Vec<(WorkerId, ConnId, u64)> = core
        .workers
        .iter()
        .filter(|(_, w)| now.saturating_sub(w.last_seen) > timeout)
        .map(|(id, w)| (*id, w.conn, now.saturating_sub(w.last_seen)))
        .collect();
    for (id, conn, quiet_us) in silent {
        core.stale_conns.insert(conn, false);
        let why = format!("no heartbeat for {:.1}s", quiet_us as f64 / 1e6);
        on_worker_lost(core, fx, now, id, &why);
    }
}

/// Most of one resource a task may ask for (far beyond any real machine, far
/// below what could overflow the accounting of what workers hold).
pub const MAX_RESOURCE_AMOUNT: u64 = u32::MAX as u64;

/// Longest time limit a task may have: a year.
pub const MAX_TIME_LIMIT_MS: u64 = 365 * 24 * 3600 * 1000;

/// Ticks come a few times per heartbeat timeout (at most every second): a
/// gap this long since the last one means the scheduler itself did not run
/// (SIGSTOP, a suspended VM, a starved host). What its workers sent
/// meanwhile is still unread, so their silence says nothing: the heartbeat
/// clocks start again.
/// Before the first tick, the last time it heard from a worker tells when
/// it last ran.
fn note_stall(core: &mut Core, now: u64) {
    let threshold = (core.config.heartbeat_timeout_us / 2).max(MIN_STALL_US);
    let heard = core.workers.values().map(|w| w.last_seen).max();
    let ran = core.last_tick.max(heard);
    if let Some(gap) = ran.map(|t| now.saturating_sub(t)).filter(|gap| *gap > threshold) {
        for w in core.workers.values_mut() {
            w.last_seen = w.last_seen.max(now);
        }
        tracing::warn!(
            stalled_ms = gap / 1000,
            workers = core.workers.len(),
            "the scheduler did not run for a while (stopped or starved); heartbeat clocks restarted"
        );
    }
    core.last_tick = Some(now);
}

/// Releases the retries whose backoff is over and ends the reclaim grace
/// period once due: on every tick, and when the actor's timer for
/// `Core::next_deadline` fires.
pub fn on_deadline(core: &mut Core, fx: &mut impl Effects, now: u64) {
    if !core.delayed.is_empty() {
        let (due, later): (Vec<_>, Vec<_>) = core.delayed.drain(..).partition(|(t, _)| *t <= now);
        core.delayed = later;
        for (_, tid) in due {
            if core.find_task(tid).is_some_and(|t| t.state == TaskState::Delayed) {
                core.get_task_mut(tid).state = TaskState::Ready;
                core.push_ready(tid);
            }
        }
        schedule(core, fx);
    }
    if core.hold_until.is_some_and(|t| now >= t) {
        core.hold_until = None;
        let unclaimed =
            core.jobs.values().flat_map(|j| &j.tasks).filter(|t| t.state == TaskState::Ready).count();
        tracing::info!(requeued = unclaimed, "grace period over: unclaimed tasks go to any worker");
        schedule(core, fx);
    }
}

/// Shortest gap between ticks taken for a stall (ticks come at least every 10 ms).
const MIN_STALL_US: u64 = 50_000;

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

/// A job with no `py` tasks (see `on_submit_job`).
pub fn on_submit(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    job: JobId,
    name: String,
    tasks: Vec<TaskSpec>,
) {
    on_submit_job(core, fx, now, conn, SubmitMsg { job, name, tasks, functions: Vec::new() });
}

pub fn on_submit_job(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, msg: SubmitMsg) {
    let job = msg.job;
    if let Some(existing) = core.jobs.get(&job) {
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
    fx.journal(Record::JobSubmitted {
        job,
        seq,
        name: name.clone(),
        tasks: tasks.iter().map(Into::into).collect(),
        functions: functions.clone(),
    });
    let digest = submission_digest(&tasks, &functions);
    let doomed = insert_job(core, now, job, seq, name, tasks, deps);
    let j = core.jobs.get_mut(&job).expect("just inserted");
    j.functions = functions;
    j.digest = digest;
    // Tasks that depend on a task of an earlier job that already failed.
    let mut failed = Completed::default();
    for (tid, error) in doomed {
        graph::complete(core, now, tid, Outcome::err(error), false, &mut failed);
    }
    let n = core.jobs[&job].tasks.len() as u32;
    tracing::info!(job = %job, tasks = n, "job submitted");
    fx.to_client(conn, ToClient::Submitted { job, tasks: n });
    graph::flush_completed(core, fx, failed);
    schedule(core, fx);
}

/// Adds a job: tasks whose dependencies are all finished are ready, the
/// others wait. Returns the tasks that depend on an already failed task,
/// with the error they fail with.
fn insert_job(
    core: &mut Core,
    now: u64,
    job: JobId,
    seq: u64,
    name: String,
    specs: Vec<TaskSpec>,
    deps: Vec<Vec<TaskId>>,
) -> Vec<(TaskId, String)> {
    core.next_job_seq = core.next_job_seq.max(seq + 1);
    let mut keys = HashMap::default();
    let mut tasks: Vec<Task> = Vec::with_capacity(specs.len());
    for (idx, (s, deps)) in specs.into_iter().zip(deps).enumerate() {
        if let Some(k) = &s.key {
            keys.insert(k.clone(), idx as u32);
        }
        tasks.push(Task {
            key: s.key,
            max_worker_kills: s.max_worker_kills,
            kind: s.kind,
            state: TaskState::Ready,
            attempts: 0,
            held_attempt: 0,
            assigned_seq: 0,
            killed: Vec::new(),
            outcome: None,
            deps,
            dependents: Vec::new(),
            waiting: 0,
            priority: s.priority,
            retries: s.retries,
            time_limit_ms: s.time_limit_ms,
            resources: s.resources,
            failures: 0,
            local_inputs: Vec::new(),
            // Replayed: an attempt may still run on a worker of the last run.
            holders: if core.replaying { vec![super::ANY_PROCESS] } else { Vec::new() },
            void_attempts: 0,
            repeat_here: false,
        });
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
            functions: Vec::new(),
            digest: 0,
        },
    );
    let mut doomed = Vec::new();
    for idx in 0..n as u32 {
        let tid = TaskId { job, idx };
        let deps = core.jobs[&job].tasks[idx as usize].deps.clone();
        let mut waiting = 0;
        for d in deps {
            let Some(dep) = core.jobs.get_mut(&d.job).and_then(|j| j.tasks.get_mut(d.idx as usize)) else {
                continue;
            };
            match &dep.outcome {
                Some(Outcome::Ok { .. }) => {}
                Some(Outcome::Err { error, .. }) => {
                    let error = error.clone();
                    let name = graph::task_name(&core.jobs[&d.job], d.idx);
                    doomed.push((tid, format!("dependency {name} failed: {error}")));
                }
                None => {
                    dep.dependents.push(tid);
                    waiting += 1;
                }
            }
        }
        let task = &mut core.jobs.get_mut(&job).expect("just inserted").tasks[idx as usize];
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

pub fn on_watch(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.get_mut(&job) else { return no_job(fx, conn, job) };
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
            t.outcome.as_ref().map(|o| TaskOutcome {
                idx: idx as u32,
                attempts: t.attempts,
                outcome: o.clone(),
            })
        })
        .collect();
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for o in done {
        let size = match &o.outcome {
            Outcome::Ok { result } => result.len(),
            Outcome::Err { error, .. } => error.len(),
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

pub fn on_list_workers(core: &Core, fx: &mut impl Effects, now: u64, conn: ConnId) {
    let workers = core
        .workers
        .iter()
        .map(|(id, w)| (id, w, core.running_queued(w)))
        .map(|(id, w, (running, queued))| WorkerInfo {
            id: *id,
            host: w.host.clone(),
            pid: w.pid,
            slots: w.slots,
            running,
            queued,
            nanny: w.nanny.clone(),
            resources: w.resources.clone(),
            last_heard_ms: now.saturating_sub(w.last_seen) / 1000,
            rss_kib: w.rss_kib,
            draining: w.draining,
        })
        .collect();
    fx.to_client(conn, ToClient::Workers { workers });
}

pub(super) fn notify_watchers(
    core: &mut Core,
    fx: &mut impl Effects,
    job: JobId,
    outcomes: Vec<TaskOutcome>,
) {
    let Some(j) = core.jobs.get_mut(&job) else {
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

/// A batch of finished attempts from one worker. The first report of a task
/// wins; reports for tasks that already have an outcome are counted and
/// dropped, and so are reports for tasks this worker process was never
/// handed (nor reclaimed, nor may hold from before a restart).
pub fn on_reports(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    batch: u64,
    reports: Vec<TaskReport>,
) {
    let wid = core.worker_by_conn.get(&conn).copied();
    let process = core.conn_process.get(&conn).copied();
    let Some(process) = process.filter(|_| wid.is_some() || core.stale_conns.contains_key(&conn)) else {
        let message = "reports from a worker that has not registered".into();
        fx.to_worker(conn, ToWorker::Error { message });
        return;
    };
    if let Some(w) = wid.and_then(|id| core.workers.get_mut(&id)) {
        w.last_seen = now;
        if !w.dropped.is_empty() {
            for r in &reports {
                w.dropped.remove(&r.task);
            }
        }
    }
    let mut completed = Completed::default();
    let (mut late, mut foreign) = (0u64, 0u64);
    for r in reports {
        match core.find_task(r.task) {
            Some(t) if !t.may_report(process, r.attempt) => foreign += 1,
            Some(t) if t.outcome.is_none() && r.executor_died => {
                executor_died(core, now, wid, r, &mut completed)
            }
            Some(t) if t.outcome.is_none() => accept_report(core, now, wid, r, &mut completed),
            _ => late += 1,
        }
    }
    // The frame is acknowledged once durable (or already recorded), so the
    // worker can forget its results.
    fx.to_worker(conn, ToWorker::Ack { batch });
    graph::flush_completed(core, fx, completed);
    if late > 0 {
        core.duplicate_reports = core.duplicate_reports.saturating_add(late);
        tracing::info!(conn = %conn, dropped = late, "dropped late reports of tasks already recorded");
    }
    if foreign > 0 {
        core.foreign_reports = core.foreign_reports.saturating_add(foreign);
        tracing::warn!(conn = %conn, dropped = foreign, "dropped reports of tasks this worker was never given");
    }
    if wid.is_none() {
        tell_stale(core, fx, conn);
    }
    schedule(core, fx);
}

/// An attempt killed the Python executor running it: counted like a worker
/// death for that task (it runs again, on any worker, with a new attempt),
/// and the task fails once it has killed `max_worker_kills` processes.
fn executor_died(core: &mut Core, now: u64, wid: Option<WorkerId>, r: TaskReport, out: &mut Completed) {
    let default_kills = core.config.max_worker_kills;
    let task = core.get_task_mut(r.task);
    let Some(wid) = wid.filter(|w| task.state == TaskState::Assigned(*w) && task.held_attempt == r.attempt)
    else {
        return; // not this worker's attempt any more
    };
    let max_kills = task.max_worker_kills.unwrap_or(default_kills).max(1);
    task.killed.push(wid);
    let why = match &r.outcome {
        Outcome::Err { error, .. } => error.clone(),
        Outcome::Ok { .. } => "it died".into(),
    };
    tracing::warn!(task = %r.task, worker = %wid, kills = task.killed.len(), error = ?why, "task killed its Python executor");
    let killed = task.killed.len() as u32;
    core.unhold(wid, r.task, Leave::Unproduced);
    if killed >= max_kills {
        let task = core.get_task_mut(r.task);
        let names: Vec<String> = task.killed.iter().map(|w| w.to_string()).collect();
        let error = format!(
            "task {} killed its Python executor {} time{} (on {}); giving up. Last: {why}",
            r.task,
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
        graph::complete(core, now, r.task, Outcome::err(error), false, out);
    } else {
        requeue(core, r.task, false);
    }
}

/// Records one report of a task without an outcome from a process that may
/// report it. A failure with retries left counts only from the worker that
/// holds the task (otherwise the task is queued or runs elsewhere already).
fn accept_report(core: &mut Core, now: u64, wid: Option<WorkerId>, r: TaskReport, out: &mut Completed) {
    let holder = match core.find_task(r.task).map(|t| &t.state) {
        Some(TaskState::Assigned(h)) => Some(*h),
        _ => None,
    };
    // The worker holding the attempt this report is of (an earlier one may
    // come from it too, resent after a reconnect: that is not what it runs).
    let mine = holder.is_some()
        && holder == wid
        && core.find_task(r.task).is_some_and(|t| t.held_attempt == r.attempt);
    if mine {
        if let Some(w) = wid.and_then(|id| core.workers.get_mut(&id)) {
            let sample = r.micros as f64;
            w.avg_task_us = Some(match w.avg_task_us {
                None => sample,
                Some(avg) => avg * 0.9 + sample * 0.1,
            });
        }
    }
    let backoff = core.config.retry_backoff_us;
    let task = core.get_task_mut(r.task);
    if !r.outcome.is_ok() && task.failures < task.retries {
        if !mine {
            return;
        }
        // Try again after a backoff that doubles with each failure.
        task.failures += 1;
        task.state = TaskState::Delayed;
        let delay = backoff.saturating_mul(1 << (task.failures - 1).min(10));
        tracing::info!(task = %r.task, failures = task.failures, retries = task.retries, "task failed; retrying");
        core.delayed.push((now.saturating_add(delay), r.task));
        if let Some(h) = holder {
            core.unhold(h, r.task, Leave::Unproduced);
        }
        return;
    }
    // A late report of an earlier attempt also wins (first report recorded):
    // the worker holding the current attempt lets it go.
    if let Some(h) = holder {
        let how = match (mine, r.outcome.is_ok()) {
            (true, true) => Leave::ResultHere,
            (true, false) => Leave::Unproduced,
            (false, _) => Leave::Elsewhere,
        };
        core.unhold(h, r.task, how);
    }
    graph::complete(core, now, r.task, r.outcome, false, out);
}

/// Hands ready tasks to workers with free capacity, spreading them one at
/// a time across workers (round robin), one `Assign` message per worker. A
/// task that needs resources goes to a worker that has them free; if none
/// has right now, it waits in the queue.
pub fn schedule(core: &mut Core, fx: &mut impl Effects) {
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
        let w = &core.workers[id];
        (w.assigned.len() * 1024 / w.slots.max(1) as usize, *id)
    });
    let mut skipped = Vec::new();
    let mut next = 0;
    let mut open = free.len();
    while open > 0 {
        let Some(entry) = core.ready.pop() else { break };
        let Some(task) = core.find_task(entry.task).filter(|t| t.state == TaskState::Ready) else { continue };
        let tid = entry.task;
        // The next worker (round robin) with room that has what the task needs.
        let n = free.len();
        let pick = (0..n).map(|k| (next + k) % n).find(|&k| {
            let w = &core.workers[&free[k].0];
            free[k].1 > 0
                && (task.resources.is_empty() || w.fits(&task.resources))
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
            fx.to_worker(core.workers[&wid].conn, ToWorker::Assign { tasks: batch, functions });
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
        let w = core.workers.get_mut(&wid).expect("a registered worker");
        if w.functions_sent.contains(&key) {
            continue;
        }
        let pickle = core.jobs.get(&a.task.job).and_then(|j| j.functions.get(func as usize));
        if let Some(pickle) = pickle {
            w.functions_sent.insert(key);
            out.push(PyFunction { job: a.task.job, func, pickle: pickle.clone() });
        }
    }
    out
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
    let process = core.workers[&wid].process;
    let task = core.get_task_mut(tid);
    // (A reclaiming worker may have claimed any attempt number.)
    task.attempts = task.attempts.saturating_add(1);
    task.held_attempt = task.attempts;
    task.assigned_seq = seq;
    task.state = TaskState::Assigned(wid);
    task.local_inputs = pending_inputs.iter().map(|(_, d)| *d).collect();
    task.repeat_here = task.holders.contains(&process);
    task.add_holder(process);
    let a = Assignment {
        task: tid,
        key: task.key.clone(),
        attempt: task.attempts,
        kind: task.kind.clone(),
        inputs,
        time_limit_ms: task.time_limit_ms,
        resources: task.resources.clone(),
        pending_inputs,
        has_dependents: !task.dependents.is_empty(),
    };
    core.workers.get_mut(&wid).expect("a registered worker").hold(tid, &a.resources);
    a
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
        // that no idle worker has the resources for would only come back.
        .filter(|t| {
            core.find_task(**t).is_some_and(|t| {
                t.waiting == 0 && (t.resources.is_empty() || takers.iter().any(|w| w.fits(&t.resources)))
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
pub fn on_released(core: &mut Core, fx: &mut impl Effects, conn: ConnId, tasks: Vec<TaskId>) {
    let Some(wid) = core.worker_by_conn.get(&conn).copied() else { return };
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
    schedule(core, fx);
}

/// Rebuilds the core from journal records, through the same state changes
/// live events make. Tasks without an outcome end up queued again, in
/// submission order.
pub fn replay(core: &mut Core, now: u64, records: Vec<Record>) {
    core.replaying = true;
    let mut order = Vec::new();
    for r in records {
        match r {
            Record::JobSubmitted { job, seq, name, tasks, functions } => {
                if !core.jobs.contains_key(&job) {
                    let tasks: Vec<TaskSpec> = tasks.into_iter().map(Into::into).collect();
                    let deps = graph::resolve(core, job, &tasks).unwrap_or_else(|e| {
                        // e.g. a dependency on a job forgotten since: run without it.
                        tracing::warn!(job = %job, error = %e, "journaled dependencies no longer resolve");
                        vec![Vec::new(); tasks.len()]
                    });
                    // Failures it caused were journaled too, and come later.
                    let digest = submission_digest(&tasks, &functions);
                    let _ = insert_job(core, now, job, seq, name, tasks, deps);
                    let j = core.jobs.get_mut(&job).expect("just inserted");
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
                core.jobs.remove(&job);
            }
            Record::TasksRetried { job, idx } => {
                retry_tasks(core, job, &idx);
            }
        }
    }
    core.replaying = false;
    core.ready.clear();
    for job in order {
        let Some(j) = core.jobs.get(&job) else { continue };
        let ready: Vec<u32> =
            (0..j.tasks.len() as u32).filter(|i| j.tasks[*i as usize].state == TaskState::Ready).collect();
        for idx in ready {
            core.push_ready(TaskId { job, idx });
        }
    }
}

/// After a restart with unfinished tasks: hold scheduling for `grace_us` so
/// workers that kept running can reconnect and reclaim their tasks first.
pub fn begin_recovery(core: &mut Core, now: u64, grace_us: u64) {
    if !core.ready.is_empty() && grace_us > 0 {
        core.hold_until = Some(now + grace_us);
        tracing::info!(
            unfinished = core.ready.len(),
            grace_ms = grace_us / 1000,
            "waiting for workers to reclaim their running tasks"
        );
    }
}

/// Drops a finished job and its results, here and in the journal.
pub fn on_forget(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let reply = match core.jobs.get(&job) {
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

fn forget(core: &mut Core, fx: &mut impl Effects, job: JobId, why: &str) {
    if let Some(j) = core.jobs.remove(&job) {
        if !j.functions.is_empty() {
            for w in core.workers.values_mut() {
                w.functions_sent.retain(|(jb, _)| *jb != job);
            }
        }
        fx.journal(Record::JobForgotten { job });
        tracing::info!(job = %job, tasks = j.tasks.len(), reason = why, "job forgotten");
    }
}

/// A worker stops taking work: the queued tasks it hands back go to others;
/// it keeps (and will report) the ones it runs.
pub fn on_worker_draining(core: &mut Core, fx: &mut impl Effects, conn: ConnId, returned: Vec<TaskId>) {
    let Some(wid) = core.worker_by_conn.get(&conn).copied() else { return };
    core.workers.get_mut(&wid).expect("registered worker").draining = true;
    let mut back: Vec<TaskId> = returned
        .into_iter()
        .filter(|t| core.find_task(*t).is_some_and(|t| t.state == TaskState::Assigned(wid)))
        .collect();
    back.sort();
    back.dedup();
    for tid in &back {
        // (One taken back as pinned behind another is requeued already.)
        if core.unhold(wid, *tid, Leave::Unproduced) {
            requeue(core, *tid, true); // it never started
        }
    }
    let w = &core.workers[&wid];
    tracing::info!(worker = %wid, returned = back.len(), running = w.assigned.len(), "worker draining");
    schedule(core, fx);
}

pub fn on_nanny_registered(
    core: &mut Core,
    fx: &mut impl Effects,
    conn: ConnId,
    host: String,
    pid: u32,
    slots: Vec<SlotInfo>,
) {
    let id = match core.nanny_by_conn.get(&conn) {
        Some(id) => *id,
        None => {
            core.next_nanny += 1;
            core.next_nanny
        }
    };
    tracing::info!(nanny = id, host = ?host, pid, slots = slots.len(), "nanny registered");
    core.nanny_by_conn.insert(conn, id);
    core.nannies.insert(id, NannyRecord { conn, host, pid, slots });
    fx.to_nanny(conn, ToNanny::Registered { nanny: id });
}

pub fn on_nanny_slot(core: &mut Core, conn: ConnId, info: SlotInfo) {
    let Some(n) = core.nanny_by_conn.get(&conn).and_then(|id| core.nannies.get_mut(id)) else { return };
    if let SlotState::Failed { reason } = &info.state {
        tracing::error!(host = ?n.host, nanny_pid = n.pid, slot = info.slot, reason = ?reason, "worker slot failed");
    }
    match n.slots.iter_mut().find(|s| s.slot == info.slot) {
        Some(s) => *s = info,
        None => n.slots.push(info),
    }
}

/// A nanny kills the worker of `slot` for its memory: it is lost now, and
/// the error of a task that gives up on it says why.
pub fn on_worker_over_memory(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    slot: u32,
    reason: &str,
) {
    let Some(n) = core.nanny_by_conn.get(&conn).and_then(|id| core.nannies.get(id)) else { return };
    let at = crate::protocol::NannySlot { pid: n.pid, slot };
    let Some(id) = core.workers.iter().find(|(_, w)| w.nanny.as_ref() == Some(&at)).map(|(id, _)| *id) else {
        return;
    };
    let why = format!("it exceeded the memory limit ({reason})");
    on_worker_lost(core, fx, now, id, &why);
}

pub fn on_nanny_left(core: &mut Core, conn: ConnId) {
    if let Some(id) = core.nanny_by_conn.remove(&conn) {
        if let Some(n) = core.nannies.remove(&id) {
            tracing::info!(nanny = id, host = ?n.host, pid = n.pid, "nanny disconnected");
        }
    }
}

pub fn on_list_nannies(core: &Core, fx: &mut impl Effects, conn: ConnId) {
    let nannies = core
        .nannies
        .iter()
        .map(|(id, n)| NannyInfo { id: *id, host: n.host.clone(), pid: n.pid, slots: n.slots.clone() })
        .collect();
    fx.to_client(conn, ToClient::Nannies { nannies });
}

/// Forwards an operator's restart request to the worker's nanny.
pub fn on_restart_worker(core: &mut Core, fx: &mut impl Effects, conn: ConnId, worker: WorkerId) {
    let reply = match core.workers.get(&worker) {
        None => Err(format!("no worker {worker} (see `actord ctl workers`)")),
        Some(w) => match &w.nanny {
            None => Err(format!("worker {worker} (pid {} on {}) was not started by a nanny", w.pid, w.host)),
            Some(slot) => core
                .nannies
                .values()
                .find(|n| n.pid == slot.pid && n.host == w.host)
                .map(|n| {
                    fx.to_nanny(n.conn, ToNanny::RestartWorker { slot: slot.slot });
                    format!(
                        "asked the nanny (pid {} on {}) to restart {worker} in slot {}",
                        n.pid, n.host, slot.slot
                    )
                })
                .ok_or_else(|| format!("the nanny of worker {worker} (pid {}) is not connected", slot.pid)),
        },
    };
    match reply {
        Ok(message) => fx.to_client(conn, ToClient::Done { message }),
        Err(message) => fx.to_client(conn, ToClient::Error { job: None, message }),
    }
}

/// Cancels unfinished tasks of a job (all, or those named by `keys`);
/// running ones are stopped on their workers; dependents fail.
pub fn on_cancel(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    job: JobId,
    keys: Vec<String>,
) {
    let Some(j) = core.jobs.get(&job) else { return no_job(fx, conn, job) };
    let targets: Vec<u32> = if keys.is_empty() {
        (0..j.tasks.len() as u32).collect()
    } else {
        let mut t = Vec::with_capacity(keys.len());
        for k in &keys {
            match graph::key_index(j, k) {
                Some(i) => t.push(i),
                None => {
                    let message = format!("job {job} has no task {k:?}");
                    fx.to_client(conn, ToClient::Error { job: Some(job), message });
                    return;
                }
            }
        }
        t
    };
    let mut stop: HashMap<ConnId, Vec<TaskId>> = HashMap::default();
    let mut completed = Completed::default();
    let mut n = 0;
    for idx in targets {
        let tid = TaskId { job, idx };
        let Some(task) = core.find_task(tid) else { continue };
        if task.outcome.is_some() {
            continue;
        }
        if let TaskState::Assigned(w) = task.state {
            if core.unhold(w, tid, Leave::Elsewhere) {
                stop.entry(core.workers[&w].conn).or_default().push(tid);
                core.mark_dropped(w, tid); // it reports that copy as canceled
            }
        }
        n += 1;
        let error = "canceled".to_string();
        graph::complete(core, now, tid, Outcome::err(error), true, &mut completed);
    }
    for (wconn, tasks) in stop {
        fx.to_worker(wconn, ToWorker::Cancel { tasks });
    }
    tracing::info!(job = %job, canceled = n, "tasks canceled");
    graph::flush_completed(core, fx, completed);
    fx.to_client(conn, ToClient::Done { message: format!("canceled {n} tasks of job {job}") });
    schedule(core, fx);
}

pub fn on_resolve(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId, key: String) {
    let reply = match core.jobs.get(&job) {
        None => ToClient::Error { job: Some(job), message: format!("no job {job} on this scheduler") },
        Some(j) => match graph::key_index(j, &key) {
            Some(idx) => ToClient::Resolved { job, key, idx },
            None => ToClient::Error { job: Some(job), message: format!("job {job} has no task {key:?}") },
        },
    };
    fx.to_client(conn, reply);
}

pub fn on_unwatch(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    if let Some(j) = core.jobs.get_mut(&job) {
        j.watchers.retain(|c| *c != conn);
    }
    fx.to_client(conn, ToClient::Unwatched { job });
}

/// Every task of a job with its state; a ready task that needs resources no
/// worker has is reported as unschedulable.
pub fn on_tasks(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.get(&job) else { return no_job(fx, conn, job) };
    let running = core.running_tasks();
    let tasks = j
        .tasks
        .iter()
        .enumerate()
        .map(|(idx, t)| {
            let (state, worker, error) = describe_state(core, &running, TaskId { job, idx: idx as u32 }, t);
            crate::protocol::TaskInfo {
                idx: idx as u32,
                key: t.key.clone(),
                state: state.into(),
                attempts: t.attempts,
                worker,
                error,
            }
        })
        .collect();
    fx.to_client(conn, ToClient::Tasks { job, tasks });
}

/// A task's state as operators see it (`ctl tasks`, `ctl job`): its name,
/// where it runs, and its error or why it cannot be scheduled.
fn describe_state(
    core: &Core,
    running: &HashSet<TaskId>,
    tid: TaskId,
    t: &Task,
) -> (&'static str, Option<WorkerId>, Option<String>) {
    let error = match &t.outcome {
        Some(Outcome::Err { error, .. }) => Some(error.clone()),
        _ => None,
    };
    match &t.state {
        TaskState::Ready
            if !t.resources.is_empty() && !core.workers.values().any(|w| w.could_run(&t.resources)) =>
        {
            let need: Vec<String> = t.resources.iter().map(|(k, n)| format!("{k}={n}")).collect();
            ("unschedulable", None, Some(format!("needs {}; no worker has that", need.join(","))))
        }
        TaskState::Waiting => ("waiting", None, error),
        TaskState::Ready => ("ready", None, error),
        TaskState::Delayed => ("retrying", None, error),
        // Pinned to a worker ahead of inputs it produces itself.
        TaskState::Assigned(w) if t.waiting > 0 => ("waiting", Some(*w), error),
        TaskState::Assigned(w) if running.contains(&tid) => ("running", Some(*w), error),
        // Handed to a worker that is busy with older ones.
        TaskState::Assigned(w) => ("queued", Some(*w), error),
        TaskState::Finished => ("finished", None, error),
        TaskState::Failed => ("failed", None, error),
        TaskState::Canceled => ("canceled", None, error),
    }
}

fn job_info(id: JobId, j: &Job, running: &HashSet<TaskId>) -> crate::protocol::JobInfo {
    let held = j.tasks.iter().filter(|t| matches!(t.state, TaskState::Assigned(_))).count() as u32;
    let runs = running.iter().filter(|t| t.job == id).count();
    let runs = (runs as u32).min(held);
    crate::protocol::JobInfo {
        id,
        name: j.name.clone(),
        tasks: j.tasks.len() as u32,
        finished: j.finished,
        failed: j.failed,
        running: runs,
        queued: held - runs,
        submitted_at: j.submitted_at,
        done_at: j.done_at,
    }
}

fn no_job(fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let message = format!("no job {job} on this scheduler");
    fx.to_client(conn, ToClient::Error { job: Some(job), message });
}

/// One job's progress by state, and its timing.
pub fn on_job(core: &Core, fx: &mut impl Effects, now: u64, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.get(&job) else { return no_job(fx, conn, job) };
    let running = core.running_tasks();
    let mut states = std::collections::BTreeMap::new();
    for (idx, t) in j.tasks.iter().enumerate() {
        let state = describe_state(core, &running, TaskId { job, idx: idx as u32 }, t).0;
        *states.entry(state.to_string()).or_insert(0u32) += 1;
    }
    let elapsed_s = j.done_at.unwrap_or(now).saturating_sub(j.submitted_at) as f64 / 1e6;
    let outcomes = (j.finished + j.failed) as f64;
    let detail = crate::protocol::JobDetail {
        info: job_info(job, j, &running),
        states,
        elapsed_s,
        tasks_per_s: if elapsed_s > 0.0 { outcomes / elapsed_s } else { 0.0 },
        retried_attempts: j.tasks.iter().map(|t| t.attempts.saturating_sub(1) as u64).sum(),
    };
    fx.to_client(conn, ToClient::Job { job: detail });
}

/// Puts failed and canceled tasks of a job back in line: ready if their
/// dependencies are done, waiting otherwise (dependents that failed with
/// them wait for them again). Attempt numbers go on counting, so a late
/// report of an earlier attempt is still told apart.
pub(super) fn retry_tasks(core: &mut Core, job: JobId, idx: &[u32]) -> Vec<TaskId> {
    let Some(j) = core.jobs.get_mut(&job) else { return Vec::new() };
    let mut again = Vec::new();
    for &i in idx {
        let Some(t) = j.tasks.get_mut(i as usize) else { continue };
        if !matches!(t.state, TaskState::Failed | TaskState::Canceled) {
            continue;
        }
        t.outcome = None;
        t.failures = 0;
        t.killed.clear();
        t.void_attempts = t.attempts;
        j.failed -= 1;
        j.done_at = None;
        again.push(TaskId { job, idx: i });
    }
    // What each waits for now (its inputs may have been retried too, in this
    // job or another), counted afresh: it is told when each one finishes.
    let mut ready = Vec::new();
    for &tid in &again {
        let deps = core.find_task(tid).map(|t| t.deps.clone()).unwrap_or_default();
        let mut waiting = 0;
        for (k, d) in deps.iter().enumerate() {
            let Some(dt) = core.jobs.get_mut(&d.job).and_then(|j| j.tasks.get_mut(d.idx as usize)) else {
                continue;
            };
            if dt.outcome.is_none() {
                waiting += 1;
                let listed = dt.dependents.iter().filter(|x| **x == tid).count();
                if listed < deps[..=k].iter().filter(|x| *x == d).count() {
                    dt.dependents.push(tid);
                }
            }
        }
        let t = core.get_task_mut(tid);
        t.waiting = waiting;
        if waiting == 0 {
            t.state = TaskState::Ready;
            ready.push(tid);
        } else {
            t.state = TaskState::Waiting;
        }
    }
    ready
}

/// `ctl retry JOB`: runs the job's failed and canceled tasks again.
pub fn on_retry(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.get(&job) else { return no_job(fx, conn, job) };
    let failed = |t: &Task| matches!(t.state, TaskState::Failed | TaskState::Canceled);
    let mut retry: rustc_hash::FxHashSet<u32> =
        (0..j.tasks.len() as u32).filter(|i| failed(&j.tasks[*i as usize])).collect();
    // A task whose input stays failed (a failed task of another job, or one
    // of this job that stays failed for that reason) would run without it.
    loop {
        let stuck: Vec<u32> = retry
            .iter()
            .copied()
            .filter(|i| {
                j.tasks[*i as usize].deps.iter().any(|d| {
                    let stays = d.job != job || !retry.contains(&d.idx);
                    stays && core.find_task(*d).is_some_and(failed)
                })
            })
            .collect();
        if stuck.is_empty() {
            break;
        }
        for i in stuck {
            retry.remove(&i);
        }
    }
    let mut idx: Vec<u32> = retry.into_iter().collect();
    idx.sort_unstable();
    if idx.is_empty() {
        let message = format!("job {job} has no failed or canceled tasks");
        return fx.to_client(conn, ToClient::Done { message });
    }
    // Live retries of the job: a watcher that saw `JobDone` watches again.
    fx.journal(Record::TasksRetried { job, idx: idx.clone() });
    let ready = retry_tasks(core, job, &idx);
    tracing::info!(job = %job, tasks = idx.len(), "retrying failed tasks");
    for t in ready {
        core.push_ready(t);
    }
    schedule(core, fx);
    fx.to_client(conn, ToClient::Done { message: format!("retrying {} tasks of job {job}", idx.len()) });
}

/// `ctl retire-worker W`: the worker takes nothing new, hands its queued
/// tasks back, finishes the running ones and stops; a nanny's worker is
/// retired through its nanny, which does not restart it.
pub fn on_retire_worker(core: &mut Core, fx: &mut impl Effects, conn: ConnId, worker: WorkerId) {
    let Some(w) = core.workers.get_mut(&worker) else {
        let message = format!("no worker {worker} (see `actord ctl workers`)");
        return fx.to_client(conn, ToClient::Error { job: None, message });
    };
    w.draining = true;
    let running = w.assigned.len();
    let (wconn, host) = (w.conn, w.host.clone());
    let nanny = w.nanny.as_ref().and_then(|slot| {
        core.nannies.values().find(|n| n.pid == slot.pid && n.host == host).map(|n| (n.conn, slot.slot))
    });
    match nanny {
        Some((nconn, slot)) => fx.to_nanny(nconn, ToNanny::RetireWorker { slot }),
        None => fx.to_worker(wconn, ToWorker::Retire),
    }
    tracing::info!(worker = %worker, running, "retiring worker");
    let message = format!(
        "retiring {worker}: it takes no new tasks; {running} assigned ones finish or move, then it stops"
    );
    fx.to_client(conn, ToClient::Done { message });
}

/// `ctl shutdown --drain`: hand out nothing more and ask workers for their
/// queued tasks back; the scheduler stops once `assigned_count` is zero.
pub fn on_drain(core: &mut Core, fx: &mut impl Effects) {
    core.stopping = true;
    for w in core.workers.values() {
        let queued: Vec<TaskId> = w.assigned.iter().copied().collect();
        if !queued.is_empty() {
            for t in &queued {
                core.stealing.insert(*t);
            }
            fx.to_worker(w.conn, ToWorker::Steal { tasks: queued });
        }
    }
    tracing::info!(assigned = core.assigned_count(), "draining: waiting for running tasks before stopping");
}

pub fn on_jobs(core: &Core, fx: &mut impl Effects, conn: ConnId) {
    let running = core.running_tasks();
    let mut jobs: Vec<crate::protocol::JobInfo> =
        core.jobs.iter().map(|(id, j)| job_info(*id, j, &running)).collect();
    jobs.sort_by_key(|j| core.jobs[&j.id].seq);
    fx.to_client(conn, ToClient::Jobs { jobs });
}

/// What the scheduler's process adds to the core's own figures in `ctl status`.
#[derive(Default)]
pub struct StatusExtra {
    pub epoch: u64,
    pub uptime_s: u64,
    pub journal_path: Option<String>,
    pub journal_bytes: u64,
    pub tasks_per_s: f64,
}

pub fn on_status(core: &Core, fx: &mut impl Effects, conn: ConnId, extra: StatusExtra) {
    let mut s = crate::protocol::StatusInfo {
        epoch: extra.epoch,
        uptime_s: extra.uptime_s,
        journal_path: extra.journal_path,
        journal_bytes: extra.journal_bytes,
        tasks_per_s: extra.tasks_per_s,
        draining: core.stopping,
        workers: core.workers.len() as u32,
        slots: core.workers.values().fold(0u32, |n, w| n.saturating_add(w.slots)),
        nannies: core.nannies.len() as u32,
        jobs: core.jobs.len() as u32,
        jobs_done: core.jobs.values().filter(|j| j.is_done()).count() as u32,
        tasks: 0,
        tasks_finished: 0,
        tasks_failed: 0,
        tasks_running: 0,
        tasks_prefetched: 0,
        tasks_queued: 0,
        duplicate_reports: core.duplicate_reports,
        foreign_reports: core.foreign_reports,
    };
    for w in core.workers.values() {
        let (running, queued) = core.running_queued(w);
        s.tasks_running += running as u64;
        s.tasks_prefetched += queued as u64;
    }
    for j in core.jobs.values() {
        s.tasks += j.tasks.len() as u64;
        s.tasks_finished += j.finished as u64;
        s.tasks_failed += j.failed as u64;
        s.tasks_queued += j.tasks.iter().filter(|t| t.state == TaskState::Ready).count() as u64;
    }
    fx.to_client(conn, ToClient::Status { status: s });
}

/// Says in words why a task is in its state: what it waits for, what it
/// needs that no worker has, where it runs, how it ended.
pub fn on_explain(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId, key: String) {
    let Some(j) = core.jobs.get(&job) else { return no_job(fx, conn, job) };
    let Some(idx) = graph::key_index(j, &key) else {
        fx.to_client(
            conn,
            ToClient::Error { job: Some(job), message: format!("job {job} has no task {key:?}") },
        );
        return;
    };
    let t = &j.tasks[idx as usize];
    let name = |d: &TaskId| match core.jobs.get(&d.job) {
        Some(dj) if d.job == job => graph::task_name(dj, d.idx),
        Some(dj) => format!("{}@{}", d.job, graph::task_name(dj, d.idx)),
        None => d.to_string(),
    };
    let needs = || t.resources.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(",");
    let message = match &t.state {
        TaskState::Waiting => {
            let open: Vec<String> = t
                .deps
                .iter()
                .filter(|d| core.find_task(**d).is_some_and(|d| d.outcome.is_none()))
                .map(name)
                .collect();
            format!("task {key} waits for {} unfinished dependencies: {}", open.len(), open.join(", "))
        }
        TaskState::Ready if core.hold_until.is_some() => {
            format!(
                "task {key} is ready; the scheduler is waiting for workers to reclaim tasks after a restart"
            )
        }
        TaskState::Ready if core.workers.is_empty() => {
            format!("task {key} is ready; no worker is registered")
        }
        TaskState::Ready
            if !t.resources.is_empty() && !core.workers.values().any(|w| w.could_run(&t.resources)) =>
        {
            format!("task {key} is unschedulable: it needs {}; no worker has that", needs())
        }
        TaskState::Ready if !t.resources.is_empty() => {
            format!("task {key} is ready and needs {}; it waits until a worker has that free", needs())
        }
        TaskState::Ready => {
            format!("task {key} is ready, queued at priority {}; workers are busy", t.priority)
        }
        TaskState::Delayed => format!("task {key} failed {} times; retrying after a backoff", t.failures),
        TaskState::Assigned(w) => format!("task {key} is on worker {w} (attempt {})", t.attempts),
        TaskState::Finished => format!("task {key} finished (attempt {})", t.attempts),
        TaskState::Failed | TaskState::Canceled => match &t.outcome {
            Some(Outcome::Err { error, .. }) => {
                format!("task {key} failed after {} attempts: {error}", t.attempts)
            }
            _ => format!("task {key} failed"),
        },
    };
    fx.to_client(conn, ToClient::Done { message });
}
