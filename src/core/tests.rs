//! Core tests: every effect is accounted for, and the invariants hold after
//! every step.

use super::*;
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::persistence::Record;
use crate::protocol::{Assignment, TaskReport, TaskSpec};
use crate::protocol::{Outcome, TaskKind, ToClient, ToNanny, ToWorker};
use bytes::Bytes;

#[derive(Default)]
pub(super) struct TestFx {
    pub(super) workers: Vec<(ConnId, ToWorker)>,
    pub(super) clients: Vec<(ConnId, ToClient)>,
    pub(super) nannies: Vec<(ConnId, ToNanny)>,
    pub(super) journal: Vec<Record>,
    pub(super) closed: Vec<ConnId>,
}

impl Effects for TestFx {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        // Round-trip through the codec, as the real sink would encode it.
        let bytes = crate::protocol::conn::encode(&msg).unwrap();
        self.workers.push((conn, crate::protocol::conn::decode(&bytes).unwrap()));
    }
    fn to_client(&mut self, conn: ConnId, msg: ToClient) {
        let bytes = crate::protocol::conn::encode(&msg).unwrap();
        self.clients.push((conn, crate::protocol::conn::decode(&bytes).unwrap()));
    }
    fn to_nanny(&mut self, conn: ConnId, msg: ToNanny) {
        let bytes = crate::protocol::conn::encode(&msg).unwrap();
        self.nannies.push((conn, crate::protocol::conn::decode(&bytes).unwrap()));
    }
    fn journal(&mut self, record: Record) {
        self.journal.push(record);
    }
    fn close(&mut self, conn: ConnId) {
        self.closed.push(conn);
    }
}

impl TestFx {
    pub(super) fn take_assignments(&mut self, conn: ConnId) -> Vec<Assignment> {
        let mut out = Vec::new();
        self.workers.retain(|(c, m)| match m {
            ToWorker::Assign { tasks, .. } if *c == conn => {
                out.extend(tasks.iter().cloned());
                false
            }
            _ => true,
        });
        out
    }
}

pub(super) fn inc_tasks(n: usize) -> Vec<TaskSpec> {
    (0..n)
        .map(|i| {
            TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: rmp_serde::to_vec(&(i as i64)).unwrap() })
        })
        .collect()
}

/// A new worker process (its own pid) with `slots` slots.
pub(super) fn worker(slots: u32) -> NewWorker {
    static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NewWorker {
        slots,
        host: "h".into(),
        pid: PID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        functions: vec!["inc".into()],
        nanny: None,
        running: vec![],
        resources: Default::default(),
    }
}

pub(super) fn ok(v: i64) -> Outcome {
    Outcome::Ok { result: Bytes::from(rmp_serde::to_vec(&v).unwrap()) }
}

fn err(e: &str) -> Outcome {
    Outcome::err(e)
}

pub(super) fn report(a: &Assignment, outcome: Outcome) -> TaskReport {
    TaskReport { task: a.task, attempt: a.attempt, outcome, micros: 10, executor_died: false }
}

pub(super) const CLIENT: ConnId = ConnId(100);

#[test]
fn submit_assign_finish_and_watch() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let w1 = on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    assert!(matches!(fx.workers.remove(0), (ConnId(1), ToWorker::Registered { worker }) if worker == w1));
    core.sanity_check();

    let job = JobId::new();
    on_submit(&mut core, &mut fx, 1, CLIENT, job, "j".into(), inc_tasks(3));
    core.sanity_check();
    assert!(matches!(&fx.journal[..], [Record::JobSubmitted { tasks, .. }] if tasks.len() == 3));
    assert!(matches!(fx.clients.remove(0), (CLIENT, ToClient::Submitted { tasks: 3, .. })));
    // One slot, no run-time estimate yet: one running plus one prefetched.
    let first = fx.take_assignments(ConnId(1));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].attempt, 1);

    on_watch(&mut core, &mut fx, CLIENT, job);
    assert!(matches!(fx.clients.remove(0).1, ToClient::Watching { tasks: 3, .. }));
    assert!(fx.clients.is_empty(), "nothing finished yet, no outcomes sent");

    on_reports(&mut core, &mut fx, 2, ConnId(1), 1, first.iter().map(|a| report(a, ok(1))).collect());
    core.sanity_check();
    assert_eq!(fx.journal.len(), 2, "one record for the batch");
    let (c, msg) = fx.clients.remove(0);
    assert_eq!(c, CLIENT);
    assert!(matches!(msg, ToClient::Outcomes { outcomes, .. } if outcomes.len() == 2));
    let rest = fx.take_assignments(ConnId(1));
    assert_eq!(rest.len(), 1);

    on_reports(&mut core, &mut fx, 3, ConnId(1), 1, vec![report(&rest[0], ok(2))]);
    core.sanity_check();
    assert!(matches!(fx.clients.remove(0).1, ToClient::Outcomes { .. }));
    assert!(matches!(fx.clients.remove(0).1, ToClient::JobDone { finished: 3, failed: 0, .. }));
    assert!(fx.clients.is_empty());
    // The worker was only told that its reports are durable.
    assert!(fx.workers.iter().all(|(_, m)| matches!(m, ToWorker::Ack { .. })));
    assert_eq!(fx.workers.len(), 2);
    assert!(core.jobs[&job].watchers.is_empty());

    // A late watcher gets everything at once.
    on_watch(&mut core, &mut fx, ConnId(101), job);
    assert!(matches!(&fx.clients[0].1, ToClient::Watching { tasks: 3, .. }));
    assert!(matches!(&fx.clients[1].1, ToClient::Outcomes { outcomes, .. } if outcomes.len() == 3));
    assert!(matches!(fx.clients[2].1, ToClient::JobDone { finished: 3, .. }));
}

#[test]
fn duplicate_reports_are_recorded_once() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(1));
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&a[0], ok(7))]);
    let journaled = fx.journal.len();
    on_reports(&mut core, &mut fx, 2, ConnId(1), 1, vec![report(&a[0], ok(8))]);
    core.sanity_check();
    assert_eq!(fx.journal.len(), journaled, "second report not journaled");
    assert_eq!(core.duplicate_reports, 1);
    assert_eq!(core.jobs[&job].tasks[0].outcome, Some(ok(7)));
}

#[test]
fn lost_worker_requeues_only_its_tasks_and_poison_task_fails() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    fx.workers.clear();
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(2));
    on_watch(&mut core, &mut fx, CLIENT, job);
    let a1 = fx.take_assignments(ConnId(1));
    let a2 = fx.take_assignments(ConnId(2));
    assert_eq!((a1.len(), a2.len()), (1, 1), "spread across workers");
    on_reports(&mut core, &mut fx, 1, ConnId(2), 1, vec![report(&a2[0], ok(1))]);
    on_connection_closed(&mut core, &mut fx, 2, ConnId(1));
    core.sanity_check();
    let again = fx.take_assignments(ConnId(2));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task, a1[0].task);
    assert_eq!(again[0].attempt, 2);

    // The task keeps killing workers: after max_worker_kills it fails.
    let mut conn = 2;
    let mut current = again;
    for kill in 2..=core.config.max_worker_kills {
        on_connection_closed(&mut core, &mut fx, 3, ConnId(conn));
        core.sanity_check();
        if kill == core.config.max_worker_kills {
            break;
        }
        conn += 1;
        on_worker_joined(&mut core, &mut fx, 3, ConnId(conn), worker(1));
        current = fx.take_assignments(ConnId(conn));
        assert_eq!(current.len(), 1);
    }
    let _ = current;
    let t = &core.jobs[&job].tasks[a1[0].task.idx as usize];
    assert_eq!(t.state, TaskState::Failed);
    match &t.outcome {
        Some(Outcome::Err { error, .. }) => {
            assert!(error.contains("w1") && error.contains("died"), "{error}")
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(fx.clients.iter().any(|(_, m)| matches!(m, ToClient::JobDone { finished: 1, failed: 1, .. })));
}

#[test]
fn bad_submissions_change_nothing() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), vec![]);
    let mut dup = inc_tasks(2);
    dup[0].key = Some("k".into());
    dup[1].key = Some("k".into());
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), dup);
    assert!(core.jobs.is_empty() && core.ready.is_empty() && fx.journal.is_empty());
    assert_eq!(fx.clients.len(), 2);
    assert!(fx.clients.iter().all(|(_, m)| matches!(m, ToClient::Error { .. })));
    on_watch(&mut core, &mut fx, CLIENT, JobId::new());
    assert!(matches!(&fx.clients[2].1, ToClient::Error { message, .. } if message.contains("no job")));
    core.sanity_check();
}

#[test]
fn resubmission_is_idempotent() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(4));
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(4));
    assert_eq!(core.ready.len(), 4);
    assert_eq!(fx.journal.len(), 1);
    assert!(fx.clients.iter().all(|(_, m)| matches!(m, ToClient::Submitted { tasks: 4, .. })));
    core.sanity_check();
}

#[test]
fn prefetch_grows_with_short_tasks_and_stays_small_for_long_ones() {
    let cfg = CoreConfig::default();
    let mut w = Worker {
        conn: ConnId(1),
        host: String::new(),
        pid: 0,
        slots: 2,
        functions: vec![],
        nanny: None,
        assigned: Default::default(),
        avg_task_us: None,
        last_seen: 0,
        draining: false,
        rss_kib: 0,
        resources: Default::default(),
        used: Default::default(),
        functions_sent: Default::default(),
        process: 0,
        dropped: Default::default(),
    };
    assert_eq!(w.capacity(&cfg), 4);
    w.avg_task_us = Some(1.0);
    assert_eq!(w.capacity(&cfg), 2 * (1 + cfg.max_prefetch_per_slot as usize));
    w.avg_task_us = Some(1_000_000.0);
    assert_eq!(w.capacity(&cfg), 2);
}

/// A scheduler ran a job of 3 tasks on one 1-slot worker and finished the
/// first; returns its effects (journal included), the job and the assignments.
fn one_of_three_finished() -> (TestFx, JobId, Vec<Assignment>) {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(3));
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&a[0], ok(1))]);
    (fx, job, a)
}

#[test]
fn replay_restores_outcomes_and_requeues_the_rest() {
    let (fx, job, a) = one_of_three_finished();
    let mut restored = Core::default();
    replay(&mut restored, 5, fx.journal.clone());
    restored.sanity_check();
    let j = &restored.jobs[&job];
    assert_eq!(j.finished, 1);
    assert_eq!(j.tasks[a[0].task.idx as usize].outcome, Some(ok(1)));
    assert_eq!(restored.ready.len(), 2);
}

#[test]
fn a_silent_worker_is_lost_and_its_late_reports_are_recorded_once() {
    let mut core = Core::default();
    let timeout = core.config.heartbeat_timeout_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    fx.workers.clear();
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(2));
    let a1 = fx.take_assignments(ConnId(1));
    let a2 = fx.take_assignments(ConnId(2));
    assert_eq!((a1.len(), a2.len()), (1, 1));

    // Worker 2 keeps beating; worker 1 goes quiet (SIGSTOP).
    on_heartbeat(&mut core, &mut fx, timeout, ConnId(2), 0);
    on_tick(&mut core, &mut fx, timeout / 2);
    assert_eq!(core.workers.len(), 2, "not yet");
    on_tick(&mut core, &mut fx, timeout * 3 / 4);
    on_tick(&mut core, &mut fx, timeout + 1);
    core.sanity_check();
    assert_eq!(core.workers.len(), 1);
    assert_eq!(core.stale_conns.get(&ConnId(1)), Some(&false));
    // Worker 1's task went to worker 2, which finishes it first.
    let moved = fx.take_assignments(ConnId(2));
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].task, moved[0].attempt), (a1[0].task, 2));
    on_reports(&mut core, &mut fx, timeout + 2, ConnId(2), 1, vec![report(&moved[0], ok(10))]);

    // Worker 1 wakes up: its late report is dropped, it is told once to re-register.
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(1), 1, vec![report(&a1[0], ok(99))]);
    on_heartbeat(&mut core, &mut fx, timeout + 4, ConnId(1), 0);
    core.sanity_check();
    assert_eq!(core.duplicate_reports, 1);
    assert_eq!(core.jobs[&job].tasks[a1[0].task.idx as usize].outcome, Some(ok(10)));
    let told: Vec<_> = fx
        .workers
        .iter()
        .filter(|(c, m)| *c == ConnId(1) && matches!(m, ToWorker::Reregister { .. }))
        .collect();
    assert_eq!(told.len(), 1);
    fx.workers.clear();
    let w = on_worker_joined(&mut core, &mut fx, timeout + 5, ConnId(1), worker(1));
    assert_eq!(w, WorkerId(3), "a new incarnation");
    assert!(core.stale_conns.is_empty());
    core.sanity_check();
}

#[test]
fn a_stale_report_that_comes_first_wins_and_releases_the_new_holder() {
    let mut core = Core::default();
    let timeout = core.config.heartbeat_timeout_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(1));
    let a1 = fx.take_assignments(ConnId(1));
    for quarter in 1..4 {
        on_tick(&mut core, &mut fx, timeout * quarter / 4);
    }
    on_tick(&mut core, &mut fx, timeout + 1);
    on_worker_joined(&mut core, &mut fx, timeout + 1, ConnId(2), worker(1));
    let a2 = fx.take_assignments(ConnId(2));
    assert_eq!(a2[0].task, a1[0].task);
    on_reports(&mut core, &mut fx, timeout + 2, ConnId(1), 1, vec![report(&a1[0], ok(5))]);
    core.sanity_check();
    assert!(core.workers[&WorkerId(2)].assigned.is_empty());
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(2), 1, vec![report(&a2[0], ok(6))]);
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].outcome, Some(ok(5)));
    assert_eq!(core.duplicate_reports, 1);
}

#[test]
fn a_task_can_set_its_own_worker_kill_limit() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let mut tasks = inc_tasks(1);
    tasks[0].max_worker_kills = Some(1);
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), tasks);
    on_connection_closed(&mut core, &mut fx, 1, ConnId(1));
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Failed);
}

#[test]
fn only_running_tasks_are_blamed_when_a_worker_dies() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let mut tasks = inc_tasks(2);
    for t in &mut tasks {
        t.max_worker_kills = Some(1);
    }
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), tasks);
    // One slot: task 0 runs, task 1 waits in the worker's queue.
    assert_eq!(fx.take_assignments(ConnId(1)).len(), 2);
    on_connection_closed(&mut core, &mut fx, 1, ConnId(1));
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Failed, "the running task is blamed");
    assert_eq!(core.jobs[&job].tasks[1].state, TaskState::Ready, "the queued one is not");
    assert!(core.jobs[&job].tasks[1].killed.is_empty());
}

#[test]
fn after_a_restart_tasks_wait_for_claims_then_go_to_anyone() {
    let (fx, job, a) = one_of_three_finished();

    let mut core = Core::default();
    let mut fx2 = TestFx::default();
    replay(&mut core, 10, fx.journal.clone());
    begin_recovery(&mut core, 10, 1_000);
    core.sanity_check();
    // The old worker comes back, still running task 1: it gets it back; the
    // other unfinished task waits for the grace period, even with a free slot.
    let mut w = worker(2);
    w.running = vec![(a[1].task, a[1].attempt)];
    let wid = on_worker_joined(&mut core, &mut fx2, 20, ConnId(7), w);
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[1].state, TaskState::Assigned(wid));
    assert!(fx2.take_assignments(ConnId(7)).is_empty(), "held during the grace period");
    on_tick(&mut core, &mut fx2, 500);
    assert!(fx2.take_assignments(ConnId(7)).is_empty());
    on_tick(&mut core, &mut fx2, 1_010);
    let given = fx2.take_assignments(ConnId(7));
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].task.idx, 2);
    core.sanity_check();
}

#[test]
fn finished_jobs_are_forgotten_after_the_retention_period() {
    let mut core = Core::new(CoreConfig { retention_us: Some(100), ..Default::default() });
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(1));
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 50, ConnId(1), 1, vec![report(&a[0], ok(1))]);
    on_tick(&mut core, &mut fx, 100);
    assert!(core.jobs.contains_key(&job), "kept within the retention period");
    on_tick(&mut core, &mut fx, 151);
    assert!(!core.jobs.contains_key(&job));
    assert!(matches!(fx.journal.last(), Some(Record::JobForgotten { job: j }) if *j == job));
    core.sanity_check();
}

pub(super) fn keyed(key: &str, deps: &[&str]) -> TaskSpec {
    let mut t = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0xc0] });
    t.key = Some(key.into());
    t.deps = deps.iter().map(|d| crate::protocol::Dep::key(*d)).collect();
    t
}

pub(super) fn submit(core: &mut Core, fx: &mut TestFx, tasks: Vec<TaskSpec>) -> Result<JobId, String> {
    let job = JobId::new();
    on_submit(core, fx, 0, CLIENT, job, "g".into(), tasks);
    match fx.clients.pop() {
        Some((_, ToClient::Submitted { .. })) => Ok(job),
        Some((_, ToClient::Error { message, .. })) => Err(message),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_diamond_runs_in_dependency_order_with_results_as_inputs() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(4));
    // a → b, c → d
    let tasks = vec![keyed("a", &[]), keyed("b", &["a"]), keyed("c", &["a"]), keyed("d", &["b", "c"])];
    let job = submit(&mut core, &mut fx, tasks).unwrap();
    core.sanity_check();
    // a is ready; b and c are pinned to the same worker ahead of their input;
    // d, with two inputs still to come, is not.
    let first = fx.take_assignments(ConnId(1));
    assert_eq!(first.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![0, 1, 2]);
    let tid = |i: u32| TaskId { job, idx: i };
    assert!(first[0].pending_inputs.is_empty());
    assert_eq!(first[1].pending_inputs, vec![(0, tid(0))]);
    assert_eq!(first[2].pending_inputs, vec![(0, tid(0))]);
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&first[0], ok(10))]);
    core.sanity_check();
    assert!(fx.take_assignments(ConnId(1)).is_empty(), "nothing new: the pinned ones run there");
    on_reports(
        &mut core,
        &mut fx,
        2,
        ConnId(1),
        2,
        vec![report(&first[1], ok(11)), report(&first[2], ok(12))],
    );
    core.sanity_check();
    let last = fx.take_assignments(ConnId(1));
    assert_eq!(last.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![3]);
    let mp = |v: i64| Bytes::from(rmp_serde::to_vec(&v).unwrap());
    assert_eq!(last[0].inputs, vec![mp(11), mp(12)], "d takes b's and c's results, in deps order");
    on_reports(&mut core, &mut fx, 3, ConnId(1), 3, vec![report(&last[0], ok(23))]);
    core.sanity_check();
    assert!(core.jobs[&job].is_done());

    // Two one-slot workers: a's dependents are not all pinned behind it.
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let tasks = vec![keyed("a", &[]), keyed("b", &["a"]), keyed("c", &["a"]), keyed("d", &["b", "c"])];
    let job = submit(&mut core, &mut fx, tasks).unwrap();
    let first = fx.take_assignments(ConnId(1));
    assert_eq!(first.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![0, 1], "one pin per slot");
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&first[0], ok(10))]);
    core.sanity_check();
    let c = fx.take_assignments(ConnId(2));
    assert_eq!(c.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![2], "c goes to the idle worker");
    assert_eq!(c[0].inputs, vec![Bytes::from(rmp_serde::to_vec(&10i64).unwrap())]);
    assert_eq!(core.jobs[&job].tasks[3].state, TaskState::Waiting, "d's inputs come from two workers");
}

/// A pinned task goes back to waiting when the task it waits for fails
/// and is retried, or its worker dies; it fails when that task fails.
#[test]
fn pinned_tasks_follow_their_inputs() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let mut a = keyed("a", &[]);
    a.retries = 1;
    let job = submit(&mut core, &mut fx, vec![a, keyed("b", &["a"]), keyed("c", &["b"])]).unwrap();
    let first = fx.take_assignments(ConnId(1));
    assert_eq!(first.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![0, 1]);
    // a fails once: b is unpinned (the worker is told to drop it) and waits again.
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&first[0], err("flaky"))]);
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[1].state, TaskState::Waiting);
    assert!(fx
        .workers
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![first[1].task])));
    // The retry runs on the same worker, which may still hold the failed
    // result of attempt 1 (it knows tasks by id): nothing is pinned behind it.
    on_tick(&mut core, &mut fx, 10_000_000);
    let again = fx.take_assignments(ConnId(1));
    assert_eq!(again.iter().map(|a| (a.task.idx, a.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
    assert!(core.jobs[&job].tasks[0].repeat_here);
    core.sanity_check();
    // The worker dies: a is ready again, b waits.
    on_worker_lost(&mut core, &mut fx, 11_000_000, WorkerId(1), "killed");
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Ready);
    assert_eq!(core.jobs[&job].tasks[1].state, TaskState::Waiting);
    // On a new worker a fails for good: b and c fail with it, b is dropped there.
    on_worker_joined(&mut core, &mut fx, 12_000_000, ConnId(2), worker(1));
    let third = fx.take_assignments(ConnId(2));
    assert_eq!(
        third.iter().map(|a| a.task.idx).collect::<Vec<_>>(),
        vec![0, 1],
        "a new worker: one pin per slot"
    );
    fx.workers.clear();
    on_reports(&mut core, &mut fx, 13_000_000, ConnId(2), 1, vec![report(&third[0], err("broken"))]);
    core.sanity_check();
    let j = &core.jobs[&job];
    assert!(j.is_done() && j.failed == 3, "{}", j.failed);
    assert!(fx
        .workers
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![third[1].task])));
    assert!(core.workers[&WorkerId(2)].assigned.is_empty());
}

#[test]
fn cycles_unknown_keys_and_self_dependencies_are_refused() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let err = submit(&mut core, &mut fx, vec![keyed("a", &["c"]), keyed("b", &["a"]), keyed("c", &["b"])])
        .unwrap_err();
    assert!(err.contains("cycle"), "{err}");
    let err = submit(&mut core, &mut fx, vec![keyed("a", &["nope"])]).unwrap_err();
    assert!(err.contains("\"nope\""), "{err}");
    let err = submit(&mut core, &mut fx, vec![keyed("a", &["a"])]).unwrap_err();
    assert!(err.contains("itself"), "{err}");
    let err = submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("a", &[])]).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    assert!(core.jobs.is_empty() && fx.journal.is_empty(), "nothing changed");
}

#[test]
fn a_failure_fails_its_dependents_transitively() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = submit(
        &mut core,
        &mut fx,
        vec![keyed("a", &[]), keyed("b", &["a"]), keyed("c", &["b"]), keyed("x", &[])],
    )
    .unwrap();
    let a = fx.take_assignments(ConnId(1));
    let boom = Outcome::err("boom");
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&a[0], boom)]);
    core.sanity_check();
    let j = &core.jobs[&job];
    assert_eq!(j.failed, 3);
    match &j.tasks[2].outcome {
        Some(Outcome::Err { error, .. }) => {
            assert_eq!(error, "dependency b failed: dependency a failed: boom")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(j.tasks[3].state, TaskState::Assigned(WorkerId(1)), "unrelated work goes on");
}

#[test]
fn retries_come_back_after_a_backoff() {
    let mut core = Core::default();
    let backoff = core.config.retry_backoff_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let mut t = keyed("a", &[]);
    t.retries = 1;
    let job = submit(&mut core, &mut fx, vec![t]).unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 10, ConnId(1), 1, vec![report(&a[0], Outcome::err("flaky"))]);
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Delayed);
    on_tick(&mut core, &mut fx, 10 + backoff / 2);
    assert!(fx.take_assignments(ConnId(1)).is_empty(), "still backing off");
    on_tick(&mut core, &mut fx, 10 + backoff);
    let again = fx.take_assignments(ConnId(1));
    assert_eq!(again[0].attempt, 2);
    on_reports(
        &mut core,
        &mut fx,
        20 + backoff,
        ConnId(1),
        2,
        vec![report(&again[0], Outcome::err("again"))],
    );
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Failed, "out of retries");
}

#[test]
fn higher_priority_first_then_submission_order() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let mut tasks: Vec<TaskSpec> = (0..4).map(|i| keyed(&format!("t{i}"), &[])).collect();
    tasks[2].priority = 5;
    submit(&mut core, &mut fx, tasks).unwrap();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(2));
    let got: Vec<u32> = fx.take_assignments(ConnId(1)).iter().map(|a| a.task.idx).collect();
    assert_eq!(got, vec![2, 0, 1, 3]);
}

#[test]
fn cancel_stops_running_tasks_and_fails_dependents() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("b", &["a"])]).unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_cancel(&mut core, &mut fx, 5, CLIENT, job, vec!["a".into()]);
    core.sanity_check();
    assert!(fx.workers.iter().any(
        |(c, m)| *c == ConnId(1) && matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![a[0].task])
    ));
    let j = &core.jobs[&job];
    assert_eq!(j.tasks[0].state, TaskState::Canceled);
    assert!(
        matches!(&j.tasks[1].outcome, Some(Outcome::Err { error, .. }) if error == "dependency a was canceled")
    );
    assert!(j.is_done());
    // Replay keeps it canceled.
    let mut again = Core::default();
    replay(&mut again, 9, fx.journal.clone());
    again.sanity_check();
    assert_eq!(again.jobs[&job].tasks[0].state, TaskState::Canceled);
    assert_eq!(again.jobs[&job].failed, 2);
}

#[test]
fn a_chain_replays_into_the_same_state() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let tasks: Vec<TaskSpec> = (0..5)
        .map(|i| if i == 0 { keyed("0x", &[]) } else { keyed(&format!("{i}x"), &[&format!("{}x", i - 1)]) })
        .collect();
    let job = submit(&mut core, &mut fx, tasks).unwrap();
    // The worker runs what it gets in order (pinned links as their inputs finish).
    let mut held = std::collections::VecDeque::new();
    for step in 0..3 {
        held.extend(fx.take_assignments(ConnId(1)));
        let a = held.pop_front().expect("an assignment");
        assert_eq!(a.task.idx, step as u32);
        on_reports(&mut core, &mut fx, step, ConnId(1), step + 1, vec![report(&a, ok(step as i64))]);
        core.sanity_check();
    }
    let mut again = Core::default();
    replay(&mut again, 9, fx.journal.clone());
    again.sanity_check();
    let states: Vec<TaskState> = again.jobs[&job].tasks.iter().map(|t| t.state.clone()).collect();
    assert_eq!(states[..3], [TaskState::Finished, TaskState::Finished, TaskState::Finished]);
    assert_eq!(states[3], TaskState::Ready);
    assert_eq!(states[4], TaskState::Waiting);
}

#[test]
fn resources_are_never_oversubscribed() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let mut w = worker(4);
    w.resources.insert("gpus".into(), 2);
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), w);
    let tasks: Vec<TaskSpec> = (0..3)
        .map(|i| {
            let mut t = keyed(&format!("g{i}"), &[]);
            t.resources.insert("gpus".into(), 1);
            t
        })
        .collect();
    submit(&mut core, &mut fx, tasks).unwrap();
    core.sanity_check();
    let got = fx.take_assignments(ConnId(1));
    assert_eq!(got.len(), 2, "two GPUs, two tasks, though four slots are free");
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&got[0], ok(1))]);
    let next = fx.take_assignments(ConnId(1));
    assert_eq!(next.len(), 1, "a GPU came free");
    assert_eq!(core.workers[&WorkerId(1)].used.get("gpus"), Some(&2));
    core.sanity_check();
}

#[test]
fn an_idle_worker_steals_queued_work_from_a_busy_one() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    core.workers.get_mut(&WorkerId(1)).unwrap().avg_task_us = Some(1.0); // looked fast: big prefetch
    submit(&mut core, &mut fx, (0..6).map(|i| keyed(&format!("s{i}"), &[])).collect()).unwrap();
    assert_eq!(fx.take_assignments(ConnId(1)).len(), 6, "all prefetched by the one worker");
    let steals = |fx: &TestFx| fx.workers.iter().filter(|(_, m)| matches!(m, ToWorker::Steal { .. })).count();
    on_worker_joined(&mut core, &mut fx, 1, ConnId(2), worker(1));
    assert_eq!(steals(&fx), 0, "5 µs of queued work: not worth a round trip");
    on_worker_lost(&mut core, &mut fx, 1, WorkerId(2), GOODBYE);
    // The tasks turn out slow: now an idle worker takes some.
    core.workers.get_mut(&WorkerId(1)).unwrap().avg_task_us = Some(500_000.0);
    on_worker_joined(&mut core, &mut fx, 1, ConnId(2), worker(1));
    let asked: Vec<TaskId> = fx
        .workers
        .iter()
        .filter_map(|(c, m)| match m {
            ToWorker::Steal { tasks } if *c == ConnId(1) => Some(tasks.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(asked.len(), 1, "one idle slot: one task asked for");
    assert_eq!(asked[0].idx, 5, "the newest");
    on_released(&mut core, &mut fx, ConnId(1), asked.clone());
    core.sanity_check();
    let moved = fx.take_assignments(ConnId(2));
    assert_eq!(moved.iter().map(|a| a.task).collect::<Vec<_>>(), asked, "to the idle worker");
    assert_eq!(moved[0].attempt, 1, "the given-back attempt never ran");
    assert!(core.stealing.is_empty());
}

/// Issue 12, defect 9: `a` and `b` (pinned behind `a`) move from a silent
/// worker to a busy one; a steal of `a` is in flight when the silent worker
/// reports `a` after all. `b` must not stay pinned to a worker that will
/// never produce `a`: it runs somewhere with `a`'s result.
#[test]
fn a_pinned_task_is_not_stranded_when_its_input_finishes_elsewhere() {
    let mut core = Core::default();
    let timeout = core.config.heartbeat_timeout_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("b", &["a"])]).unwrap();
    let on_w1 = fx.take_assignments(ConnId(1));
    assert_eq!(on_w1.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![0, 1], "b pinned behind a");
    // w2 is busy with other work and known to run 10 ms tasks (room for 3).
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    core.workers.get_mut(&WorkerId(2)).unwrap().avg_task_us = Some(10_000.0);
    submit(&mut core, &mut fx, vec![keyed("x", &[])]).unwrap();
    assert_eq!(fx.take_assignments(ConnId(2)).len(), 1);
    // w1 goes quiet and is declared lost: a and b move to w2, b pinned again.
    on_heartbeat(&mut core, &mut fx, timeout, ConnId(2), 0);
    on_tick(&mut core, &mut fx, timeout + 1);
    core.sanity_check();
    let on_w2 = fx.take_assignments(ConnId(2));
    assert_eq!(on_w2.iter().map(|a| a.task.idx).collect::<Vec<_>>(), vec![0, 1]);
    // A third worker joins: the scheduler asks w2 for a back.
    on_worker_joined(&mut core, &mut fx, timeout + 2, ConnId(3), worker(1));
    let a = on_w2[0].task;
    assert!(fx
        .workers
        .iter()
        .any(|(c, m)| *c == ConnId(2) && matches!(m, ToWorker::Steal { tasks } if tasks == &vec![a])));
    fx.workers.clear();
    // The stale w1 reports a first (it wins); then w2 gives a back.
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(1), 1, vec![report(&on_w1[0], ok(5))]);
    core.sanity_check();
    on_released(&mut core, &mut fx, ConnId(2), vec![a]);
    core.sanity_check();
    let b = TaskId { job, idx: 1 };
    let given: Vec<(ConnId, Assignment)> = fx
        .workers
        .iter()
        .filter_map(|(c, m)| match m {
            ToWorker::Assign { tasks, .. } => Some(tasks.iter().map(|t| (*c, t.clone())).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .filter(|(_, t)| t.task == b)
        .collect();
    assert_eq!(given.len(), 1, "b is handed out again: {:?}", core.jobs[&job].tasks[1].state);
    assert!(given[0].1.pending_inputs.is_empty());
    assert_eq!(given[0].1.inputs, vec![Bytes::from(rmp_serde::to_vec(&5i64).unwrap())]);
    // Where it was pinned it is dropped, and it runs to the end.
    assert!(fx
        .workers
        .iter()
        .any(|(c, m)| *c == ConnId(2) && matches!(m, ToWorker::Cancel { tasks } if tasks.contains(&b))));
    on_reports(&mut core, &mut fx, timeout + 4, given[0].0, 1, vec![report(&given[0].1, ok(6))]);
    core.sanity_check();
    assert!(core.jobs[&job].is_done());
}

/// Issue 12, defect 5: a worker reports only what it (or an earlier
/// connection of its process) was handed; other reports are dropped and counted.
#[test]
fn reports_for_tasks_a_worker_never_held_are_dropped() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let mut honest = worker(1);
    honest.pid = 7;
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), honest.clone());
    let job = submit(&mut core, &mut fx, inc_tasks(10)).unwrap();
    let mine = fx.take_assignments(ConnId(1));
    assert_eq!(mine.len(), 2);
    // A peer that registers and reports every task of the job.
    let mut hostile = worker(1);
    hostile.pid = 666;
    on_worker_joined(&mut core, &mut fx, 1, ConnId(9), hostile);
    let given = fx.take_assignments(ConnId(9));
    let forged: Vec<TaskReport> = (0..10)
        .map(|idx| TaskReport {
            task: TaskId { job, idx },
            attempt: 1,
            outcome: ok(666),
            micros: 1,
            executor_died: false,
        })
        .collect();
    on_reports(&mut core, &mut fx, 2, ConnId(9), 1, forged);
    core.sanity_check();
    assert_eq!(core.foreign_reports, 8, "only the 2 it was handed count");
    let j = &core.jobs[&job];
    assert_eq!(j.finished, 2);
    for a in &given {
        assert_eq!(j.tasks[a.task.idx as usize].outcome, Some(ok(666)));
    }
    for a in &mine {
        assert_eq!(
            j.tasks[a.task.idx as usize].state,
            TaskState::Assigned(WorkerId(1)),
            "still the honest one's"
        );
    }
    // The honest worker loses its connection and comes back on a new one:
    // its reports of what it was handed before still count.
    on_connection_closed(&mut core, &mut fx, 3, ConnId(1));
    on_worker_joined(&mut core, &mut fx, 4, ConnId(2), honest);
    on_reports(&mut core, &mut fx, 5, ConnId(2), 1, mine.iter().map(|a| report(a, ok(1))).collect());
    core.sanity_check();
    assert_eq!(core.foreign_reports, 8);
    assert_eq!(core.jobs[&job].finished, 4);
    let mut status = TestFx::default();
    on_status(&core, &mut status, CLIENT, StatusExtra::default());
    assert!(matches!(&status.clients[0].1, ToClient::Status { status } if status.foreign_reports == 8));

    // After a restart any worker may hold an attempt from before: its report counts.
    let mut restarted = Core::default();
    replay(&mut restarted, 10, fx.journal.clone());
    let mut fx2 = TestFx::default();
    let mut other = worker(1);
    other.pid = 8;
    on_worker_joined(&mut restarted, &mut fx2, 11, ConnId(3), other);
    let late = TaskReport {
        task: TaskId { job, idx: 9 },
        attempt: 1,
        outcome: ok(9),
        micros: 1,
        executor_died: false,
    };
    on_reports(&mut restarted, &mut fx2, 12, ConnId(3), 1, vec![late]);
    restarted.sanity_check();
    assert_eq!(restarted.foreign_reports, 0);
    assert_eq!(restarted.jobs[&job].tasks[9].outcome, Some(ok(9)));
}

/// Issue 12, defect 8: numbers a peer supplies never overflow: impossible
/// ones are refused at submit, the others saturate.
#[test]
fn impossible_numbers_are_refused_and_huge_ones_do_not_overflow() {
    let mut core = Core::new(CoreConfig { retry_backoff_us: u64::MAX / 2, ..Default::default() });
    let mut fx = TestFx::default();
    let mut t = keyed("g", &[]);
    t.resources.insert("gpus".into(), u64::MAX);
    let e = submit(&mut core, &mut fx, vec![t]).unwrap_err();
    assert!(e.contains("\"gpus\"") && e.contains("out of range"), "{e}");
    let mut t = keyed("t", &[]);
    t.time_limit_ms = Some(u64::MAX);
    let e = submit(&mut core, &mut fx, vec![t]).unwrap_err();
    assert!(e.contains("time limit"), "{e}");
    assert!(core.jobs.is_empty() && fx.journal.is_empty(), "nothing changed");

    // Workers that claim everything: slots, resources and attempts at their maximum.
    let mut big = worker(u32::MAX);
    big.resources.insert("gpus".into(), u64::MAX);
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), big.clone());
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), big);
    let tasks: Vec<TaskSpec> = (0..3)
        .map(|i| {
            let mut t = keyed(&format!("t{i}"), &[]);
            t.resources.insert("gpus".into(), MAX_RESOURCE_AMOUNT);
            t.retries = u32::MAX;
            t.priority = if i == 0 { i32::MIN } else { i32::MAX };
            t
        })
        .collect();
    let job = submit(&mut core, &mut fx, tasks).unwrap();
    core.sanity_check();
    let mut given = fx.take_assignments(ConnId(1));
    given.extend(fx.take_assignments(ConnId(2)));
    assert_eq!(given.len(), 3);
    let mut status = TestFx::default();
    on_status(&core, &mut status, CLIENT, StatusExtra::default());
    assert!(matches!(&status.clients[0].1, ToClient::Status { status } if status.slots == u32::MAX));
    // A failure late in time: the doubled backoff saturates.
    let a = given.iter().find(|a| a.task.idx == 0).unwrap();
    let conn = if core.workers[&WorkerId(1)].assigned.contains(&a.task) { ConnId(1) } else { ConnId(2) };
    on_reports(&mut core, &mut fx, u64::MAX - 5, conn, u64::MAX, vec![report(a, err("flaky"))]);
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[0].state, TaskState::Delayed);
    assert!(core.delayed.iter().all(|(due, _)| *due == u64::MAX));
    assert!(fx.workers.iter().any(|(_, m)| matches!(m, ToWorker::Ack { batch: u64::MAX })));

    // After a restart, a worker reclaims a task at attempt u32::MAX and dies.
    let mut core = Core::default();
    replay(&mut core, 0, fx.journal.clone());
    let mut w = worker(1);
    w.running = vec![(TaskId { job, idx: 1 }, u32::MAX)];
    on_worker_joined(&mut core, &mut fx, 1, ConnId(3), w);
    on_connection_closed(&mut core, &mut fx, 2, ConnId(3));
    on_worker_joined(&mut core, &mut fx, 3, ConnId(4), worker(1));
    core.sanity_check();
    assert_eq!(core.jobs[&job].tasks[1].attempts, u32::MAX);
}

/// Issue 12, defect 10: a scheduler that did not run for longer than the
/// heartbeat timeout does not blame its workers; a worker silent while the
/// scheduler runs is still lost.
#[test]
fn a_stalled_scheduler_restarts_the_heartbeat_clocks() {
    let mut core = Core::default();
    let timeout = core.config.heartbeat_timeout_us;
    let tick = timeout / 4;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    // Stopped for twice the timeout before its first tick came.
    let woke = tick + 2 * timeout;
    on_tick(&mut core, &mut fx, woke);
    assert_eq!(core.workers.len(), 2, "nobody blamed for the scheduler's own stop");
    // Worker 1 goes on beating, worker 2 stays silent while the scheduler runs.
    let mut now = woke;
    while now < woke + timeout + 2 * tick {
        now += tick;
        on_heartbeat(&mut core, &mut fx, now, ConnId(1), 0);
        on_tick(&mut core, &mut fx, now);
    }
    core.sanity_check();
    assert_eq!(core.workers.keys().copied().collect::<Vec<_>>(), vec![WorkerId(1)]);
}

/// Found by the simulation (seed 1): a task with two failed inputs got its
/// failure counted twice, at submit (both inputs of an earlier job failed)
/// and in a cascade (a → b, a → c, b → c).
#[test]
fn a_task_with_two_failed_inputs_fails_once() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(2));
    let first = submit(&mut core, &mut fx, vec![keyed("x", &[]), keyed("y", &[])]).unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, a.iter().map(|a| report(a, err("boom"))).collect());
    let dep = |key: &str| crate::protocol::Dep { job: Some(first), key: key.into() };
    let mut t = keyed("z", &[]);
    t.deps = vec![dep("x"), dep("y")];
    let second = submit(&mut core, &mut fx, vec![t]).unwrap();
    core.sanity_check();
    assert_eq!(core.jobs[&second].failed, 1);
    let third =
        submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("b", &["a"]), keyed("c", &["a", "b"])]);
    let third = third.unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 2, ConnId(1), 2, vec![report(&a[0], err("boom"))]);
    core.sanity_check();
    assert_eq!(core.jobs[&third].failed, 3);
}

/// Found by the simulation (seeds 1 and 96): `ctl retry` counts afresh what
/// a task waits for (an input of another job retried since), and leaves
/// failed a task whose input stays failed.
#[test]
fn retry_waits_for_retried_inputs_and_skips_tasks_whose_input_stays_failed() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let first = submit(&mut core, &mut fx, vec![keyed("x", &[])]).unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&a[0], err("boom"))]);
    let mut y = keyed("y", &[]);
    y.deps = vec![crate::protocol::Dep { job: Some(first), key: "x".into() }];
    let second = submit(&mut core, &mut fx, vec![y, keyed("w", &["y"])]).unwrap();
    assert_eq!(core.jobs[&second].failed, 2);
    // Its input stays failed: neither y nor w (behind y) is retried.
    on_retry(&mut core, &mut fx, CLIENT, second);
    assert!(
        matches!(fx.clients.pop(), Some((_, ToClient::Done { message })) if message.contains("no failed"))
    );
    core.sanity_check();
    // x is retried first: now y waits for it, w for y.
    on_retry(&mut core, &mut fx, CLIENT, first);
    on_retry(&mut core, &mut fx, CLIENT, second);
    core.sanity_check();
    assert_eq!(core.jobs[&second].tasks[0].state, TaskState::Waiting);
    assert_eq!(core.jobs[&second].tasks[1].state, TaskState::Waiting);
    let x = fx.take_assignments(ConnId(1));
    assert_eq!(x.iter().map(|a| a.task.job).collect::<Vec<_>>(), vec![first]);
    on_reports(&mut core, &mut fx, 2, ConnId(1), 2, vec![report(&x[0], ok(1))]);
    core.sanity_check();
    assert_eq!(core.jobs[&second].tasks[0].state, TaskState::Assigned(WorkerId(1)), "y runs once x is done");
}

/// Found by the simulation (seed 2): an idle worker without the resources a
/// queued task needs does not make the scheduler ask for it back (it would
/// come straight back to the same worker, in an endless loop of messages).
#[test]
fn no_steal_of_a_task_no_idle_worker_could_run() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let mut gpu = worker(1);
    gpu.resources.insert("gpus".into(), 2);
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), gpu);
    core.workers.get_mut(&WorkerId(1)).unwrap().avg_task_us = Some(10_000.0);
    let tasks: Vec<TaskSpec> = (0..3)
        .map(|i| {
            let mut t = keyed(&format!("g{i}"), &[]);
            t.resources.insert("gpus".into(), 1);
            t
        })
        .collect();
    submit(&mut core, &mut fx, tasks).unwrap();
    on_worker_joined(&mut core, &mut fx, 1, ConnId(2), worker(1));
    assert!(!fx.workers.iter().any(|(_, m)| matches!(m, ToWorker::Steal { .. })));
    assert!(core.stealing.is_empty());
}

/// Found by the simulation (seed 70): a pinned task taken back from a worker
/// that may have started it (its input finished there) reports "canceled":
/// that attempt is void and its number is not reused.
#[test]
fn a_taken_back_pinned_task_reporting_canceled_does_not_fail_it() {
    let mut core = Core::default();
    let timeout = core.config.heartbeat_timeout_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let job = submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("b", &["a"])]).unwrap();
    let on_w1 = fx.take_assignments(ConnId(1));
    // w1 goes quiet; a and b move to w2, where b is pinned behind a.
    for quarter in 1..4 {
        on_tick(&mut core, &mut fx, timeout * quarter / 4);
    }
    on_tick(&mut core, &mut fx, timeout + 1);
    on_worker_joined(&mut core, &mut fx, timeout + 1, ConnId(2), worker(1));
    let on_w2 = fx.take_assignments(ConnId(2));
    assert_eq!(on_w2.iter().map(|a| (a.task.idx, a.attempt)).collect::<Vec<_>>(), vec![(0, 2), (1, 2)]);
    // The stale w1 reports a first: b is taken back from w2 (which ran a too
    // and started b) and handed out again as a new attempt.
    on_reports(&mut core, &mut fx, timeout + 2, ConnId(1), 1, vec![report(&on_w1[0], ok(5))]);
    core.sanity_check();
    let b = TaskId { job, idx: 1 };
    assert!(fx
        .workers
        .iter()
        .any(|(c, m)| *c == ConnId(2) && matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![b])));
    assert!(core.workers[&WorkerId(2)].dropped.contains_key(&b), "not handed back to w2 meanwhile");
    // w2 reports its copy of b as canceled: ignored.
    assert!(fx.take_assignments(ConnId(2)).is_empty());
    let canceled =
        TaskReport { task: b, attempt: 2, outcome: err("canceled"), micros: 0, executor_died: false };
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(2), 1, vec![canceled]);
    core.sanity_check();
    assert!(core.jobs[&job].tasks[1].outcome.is_none());
    assert!(!core.workers[&WorkerId(2)].dropped.contains_key(&b));
    // Now it goes back to w2, as a new attempt.
    let again = fx.take_assignments(ConnId(2));
    assert_eq!(again.iter().map(|a| (a.task, a.attempt)).collect::<Vec<_>>(), vec![(b, 3)]);
}
