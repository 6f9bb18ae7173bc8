//! Core tests: submit, assign, report, watch; lost workers and replay;
//! dependencies. Every effect is accounted for, and the invariants hold
//! after every step.

use super::testenv::step::{
    on_connection_closed, on_heartbeat, on_reports, on_submit, on_tick, on_worker_joined, on_worker_lost,
};
use super::testenv::*;
use super::*;
use crate::ids::{ConnId, JobId, TaskId, WorkerId};
use crate::journal_record::Record;
use crate::protocol::{Assignment, Outcome, ToClient, ToWorker};
use bytes::Bytes;

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
    assert_eq!(fx.after_flush, 2, "each batch's acknowledgement waits for the journal flush");
    assert!(core.jobs.get_job(job).watchers.is_empty());

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
    assert_eq!(core.jobs.get_job(job).outcome(0), Some(ok(7)));
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
    let t = &core.jobs.get_job(job).tasks[a1[0].task.idx as usize];
    assert_eq!(t.state, TaskState::Failed);
    match &core.outcome(a1[0].task) {
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
        ends_at: None,
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
    let j = &restored.jobs.get_job(job);
    assert_eq!(j.finished, 1);
    assert_eq!(j.outcome(a[0].task.idx), Some(ok(1)));
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
    assert_eq!(core.outcome(a1[0].task), Some(ok(10)));
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
    assert!(core.workers.get_worker(WorkerId(2)).assigned.is_empty());
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(2), 1, vec![report(&a2[0], ok(6))]);
    core.sanity_check();
    assert_eq!(core.jobs.get_job(job).outcome(0), Some(ok(5)));
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
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Failed);
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
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Failed, "the running task is blamed");
    assert_eq!(core.jobs.get_job(job).tasks[1].state, TaskState::Ready, "the queued one is not");
    assert!(core.jobs.get_job(job).tasks[1].killed.is_empty());
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
    assert_eq!(core.jobs.get_job(job).tasks[1].state, TaskState::Assigned(wid));
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
    assert!(core.jobs.contains(job), "kept within the retention period");
    on_tick(&mut core, &mut fx, 151);
    assert!(!core.jobs.contains(job));
    assert!(matches!(fx.journal.last(), Some(Record::JobForgotten { job: j }) if *j == job));
    core.sanity_check();
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
    assert!(core.jobs.get_job(job).is_done());

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
    assert_eq!(core.jobs.get_job(job).tasks[3].state, TaskState::Waiting, "d's inputs come from two workers");
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
    assert_eq!(core.jobs.get_job(job).tasks[1].state, TaskState::Waiting);
    assert!(fx
        .workers
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![first[1].task])));
    // The retry runs on the same worker, which may still hold the failed
    // result of attempt 1 (it knows tasks by id): nothing is pinned behind it.
    on_tick(&mut core, &mut fx, 10_000_000);
    let again = fx.take_assignments(ConnId(1));
    assert_eq!(again.iter().map(|a| (a.task.idx, a.attempt)).collect::<Vec<_>>(), vec![(0, 2)]);
    assert!(core.jobs.get_job(job).tasks[0].repeat_here);
    core.sanity_check();
    // The worker dies: a is ready again, b waits.
    on_worker_lost(&mut core, &mut fx, 11_000_000, WorkerId(1), LostWorkerReason::ConnectionClosed);
    core.sanity_check();
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Ready);
    assert_eq!(core.jobs.get_job(job).tasks[1].state, TaskState::Waiting);
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
    let j = &core.jobs.get_job(job);
    assert!(j.is_done() && j.failed == 3, "{}", j.failed);
    assert!(fx
        .workers
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Cancel { tasks } if tasks == &vec![third[1].task])));
    assert!(core.workers.get_worker(WorkerId(2)).assigned.is_empty());
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
    let j = &core.jobs.get_job(job);
    assert_eq!(j.failed, 3);
    match &j.outcome(2) {
        Some(Outcome::Err { error, .. }) => {
            assert_eq!(error, "dependency b failed: dependency a failed: boom")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(j.tasks[3].state, TaskState::Assigned(WorkerId(1)), "unrelated work goes on");
}
