//! Operators' actions (`ctl`): cancel, retry, retire, drain, restart a
//! worker through its nanny; and the nannies' own events.

use super::compact::Stored;
use super::graph::{self, Completed};
use super::views::no_job;
use super::{Core, Effects, Leave, NannyRecord, Task, TaskState};
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{Outcome, SlotInfo, SlotState, ToClient, ToNanny, ToWorker};
use rustc_hash::FxHashMap as HashMap;

/// A nanny says who it is and what its slots are doing.
pub struct NannyMsg {
    pub host: String,
    pub pid: u32,
    pub slots: Vec<SlotInfo>,
}

pub fn on_nanny_registered(core: &mut Core, fx: &mut impl Effects, conn: ConnId, msg: NannyMsg) {
    let NannyMsg { host, pid, slots } = msg;
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

pub fn on_nanny_left(core: &mut Core, conn: ConnId) {
    if let Some(id) = core.nanny_by_conn.remove(&conn) {
        if let Some(n) = core.nannies.remove(&id) {
            tracing::info!(nanny = id, host = ?n.host, pid = n.pid, "nanny disconnected");
        }
    }
}

/// Forwards an operator's restart request to the worker's nanny.
pub fn on_restart_worker(core: &mut Core, fx: &mut impl Effects, conn: ConnId, worker: WorkerId) {
    let reply = match core.workers.find_worker(worker) {
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

/// `ctl cancel JOB [KEY…]`.
pub struct CancelMsg {
    pub job: JobId,
    /// The tasks to cancel by key (or index); none: every unfinished one.
    pub keys: Vec<String>,
}

/// Cancels unfinished tasks of a job (all, or those named by `keys`);
/// running ones are stopped on their workers; dependents fail.
pub fn on_cancel(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, msg: CancelMsg) {
    let CancelMsg { job, keys } = msg;
    let Some(j) = core.jobs.find_job(job) else { return no_job(fx, conn, job) };
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
                stop.entry(core.workers.get_worker(w).conn).or_default().push(tid);
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
    core.ask_for_scheduling();
}

/// Puts failed and canceled tasks of a job back in line: ready if their
/// dependencies are done, waiting otherwise (dependents that failed with
/// them wait for them again). Attempt numbers go on counting, so a late
/// report of an earlier attempt is still told apart.
pub(super) fn retry_tasks(core: &mut Core, job: JobId, idx: &[u32]) -> Vec<TaskId> {
    let Some(j) = core.jobs.find_job_mut(job) else { return Vec::new() };
    let mut again = Vec::new();
    for &i in idx {
        let Some(t) = j.tasks.get_mut(i as usize) else { continue };
        if !matches!(t.state, TaskState::Failed | TaskState::Canceled) {
            continue;
        }
        t.outcome = Stored::None;
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
            let Some(dt) = core.jobs.find_job_mut(d.job).and_then(|j| j.tasks.get_mut(d.idx as usize)) else {
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
    let Some(j) = core.jobs.find_job(job) else { return no_job(fx, conn, job) };
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
    core.ask_for_scheduling();
    fx.to_client(conn, ToClient::Done { message: format!("retrying {} tasks of job {job}", idx.len()) });
}

/// `ctl retire-worker W`: the worker takes nothing new, hands its queued
/// tasks back, finishes the running ones and stops; a nanny's worker is
/// retired through its nanny, which does not restart it.
pub fn on_retire_worker(core: &mut Core, fx: &mut impl Effects, conn: ConnId, worker: WorkerId) {
    let Some(w) = core.workers.find_worker_mut(worker) else {
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
