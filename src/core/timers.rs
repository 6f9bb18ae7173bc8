//! Events of time: the periodic tick (heartbeat timeouts, retention, the
//! scheduler's own stalls) and deadlines (retries, the reclaim grace period).

use super::deadlines::{Due, Lane};
use super::lifecycle::{on_worker_lost, LostWorkerReason};
use super::submit::forget;
use super::{Core, Effects, TaskState};
use crate::ids::{ConnId, JobId, WorkerId};

/// Periodic check: workers silent for longer than the heartbeat timeout are
/// lost (hung or stopped); their connection stays open, marked stale.
/// Silence counts only while the scheduler itself runs (see `note_stall`).
pub fn on_tick(core: &mut Core, fx: &mut impl Effects, now: u64) {
    note_stall(core, now);
    core.history.sample(now, core.outcomes_total);
    let timeout = core.config.heartbeat_timeout_us;
    for w in core.workers.values_mut().filter(|w| !w.dropped.is_empty()) {
        w.dropped.retain(|_, at| now.saturating_sub(*at) <= timeout);
    }
    on_deadline(core, now);
    let mut silent: Vec<(WorkerId, ConnId, u64)> = Vec::new();
    for due in core.deadlines.take_due(Lane::Tick, now) {
        match due {
            Due::Retention(job) => expire(core, fx, now, job),
            Due::Heartbeat(id) => {
                let Some(w) = core.workers.find_worker(id) else { continue };
                let quiet_us = now.saturating_sub(w.last_seen);
                if quiet_us > timeout {
                    silent.push((id, w.conn, quiet_us));
                } else {
                    // Heard from since: due again a timeout after that.
                    let at = w.last_seen.saturating_add(timeout).saturating_add(1);
                    core.deadlines.add(at, Due::Heartbeat(id));
                }
            }
            Due::GraceOver | Due::Retry(_) => unreachable!("not in the tick lane: {due:?}"),
        }
    }
    silent.sort_unstable();
    for (id, conn, quiet_us) in silent {
        core.stale_conns.insert(conn, false);
        on_worker_lost(core, fx, now, id, LostWorkerReason::HeartbeatTimeout { quiet_us });
    }
}

/// A finished job's retention entry came due: it is forgotten if it is
/// still finished since then; finished again later (after a retry), it is
/// due again from then.
fn expire(core: &mut Core, fx: &mut impl Effects, now: u64, job: JobId) {
    let Some(retention) = core.config.retention_us else { return };
    match core.jobs.find_job(job).and_then(|j| j.done_at) {
        Some(t) if now.saturating_sub(t) > retention => forget(core, fx, job, "retention period over"),
        Some(t) => core.deadlines.add(t.saturating_add(retention).saturating_add(1), Due::Retention(job)),
        None => {} // running again: due once it finishes
    }
}

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
pub fn on_deadline(core: &mut Core, now: u64) {
    for due in core.deadlines.take_due(Lane::Wake, now) {
        match due {
            Due::Retry(tid) => {
                if core.find_task(tid).is_some_and(|t| t.state == TaskState::Delayed && t.waiting > 0) {
                    // An input's stored result was lost meanwhile: it waits for it.
                    core.get_task_mut(tid).state = TaskState::Waiting;
                } else if core.find_task(tid).is_some_and(|t| t.state == TaskState::Delayed) {
                    core.get_task_mut(tid).state = TaskState::Ready;
                    core.push_ready(tid);
                    core.ask_for_scheduling();
                }
            }
            Due::GraceOver if core.hold_until.is_some_and(|t| now >= t) => {
                core.hold_until = None;
                let unclaimed =
                    core.jobs.values().flat_map(|j| &j.tasks).filter(|t| t.state == TaskState::Ready).count();
                tracing::info!(requeued = unclaimed, "grace period over: unclaimed tasks go to any worker");
                core.ask_for_scheduling();
            }
            Due::GraceOver => {}
            Due::Retention(_) | Due::Heartbeat(_) => unreachable!("not in the wake lane: {due:?}"),
        }
    }
}

/// Shortest gap between ticks taken for a stall (ticks come at least every 10 ms).
const MIN_STALL_US: u64 = 50_000;

/// After a restart with unfinished tasks: hold scheduling for `grace_us` so
/// workers that kept running can reconnect and reclaim their tasks first.
pub fn begin_recovery(core: &mut Core, now: u64, grace_us: u64) {
    if !core.ready.is_empty() && grace_us > 0 {
        let until = now.saturating_add(grace_us);
        core.hold_until = Some(until);
        core.deadlines.add(until, Due::GraceOver);
        tracing::info!(
            unfinished = core.ready.len(),
            grace_ms = grace_us / 1000,
            "waiting for workers to reclaim their running tasks"
        );
    }
}
