//! Slots run against a probe standing in for the `Worker`: what they
//! report, and a panicking slot failing its actor with the attempt's error.

use super::exec_cmd::GpuPool;
use super::msg::{Run, SlotEvent, SlotEvents, SlotPanic, WorkerMsg};
use super::py::PyOptions;
use super::slot::{self, Slot, SlotArgs, SlotShared};
use crate::functions::Registry;
use crate::ids::{JobId, TaskId, WorkerId};
use crate::protocol::{Assignment, Outcome, TaskKind, TaskReport};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Stands in for the `Worker`: passes on reports and slot failures.
struct Probe;

enum Seen {
    Report(TaskReport),
    Panic(u32, TaskId, u32, String),
}

impl Actor for Probe {
    type Msg = WorkerMsg;
    /// Where it passes things on, and the slots' event queue.
    type State = (UnboundedSender<Seen>, Arc<SlotEvents>);
    type Arguments = Self::State;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        st: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let WorkerMsg::SlotEvents = msg {
            for e in st.1.take() {
                if let SlotEvent::Done(d) = e {
                    let _ = st.0.send(Seen::Report(d.report));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<WorkerMsg>,
        evt: SupervisionEvent,
        (tx, _): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, e) = evt {
            if let Some(p) = e.downcast_ref::<SlotPanic>() {
                let _ = tx.send(Seen::Panic(p.slot, p.task, p.attempt, slot::panicked(p, 0).outcome.error()));
            }
        }
        Ok(())
    }
}

trait ErrorText {
    fn error(&self) -> String;
}

impl ErrorText for Outcome {
    fn error(&self) -> String {
        match self {
            Outcome::Err { error, .. } => error.clone(),
            Outcome::Ok { .. } | Outcome::Stored(_) => String::new(),
        }
    }
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
        stored_inputs: vec![],
    }
}

fn fn_task(name: &str, args: Vec<u8>) -> Assignment {
    assignment(TaskKind::Fn { name: name.into(), args })
}

/// A probe, one slot under it, and the queue that feeds the slot.
async fn one_slot(
    registry: Registry,
    dir: &std::path::Path,
    max_result: u64,
) -> (crossbeam_channel::Sender<Run>, UnboundedReceiver<Seen>) {
    let (tx, rx) = unbounded_channel();
    let events = Arc::new(SlotEvents::default());
    let (probe, _) = Actor::spawn(None, Probe, (tx, events.clone())).await.unwrap();
    let (queue, queued) = crossbeam_channel::unbounded();
    let shared = SlotShared {
        registry: Arc::new(registry),
        queue: queued,
        worker: probe.clone(),
        events,
        work_dir: dir.to_path_buf(),
        gpus: GpuPool::new(&[]),
        pins: Default::default(),
        py: PyOptions {
            python: "python3".into(),
            work_dir: "/nonexistent".into(),
            max_result: 0,
            preload: Vec::new(),
            objects: 0,
        },
        max_result,
        max_error: 0,
        store: Arc::new(super::stored::StoreView::new(
            None,
            0,
            0,
            0,
            crate::results_store::SyncMode::Before,
            "/nonexistent".into(),
        )),
    };
    let args = SlotArgs { slot: 0, shared };
    Actor::spawn_linked(None, Slot, args, probe.get_cell()).await.unwrap();
    (queue, rx)
}

fn run(a: Assignment) -> Run {
    Run { a, worker: WorkerId(7), function: None }
}

async fn report(rx: &mut UnboundedReceiver<Seen>) -> TaskReport {
    match tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv()).await {
        Ok(Some(Seen::Report(r))) => r,
        Ok(Some(Seen::Panic(_, task, _, e))) => panic!("slot panicked on {task}: {e}"),
        _ => panic!("no report"),
    }
}

#[tokio::test]
async fn a_result_over_the_limit_is_a_task_error() {
    let mut reg = Registry::builtin();
    reg.register("big", |n: usize, _| Ok(vec![7u8; n]));
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut rx) = one_slot(reg, dir.path(), 1000).await;
    queue.send(run(fn_task("big", rmp_serde::to_vec(&10usize).unwrap()))).unwrap();
    assert!(report(&mut rx).await.outcome.is_ok());
    queue.send(run(fn_task("big", rmp_serde::to_vec(&5000usize).unwrap()))).unwrap();
    let error = report(&mut rx).await.outcome.error();
    assert!(error.contains("over the limit of 1000 B"), "{error}");
}

#[tokio::test]
async fn a_panicking_function_fails_its_slot_actor_with_the_attempt() {
    let mut reg = Registry::builtin();
    reg.register("explode", |_: (), _| -> Result<(), String> { panic!("kaboom") });
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut rx) = one_slot(reg, dir.path(), 0).await;
    let a = fn_task("explode", rmp_serde::to_vec(&()).unwrap());
    let task = a.task;
    queue.send(run(a)).unwrap();
    match tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv()).await {
        Ok(Some(Seen::Panic(slot, t, attempt, error))) => {
            assert_eq!((slot, t, attempt), (0, task, 2));
            assert_eq!(error, "explode panicked: kaboom");
        }
        _ => panic!("expected the slot to fail"),
    }
}

#[tokio::test]
async fn commands_see_their_identity_and_write_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut rx) = one_slot(Registry::empty(), dir.path(), 0).await;
    let argv = ["sh", "-c", "echo $ACTORD_TASK $ACTORD_ATTEMPT $ACTORD_WORKER"];
    let a = assignment(crate::client::cmd_task(argv.iter().map(|s| s.to_string()).collect()).kind);
    let job = a.task.job;
    queue.send(run(a)).unwrap();
    let r = report(&mut rx).await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    let out = std::fs::read_to_string(dir.path().join(job.to_string()).join("3.2.out")).unwrap();
    assert_eq!(out.trim(), "3 2 w7");

    queue.send(run(assignment(crate::client::cmd_task(vec!["/nonexistent/prog".into()]).kind))).unwrap();
    assert!(report(&mut rx).await.outcome.error().contains("cannot run"));
}

/// Counts the messages it gets.
struct Counter;

impl Actor for Counter {
    type Msg = WorkerMsg;
    type State = UnboundedSender<()>;
    type Arguments = UnboundedSender<()>;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        _: WorkerMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(());
        Ok(())
    }
}

#[tokio::test]
async fn slot_events_keep_their_order_and_wake_the_worker_once_per_burst() {
    let (tx, mut woken) = unbounded_channel();
    let (worker, _) = Actor::spawn(None, Counter, tx).await.unwrap();
    let events = SlotEvents::default();
    let done = |idx| {
        let mut a = fn_task("inc", vec![]);
        a.task.idx = idx;
        SlotEvent::Done(super::msg::Done {
            report: TaskReport {
                task: a.task,
                attempt: 1,
                outcome: Outcome::Ok { result: Default::default() },
                micros: 1,
                executor_died: false,
                lost_inputs: Vec::new(),
            },
            keep: false,
            pins_done: true,
        })
    };
    let idx = |e: &SlotEvent| match e {
        SlotEvent::Done(d) => d.report.task.idx,
        _ => u32::MAX,
    };
    for i in 0..3 {
        assert!(events.push(done(i), &worker));
    }
    assert_eq!(events.take().iter().map(idx).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(events.push(done(3), &worker));
    assert_eq!(events.take().iter().map(idx).collect::<Vec<_>>(), vec![3]);
    // Every message sent is handled before it stops.
    worker.drain_and_wait(Some(std::time::Duration::from_secs(20))).await.unwrap();
    let mut wakes = 0;
    while woken.try_recv().is_ok() {
        wakes += 1;
    }
    assert_eq!(wakes, 2, "one wake-up per push onto an empty queue, none for the rest of a burst");
    assert!(!events.push(done(4), &worker), "a gone worker is said so");
}
