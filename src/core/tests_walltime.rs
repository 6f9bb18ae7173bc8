//! Core tests of walltimes: a task goes only to a worker whose allocation
//! lasts as long as its time request (else its time limit), and `explain`
//! says why one waits.

use super::testenv::step::{on_reports, on_worker_joined};
use super::testenv::{ok, report, submit, worker, TestFx, CLIENT};
use super::*;
use crate::ids::ConnId;
use crate::protocol::{TaskKind, TaskSpec, ToClient};

const S: u64 = 1_000_000;

fn timed(request_s: Option<u64>, limit_s: Option<u64>) -> TaskSpec {
    let mut t = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0x01] });
    t.time_request_ms = request_s.map(|s| s * 1000);
    t.time_limit_ms = limit_s.map(|s| s * 1000);
    t
}

fn explain(core: &Core, fx: &mut TestFx, job: crate::ids::JobId, key: &str) -> String {
    on_explain(core, fx, CLIENT, job, key.into());
    match fx.clients.pop() {
        Some((_, ToClient::Done { message })) => message,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_goes_only_where_the_allocation_outlasts_its_request() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let now = 1_000 * S;
    core.set_clock(now);
    let short = ConnId(1);
    on_worker_joined(&mut core, &mut fx, now, short, NewWorker { ends_at: Some(now + 20 * S), ..worker(1) });
    fx.workers.clear();
    // 30 s requested (or, without a request, a 30 s limit): not on a worker with 20 s left.
    let long = vec![timed(Some(30), None), timed(None, Some(30)), timed(Some(30), None)];
    let job = submit(&mut core, &mut fx, long).unwrap();
    assert!(fx.take_assignments(short).is_empty(), "nothing outlasting the allocation goes there");
    let why = explain(&core, &mut fx, job, "0");
    assert!(why.contains("expected to run 30s") && why.contains("the longest has 20s left"), "{why}");

    // A short request fits; the long ones still wait.
    let short_job = submit(&mut core, &mut fx, vec![timed(Some(5), Some(60))]).unwrap();
    let on_short = fx.take_assignments(short);
    let jobs: Vec<_> = on_short.iter().map(|a| a.task.job).collect();
    assert_eq!(jobs, vec![short_job], "the request, not the limit, counts");

    // A worker with no end takes the long ones, as many as it holds (2 per slot).
    let open = ConnId(2);
    on_worker_joined(&mut core, &mut fx, now, open, worker(1));
    let got = fx.take_assignments(open);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|a| a.task.job == job));
    on_reports(&mut core, &mut fx, now, short, 1, vec![report(&on_short[0], ok(1))]);
    assert!(fx.take_assignments(short).is_empty(), "the free short worker still takes no long task");
    core.sanity_check();
}

#[test]
fn time_passing_closes_a_worker_to_tasks_that_fitted_before() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let now = 5_000 * S;
    core.set_clock(now);
    let conn = ConnId(1);
    on_worker_joined(&mut core, &mut fx, now, conn, NewWorker { ends_at: Some(now + 60 * S), ..worker(1) });
    core.set_clock(now + 45 * S);
    let job = submit(&mut core, &mut fx, vec![timed(Some(30), None), timed(None, None)]).unwrap();
    let got = fx.take_assignments(conn);
    assert_eq!(
        got.iter().map(|a| a.task.idx).collect::<Vec<_>>(),
        vec![1],
        "15 s left: only the untimed task"
    );
    let why = explain(&core, &mut fx, job, "0");
    assert!(why.contains("no worker's allocation lasts that long"), "{why}");
    core.sanity_check();
}
