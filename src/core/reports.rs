//! Reports of finished attempts: the first report of a task wins; retries
//! with backoff; an attempt that killed its executor counts like a death.

use super::graph::{self, Completed};
use super::lifecycle::tell_stale;
use super::queue::requeue;
use super::{Core, Effects, Leave, TaskState};
use crate::ids::{ConnId, WorkerId};
use crate::protocol::{Outcome, TaskReport, ToWorker};

/// One frame of reports from a worker; acknowledged by `batch` once durable.
pub struct ReportsMsg {
    pub batch: u64,
    pub reports: Vec<TaskReport>,
}

/// A batch of finished attempts from one worker. The first report of a task
/// wins; reports for tasks that already have an outcome are counted and
/// dropped, and so are reports for tasks this worker process was never
/// handed (nor reclaimed, nor may hold from before a restart).
pub fn on_reports(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, msg: ReportsMsg) {
    let ReportsMsg { batch, reports } = msg;
    let wid = core.workers.by_conn(conn);
    let process = core.conn_process.get(&conn).copied();
    let Some(process) = process.filter(|_| wid.is_some() || core.stale_conns.contains_key(&conn)) else {
        let message = "reports from a worker that has not registered".into();
        fx.to_worker(conn, ToWorker::Error { message });
        return;
    };
    if let Some(w) = wid.and_then(|id| core.workers.find_worker_mut(id)) {
        w.last_seen = now;
        if !w.dropped.is_empty() {
            for r in &reports {
                w.dropped.remove(&r.task);
            }
        }
    }
    let mut completed = Completed::default();
    let (mut late, mut foreign) = (0u64, 0u64);
    let mut bars = super::history::FrameBars::default();
    for r in reports {
        if let Some(t) = core.find_task(r.task) {
            bars.add(&t.shape, r.micros);
        }
        match core.find_task(r.task) {
            Some(t) if !t.may_report(process, r.attempt) => foreign += 1,
            Some(t) if t.outcome.is_none() && !r.lost_inputs.is_empty() => {
                super::lost::on_inputs_lost(core, fx, wid, r)
            }
            Some(t) if t.outcome.is_none() && r.executor_died => {
                executor_died(core, now, wid, r, &mut completed)
            }
            Some(t) if t.outcome.is_none() => accept_report(core, now, wid, r, &mut completed),
            _ => late += 1,
        }
    }
    // The frame is acknowledged once durable (or already recorded), so the
    // worker can forget its results.
    fx.to_worker_after_flush(conn, ToWorker::Ack { batch });
    graph::flush_completed(core, fx, completed);
    if let Some((id, w)) = wid.and_then(|id| core.workers.find_worker(id).map(|w| (id, w.slots))) {
        core.history.note_frame(now, id, w, bars);
    }
    core.history.sample(now, core.outcomes_total);
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
    core.ask_for_scheduling();
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
    let max_kills = task.shape.max_worker_kills.unwrap_or(default_kills).max(1);
    task.killed.push(wid);
    let why = match &r.outcome {
        Outcome::Err { error, .. } => error.clone(),
        Outcome::Ok { .. } | Outcome::Stored(_) => "it died".into(),
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
        if let Some(w) = wid.and_then(|id| core.workers.find_worker_mut(id)) {
            let sample = r.micros as f64;
            w.avg_task_us = Some(match w.avg_task_us {
                None => sample,
                Some(avg) => avg * 0.9 + sample * 0.1,
            });
        }
    }
    let backoff = core.config.retry_backoff_us;
    let task = core.get_task_mut(r.task);
    if !r.outcome.is_ok() && task.failures < task.shape.retries {
        if !mine {
            return;
        }
        // Try again after a backoff that doubles with each failure.
        task.failures += 1;
        task.state = TaskState::Delayed;
        let delay = backoff.saturating_mul(1 << (task.failures - 1).min(10));
        tracing::info!(task = %r.task, failures = task.failures, retries = task.shape.retries, "task failed; retrying");
        core.deadlines.add(now.saturating_add(delay), super::deadlines::Due::Retry(r.task));
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
