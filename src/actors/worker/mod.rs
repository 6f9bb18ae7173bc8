//! A worker process as an actor tree: the `Worker` root owns the book of
//! tasks and the outbox of reports, and supervises the `Connection` to the
//! scheduler and one `Slot` per thread (the tree is drawn in `actors/mod.rs`).
//! Survives a lost scheduler for up to `death_timeout`.

mod book;
mod conn;
mod exec_cmd;
mod exec_fn;
mod frames;
mod msg;
mod outbox;
mod pinned;
mod py;
mod py_objects;
mod py_pipe;
mod slot;
mod stored;
#[cfg(test)]
mod tests;

pub use msg::WorkerError;
pub use outbox::cap_outcome;

use crate::functions::Registry;
use crate::ids::{JobId, WorkerId};
use crate::protocol::FromWorker;
use book::Book;
use bytes::Bytes;
use conn::{ConnArgs, ConnMsg, Connection};
use msg::SlotPanic;
use msg::{Done, Run, SlotEvent, WorkerMsg, CANCEL_GRACE};
use outbox::Outbox;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use rustc_hash::FxHashMap;
use slot::{Slot, SlotArgs, SlotMsg, SlotShared};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// A result larger than this (bytes) is a task error: in the results
    /// store, or inline when there is none (0: no limit).
    pub max_result: u64,
    /// A result larger than this (bytes) goes to the results store (0: none do).
    pub inline_result: u64,
    /// Bytes of its own recent stored results a worker keeps in memory for
    /// the tasks it runs next (0: none).
    pub result_cache: u64,
    /// When stored results are fsynced.
    pub result_sync: crate::results_store::SyncMode,
    /// Where this host sees the results store (`--results-dir`); `None`:
    /// where the scheduler file says.
    pub results_dir: Option<PathBuf>,
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
    /// Modules its executors import first; with any, they start at once.
    pub preload: Vec<String>,
    /// When its allocation ends (`None`: not known): it tells the scheduler,
    /// and drains `walltime_margin` before, to leave before the end.
    pub walltime_end: Option<std::time::SystemTime>,
    pub walltime_margin: Duration,
}

/// How often functions are checked against their time limit.
const LIMITS_EVERY: Duration = Duration::from_millis(100);

/// A worker draining for the end of its allocation leaves at the latest
/// this long before the end (or half its margin, if that is shorter).
const LEAVE_BEFORE_END: Duration = Duration::from_secs(1);

/// Runs a worker until the scheduler dismisses it, it drains after SIGTERM
/// or Ctrl-C, or no scheduler is reachable for `death_timeout`.
pub async fn run_worker(opts: WorkerOptions, registry: Registry) -> Result<(), WorkerError> {
    // A file-size limit (`ulimit -f`) makes a result file over it a task
    // error (EFBIG: "results store full"), not the worker's death.
    // SAFETY: setting a signal to ignored, before any thread depends on it.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let (done, mut ended) = tokio::sync::oneshot::channel();
    let args = WorkerArgs { opts, registry: Arc::new(registry), done };
    let (worker, join) =
        Actor::spawn(None, Worker, args).await.map_err(|e| WorkerError::Failed(e.to_string()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| WorkerError::Failed(format!("cannot handle SIGTERM: {e}")))?;
    let result = loop {
        tokio::select! {
            r = &mut ended => break r.unwrap_or_else(|_| Err(WorkerError::Failed("the worker actor stopped".into()))),
            _ = term.recv() => { let _ = worker.cast(WorkerMsg::Stop); }
            _ = tokio::signal::ctrl_c() => { let _ = worker.cast(WorkerMsg::Stop); }
        }
    };
    let _ = join.await;
    result
}

struct Worker;

struct WorkerArgs {
    opts: WorkerOptions,
    registry: Arc<Registry>,
    done: tokio::sync::oneshot::Sender<Result<(), WorkerError>>,
}

struct WorkerState {
    opts: WorkerOptions,
    registry: Arc<Registry>,
    book: Book,
    outbox: Outbox,
    /// The slot actors, by slot number (`None` while one restarts).
    slots: Vec<Option<ActorRef<SlotMsg>>>,
    /// What every slot is started with.
    shared: SlotShared,
    conn: Option<ActorRef<ConnMsg>>,
    /// Whether `conn` is through and registration was sent on it.
    online: bool,
    /// The scheduler it is connected to (for logs).
    address: String,
    worker: WorkerId,
    /// The py function table entries the scheduler sent: key and pickle.
    functions: FxHashMap<(JobId, u32), (u64, Bytes)>,
    /// The last key given to a py function.
    next_key: u64,
    flush_pending: bool,
    /// Report frames given to `conn` and not yet written: the next wait.
    writing: bool,
    /// Slots whose executors are still importing the preloaded modules:
    /// the worker registers once they are done (as a Dask worker imports
    /// its preloads before it joins), so its first tasks do not wait.
    warming: u32,
    /// Retired or signaled: finishing the running tasks.
    draining: bool,
    done: Option<tokio::sync::oneshot::Sender<Result<(), WorkerError>>>,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let WorkerArgs { opts, registry, done } = args;
        let (book, queue) = Book::new();
        let shared = SlotShared {
            registry: registry.clone(),
            queue,
            worker: myself.clone(),
            events: Default::default(),
            work_dir: opts.work_dir.clone(),
            gpus: exec_cmd::GpuPool::new(&opts.gpus),
            pins: book.pins.clone(),
            py: py::PyOptions {
                python: opts.python.clone(),
                preload: opts.preload.clone(),
                work_dir: opts.work_dir.clone(),
                max_result: opts.max_result,
                objects: opts.result_cache,
            },
            max_result: opts.max_result,
            max_error: opts.max_error,
            store: Arc::new(stored::StoreView::new(
                opts.results_dir.clone(),
                opts.inline_result,
                opts.max_result,
                opts.result_cache,
                opts.result_sync,
                opts.scheduler_file.clone(),
            )),
        };
        let mut st = WorkerState {
            outbox: Outbox::new(opts.max_frame),
            slots: Vec::new(),
            shared,
            conn: None,
            online: false,
            address: String::new(),
            worker: WorkerId(0),
            functions: FxHashMap::default(),
            next_key: 0,
            flush_pending: false,
            writing: false,
            warming: 0,
            draining: false,
            done: Some(done),
            book,
            registry,
            opts,
        };
        for slot in 0..st.opts.threads.max(1) {
            let actor = spawn_slot(&myself, &st, slot).await?;
            st.slots.push(Some(actor));
        }
        if st.shared.py.preload.is_empty() {
            st.conn = Some(spawn_conn(&myself, &st.opts).await?);
        } else {
            st.warming = st.opts.threads.max(1);
            myself.send_after(py::START_TIMEOUT, || WorkerMsg::Warmed { all: true });
        }
        myself.send_interval(LIMITS_EVERY, || WorkerMsg::CheckLimits);
        if let Some(end) = st.opts.walltime_end {
            let drain_at = end.checked_sub(st.opts.walltime_margin).unwrap_or(end);
            let wait = drain_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            myself.send_after(wait, || WorkerMsg::Walltime);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Connected { address, results_dir } => {
                st.shared.store.set_from_scheduler(results_dir.as_deref());
                st.connected(address)
            }
            WorkerMsg::Frame(frame) => st.on_frame(&myself, frame),
            WorkerMsg::SlotEvents => {
                for e in st.shared.events.take() {
                    st.slot_event(&myself, e);
                }
            }
            WorkerMsg::Flush => st.flush(),
            WorkerMsg::Written => {
                st.writing = false;
                st.flush();
            }
            WorkerMsg::CheckLimits => {
                for r in st.book.expire(Instant::now()) {
                    tracing::warn!(task = %r.task, "function over its time limit: reported failed");
                    st.report(&myself, r);
                }
            }
            WorkerMsg::KillChild { task, pid } => {
                if st.book.runs_child(task, pid) {
                    tracing::warn!(task = %task, pid, "canceled command still running after the grace: killing it");
                    crate::process::kill(pid);
                }
            }
            WorkerMsg::Stop if st.online => st.start_drain(&myself, st.opts.drain_timeout),
            WorkerMsg::Stop if st.draining => {}
            WorkerMsg::Stop => st.finish(&myself, Ok(())).await,
            WorkerMsg::Walltime => st.walltime(&myself),
            WorkerMsg::Warmed { all } if st.warming > 0 => {
                st.warming = if all { 0 } else { st.warming - 1 };
                if st.warming == 0 && !st.draining && st.done.is_some() {
                    tracing::info!(preload = ?st.shared.py.preload, "Python executors ready: connecting");
                    st.conn = Some(spawn_conn(&myself, &st.opts).await?);
                }
            }
            WorkerMsg::Warmed { .. } => {}
            WorkerMsg::DrainTimeout => {
                tracing::warn!(
                    running = st.book.held.len(),
                    "drain timeout: leaving the rest to other workers"
                );
                st.goodbye(&myself).await;
            }
        }
        if st.draining && !st.book.busy() && st.outbox.pending() == 0 {
            st.goodbye(&myself).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<WorkerMsg>,
        evt: SupervisionEvent,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure, reason) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, None, reason.unwrap_or_default()),
            SupervisionEvent::ActorFailed(cell, err) => {
                let reason = err.to_string();
                (cell, Some(err), reason)
            }
            _ => return Ok(()),
        };
        if st.done.is_none() {
            return Ok(());
        }
        if st.conn.as_ref().is_some_and(|c| c.get_id() == cell.get_id()) {
            return st.connection_ended(&myself, failure, reason).await;
        }
        let Some(slot) =
            st.slots.iter().position(|s| s.as_ref().is_some_and(|a| a.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        st.slots[slot] = None;
        // Policy: a slot that panicked or stopped is started again at once
        // (a panic is one attempt's failure, not the slot's); the attempt it
        // ran is reported failed.
        match failure.as_ref().and_then(|e| e.downcast_ref::<SlotPanic>()) {
            Some(p) => {
                tracing::error!(slot, task = %p.task, error = ?p.message, "slot panicked: its task failed; restarting the slot");
                let report = slot::panicked(p, st.opts.max_error);
                let (report, ready) = st.book.finished(Done { report, keep: p.keep, pins_done: false });
                st.enqueue(ready);
                if let Some(r) = report {
                    st.report(&myself, r);
                }
            }
            None => tracing::error!(slot, reason = %reason, "slot stopped; restarting it"),
        }
        st.slots[slot] = Some(spawn_slot(&myself, st, slot as u32).await?);
        Ok(())
    }
}

impl WorkerState {
    fn slot_event(&mut self, myself: &ActorRef<WorkerMsg>, e: SlotEvent) {
        match e {
            SlotEvent::Done(done) => {
                let (report, ready) = self.book.finished(done);
                self.enqueue(ready);
                if let Some(r) = report {
                    self.report(myself, r);
                }
            }
            SlotEvent::Running(r) => {
                if let Some((task, pid)) = self.book.started(r, Instant::now()) {
                    stop_child(myself, task, pid);
                }
            }
            SlotEvent::Ready(tasks) => self.enqueue(tasks),
        }
    }

    /// The connection is through: queued tasks are dropped (the scheduler
    /// requeues them), every unacknowledged report is sent again.
    fn connected(&mut self, address: String) {
        self.book.reconnected();
        self.outbox.reconnected();
        self.address = address;
        self.online = true;
        self.writing = false;
        self.send(self.register());
        self.flush();
    }

    fn register(&self) -> FromWorker {
        FromWorker::Register {
            slots: self.opts.threads.max(1),
            host: crate::util::hostname(),
            pid: std::process::id(),
            functions: self.registry.names(),
            nanny: self.opts.nanny.clone(),
            running: self.book.running(),
            resources: self.opts.resources.clone(),
            walltime_end_ms: self.opts.walltime_end.map(crate::slurm::epoch_ms),
        }
    }

    fn send(&self, msg: FromWorker) {
        if let (true, Some(conn)) = (self.online, &self.conn) {
            let _ = conn.cast(ConnMsg::Send(msg));
        }
    }

    /// Queues attempts for the slots, each with its py function if it has one.
    fn enqueue(&mut self, tasks: impl IntoIterator<Item = crate::protocol::Assignment>) {
        for a in tasks {
            let function = match &a.kind {
                crate::protocol::TaskKind::Py { func, .. } => {
                    self.functions.get(&(a.task.job, *func)).cloned()
                }
                _ => None,
            };
            self.book.enqueue(Run { a, worker: self.worker, function });
        }
    }

    /// A report to send: with the others that come meanwhile, in one frame.
    fn report(&mut self, myself: &ActorRef<WorkerMsg>, r: crate::protocol::TaskReport) {
        self.outbox.push(r);
        if !self.flush_pending {
            self.flush_pending = true;
            let _ = myself.cast(WorkerMsg::Flush);
        }
    }

    fn flush(&mut self) {
        self.flush_pending = false;
        if !self.online || self.writing {
            return;
        }
        let Some(conn) = &self.conn else { return };
        let frames = self.outbox.frames();
        if !frames.is_empty() {
            self.writing = conn.cast(ConnMsg::Frames(frames)).is_ok();
        }
    }

    /// The allocation ends soon: drain, and leave a moment before the end
    /// whatever still runs (the scheduler placed nothing here expected to
    /// run that long).
    fn walltime(&mut self, myself: &ActorRef<WorkerMsg>) {
        let Some(end) = self.opts.walltime_end else { return };
        let left = end.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        let leave_in = left.saturating_sub(LEAVE_BEFORE_END.min(self.opts.walltime_margin / 2));
        tracing::info!(
            ends_in_ms = left.as_millis() as u64,
            running = self.book.held.len(),
            "the allocation ends soon: draining, to leave before it does"
        );
        self.start_drain(myself, leave_in);
    }

    /// Clean stop: hand queued tasks back, finish and report the running
    /// ones, wait for their acknowledgement (bounded by `within`), say goodbye.
    fn start_drain(&mut self, myself: &ActorRef<WorkerMsg>, within: Duration) {
        if self.draining {
            return;
        }
        self.draining = true;
        let returned = self.book.drop_queued();
        tracing::info!(
            returned = returned.len(),
            running = self.book.held.len(),
            "draining: finishing running tasks"
        );
        self.send(FromWorker::Draining { returned });
        myself.send_after(within, || WorkerMsg::DrainTimeout);
    }

    async fn goodbye(&mut self, myself: &ActorRef<WorkerMsg>) {
        self.send(FromWorker::Goodbye);
        self.finish(myself, Ok(())).await;
    }

    /// Ends the worker: what is queued for the scheduler is written first
    /// (for a few seconds at most), then the slots stop.
    async fn finish(&mut self, myself: &ActorRef<WorkerMsg>, result: Result<(), WorkerError>) {
        let Some(done) = self.done.take() else { return };
        if let Some(conn) = self.conn.take() {
            let _ = conn.drain_and_wait(Some(Duration::from_secs(3))).await;
        }
        myself.stop_children(None);
        if result.is_ok() {
            tracing::info!("worker shutting down");
        }
        let _ = done.send(result);
        myself.stop(None);
    }

    /// Policy: a lost connection is dialed again at once (the `Connection`
    /// backs off) while running tasks go on; a connection that could not
    /// get through within the death timeout ends the worker.
    async fn connection_ended(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        failure: Option<ActorProcessingErr>,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        self.conn = None;
        self.online = false;
        self.writing = false;
        if let Some(e) = failure {
            let err = match e.downcast::<WorkerError>() {
                Ok(e) => *e,
                Err(e) => WorkerError::Failed(format!("the scheduler connection failed: {e}")),
            };
            tracing::error!(error = %err, "giving up on the scheduler");
            self.finish(myself, Err(err)).await;
            return Ok(());
        }
        if self.draining {
            tracing::warn!(reason = %reason, "lost the scheduler while draining; exiting");
            self.finish(myself, Ok(())).await;
            return Ok(());
        }
        tracing::warn!(
            scheduler = %self.address,
            reason = %reason,
            running = self.book.held.len(),
            unacknowledged = self.outbox.pending(),
            "lost the scheduler; running tasks go on, reconnecting"
        );
        self.conn = Some(spawn_conn(myself, &self.opts).await?);
        Ok(())
    }
}

async fn spawn_slot(
    myself: &ActorRef<WorkerMsg>,
    st: &WorkerState,
    slot: u32,
) -> Result<ActorRef<SlotMsg>, ActorProcessingErr> {
    let args = SlotArgs { slot, shared: st.shared.clone() };
    let (actor, _) = Actor::spawn_linked(None, Slot, args, myself.get_cell()).await?;
    Ok(actor)
}

async fn spawn_conn(
    myself: &ActorRef<WorkerMsg>,
    opts: &WorkerOptions,
) -> Result<ActorRef<ConnMsg>, ActorProcessingErr> {
    let args = ConnArgs {
        scheduler_file: opts.scheduler_file.clone(),
        max_frame: opts.max_frame,
        heartbeat: opts.heartbeat,
        death_timeout: opts.death_timeout,
        worker: myself.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, Connection, args, myself.get_cell()).await?;
    Ok(actor)
}

/// SIGTERM to a canceled attempt's child now, SIGKILL after the grace if
/// it still runs that attempt.
fn stop_child(myself: &ActorRef<WorkerMsg>, task: crate::ids::TaskId, pid: u32) {
    tracing::info!(task = %task, pid, "canceling a running command");
    crate::process::terminate(pid);
    myself.send_after(CANCEL_GRACE, move || WorkerMsg::KillChild { task, pid });
}
