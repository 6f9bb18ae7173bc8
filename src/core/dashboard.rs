//! The status page's read-only views of the core: one snapshot (totals,
//! workers, jobs, throughput, task stream, events, system) and one job's
//! detail, every list bounded. Shapes in `src/dashboard/API.md`.

use super::history::Bar;
use super::{Core, Job, TaskState};
use crate::ids::{JobId, TaskId};
use rustc_hash::FxHashSet as HashSet;
use serde::Serialize;

/// Jobs in a snapshot at most (the newest).
pub const SNAPSHOT_JOBS: usize = 500;
/// Events in a snapshot at most (the newest).
pub const SNAPSHOT_EVENTS: usize = 200;
/// Task-stream bars in a snapshot at most.
pub const SNAPSHOT_BARS: usize = 2000;
/// Throughput points in a snapshot at most.
pub const SNAPSHOT_POINTS: usize = 300;
/// Workers listed at most (lost ones after live ones).
pub const SNAPSHOT_WORKERS: usize = 4096;
/// Failed tasks in a job's detail at most.
pub const DETAIL_FAILED: usize = 100;
/// The task stream shows this much of the recent past.
pub const STREAM_WINDOW_MS: u64 = 30_000;
/// Lost workers stay listed this long.
const LOST_SHOWN_US: u64 = 600_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub totals: Totals,
    pub workers: Vec<WorkerRow>,
    pub jobs: Vec<JobRow>,
    /// `[t_ms, tasks per second]`, oldest first.
    pub throughput: Vec<(u64, f64)>,
    pub stream: Stream,
    pub events: Vec<EventRow>,
    pub system: SystemRow,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub workers: u32,
    pub slots: u32,
    /// Tasks workers run now (at most one per slot).
    pub running: u64,
    /// Outcomes per second over the last 5 s.
    pub rate: f64,
    pub finished: u64,
    pub failed: u64,
    pub canceled: u64,
    pub waiting: u64,
    pub ready: u64,
    /// Handed to workers beyond what they run now.
    pub queued: u64,
    pub jobs: u32,
    /// Outcomes recorded since the scheduler started (replay included).
    pub outcomes_total: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// `PID/SLOT` of its nanny, if one started it.
    pub nanny: Option<String>,
    pub slots: u32,
    pub running: u32,
    pub queued: u32,
    /// Not reported by workers yet: always null.
    pub cpu_pct: Option<f64>,
    pub rss_kib: u64,
    pub restarts: u32,
    pub last_heard_ms: u64,
    pub lost: bool,
    pub draining: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub total: u32,
    pub finished: u32,
    /// Running on a worker now (at most one per slot).
    pub running: u32,
    /// Handed to a worker that is busy with older ones.
    pub queued: u32,
    pub ready: u32,
    pub waiting: u32,
    pub failed: u32,
    pub canceled: u32,
    pub done: bool,
    pub submitted_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stream {
    pub now_ms: u64,
    pub window_ms: u64,
    /// `wN/slot`, one per slot of each worker.
    pub lanes: Vec<String>,
    pub bars: Vec<BarRow>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BarRow {
    pub lane: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub func: String,
    pub n: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EventRow {
    pub at_ms: u64,
    pub kind: String,
    pub text: String,
}

/// What the scheduler process knows of itself; `address` and `security`
/// are the page's own (filled in by the server).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SystemRow {
    pub epoch: u64,
    pub uptime_ms: u64,
    pub started_at_ms: u64,
    pub address: String,
    pub dashboard: String,
    pub security: String,
    pub journal_path: Option<String>,
    pub journal_bytes: u64,
    pub journal_records: u64,
    /// How long ago the last journal flush finished.
    pub last_flush_ms: Option<u64>,
    /// How long the last journal flush took.
    pub flush_latency_us: Option<u64>,
    /// Flushes so far, and the time they took in all (for `/metrics`).
    pub flushes: u64,
    pub flush_seconds_total: f64,
    pub connections: u64,
    pub draining: bool,
    pub version: String,
}

/// One job with its failed tasks.
#[derive(Clone, Debug, Serialize)]
pub struct JobDetailView {
    #[serde(flatten)]
    pub job: JobRow,
    pub failed_tasks: Vec<FailedTask>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailedTask {
    pub task: u32,
    pub key: Option<String>,
    pub attempts: u32,
    pub state: &'static str,
    pub error: String,
}

/// The whole snapshot at `now`, with the process's figures in `system`.
pub fn dashboard_snapshot(core: &Core, now: u64, system: SystemRow) -> Snapshot {
    let mut snap = Snapshot { system, ..Default::default() };
    workers(core, now, &mut snap);
    jobs(core, &mut snap);
    let h = &core.history;
    snap.totals.outcomes_total = core.outcomes_total;
    snap.totals.rate = h.rate(now, core.outcomes_total, 5_000_000);
    let pts: Vec<(u64, u64)> =
        h.samples.iter().copied().chain(std::iter::once((now, core.outcomes_total))).collect();
    snap.throughput = pts
        .windows(2)
        .filter(|p| p[1].0 > p[0].0)
        .map(|p| (p[1].0 / 1000, p[1].1.saturating_sub(p[0].1) as f64 * 1e6 / (p[1].0 - p[0].0) as f64))
        .collect();
    let skip = snap.throughput.len().saturating_sub(SNAPSHOT_POINTS);
    snap.throughput.drain(..skip);
    let skip = h.events.len().saturating_sub(SNAPSHOT_EVENTS);
    snap.events = h
        .events
        .iter()
        .skip(skip)
        .map(|e| EventRow { at_ms: e.at / 1000, kind: e.kind.clone(), text: e.text.clone() })
        .collect();
    snap.stream = stream(core, now);
    snap
}

fn workers(core: &Core, now: u64, snap: &mut Snapshot) {
    for (id, w) in core.workers.iter().take(SNAPSHOT_WORKERS) {
        let (running, queued) = core.running_queued(w);
        let restarts = w.nanny.as_ref().map_or(0, |n| {
            let rec = core.nannies.values().find(|r| r.pid == n.pid && r.host == w.host);
            rec.and_then(|r| r.slots.iter().find(|s| s.slot == n.slot)).map_or(0, |s| s.restarts)
        });
        snap.totals.workers += 1;
        snap.totals.slots = snap.totals.slots.saturating_add(w.slots);
        snap.totals.running += u64::from(running);
        snap.totals.queued += u64::from(queued);
        snap.workers.push(WorkerRow {
            id: id.to_string(),
            host: w.host.clone(),
            pid: w.pid,
            nanny: w.nanny.as_ref().map(|n| format!("{}/{}", n.pid, n.slot)),
            slots: w.slots,
            running,
            queued,
            cpu_pct: None,
            rss_kib: w.rss_kib,
            restarts,
            last_heard_ms: now.saturating_sub(w.last_seen) / 1000,
            lost: false,
            draining: w.draining,
        });
    }
    let recent = core.history.lost.iter().filter(|l| now.saturating_sub(l.at) <= LOST_SHOWN_US);
    for l in recent.take(SNAPSHOT_WORKERS.saturating_sub(snap.workers.len())) {
        snap.workers.push(WorkerRow {
            id: l.id.to_string(),
            host: l.host.clone(),
            pid: l.pid,
            nanny: l.nanny.as_ref().map(|n| format!("{}/{}", n.pid, n.slot)),
            slots: l.slots,
            rss_kib: l.rss_kib,
            last_heard_ms: now.saturating_sub(l.at) / 1000,
            lost: true,
            ..Default::default()
        });
    }
}

/// A job's tasks by state, one pass over them.
fn job_row(id: JobId, j: &Job, running: &HashSet<TaskId>) -> JobRow {
    let mut row = JobRow {
        id: id.to_string(),
        name: j.name.clone(),
        total: j.tasks.len() as u32,
        finished: j.finished,
        done: j.is_done(),
        submitted_at_ms: j.submitted_at / 1000,
        finished_at_ms: j.done_at.map(|t| t / 1000),
        ..Default::default()
    };
    if row.done && j.failed == 0 {
        return row; // nothing else to count
    }
    for (idx, t) in j.tasks.iter().enumerate() {
        match t.state {
            TaskState::Waiting => row.waiting += 1,
            TaskState::Ready | TaskState::Delayed => row.ready += 1,
            TaskState::Assigned(_) if t.waiting > 0 => row.waiting += 1,
            TaskState::Assigned(_) if running.contains(&TaskId { job: id, idx: idx as u32 }) => {
                row.running += 1
            }
            TaskState::Assigned(_) => row.queued += 1,
            TaskState::Failed => row.failed += 1,
            TaskState::Canceled => row.canceled += 1,
            TaskState::Finished => {}
        }
    }
    row
}

fn jobs(core: &Core, snap: &mut Snapshot) {
    let mut order: Vec<(u64, JobId)> = core.jobs.iter().map(|(id, j)| (j.seq, *id)).collect();
    order.sort_unstable();
    snap.totals.jobs = order.len() as u32;
    let skip = order.len().saturating_sub(SNAPSHOT_JOBS);
    let running = core.running_tasks();
    for (n, (_, id)) in order.iter().enumerate() {
        let row = job_row(*id, core.jobs.get_job(*id), &running);
        snap.totals.finished += u64::from(row.finished);
        snap.totals.failed += u64::from(row.failed);
        snap.totals.canceled += u64::from(row.canceled);
        snap.totals.waiting += u64::from(row.waiting);
        snap.totals.ready += u64::from(row.ready);
        if n >= skip {
            snap.jobs.push(row);
        }
    }
}

/// The task stream of the last `STREAM_WINDOW_MS`: a lane per worker slot;
/// a bar of several tasks is spread over as many of its worker's lanes as
/// it ran in parallel; the newest bars are kept when there are too many.
fn stream(core: &Core, now: u64) -> Stream {
    let since = now.saturating_sub(STREAM_WINDOW_MS * 1000);
    let mut out = Stream { now_ms: now / 1000, window_ms: STREAM_WINDOW_MS, ..Default::default() };
    for (id, w) in core.workers.iter().take(SNAPSHOT_WORKERS) {
        out.lanes.extend((0..w.slots.min(256)).map(|s| format!("{id}/{s}")));
    }
    let recent: Vec<&Bar> = core.history.bars.iter().rev().take_while(|b| b.end >= since).collect();
    // Per worker, when each of its lanes is free again (bars oldest first).
    let mut free: rustc_hash::FxHashMap<crate::ids::WorkerId, Vec<u64>> = Default::default();
    for b in recent.into_iter().rev() {
        let lanes = free.entry(b.worker).or_insert_with(|| vec![0; b.slots.clamp(1, 256) as usize]);
        let spread = (b.n as usize).clamp(1, lanes.len());
        let mut picked: Vec<usize> = (0..lanes.len()).collect();
        picked.sort_by_key(|i| (lanes[*i] > b.start, *i));
        for (k, lane) in picked.into_iter().take(spread).enumerate() {
            lanes[lane] = lanes[lane].max(b.end);
            let share = b.n / spread as u32 + u32::from((k as u32) < b.n % spread as u32);
            out.bars.push(BarRow {
                lane: format!("{}/{lane}", b.worker),
                start_ms: b.start.max(since) / 1000,
                end_ms: b.end / 1000,
                func: b.func.clone(),
                n: share,
            });
        }
    }
    let skip = out.bars.len().saturating_sub(SNAPSHOT_BARS);
    out.bars.drain(..skip);
    out
}

/// One job and its first failed (or canceled) tasks with their errors.
pub fn dashboard_job(core: &Core, job: JobId) -> Option<JobDetailView> {
    let j = core.jobs.find_job(job)?;
    let mut failed_tasks = Vec::new();
    for (idx, t) in j.tasks.iter().enumerate() {
        if failed_tasks.len() >= DETAIL_FAILED {
            break;
        }
        let state = match t.state {
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
            _ => continue,
        };
        let idx = idx as u32;
        failed_tasks.push(FailedTask {
            task: idx,
            key: j.key(idx).map(str::to_string),
            attempts: t.attempts,
            state,
            error: j.error(idx).unwrap_or("").to_string(),
        });
    }
    Some(JobDetailView { job: job_row(job, j, &core.running_tasks()), failed_tasks })
}
