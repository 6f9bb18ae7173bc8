//! Core tests: retries, priorities, cancel, resources, stealing, pinning,
//! and the defects the simulation and the reliability review found.

use super::testenv::step::{
    on_cancel, on_connection_closed, on_heartbeat, on_released, on_reports, on_retry, on_tick,
    on_worker_joined, on_worker_lost,
};
use super::testenv::*;
use super::*;
use crate::ids::{ConnId, TaskId, WorkerId};
use crate::protocol::{Assignment, Outcome, TaskReport, TaskSpec, ToClient, ToWorker};
use bytes::Bytes;

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
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Delayed);
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
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Failed, "out of retries");
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
    let j = &core.jobs.get_job(job);
    assert_eq!(j.tasks[0].state, TaskState::Canceled);
    assert!(
        matches!(&j.outcome(1), Some(Outcome::Err { error, .. }) if error == "dependency a was canceled")
    );
    assert!(j.is_done());
    // Replay keeps it canceled.
    let mut again = Core::default();
    replay(&mut again, 9, fx.journal.clone());
    again.sanity_check();
    assert_eq!(again.jobs.get_job(job).tasks[0].state, TaskState::Canceled);
    assert_eq!(again.jobs.get_job(job).failed, 2);
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
    let states: Vec<TaskState> = again.jobs.get_job(job).tasks.iter().map(|t| t.state.clone()).collect();
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
    assert_eq!(core.workers.get_worker(WorkerId(1)).used.get("gpus"), Some(&2));
    core.sanity_check();
}

#[test]
fn an_idle_worker_steals_queued_work_from_a_busy_one() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    core.workers.find_worker_mut(WorkerId(1)).unwrap().avg_task_us = Some(1.0); // looked fast: big prefetch
    submit(&mut core, &mut fx, (0..6).map(|i| keyed(&format!("s{i}"), &[])).collect()).unwrap();
    assert_eq!(fx.take_assignments(ConnId(1)).len(), 6, "all prefetched by the one worker");
    let steals = |fx: &TestFx| fx.workers.iter().filter(|(_, m)| matches!(m, ToWorker::Steal { .. })).count();
    on_worker_joined(&mut core, &mut fx, 1, ConnId(2), worker(1));
    assert_eq!(steals(&fx), 0, "5 µs of queued work: not worth a round trip");
    on_worker_lost(&mut core, &mut fx, 1, WorkerId(2), LostWorkerReason::Goodbye);
    // The tasks turn out slow: now an idle worker takes some.
    core.workers.find_worker_mut(WorkerId(1)).unwrap().avg_task_us = Some(500_000.0);
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
    core.workers.find_worker_mut(WorkerId(2)).unwrap().avg_task_us = Some(10_000.0);
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
    assert_eq!(given.len(), 1, "b is handed out again: {:?}", core.jobs.get_job(job).tasks[1].state);
    assert!(given[0].1.pending_inputs.is_empty());
    assert_eq!(given[0].1.inputs, vec![Bytes::from(rmp_serde::to_vec(&5i64).unwrap())]);
    // Where it was pinned it is dropped, and it runs to the end.
    assert!(fx
        .workers
        .iter()
        .any(|(c, m)| *c == ConnId(2) && matches!(m, ToWorker::Cancel { tasks } if tasks.contains(&b))));
    on_reports(&mut core, &mut fx, timeout + 4, given[0].0, 1, vec![report(&given[0].1, ok(6))]);
    core.sanity_check();
    assert!(core.jobs.get_job(job).is_done());
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
            lost_inputs: Vec::new(),
        })
        .collect();
    on_reports(&mut core, &mut fx, 2, ConnId(9), 1, forged);
    core.sanity_check();
    assert_eq!(core.foreign_reports, 8, "only the 2 it was handed count");
    let j = &core.jobs.get_job(job);
    assert_eq!(j.finished, 2);
    for a in &given {
        assert_eq!(j.outcome(a.task.idx), Some(ok(666)));
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
    assert_eq!(core.jobs.get_job(job).finished, 4);
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
        lost_inputs: Vec::new(),
    };
    on_reports(&mut restarted, &mut fx2, 12, ConnId(3), 1, vec![late]);
    restarted.sanity_check();
    assert_eq!(restarted.foreign_reports, 0);
    assert_eq!(restarted.jobs.get_job(job).outcome(9), Some(ok(9)));
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
    let conn =
        if core.workers.get_worker(WorkerId(1)).assigned.contains(&a.task) { ConnId(1) } else { ConnId(2) };
    on_reports(&mut core, &mut fx, u64::MAX - 5, conn, u64::MAX, vec![report(a, err("flaky"))]);
    core.sanity_check();
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Delayed);
    assert!(core.deadlines.retries().all(|(due, _)| due == u64::MAX));
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
    assert_eq!(core.jobs.get_job(job).tasks[1].attempts, u32::MAX);
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
    assert_eq!(core.jobs.get_job(second).failed, 1);
    let third =
        submit(&mut core, &mut fx, vec![keyed("a", &[]), keyed("b", &["a"]), keyed("c", &["a", "b"])]);
    let third = third.unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 2, ConnId(1), 2, vec![report(&a[0], err("boom"))]);
    core.sanity_check();
    assert_eq!(core.jobs.get_job(third).failed, 3);
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
    assert_eq!(core.jobs.get_job(second).failed, 2);
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
    assert_eq!(core.jobs.get_job(second).tasks[0].state, TaskState::Waiting);
    assert_eq!(core.jobs.get_job(second).tasks[1].state, TaskState::Waiting);
    let x = fx.take_assignments(ConnId(1));
    assert_eq!(x.iter().map(|a| a.task.job).collect::<Vec<_>>(), vec![first]);
    on_reports(&mut core, &mut fx, 2, ConnId(1), 2, vec![report(&x[0], ok(1))]);
    core.sanity_check();
    assert_eq!(
        core.jobs.get_job(second).tasks[0].state,
        TaskState::Assigned(WorkerId(1)),
        "y runs once x is done"
    );
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
    core.workers.find_worker_mut(WorkerId(1)).unwrap().avg_task_us = Some(10_000.0);
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
    assert!(core.workers.get_worker(WorkerId(2)).dropped.contains_key(&b), "not handed back to w2 meanwhile");
    // w2 reports its copy of b as canceled: ignored.
    assert!(fx.take_assignments(ConnId(2)).is_empty());
    let canceled = TaskReport {
        task: b,
        attempt: 2,
        outcome: err("canceled"),
        micros: 0,
        executor_died: false,
        lost_inputs: Vec::new(),
    };
    on_reports(&mut core, &mut fx, timeout + 3, ConnId(2), 1, vec![canceled]);
    core.sanity_check();
    assert!(core.jobs.get_job(job).tasks[1].outcome.is_none());
    assert!(!core.workers.get_worker(WorkerId(2)).dropped.contains_key(&b));
    // Now it goes back to w2, as a new attempt.
    let again = fx.take_assignments(ConnId(2));
    assert_eq!(again.iter().map(|a| (a.task, a.attempt)).collect::<Vec<_>>(), vec![(b, 3)]);
}
