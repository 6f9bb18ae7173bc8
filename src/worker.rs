//! A worker process: T slot threads run `fn`, `cmd` and `py` tasks (`py`
//! in a Python executor per slot, see `py`); one connection task feeds them
//! assignments and sends their reports back in batches. Survives a lost
//! scheduler for up to `death_timeout`.

mod py;

use crate::functions::{Registry, TaskCtx};
use crate::ids::{TaskId, WorkerId};
use crate::protocol::conn::{decode, encode, next_frame, FrameSink, FrameStream};
use crate::protocol::{Assignment, Conn, FromWorker, Outcome, Role, TaskKind, TaskReport, ToWorker};
use crate::schedfile::{wait_for_file, SchedulerFile};
use futures::SinkExt;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub scheduler_file: PathBuf,
    pub threads: u32,
    /// How long to keep trying to reach a scheduler before exiting.
    pub death_timeout: Duration,
    pub heartbeat: Duration,
    pub max_frame: usize,
    /// Where `cmd` tasks write stdout/stderr: `<work_dir>/<job>/<task>.<attempt>.out`.
    pub work_dir: PathBuf,
    /// How long a SIGTERM'd worker may take to finish its running tasks.
    pub drain_timeout: Duration,
    /// A result larger than this (bytes) is a task error, not a huge frame.
    pub max_result: u64,
    /// An error longer than this (bytes) is cut short.
    pub max_error: u64,
    /// What it declares beyond its slots.
    pub resources: crate::protocol::Resources,
    /// Its GPU ids, handed out to tasks that ask for GPUs.
    pub gpus: Vec<String>,
    /// The nanny slot this worker runs in, told to the scheduler.
    pub nanny: Option<crate::protocol::NannySlot>,
    /// The interpreter of the Python executors that run `py` tasks.
    pub python: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no scheduler reachable for {0:?} (--death-timeout): {1}")]
    SchedulerGone(Duration, String),
}

/// How long a canceled command has between SIGTERM and SIGKILL.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Most reports sent in one frame.
const MAX_REPORTS_PER_FRAME: usize = 8192;

enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub async fn run_worker(opts: WorkerOptions, registry: Registry) -> Result<(), WorkerError> {
    let (task_tx, task_rx) = crossbeam_channel::unbounded::<Assignment>();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<TaskReport>();
    let worker_id = Arc::new(AtomicU64::new(0));
    let registry = Arc::new(registry);
    let control = Arc::new(Control::default());
    let pinned = Arc::new(std::sync::Mutex::new(Pinned::default()));
    control.lock().free_gpus = opts.gpus.clone();
    control.lock().max_result = opts.max_result;
    control.lock().max_error = opts.max_error;
    let functions = Arc::new(py::Functions::default());
    let py_opts = py::PyOptions {
        python: opts.python.clone(),
        work_dir: opts.work_dir.clone(),
        max_result: opts.max_result,
    };
    for slot in 0..opts.threads.max(1) {
        let mut py = py::PySlot::new(py_opts.clone(), functions.clone(), slot);
        let ctl = control.clone();
        let rx = task_rx.clone();
        let tx = report_tx.clone();
        let reg = registry.clone();
        let wid = worker_id.clone();
        let work_dir = opts.work_dir.clone();
        let pinned = pinned.clone();
        let queue = task_tx.clone();
        std::thread::Builder::new()
            .name(format!("slot-{slot}"))
            .spawn(move || {
                for a in rx.iter() {
                    let mut next = Some(a);
                    while let Some(a) = next.take() {
                        let (task, keep) = (a.task, a.has_dependents);
                        let report = run_task(
                            &reg,
                            &work_dir,
                            WorkerId(wid.load(Ordering::Relaxed)),
                            a,
                            &ctl,
                            &mut py,
                        );
                        // A function past its time limit was reported failed already.
                        let expired = ctl.take_expired(task);
                        let result = match &report.outcome {
                            Outcome::Ok { result } if !expired => Some(result.clone()),
                            _ => None,
                        };
                        let ready = lock_pinned(&pinned).finished(task, result, keep);
                        if !expired && tx.send(report).is_err() {
                            return;
                        }
                        // The first pinned task this completes runs here at once.
                        let mut ready = ready.into_iter();
                        next = ready.next();
                        for a in ready {
                            let _ = queue.send(a);
                        }
                    }
                }
            })
            .expect("spawn slot thread");
    }
    drop(report_tx);

    let mut book = Book { max_frame: opts.max_frame, ..Book::default() };
    let mut lost_since: Option<Instant> = None;
    let mut last_error = String::new();
    let mut backoff = Duration::from_millis(50);
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        let remaining = match lost_since {
            None => opts.death_timeout,
            Some(t) => opts.death_timeout.saturating_sub(t.elapsed()),
        };
        if remaining.is_zero() {
            return Err(WorkerError::SchedulerGone(opts.death_timeout, last_error));
        }
        let attempt = connect(&opts, remaining);
        let conn = tokio::select! {
            c = attempt => c,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (conn, file) = match conn {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                lost_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut slots = Slots {
            tx: &task_tx,
            rx: &task_rx,
            reports: &mut report_rx,
            ctl: &control,
            pinned: &pinned,
            functions: &functions,
        };
        book.reconnected(&mut slots);
        let end = session(&opts, &registry, conn, slots, &worker_id, &mut book, &mut term).await;
        match end {
            SessionEnd::Shutdown => {
                tracing::info!("worker shutting down");
                return Ok(());
            }
            SessionEnd::Lost(why) => {
                tracing::warn!(
                    scheduler = %file.address,
                    reason = %why,
                    running = book.held.len(),
                    unacknowledged = book.pending(),
                    "lost the scheduler; running tasks go on, reconnecting"
                );
                last_error = why;
                lost_since = Some(Instant::now());
            }
        }
    }
}

async fn connect(opts: &WorkerOptions, timeout: Duration) -> Result<(Conn, SchedulerFile), String> {
    let file = wait_for_file(&opts.scheduler_file, timeout).await?;
    let (conn, _) = Conn::connect_epoch(
        file.socket_addr(),
        Role::Worker,
        &file.auth(),
        file.epoch,
        opts.max_frame,
        Duration::from_secs(5).min(timeout.max(Duration::from_millis(100))),
    )
    .await
    .map_err(|e| format!("cannot reach scheduler at {} ({}): {e}", file.address, file.describe()))?;
    Ok((conn, file))
}

/// Tasks pinned to this worker ahead of inputs it produces itself (see
/// `Assignment::pending_inputs`), shared by the connection loop and the slot
/// threads: the slot that finishes a task starts the pinned task it
/// completes right away, without a round trip through the scheduler.
#[derive(Default)]
struct Pinned {
    /// Pinned tasks waiting for inputs: the assignment and how many are missing.
    waiting: FxHashMap<TaskId, (Assignment, usize)>,
    /// The pinned tasks (and input positions) waiting for a task's result.
    waiters: FxHashMap<TaskId, Vec<(TaskId, u32)>>,
    /// Results of tasks run here whose reports are not yet acknowledged
    /// (`None`: failed): a pin can arrive after its input is done.
    results: FxHashMap<TaskId, Option<bytes::Bytes>>,
    /// Pinned tasks a slot started, with their attempt, until they finish.
    started: FxHashMap<TaskId, u32>,
}

impl Pinned {
    /// A pinned assignment arrived: returned if its inputs are all here
    /// already (to run now); kept waiting otherwise; dropped if one of them
    /// failed here (the scheduler decides what becomes of it).
    fn add(&mut self, mut a: Assignment) -> Option<Assignment> {
        let mut missing = Vec::new();
        for (pos, dep) in std::mem::take(&mut a.pending_inputs) {
            match self.results.get(&dep) {
                Some(Some(r)) => {
                    if let Some(slot) = a.inputs.get_mut(pos as usize) {
                        *slot = r.clone();
                    }
                }
                Some(None) => return None,
                None => missing.push((pos, dep)),
            }
        }
        if missing.is_empty() {
            return Some(a);
        }
        for (pos, dep) in &missing {
            self.waiters.entry(*dep).or_default().push((a.task, *pos));
        }
        self.waiting.insert(a.task, (a, missing.len()));
        None
    }

    /// A task finished here (`result`: its result, `None` if it failed): the
    /// pinned tasks it completes, ready to run (the first is marked started
    /// for the caller to run). A failure drops those waiting for it, transitively.
    fn finished(&mut self, task: TaskId, result: Option<bytes::Bytes>, keep: bool) -> Vec<Assignment> {
        self.started.remove(&task);
        if keep {
            self.results.insert(task, result.clone());
        }
        let mut ready = Vec::new();
        let Some(waiters) = self.waiters.remove(&task) else { return ready };
        let Some(result) = result else {
            let mut stack: Vec<TaskId> = waiters.into_iter().map(|(t, _)| t).collect();
            while let Some(t) = stack.pop() {
                if self.waiting.remove(&t).is_some() {
                    stack.extend(self.waiters.remove(&t).unwrap_or_default().into_iter().map(|(t, _)| t));
                }
            }
            return ready;
        };
        for (t, pos) in waiters {
            let Some((a, missing)) = self.waiting.get_mut(&t) else { continue };
            if let Some(slot) = a.inputs.get_mut(pos as usize) {
                *slot = result.clone();
            }
            *missing -= 1;
            if *missing == 0 {
                ready.extend(self.waiting.remove(&t).map(|(a, _)| a));
            }
        }
        if let Some(first) = ready.first() {
            self.started.insert(first.task, first.attempt);
        }
        ready
    }

    /// Drops these pinned tasks if they are waiting; returns those dropped.
    fn cancel(&mut self, tasks: &[TaskId]) -> Vec<TaskId> {
        let dropped: Vec<TaskId> =
            tasks.iter().copied().filter(|t| self.waiting.remove(t).is_some()).collect();
        if !dropped.is_empty() {
            for w in self.waiters.values_mut() {
                w.retain(|(t, _)| !dropped.contains(t));
            }
        }
        dropped
    }

    /// Every waiting pinned task, taken out (a new scheduler, or a drain).
    fn take_waiting(&mut self) -> Vec<TaskId> {
        self.waiters.clear();
        self.waiting.drain().map(|(t, _)| t).collect()
    }
}

fn lock_pinned(p: &std::sync::Mutex<Pinned>) -> std::sync::MutexGuard<'_, Pinned> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cancellation state shared by the connection loop and the slot threads.
#[derive(Default)]
pub struct Control(std::sync::Mutex<ControlState>);

#[derive(Default)]
pub struct ControlState {
    /// Canceled tasks not yet seen by a slot.
    canceled: rustc_hash::FxHashSet<TaskId>,
    /// Commands running now, by task: their pids.
    running: FxHashMap<TaskId, u32>,
    /// Functions running now with a time limit: deadline, limit, attempt.
    deadlines: FxHashMap<TaskId, (Instant, u64, u32)>,
    /// Functions reported as over their time limit, still running.
    expired: rustc_hash::FxHashSet<TaskId>,
    /// This worker's GPU ids not held by a running task.
    free_gpus: Vec<String>,
    /// Largest result a task may return, in bytes (0: no limit).
    max_result: u64,
    /// Longest error a task may report, in bytes (0: no limit).
    max_error: u64,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_canceled(&self, t: TaskId) -> bool {
        self.lock().canceled.remove(&t)
    }

    fn take_expired(&self, t: TaskId) -> bool {
        self.lock().expired.remove(&t)
    }

    /// Functions past their deadline: they are failed now (their slot stays
    /// busy until the function returns; its result is then dropped).
    fn expire(&self, now: Instant) -> Vec<TaskReport> {
        let mut st = self.lock();
        let due: Vec<TaskId> =
            st.deadlines.iter().filter(|(_, (d, _, _))| *d <= now).map(|(t, _)| *t).collect();
        let mut out = Vec::new();
        for t in due {
            if let Some((_, limit, attempt)) = st.deadlines.remove(&t) {
                st.expired.insert(t);
                let error = format!("time limit exceeded ({limit} ms)");
                out.push(TaskReport {
                    task: t,
                    attempt,
                    outcome: Outcome::err(error),
                    micros: limit * 1000,
                    executor_died: false,
                });
            }
        }
        out
    }

    /// Marks tasks canceled; a running command gets SIGTERM now and SIGKILL
    /// after `grace` if it is still there.
    fn cancel(self: &Arc<Self>, tasks: &[TaskId], grace: Duration) {
        let mut st = self.lock();
        for t in tasks {
            st.canceled.insert(*t);
            if let Some(pid) = st.running.get(t).copied() {
                tracing::info!(task = %t, pid, "canceling a running command");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let me = self.clone();
                let t = *t;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if me.lock().running.get(&t) == Some(&pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                });
            }
        }
    }
}

/// What a worker's connection loop shares with the slot threads.
struct Slots<'a> {
    tx: &'a crossbeam_channel::Sender<Assignment>,
    rx: &'a crossbeam_channel::Receiver<Assignment>,
    reports: &'a mut mpsc::UnboundedReceiver<TaskReport>,
    ctl: &'a Arc<Control>,
    pinned: &'a std::sync::Mutex<Pinned>,
    functions: &'a py::Functions,
}

impl Slots<'_> {
    /// Takes back every queued assignment no slot has started.
    fn take_queued(&self) -> Vec<TaskId> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).map(|a| a.task).collect()
    }

    /// Takes these tasks out of the queue if no slot has started them; the
    /// rest of the queue keeps its order. Returns those taken out.
    fn give_back(&self, wanted: &[TaskId]) -> Vec<TaskId> {
        let wanted: rustc_hash::FxHashSet<TaskId> = wanted.iter().copied().collect();
        let queued: Vec<Assignment> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        let mut given = Vec::new();
        for a in queued {
            if wanted.contains(&a.task) {
                given.push(a.task);
            } else {
                let _ = self.tx.send(a);
            }
        }
        given
    }
}

/// The worker's bookkeeping across connections: what it runs, and which
/// results the scheduler has not yet acknowledged as durable.
#[derive(Default)]
struct Book {
    /// Tasks received and not yet finished, with their attempt.
    held: FxHashMap<TaskId, u32>,
    /// Report frames sent on this connection and not yet acknowledged, by
    /// batch number: sent again after a reconnect.
    unacked: VecDeque<(u64, Vec<TaskReport>)>,
    /// Reports not yet sent on the current connection.
    unsent: Vec<TaskReport>,
    /// Number of the next report frame on this connection.
    next_batch: u64,
    /// Largest frame the scheduler accepts: report frames stay well below it.
    max_frame: usize,
}

impl Book {
    /// A new connection: queued tasks are dropped (the scheduler requeues
    /// them), every unacknowledged result is sent again.
    fn reconnected(&mut self, slots: &mut Slots) {
        self.drop_queued(slots);
        {
            // Pins were the old scheduler's plan; the new one makes its own.
            let mut p = lock_pinned(slots.pinned);
            p.take_waiting();
            p.results.clear();
        }
        let mut again: Vec<TaskReport> = self.unacked.drain(..).flat_map(|(_, r)| r).collect();
        again.append(&mut self.unsent);
        self.unsent = again;
        while let Ok(r) = slots.reports.try_recv() {
            self.finished(r);
        }
        self.next_batch = 1;
    }

    fn drop_queued(&mut self, slots: &Slots) -> Vec<TaskId> {
        let mut queued = slots.take_queued();
        for t in &queued {
            self.held.remove(t);
        }
        queued.extend(lock_pinned(slots.pinned).take_waiting());
        queued
    }

    fn finished(&mut self, r: TaskReport) {
        self.held.remove(&r.task);
        self.unsent.push(r);
    }

    fn acked(&mut self, batch: u64, pinned: &std::sync::Mutex<Pinned>) {
        let mut p = lock_pinned(pinned);
        while self.unacked.front().is_some_and(|(b, _)| *b <= batch) {
            if let Some((_, reports)) = self.unacked.pop_front() {
                if !p.results.is_empty() {
                    for r in reports {
                        p.results.remove(&r.task);
                    }
                }
            }
        }
    }

    fn pending(&self) -> usize {
        self.unacked.iter().map(|(_, r)| r.len()).sum::<usize>() + self.unsent.len()
    }

    fn running(&self, pinned: &std::sync::Mutex<Pinned>) -> Vec<(TaskId, u32)> {
        let p = lock_pinned(pinned);
        self.held.iter().chain(p.started.iter()).map(|(t, a)| (*t, *a)).collect()
    }

    /// Moves every report the slots have ready into `unsent` (a frame's worth).
    fn collect(&mut self, first: TaskReport, slots: &mut Slots) {
        self.finished(first);
        while self.unsent.len() < MAX_REPORTS_PER_FRAME {
            match slots.reports.try_recv() {
                Ok(r) => self.finished(r),
                Err(_) => break,
            }
        }
    }

    /// Sends the unsent reports as numbered frames, each kept until
    /// acknowledged, each well below the frame limit (half of it).
    async fn flush(&mut self, sink: &mut FrameSink) -> Result<(), String> {
        let budget = (self.max_frame / 2).max(1);
        while !self.unsent.is_empty() {
            let (mut n, mut bytes) = (0, 0usize);
            while n < self.unsent.len() && n < MAX_REPORTS_PER_FRAME {
                let size = report_size(&self.unsent[n]);
                if n > 0 && bytes.saturating_add(size) > budget {
                    break;
                }
                bytes = bytes.saturating_add(size);
                n += 1;
            }
            let mut reports: Vec<TaskReport> = self.unsent.drain(..n).collect();
            if n == 1 && bytes > budget {
                // Only a misconfiguration (max_result near max_frame) gets
                // here: a report that cannot be sent must not become a
                // reconnect loop, so it becomes an error that fits.
                let r = &mut reports[0];
                r.outcome = Outcome::err(format!(
                    "the report of this task is {}, too large for a frame of at most {} (scheduler.max_frame): lower worker.max_result",
                    crate::util::format_size(bytes as u64),
                    crate::util::format_size(self.max_frame as u64)
                ));
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            let msg = FromWorker::Reports { batch, reports };
            let result = send(sink, &msg).await;
            let FromWorker::Reports { reports, .. } = msg else { unreachable!("built above") };
            self.unacked.push_back((batch, reports));
            result?;
        }
        Ok(())
    }
}

/// About how many bytes a report takes in a frame.
fn report_size(r: &TaskReport) -> usize {
    let payload = match &r.outcome {
        Outcome::Ok { result } => result.len(),
        Outcome::Err { error, exception } => error.len() + exception.as_ref().map_or(0, |e| e.len()),
    };
    payload.saturating_add(64)
}

/// Caps what one attempt reports: a result over `max_result` becomes a task
/// error saying so, and an error over `max_error` is cut short with a note.
/// (0: no limit.)
pub fn cap_outcome(outcome: Outcome, max_result: u64, max_error: u64) -> Outcome {
    match outcome {
        Outcome::Ok { result } if max_result > 0 && result.len() as u64 > max_result => {
            too_large(result.len() as u64, max_result)
        }
        Outcome::Err { error, exception } => Outcome::Err {
            error: cap_error(error, max_error),
            // A pickled exception that large is dropped; its text stays.
            exception: exception.filter(|e| max_error == 0 || e.len() as u64 <= max_error),
        },
        ok => ok,
    }
}

/// The error of a result over `worker.max_result`.
pub(crate) fn too_large(size: u64, max: u64) -> Outcome {
    Outcome::err(format!(
        "the result is {}, over the limit of {} (worker.max_result): return less, or write it to a file",
        crate::util::format_size(size),
        crate::util::format_size(max)
    ))
}

fn cap_error(mut error: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if max == 0 || error.len() <= max {
        return error;
    }
    let note = format!(
        "\n[error cut short: {} in all, over the limit of {} (worker.max_error)]",
        crate::util::format_size(error.len() as u64),
        crate::util::format_size(max as u64)
    );
    let mut cut = max.saturating_sub(note.len());
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    error.truncate(cut);
    error.push_str(&note);
    error
}

async fn send<T: serde::Serialize>(sink: &mut FrameSink, msg: &T) -> Result<(), String> {
    let frame = encode(msg).map_err(|e| e.to_string())?;
    sink.send(frame).await.map_err(|e| e.to_string())
}

fn register(
    opts: &WorkerOptions,
    registry: &Registry,
    book: &Book,
    pinned: &std::sync::Mutex<Pinned>,
) -> FromWorker {
    FromWorker::Register {
        slots: opts.threads.max(1),
        host: crate::util::hostname(),
        pid: std::process::id(),
        functions: registry.names(),
        nanny: opts.nanny.clone(),
        running: book.running(pinned),
        resources: opts.resources.clone(),
    }
}

async fn session(
    opts: &WorkerOptions,
    registry: &Registry,
    mut conn: Conn,
    mut slots: Slots<'_>,
    worker_id: &AtomicU64,
    book: &mut Book,
    term: &mut tokio::signal::unix::Signal,
) -> SessionEnd {
    if let Err(e) = conn.write(&register(opts, registry, book, slots.pinned)).await {
        return SessionEnd::Lost(e.to_string());
    }
    let (mut sink, mut stream) = conn.into_split();
    let ctl = slots.ctl;
    let mut limits = tokio::time::interval(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval(opts.heartbeat);
    heartbeat.tick().await;
    loop {
        if let Err(e) = book.flush(&mut sink).await {
            return SessionEnd::Lost(e);
        }
        tokio::select! {
            frame = next_frame(&mut stream) => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                };
                match decode::<ToWorker>(&frame) {
                    Ok(ToWorker::Registered { worker }) => {
                        worker_id.store(worker.0, Ordering::Relaxed);
                        tracing::info!(worker = %worker, slots = opts.threads, "registered with the scheduler");
                    }
                    Ok(ToWorker::Assign { tasks, functions }) => {
                        slots.functions.add(functions);
                        // Pins first, so that none misses a result its input
                        // produces while this frame is being handed out.
                        let (pins, plain): (Vec<_>, Vec<_>) =
                            tasks.into_iter().partition(|t| !t.pending_inputs.is_empty());
                        let ready: Vec<Assignment> = {
                            let mut p = lock_pinned(slots.pinned);
                            pins.into_iter().filter_map(|a| p.add(a)).collect()
                        };
                        for t in plain.into_iter().chain(ready) {
                            book.held.insert(t.task, t.attempt);
                            let _ = slots.tx.send(t);
                        }
                    }
                    Ok(ToWorker::Ack { batch }) => book.acked(batch, slots.pinned),
                    Ok(ToWorker::Steal { tasks }) => {
                        let given = slots.give_back(&tasks);
                        for t in &given {
                            book.held.remove(t);
                        }
                        if let Err(e) = send(&mut sink, &FromWorker::Released { tasks: given }).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    Ok(ToWorker::Cancel { tasks }) => {
                        // Pinned tasks not started yet are just dropped. Only
                        // tasks held here are marked: a mark for another
                        // would cancel it if it came back later.
                        let held: Vec<TaskId> = {
                            let mut p = lock_pinned(slots.pinned);
                            let dropped = p.cancel(&tasks);
                            tasks
                                .into_iter()
                                .filter(|t| !dropped.contains(t))
                                .filter(|t| book.held.remove(t).is_some() || p.started.contains_key(t))
                                .collect()
                        };
                        ctl.cancel(&held, CANCEL_GRACE);
                    }
                    Ok(ToWorker::Error { message }) => tracing::warn!(message = ?message, "scheduler reports an error"),
                    Ok(ToWorker::Reregister { reason }) => {
                        tracing::warn!(reason = ?reason, "registering again as a new worker");
                        // Queued tasks went to others; running ones finish and report.
                        book.drop_queued(&slots);
                        if let Err(e) = send(&mut sink, &register(opts, registry, book, slots.pinned)).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    Ok(ToWorker::Shutdown) => {
                        tracing::info!("the scheduler shuts down for good; exiting");
                        let _ = send(&mut sink, &FromWorker::Goodbye).await;
                        return SessionEnd::Shutdown;
                    }
                    Ok(ToWorker::Retire) => {
                        tracing::info!("retired by the scheduler: draining");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a message this worker does not understand"),
                }
            }
            first = slots.reports.recv() => {
                let Some(first) = first else { return SessionEnd::Shutdown };
                book.collect(first, &mut slots);
            }
            _ = heartbeat.tick() => {
                if let Err(e) = send(&mut sink, &FromWorker::Heartbeat { rss_kib: crate::util::rss_kib() }).await {
                    return SessionEnd::Lost(e);
                }
            }
            _ = limits.tick() => {
                for r in ctl.expire(Instant::now()) {
                    tracing::warn!(task = %r.task, "function over its time limit: reported failed");
                    book.finished(r);
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drain(opts, &mut sink, &mut stream, slots, book).await;
    SessionEnd::Shutdown
}

/// Clean stop: hand queued tasks back, finish and report the running ones,
/// wait for their acknowledgement (bounded by `drain_timeout`), say goodbye.
async fn drain(
    opts: &WorkerOptions,
    sink: &mut FrameSink,
    stream: &mut FrameStream,
    mut slots: Slots<'_>,
    book: &mut Book,
) {
    let returned = book.drop_queued(&slots);
    tracing::info!(returned = returned.len(), running = book.held.len(), "draining: finishing running tasks");
    if send(sink, &FromWorker::Draining { returned }).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + opts.drain_timeout;
    let busy =
        |book: &Book, slots: &Slots| !book.held.is_empty() || !lock_pinned(slots.pinned).started.is_empty();
    while busy(book, &slots) || book.pending() > 0 {
        if book.flush(sink).await.is_err() {
            return;
        }
        tokio::select! {
            first = slots.reports.recv(), if busy(book, &slots) => {
                let Some(first) = first else { break };
                book.collect(first, &mut slots);
            }
            frame = next_frame(stream) => match frame.map(|f| decode::<ToWorker>(&f)) {
                // Sent before the scheduler saw `Draining`: hand them back too.
                Ok(Ok(ToWorker::Assign { tasks, .. })) => {
                    let returned: Vec<TaskId> = tasks.iter().map(|t| t.task).collect();
                    if send(sink, &FromWorker::Draining { returned }).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(ToWorker::Ack { batch })) => book.acked(batch, slots.pinned),
                Ok(_) => {}
                Err(_) => return,
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(running = book.held.len(), "drain timeout: leaving the rest to other workers");
                break;
            }
        }
    }
    let _ = send(sink, &FromWorker::Goodbye).await;
}

/// Runs one attempt on the calling slot thread; a panic is a task error.
fn run_task(
    registry: &Registry,
    work_dir: &Path,
    worker: WorkerId,
    a: Assignment,
    ctl: &Control,
    py: &mut py::PySlot,
) -> TaskReport {
    let start = Instant::now();
    if ctl.take_canceled(a.task) {
        let outcome = Outcome::err("canceled");
        return TaskReport { task: a.task, attempt: a.attempt, outcome, micros: 0, executor_died: false };
    }
    let mut executor_died = false;
    let outcome = match &a.kind {
        TaskKind::Fn { name, args } => match registry.get(name) {
            None => Outcome::err(format!(
                "unknown function {name:?}; this worker has: {}",
                registry.names().join(", ")
            )),
            Some(f) => {
                let ctx = TaskCtx { task: a.task, attempt: a.attempt };
                let args = with_inputs(args, &a.inputs);
                if let Some(limit) = a.time_limit_ms {
                    let deadline = start + Duration::from_millis(limit);
                    ctl.lock().deadlines.insert(a.task, (deadline, limit, a.attempt));
                }
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&args, &ctx)));
                ctl.lock().deadlines.remove(&a.task);
                match result {
                    Ok(Ok(result)) => Outcome::Ok { result: result.into() },
                    Ok(Err(error)) => Outcome::err(error),
                    Err(panic) => Outcome::err(format!("{name} panicked: {}", panic_message(&panic))),
                }
            }
        },
        TaskKind::Cmd { argv, env, discard_output, .. } => {
            run_cmd(argv, env, *discard_output, work_dir, worker, &a, ctl)
        }
        TaskKind::Py { func, args } => {
            let (outcome, died) = py.run(&a, *func, args, worker, ctl);
            executor_died = died;
            outcome
        }
    };
    let (max_result, max_error) = {
        let c = ctl.lock();
        (c.max_result, c.max_error)
    };
    let outcome = cap_outcome(outcome, max_result, max_error);
    TaskReport {
        task: a.task,
        attempt: a.attempt,
        outcome,
        micros: start.elapsed().as_micros() as u64,
        executor_died,
    }
}

/// The arguments a function with dependencies is called with: with no args
/// of its own, the one input itself or the array of inputs; otherwise the
/// array `[args, input1, input2, …]`. (msgpack, spliced without decoding.)
fn with_inputs(args: &[u8], inputs: &[bytes::Bytes]) -> Vec<u8> {
    if inputs.is_empty() {
        return args.to_vec();
    }
    let no_args = args.is_empty() || args == [0xc0];
    if no_args && inputs.len() == 1 {
        return inputs[0].to_vec();
    }
    let n = inputs.len() + usize::from(!no_args);
    let mut out = Vec::with_capacity(5 + args.len() + inputs.iter().map(|i| i.len()).sum::<usize>());
    match n {
        0..=15 => out.push(0x90 | n as u8),
        16..=65535 => {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    if !no_args {
        out.extend_from_slice(args);
    }
    for i in inputs {
        out.extend_from_slice(i);
    }
    out
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// Gives a task's GPUs back to the worker when the task ends.
struct GpuLease<'a> {
    ctl: &'a Control,
    gpus: Vec<String>,
}

impl Drop for GpuLease<'_> {
    fn drop(&mut self) {
        if !self.gpus.is_empty() {
            self.ctl.lock().free_gpus.append(&mut self.gpus);
        }
    }
}

/// Waits for a command at most `limit`; past it, SIGTERM, then SIGKILL
/// after `CANCEL_GRACE`. `Ok(None)`: it was stopped for its time limit.
fn wait_with_limit(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let grace = Instant::now() + CANCEL_GRACE;
    while Instant::now() < grace {
        if child.try_wait()?.is_some() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

/// How much of a failed command's stderr goes into its error.
const STDERR_TAIL: usize = 2048;

/// Replaces `{task}`, `{attempt}`, `{job}` and `{entry}` in a command's
/// argv or environment value.
fn placeholders(s: &str, task: &str, attempt: u32, job: &str, entry: &str) -> String {
    if !s.contains('{') {
        return s.to_string();
    }
    s.replace("{task}", task)
        .replace("{attempt}", &attempt.to_string())
        .replace("{job}", job)
        .replace("{entry}", entry)
}

#[allow(clippy::too_many_arguments)]
fn run_cmd(
    argv: &[String],
    env: &[(String, String)],
    discard_output: bool,
    work_dir: &Path,
    worker: WorkerId,
    a: &Assignment,
    ctl: &Control,
) -> Outcome {
    let (task, attempt) = (a.task, a.attempt);
    let task_name = a.key.clone().unwrap_or_else(|| task.idx.to_string());
    let job = task.job.to_string();
    let entry = env.iter().find(|(k, _)| k == "ACTORD_ENTRY").map(|(_, v)| v.as_str()).unwrap_or("");
    let sub = |s: &str| placeholders(s, &task_name, attempt, &job, entry);
    let argv: Vec<String> = argv.iter().map(|s| sub(s)).collect();
    use std::os::unix::process::CommandExt;
    // Absolute: the command runs in it (or in `cwd`), and its input and
    // output paths must hold from there.
    let dir = work_dir.join(&job);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Outcome::err(format!("cannot create {}: {e}", dir.display()));
    }
    let cwd = match &a.kind {
        TaskKind::Cmd { cwd: Some(c), .. } => std::path::PathBuf::from(sub(c)),
        _ => dir.clone(),
    };
    let out_path = dir.join(format!("{}.{attempt}.out", task.idx));
    let err_path = dir.join(format!("{}.{attempt}.err", task.idx));
    let files = if discard_output {
        Ok((std::process::Stdio::null(), std::process::Stdio::null()))
    } else {
        std::fs::File::create(&out_path)
            .and_then(|o| Ok((o.into(), std::fs::File::create(&err_path)?.into())))
    };
    let (out, err): (std::process::Stdio, std::process::Stdio) = match files {
        Ok(f) => f,
        Err(e) => return Outcome::err(format!("cannot create output files in {}: {e}", dir.display())),
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    for (k, v) in env {
        cmd.env(k, sub(v));
    }
    // Its own GPUs (the scheduler never hands out more than the worker has).
    let want = a.resources.get("gpus").copied().unwrap_or(0) as usize;
    let gpus: Vec<String> = {
        let mut st = ctl.lock();
        let n = want.min(st.free_gpus.len());
        let at = st.free_gpus.len() - n;
        st.free_gpus.split_off(at)
    };
    if want > 0 {
        cmd.env("CUDA_VISIBLE_DEVICES", gpus.join(",")).env("ACTORD_GPUS", gpus.join(","));
    }
    let _gpus = GpuLease { ctl, gpus };
    // Dependencies' results, as JSON files named by $ACTORD_INPUT_0, _1, …
    cmd.env("ACTORD_INPUTS", a.inputs.len().to_string());
    for (k, input) in a.inputs.iter().enumerate() {
        let path = dir.join(format!("{}.{attempt}.input{k}.json", task.idx));
        let text = crate::util::msgpack_to_json(input).to_string();
        if let Err(e) = std::fs::write(&path, text) {
            return Outcome::err(format!("cannot write {}: {e}", path.display()));
        }
        cmd.env(format!("ACTORD_INPUT_{k}"), &path);
    }
    cmd.args(&argv[1..])
        .current_dir(&cwd)
        .env("ACTORD_JOB", task.job.to_string())
        .env("ACTORD_TASK", &task_name)
        .env("ACTORD_ATTEMPT", attempt.to_string())
        .env("ACTORD_WORKER", worker.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe; the child dies with this worker.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if !cwd.is_dir() => {
            return Outcome::err(format!("cannot run {:?} in {}: {e}", argv[0], cwd.display()))
        }
        Err(e) => return Outcome::err(format!("cannot run {:?}: {e}", argv[0])),
    };
    ctl.lock().running.insert(task, child.id());
    let waited = match a.time_limit_ms {
        None => child.wait().map(Some),
        Some(limit) => wait_with_limit(&mut child, Duration::from_millis(limit)),
    };
    ctl.lock().running.remove(&task);
    if let Ok(None) = waited {
        return Outcome::err(format!(
            "time limit exceeded ({limit} ms)",
            limit = a.time_limit_ms.unwrap_or(0)
        ));
    }
    let waited = waited.map(|s| s.expect("checked above"));
    if ctl.take_canceled(task) {
        return Outcome::err("canceled");
    }
    let status = match waited {
        Ok(s) => s,
        Err(e) => return Outcome::err(format!("waiting for {:?} failed: {e}", argv[0])),
    };
    if status.success() {
        let result = if discard_output {
            serde_json::json!({ "exit": 0 })
        } else {
            serde_json::json!({
                "exit": 0,
                "stdout": out_path.display().to_string(),
                "stderr": err_path.display().to_string(),
            })
        };
        match rmp_serde::to_vec_named(&result) {
            Ok(b) => Outcome::Ok { result: b.into() },
            Err(e) => Outcome::err(e.to_string()),
        }
    } else {
        let tail = std::fs::read(&err_path)
            .map(|b| {
                let start = b.len().saturating_sub(STDERR_TAIL);
                String::from_utf8_lossy(&b[start..]).trim().to_string()
            })
            .unwrap_or_default();
        let how = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        Outcome::err(format!("{:?} failed with {how}: {tail}", argv[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, TaskId};

    /// A slot's Python side, for tests that run no py task.
    fn no_py() -> py::PySlot {
        let opts = py::PyOptions { python: "python3".into(), work_dir: "/nonexistent".into(), max_result: 0 };
        py::PySlot::new(opts, Default::default(), 0)
    }

    fn assignment(kind: TaskKind) -> Assignment {
        Assignment {
            task: TaskId { job: JobId::new(), idx: 3 },
            key: None,
            attempt: 2,
            kind,
            inputs: vec![],
            time_limit_ms: None,
            resources: Default::default(),
            pending_inputs: vec![],
            has_dependents: false,
        }
    }

    #[test]
    fn pinned_tasks_run_when_their_local_inputs_finish_and_drop_when_one_fails() {
        let job = JobId::new();
        let t = |idx| TaskId { job, idx };
        let pin = |idx, deps: Vec<(u32, u32)>| Assignment {
            task: t(idx),
            inputs: vec![bytes::Bytes::new(); deps.len()],
            pending_inputs: deps.into_iter().map(|(pos, d)| (pos, t(d))).collect(),
            ..assignment(TaskKind::Fn { name: "inc".into(), args: vec![] })
        };
        let mut p = Pinned::default();
        // 1 ← 0, 2 ← (0, 1); 0 finishes before 3 ← 0 arrives.
        assert!(p.add(pin(1, vec![(0, 0)])).is_none());
        assert!(p.add(pin(2, vec![(0, 0), (1, 1)])).is_none());
        let ready = p.finished(t(0), Some(bytes::Bytes::from_static(b"a")), true);
        assert_eq!(ready.iter().map(|a| a.task).collect::<Vec<_>>(), vec![t(1)]);
        assert_eq!(ready[0].inputs, vec![bytes::Bytes::from_static(b"a")]);
        assert!(p.started.contains_key(&t(1)), "the first one is run by the caller");
        let late = p.add(pin(3, vec![(0, 0)])).expect("its input is here already");
        assert_eq!(late.inputs, vec![bytes::Bytes::from_static(b"a")]);
        let ready = p.finished(t(1), Some(bytes::Bytes::from_static(b"b")), true);
        assert_eq!(ready[0].inputs, vec![bytes::Bytes::from_static(b"a"), bytes::Bytes::from_static(b"b")]);
        assert!(p.started.contains_key(&t(2)) && !p.started.contains_key(&t(1)));

        // A failure drops what waits for it, transitively; a cancel drops one.
        let mut p = Pinned::default();
        assert!(p.add(pin(1, vec![(0, 0)])).is_none());
        assert!(p.add(pin(2, vec![(0, 1)])).is_none());
        assert!(p.add(pin(4, vec![(0, 3)])).is_none());
        assert!(p.finished(t(0), None, true).is_empty());
        assert_eq!(p.waiting.keys().copied().collect::<Vec<_>>(), vec![t(4)]);
        assert!(p.add(pin(5, vec![(0, 0)])).is_none(), "its input failed here: dropped");
        assert!(!p.waiting.contains_key(&t(5)));
        assert_eq!(p.cancel(&[t(4), t(9)]), vec![t(4)]);
        assert!(p.waiting.is_empty() && p.waiters.values().all(|w| w.is_empty()));
    }

    #[test]
    fn a_result_over_the_limit_is_a_task_error() {
        let mut reg = Registry::builtin();
        reg.register("big", |n: usize, _| Ok(vec![7u8; n]));
        let dir = tempfile::tempdir().unwrap();
        let ctl = Control::default();
        ctl.lock().max_result = 1000;
        let small =
            assignment(TaskKind::Fn { name: "big".into(), args: rmp_serde::to_vec(&10usize).unwrap() });
        assert!(run_task(&reg, dir.path(), WorkerId(1), small, &ctl, &mut no_py()).outcome.is_ok());
        let big =
            assignment(TaskKind::Fn { name: "big".into(), args: rmp_serde::to_vec(&5000usize).unwrap() });
        match run_task(&reg, dir.path(), WorkerId(1), big, &ctl, &mut no_py()).outcome {
            Outcome::Err { error, .. } => assert!(error.contains("over the limit of 1000 B"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_panicking_function_is_a_task_error() {
        let mut reg = Registry::builtin();
        reg.register("explode", |_: (), _| -> Result<(), String> { panic!("kaboom") });
        let dir = tempfile::tempdir().unwrap();
        let a = assignment(TaskKind::Fn { name: "explode".into(), args: rmp_serde::to_vec(&()).unwrap() });
        let r = run_task(&reg, dir.path(), WorkerId(1), a, &Control::default(), &mut no_py());
        assert_eq!(r.outcome, Outcome::err("explode panicked: kaboom"));
        assert_eq!(r.attempt, 2);
    }

    #[test]
    fn commands_see_their_identity_and_write_output_files() {
        let dir = tempfile::tempdir().unwrap();
        let argv = ["sh", "-c", "echo $ACTORD_TASK $ACTORD_ATTEMPT $ACTORD_WORKER"];
        let a = assignment(crate::client::cmd_task(argv.iter().map(|s| s.to_string()).collect()).kind);
        let job = a.task.job;
        let r = run_task(&Registry::empty(), dir.path(), WorkerId(7), a, &Control::default(), &mut no_py());
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
        let out = std::fs::read_to_string(dir.path().join(job.to_string()).join("3.2.out")).unwrap();
        assert_eq!(out.trim(), "3 2 w7");

        let a = assignment(crate::client::cmd_task(vec!["/nonexistent/prog".into()]).kind);
        let r = run_task(&Registry::empty(), dir.path(), WorkerId(7), a, &Control::default(), &mut no_py());
        assert!(matches!(r.outcome, Outcome::Err { error, .. } if error.contains("cannot run")));
    }
}

#[cfg(test)]
mod input_tests {
    use super::with_inputs;
    use bytes::Bytes;

    fn mp<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn inputs_become_arguments() {
        let one = [Bytes::from(mp(&5))];
        assert_eq!(with_inputs(&mp(&()), &one), mp(&5), "nil args, one input: the input itself");
        let two = [Bytes::from(mp(&5)), Bytes::from(mp(&"x"))];
        assert_eq!(with_inputs(&mp(&()), &two), mp(&(5, "x")), "nil args: the array of inputs");
        assert_eq!(with_inputs(&mp(&10), &two), mp(&(10, 5, "x")), "args first, then the inputs");
        assert_eq!(with_inputs(&mp(&10), &[]), mp(&10), "no inputs: the args");
        let many: Vec<Bytes> = (0..20).map(|i| Bytes::from(mp(&i))).collect();
        assert_eq!(with_inputs(&mp(&()), &many), mp(&(0..20).collect::<Vec<i32>>()));
    }
}
