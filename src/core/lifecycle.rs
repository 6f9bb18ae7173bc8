//! Worker lifecycle events: a worker registers (and reclaims what it still
//! runs), sends heartbeats, drains, and is lost: its tasks go back in line.

use super::admin::on_nanny_left;
use super::graph::{self, Completed};
use super::queue::requeue;
use super::{Core, Effects, Leave, TaskState, Worker};
use crate::ids::{ConnId, TaskId, WorkerId};
use crate::protocol::{Outcome, ToWorker};

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
    if let Some(old) = core.workers.by_conn(conn) {
        // Registering again on the same connection replaces the incarnation.
        on_worker_lost(core, fx, now, old, LostWorkerReason::Reregistered);
    }
    core.stale_conns.remove(&conn);
    core.next_worker += 1;
    let id = WorkerId(core.next_worker);
    let process = super::process_key(&w.host, w.pid);
    core.conn_process.insert(conn, process);
    tracing::info!(worker = %id, host = ?w.host, pid = w.pid, slots = w.slots, "worker registered");
    note_joined(core, now, id, &w);
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
    let at = now.saturating_add(core.config.heartbeat_timeout_us).saturating_add(1);
    core.deadlines.add(at, super::deadlines::Due::Heartbeat(id));
    fx.to_worker(conn, ToWorker::Registered { worker: id });
    claim(core, id, w.running);
    core.ask_for_scheduling();
    id
}

/// The event of a worker's arrival: `worker-respawned` when its nanny
/// slot's worker was lost before or has been restarted, else `worker-joined`.
fn note_joined(core: &mut Core, now: u64, id: WorkerId, w: &NewWorker) {
    let mut kind = "worker-joined";
    let mut by = String::new();
    if let Some(n) = &w.nanny {
        let restarts = core
            .nannies
            .values()
            .find(|r| r.pid == n.pid && r.host == w.host)
            .and_then(|r| r.slots.iter().find(|s| s.slot == n.slot))
            .map_or(0, |s| s.restarts);
        let lost_before = core.history.lost.iter().any(|l| l.host == w.host && l.nanny.as_ref() == Some(n));
        if restarts > 0 || lost_before {
            kind = "worker-respawned";
        }
        by = format!(", nanny pid {} slot {} (restarts {restarts})", n.pid, n.slot);
    }
    let text = format!("{id} joined: {} pid {}, {} slots{by}", w.host, w.pid, w.slots);
    core.history.event(now, core.replaying, kind, text);
}

/// A (re)connected worker keeps the tasks it is still running: those not
/// finished and not yet handed to anyone else become its own again.
fn claim(core: &mut Core, id: WorkerId, running: Vec<(TaskId, u32)>) {
    let mut claimed = 0;
    for (tid, attempt) in running {
        let Some(task) = core.jobs.find_job_mut(tid.job).and_then(|j| j.tasks.get_mut(tid.idx as usize))
        else {
            continue;
        };
        // (An attempt voided by `ctl retry` would never count.)
        if task.state == TaskState::Ready && attempt > task.void_attempts {
            let w = core.workers.find_worker_mut(id).expect("just registered");
            task.state = TaskState::Assigned(id);
            task.attempts = task.attempts.max(attempt);
            task.held_attempt = attempt;
            task.local_inputs.clear();
            task.repeat_here = false;
            task.add_holder(w.process);
            w.hold(tid, &task.shape.resources);
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
pub fn on_worker_lost(core: &mut Core, fx: &mut impl Effects, now: u64, id: WorkerId, why: LostWorkerReason) {
    let Some(w) = core.workers.remove(id) else {
        return;
    };
    core.pin_frontier.remove(&id);
    let (kind, text) = match why {
        LostWorkerReason::Goodbye => {
            ("worker-left", format!("{id} left ({} tasks in flight)", w.assigned.len()))
        }
        _ => ("worker-lost", format!("{id} lost: {why} ({} tasks in flight)", w.assigned.len())),
    };
    core.history.event(now, core.replaying, kind, text);
    let (host, nanny) = (w.host.clone(), w.nanny.clone());
    let gone = super::history::LostWorker {
        id,
        host,
        pid: w.pid,
        nanny,
        slots: w.slots,
        rss_kib: w.rss_kib,
        at: now,
    };
    core.history.worker_lost(gone);
    if why == LostWorkerReason::Goodbye && w.assigned.is_empty() {
        tracing::info!(worker = %id, "worker left");
    } else {
        tracing::warn!(worker = %id, in_flight = w.assigned.len(), reason = %why, "worker lost");
    }
    // A worker runs its tasks in the order it got them: the `slots` oldest
    // unreported ones were running when it died; the rest were only queued.
    let mut lost: Vec<(u64, TaskId)> =
        w.assigned.into_iter().map(|t| (core.find_task(t).map_or(0, |t| t.assigned_seq), t)).collect();
    lost.sort();
    let mut failed = Completed::default();
    // A worker that left on purpose killed nobody: its tasks just go back.
    let died = why != LostWorkerReason::Goodbye;
    for (n, (_, tid)) in lost.into_iter().enumerate() {
        core.stealing.remove(&tid);
        let default_kills = core.config.max_worker_kills;
        let task = core.get_task_mut(tid);
        if task.outcome.is_some() {
            continue; // pinned there, and failed with a dependency given up on above
        }
        let max_kills = task.shape.max_worker_kills.unwrap_or(default_kills).max(1);
        if died && n < w.slots as usize {
            task.killed.push(id);
        }
        if task.killed.len() as u32 >= max_kills {
            let names: Vec<String> = task.killed.iter().map(|w| w.to_string()).collect();
            let workers = if names.len() == 1 { "worker" } else { "workers" };
            // A death the scheduler was told the reason of says it.
            let last = match &why {
                LostWorkerReason::OverMemory { .. } => format!("; {id}: {why}"),
                _ => String::new(),
            };
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
    core.ask_for_scheduling();
}

/// Why a worker is gone; its `Display` is what logs and task errors say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostWorkerReason {
    /// It said goodbye (retired or drained): it killed none of its tasks.
    Goodbye,
    ConnectionClosed,
    /// It registered again on the same connection: a new incarnation.
    Reregistered,
    /// Silent for longer than the heartbeat timeout (hung, or stopped).
    HeartbeatTimeout {
        quiet_us: u64,
    },
    /// Its nanny killed it for its memory (the nanny's words).
    OverMemory {
        reason: String,
    },
}

impl std::fmt::Display for LostWorkerReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostWorkerReason::Goodbye => f.write_str("worker shut down"),
            LostWorkerReason::ConnectionClosed => f.write_str("connection closed"),
            LostWorkerReason::Reregistered => f.write_str("re-registered"),
            LostWorkerReason::HeartbeatTimeout { quiet_us } => {
                write!(f, "no heartbeat for {:.1}s", *quiet_us as f64 / 1e6)
            }
            LostWorkerReason::OverMemory { reason } => write!(f, "it exceeded the memory limit ({reason})"),
        }
    }
}

pub fn on_connection_closed(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId) {
    if let Some(wid) = core.workers.by_conn(conn) {
        on_worker_lost(core, fx, now, wid, LostWorkerReason::ConnectionClosed);
    }
    core.stale_conns.remove(&conn);
    core.conn_process.remove(&conn);
    on_nanny_left(core, conn);
    for job in core.jobs.values_mut() {
        job.watchers.retain(|c| *c != conn);
    }
}

pub fn on_heartbeat(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, rss_kib: u64) {
    if let Some(w) = core.workers.by_conn(conn).and_then(|id| core.workers.find_worker_mut(id)) {
        w.last_seen = now;
        w.rss_kib = rss_kib;
    } else {
        tell_stale(core, fx, conn);
    }
}

/// A connection whose worker was declared lost is told, once, to register
/// again as a new incarnation.
pub(super) fn tell_stale(core: &mut Core, fx: &mut impl Effects, conn: ConnId) {
    if let Some(told) = core.stale_conns.get_mut(&conn) {
        if !*told {
            *told = true;
            let reason = "this worker was declared lost (missed heartbeats); register again".into();
            fx.to_worker(conn, ToWorker::Reregister { reason });
        }
    }
}

/// A worker stops taking work: the queued tasks it hands back go to others;
/// it keeps (and will report) the ones it runs.
pub fn on_worker_draining(core: &mut Core, conn: ConnId, returned: Vec<TaskId>) {
    let Some(wid) = core.workers.by_conn(conn) else { return };
    core.workers.find_worker_mut(wid).expect("registered worker").draining = true;
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
    let w = &core.workers.get_worker(wid);
    tracing::info!(worker = %wid, returned = back.len(), running = w.assigned.len(), "worker draining");
    core.ask_for_scheduling();
}

/// A nanny's word that it killed the worker of one of its slots.
pub struct OverMemoryMsg {
    pub slot: u32,
    /// What the nanny says of the memory it used (peer-supplied).
    pub reason: String,
}

/// A nanny kills the worker of `slot` for its memory: it is lost now, and
/// the error of a task that gives up on it says why.
pub fn on_worker_over_memory(
    core: &mut Core,
    fx: &mut impl Effects,
    now: u64,
    conn: ConnId,
    msg: OverMemoryMsg,
) {
    let OverMemoryMsg { slot, reason } = msg;
    let Some(n) = core.nanny_by_conn.get(&conn).and_then(|id| core.nannies.get(id)) else { return };
    let at = crate::protocol::NannySlot { pid: n.pid, slot };
    let Some(id) = core.workers.iter().find(|(_, w)| w.nanny.as_ref() == Some(&at)).map(|(id, _)| *id) else {
        return;
    };
    on_worker_lost(core, fx, now, id, LostWorkerReason::OverMemory { reason });
}
