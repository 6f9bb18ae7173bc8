//! Read-only views for `ctl` and `explain`: lists, a job's progress, the
//! status figures, and why a task is in its state, in words.

use super::graph::{self};
use super::{Core, Effects, Job, Task, TaskState};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::protocol::{NannyInfo, ToClient, WorkerInfo};
use rustc_hash::FxHashSet as HashSet;

/// The results store as the jobs refer to it: files and bytes (every stored
/// result recorded, including ones found lost and written again).
pub fn stored_results(core: &Core) -> crate::protocol::StoredSize {
    let mut size = crate::protocol::StoredSize::default();
    for (_, j) in &core.jobs {
        size.files += j.stored.len() as u64;
        size.bytes = j.stored.iter().fold(size.bytes, |b, s| b.saturating_add(s.size));
    }
    size
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

pub fn on_list_nannies(core: &Core, fx: &mut impl Effects, conn: ConnId) {
    let nannies = core
        .nannies
        .iter()
        .map(|(id, n)| NannyInfo { id: *id, host: n.host.clone(), pid: n.pid, slots: n.slots.clone() })
        .collect();
    fx.to_client(conn, ToClient::Nannies { nannies });
}

pub fn on_resolve(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId, key: String) {
    let reply = match core.jobs.find_job(job) {
        None => ToClient::Error { job: Some(job), message: format!("no job {job} on this scheduler") },
        Some(j) => match graph::key_index(j, &key) {
            Some(idx) => ToClient::Resolved { job, key, idx },
            None => ToClient::Error { job: Some(job), message: format!("job {job} has no task {key:?}") },
        },
    };
    fx.to_client(conn, reply);
}

/// Every task of a job with its state; a ready task that needs resources no
/// worker has is reported as unschedulable.
pub fn on_tasks(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.find_job(job) else { return no_job(fx, conn, job) };
    let running = core.running_tasks();
    let tasks = j
        .tasks
        .iter()
        .enumerate()
        .map(|(idx, t)| {
            let (state, worker, error) = describe_state(core, &running, TaskId { job, idx: idx as u32 }, t);
            crate::protocol::TaskInfo {
                idx: idx as u32,
                key: j.key(idx as u32).map(str::to_string),
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
    let error = core.jobs.get_job(tid.job).error(tid.idx).map(str::to_string);
    match &t.state {
        TaskState::Ready
            if !t.shape.resources.is_empty()
                && !core.workers.values().any(|w| w.could_run(&t.shape.resources)) =>
        {
            let need: Vec<String> = t.shape.resources.iter().map(|(k, n)| format!("{k}={n}")).collect();
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

pub(super) fn no_job(fx: &mut impl Effects, conn: ConnId, job: JobId) {
    let message = format!("no job {job} on this scheduler");
    fx.to_client(conn, ToClient::Error { job: Some(job), message });
}

/// One job's progress by state, and its timing.
pub fn on_job(core: &Core, fx: &mut impl Effects, now: u64, conn: ConnId, job: JobId) {
    let Some(j) = core.jobs.find_job(job) else { return no_job(fx, conn, job) };
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

pub fn on_jobs(core: &Core, fx: &mut impl Effects, conn: ConnId) {
    let running = core.running_tasks();
    let mut jobs: Vec<crate::protocol::JobInfo> =
        core.jobs.iter().map(|(id, j)| job_info(*id, j, &running)).collect();
    jobs.sort_by_key(|j| core.jobs.get_job(j.id).seq);
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

/// Whether no worker that takes tasks has `need_us` left in its allocation.
fn outlasts_every_worker(core: &Core, need_us: Option<u64>) -> bool {
    need_us.is_some() && !core.workers.values().any(|w| !w.draining && w.lasts(need_us, core.clock))
}

/// Says in words why a task is in its state: what it waits for, what it
/// needs that no worker has, where it runs, how it ended.
pub fn on_explain(core: &Core, fx: &mut impl Effects, conn: ConnId, job: JobId, key: String) {
    let Some(j) = core.jobs.find_job(job) else { return no_job(fx, conn, job) };
    let Some(idx) = graph::key_index(j, &key) else {
        fx.to_client(
            conn,
            ToClient::Error { job: Some(job), message: format!("job {job} has no task {key:?}") },
        );
        return;
    };
    let t = &j.tasks[idx as usize];
    let name = |d: &TaskId| match core.jobs.find_job(d.job) {
        Some(dj) if d.job == job => graph::task_name(dj, d.idx),
        Some(dj) => format!("{}@{}", d.job, graph::task_name(dj, d.idx)),
        None => d.to_string(),
    };
    let needs = || t.shape.resources.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(",");
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
            if !t.shape.resources.is_empty()
                && !core.workers.values().any(|w| w.could_run(&t.shape.resources)) =>
        {
            format!("task {key} is unschedulable: it needs {}; no worker has that", needs())
        }
        TaskState::Ready if !t.shape.resources.is_empty() => {
            format!("task {key} is ready and needs {}; it waits until a worker has that free", needs())
        }
        TaskState::Ready if outlasts_every_worker(core, t.shape.expected_us()) => {
            let need_s = t.shape.expected_us().unwrap_or(0) / 1_000_000;
            let longest = core.workers.values().filter(|w| !w.draining).filter_map(|w| w.ends_at).max();
            let left = longest.map_or("none is left".into(), |end| {
                format!("the longest has {}s left", end.saturating_sub(core.clock) / 1_000_000)
            });
            format!(
                "task {key} is ready and expected to run {need_s}s (its time request, else its time \
                 limit); no worker's allocation lasts that long ({left}): it waits for one that does"
            )
        }
        TaskState::Ready => {
            format!("task {key} is ready, queued at priority {}; workers are busy", t.priority)
        }
        TaskState::Delayed => format!("task {key} failed {} times; retrying after a backoff", t.failures),
        TaskState::Assigned(w) => format!("task {key} is on worker {w} (attempt {})", t.attempts),
        TaskState::Finished => format!("task {key} finished (attempt {})", t.attempts),
        TaskState::Failed | TaskState::Canceled => match j.error(idx) {
            Some(error) => format!("task {key} failed after {} attempts: {error}", t.attempts),
            None => format!("task {key} failed"),
        },
    };
    fx.to_client(conn, ToClient::Done { message });
}
