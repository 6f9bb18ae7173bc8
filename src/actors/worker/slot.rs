//! One slot of a worker: the `Slot` actor owns a thread that takes attempts
//! from the worker's ready queue and runs them (`exec_fn`, `exec_cmd`, `py`).
//! A panic on that thread fails the actor, so the `Worker` supervising it
//! reports the attempt failed and starts the slot again.

use super::exec_cmd::{CmdCx, GpuPool};
use super::msg::{Done, Run, Running, SlotEvent, SlotEvents, SlotPanic, WorkerMsg};
use super::outbox::cap_outcome;
use super::pinned::{self, Pins};
use super::py::{PyEnd, PyOptions, PySlot, PyTask};
use super::stored::{FillError, StoreView};
use crate::functions::Registry;
use crate::protocol::{Assignment, Outcome, TaskKind, TaskReport};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What every slot shares (read-only, or channels).
#[derive(Clone)]
pub(super) struct SlotShared {
    pub registry: Arc<Registry>,
    pub queue: crossbeam_channel::Receiver<Run>,
    pub worker: ActorRef<WorkerMsg>,
    /// What the slots tell the `Worker` (`Done`, `Running`, `Ready`).
    pub events: Arc<SlotEvents>,
    pub work_dir: PathBuf,
    pub gpus: GpuPool,
    pub pins: Pins,
    pub py: PyOptions,
    pub max_result: u64,
    pub max_error: u64,
    /// The results store as this worker sees it.
    pub store: Arc<StoreView>,
}

impl SlotShared {
    /// Tells the `Worker` (in order with the slots' other events); `false`
    /// if it is gone.
    fn tell(&self, e: SlotEvent) -> bool {
        self.events.push(e, &self.worker)
    }
}

pub(super) struct SlotArgs {
    pub slot: u32,
    pub shared: SlotShared,
}

pub(super) enum SlotMsg {
    /// The slot's thread panicked and ended.
    Panicked(SlotPanic),
}

pub(super) struct Slot;

impl Actor for Slot {
    type Msg = SlotMsg;
    type State = ();
    type Arguments = SlotArgs;

    async fn pre_start(&self, myself: ActorRef<SlotMsg>, args: SlotArgs) -> Result<(), ActorProcessingErr> {
        let SlotArgs { slot, shared } = args;
        std::thread::Builder::new()
            .name(format!("slot-{slot}"))
            .spawn(move || slot_thread(slot, shared, myself))
            .map_err(|e| format!("cannot start the thread of slot {slot}: {e}"))?;
        Ok(())
    }

    async fn handle(&self, _: ActorRef<SlotMsg>, msg: SlotMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
        match msg {
            SlotMsg::Panicked(p) => Err(Box::new(p)),
        }
    }
}

/// The slot's thread: runs attempts until the queue closes or one panics.
/// (Children it starts die with it: `crate::process`.)
fn slot_thread(slot: u32, shared: SlotShared, me: ActorRef<SlotMsg>) {
    let mut py = PySlot::new(shared.py.clone(), slot);
    py.warm_up();
    let _ = shared.worker.cast(WorkerMsg::Warmed { all: false });
    let mut next: Option<Run> = None;
    loop {
        let run = match next.take() {
            Some(run) => run,
            None => match shared.queue.recv() {
                Ok(run) => run,
                Err(_) => return,
            },
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(&shared, &run, &mut py)));
        let report = match ran {
            Ok(report) => report,
            Err(panic) => {
                let what = match &run.a.kind {
                    TaskKind::Fn { name, .. } => name.as_str(),
                    TaskKind::Cmd { .. } => "the command",
                    TaskKind::Py { .. } => "the Python task",
                };
                let message = format!("{what} panicked: {}", panic_message(&panic));
                let (task, attempt, keep) = (run.a.task, run.a.attempt, run.a.has_dependents);
                let _ = me.cast(SlotMsg::Panicked(SlotPanic { slot, task, attempt, keep, message }));
                return;
            }
        };
        let keep = run.a.has_dependents;
        let result = pinned::Local::of(&report.outcome);
        let ready = pinned::lock(&shared.pins).finished(run.a.task, result, keep);
        if !shared.tell(SlotEvent::Done(Done { report, keep, pins_done: true })) {
            return;
        }
        // The first pinned task this completes runs here at once (a py one
        // goes by the Worker, which has its function).
        let mut ready = ready.into_iter().peekable();
        if ready.peek().is_some_and(|a| !matches!(a.kind, TaskKind::Py { .. })) {
            next = ready.next().map(|a| Run { a, worker: run.worker, function: None });
        }
        let rest: Vec<Assignment> = ready.collect();
        if !rest.is_empty() && !shared.tell(SlotEvent::Ready(rest)) {
            return;
        }
    }
}

/// Runs one attempt on the calling slot thread: its stored inputs read
/// first, a large result moved to the store after.
fn run_task(shared: &SlotShared, run: &Run, py: &mut PySlot) -> TaskReport {
    let Run { a, worker, function } = run;
    let worker = *worker;
    let start = Instant::now();
    let orig = a;
    // A py task's executor may hold some of its stored inputs as objects.
    // Not for a second attempt: the first may have changed them in place.
    let fresh = a.attempt > 1;
    let held = if matches!(a.kind, TaskKind::Py { .. }) && !fresh { py.held_inputs(a) } else { Vec::new() };
    let filled;
    let a = if a.stored_inputs.is_empty() {
        a
    } else {
        match shared.store.fill(a, &held) {
            Ok(f) => {
                filled = f;
                &filled
            }
            Err(e) => return unstarted(shared, a, e),
        }
    };
    let filled_at = Instant::now();
    let tell = |r: Running| {
        shared.tell(SlotEvent::Running(r));
    };
    let mut executor_died = false;
    let outcome = match &a.kind {
        TaskKind::Fn { name, args } => {
            if let Some(limit_ms) = a.time_limit_ms {
                tell(Running::Deadline { task: a.task, attempt: a.attempt, limit_ms });
            }
            super::exec_fn::run(&shared.registry, name, args, a)
        }
        TaskKind::Cmd { .. } => {
            let cx = CmdCx { work_dir: &shared.work_dir, worker, gpus: &shared.gpus };
            super::exec_cmd::run(&cx, a, &|pid| tell(Running::Child { task: a.task, pid, cmd: true }))
        }
        TaskKind::Py { func, args } => {
            let started = |pid| tell(Running::Child { task: a.task, pid, cmd: false });
            let store = shared.store.target(a.task, a.attempt);
            let t =
                PyTask { a, func: *func, function: function.as_ref(), args, worker, refs: Vec::new(), store };
            match run_py(shared, py, t, (orig, &held), &started) {
                Ok((outcome, died)) => {
                    executor_died = died;
                    outcome
                }
                Err(e) => return unstarted(shared, orig, e),
            }
        }
    };
    let ran_at = Instant::now();
    let outcome = shared.store.keep(a.task, a.attempt, outcome);
    tracing::debug!(
        task = %a.task,
        inputs_ms = (filled_at - start).as_secs_f64() * 1e3,
        run_ms = (ran_at - filled_at).as_secs_f64() * 1e3,
        store_ms = ran_at.elapsed().as_secs_f64() * 1e3,
        "attempt ran"
    );
    // (With a store, `max_result` applies there.)
    let inline_cap = if shared.store.dir().is_some() { 0 } else { shared.max_result };
    TaskReport {
        task: a.task,
        attempt: a.attempt,
        outcome: cap_outcome(outcome, inline_cap, shared.max_error),
        micros: start.elapsed().as_micros() as u64,
        executor_died,
        lost_inputs: Vec::new(),
    }
}

/// Runs a py attempt: its executor takes the `held` stored inputs from
/// its own objects; if it no longer has some, all are sent, once.
fn run_py<'a>(
    shared: &SlotShared,
    py: &mut PySlot,
    t: PyTask<'a>,
    (orig, held): (&'a Assignment, &[u32]),
    started: &dyn Fn(u32),
) -> Result<(Outcome, bool), FillError> {
    let full;
    // (Rebound: its inputs may be borrowed from `full` below.)
    let mut t: PyTask<'_> = t;
    t.refs = orig.stored_inputs.iter().map(|(pos, r)| (*pos, r, held.contains(pos))).collect();
    let mut end = py.run(&t, started);
    if matches!(end, PyEnd::Missed) {
        tracing::info!(task = %orig.task, "its executor lacks inputs it held: sending them");
        full = shared.store.fill(orig, &[])?;
        t.a = &full;
        t.refs.iter_mut().for_each(|r| r.2 = false);
        end = py.run(&t, started);
    }
    Ok(match end {
        PyEnd::Done(outcome, died) => (outcome, died),
        PyEnd::Missed => {
            (Outcome::err(format!("task {}: its Python executor lost inputs it was sent", orig.task)), false)
        }
    })
}

/// The report of an attempt whose stored inputs could not be read: lost
/// ones make their tasks run again (the scheduler decides), anything else
/// fails it.
fn unstarted(shared: &SlotShared, a: &crate::protocol::Assignment, e: FillError) -> TaskReport {
    let (outcome, lost_inputs) = match e {
        FillError::Lost(lost, why) => {
            tracing::warn!(task = %a.task, inputs = ?lost, error = %why, "stored inputs lost: the scheduler re-runs them");
            (Outcome::err(why), lost)
        }
        FillError::Failed(why) => {
            (Outcome::err(format!("cannot read the task's stored inputs: {why}")), Vec::new())
        }
    };
    TaskReport {
        task: a.task,
        attempt: a.attempt,
        outcome: cap_outcome(outcome, 0, shared.max_error),
        micros: 0,
        executor_died: false,
        lost_inputs,
    }
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

/// The report of an attempt whose slot panicked.
pub(super) fn panicked(p: &SlotPanic, max_error: u64) -> TaskReport {
    TaskReport {
        task: p.task,
        attempt: p.attempt,
        outcome: cap_outcome(Outcome::err(p.message.clone()), 0, max_error),
        micros: 0,
        executor_died: false,
        lost_inputs: Vec::new(),
    }
}
