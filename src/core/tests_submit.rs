//! Core tests of what a newcomer meets first: running and queued tasks told
//! apart, worker ids across epochs, job-id conflicts, exact retry backoff
//! and unknown function names refused at submit.

use super::testenv::step::{on_deadline, on_reports, on_submit, on_worker_joined};
use super::testenv::{inc_tasks, keyed, report, submit, worker, TestFx, CLIENT};
use super::*;
use crate::ids::{ConnId, JobId, WorkerId};
use crate::protocol::{Outcome, TaskKind, ToClient};

fn last_client(fx: &mut TestFx) -> ToClient {
    fx.clients.pop().expect("an answer").1
}

#[test]
fn tasks_queued_on_a_worker_are_not_counted_as_running() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(2));
    let job = submit(&mut core, &mut fx, inc_tasks(9)).unwrap();
    // No run-time estimate yet: each slot runs one and holds one more.
    let on_w1 = fx.take_assignments(ConnId(1));
    assert_eq!(on_w1.len(), 2);
    let on_w2 = fx.take_assignments(ConnId(2));
    assert_eq!(on_w2.len(), 4);

    on_list_workers(&core, &mut fx, 0, CLIENT);
    let ToClient::Workers { workers } = last_client(&mut fx) else { panic!("no worker list") };
    let counts: Vec<(u32, u32, u32)> = workers.iter().map(|w| (w.slots, w.running, w.queued)).collect();
    assert_eq!(counts, vec![(1, 1, 1), (2, 2, 2)]);

    on_status(&core, &mut fx, CLIENT, StatusExtra::default());
    let ToClient::Status { status } = last_client(&mut fx) else { panic!("no status") };
    assert_eq!(status.slots, 3);
    assert_eq!(status.tasks_running, 3, "never more than the slots");
    assert_eq!(status.tasks_prefetched, 3);
    assert_eq!(status.tasks_queued, 3, "the rest waits for a worker");

    on_jobs(&core, &mut fx, CLIENT);
    let ToClient::Jobs { jobs } = last_client(&mut fx) else { panic!("no jobs") };
    assert_eq!((jobs[0].running, jobs[0].queued), (3, 3));
    on_tasks(&core, &mut fx, CLIENT, job);
    let ToClient::Tasks { tasks, .. } = last_client(&mut fx) else { panic!("no tasks") };
    let state = |a: &crate::protocol::Assignment| tasks[a.task.idx as usize].state.clone();
    // Each worker runs the oldest it holds; the newer ones wait their turn.
    let w1: Vec<String> = on_w1.iter().map(state).collect();
    let w2: Vec<String> = on_w2.iter().map(state).collect();
    assert_eq!(w1, ["running", "queued"]);
    assert_eq!(w2, ["running", "running", "queued", "queued"]);
    assert_eq!(tasks.iter().filter(|t| t.state == "ready").count(), 3);

    // One finishes: the next in its worker's queue is the one running.
    on_reports(&mut core, &mut fx, 1, ConnId(1), 1, vec![report(&on_w1[0], super::testenv::ok(1))]);
    on_tasks(&core, &mut fx, CLIENT, job);
    let ToClient::Tasks { tasks, .. } = last_client(&mut fx) else { panic!("no tasks") };
    let state = |a: &crate::protocol::Assignment| tasks[a.task.idx as usize].state.as_str();
    assert_eq!((state(&on_w1[0]), state(&on_w1[1])), ("finished", "running"));
    core.sanity_check();
}

#[test]
fn worker_ids_are_not_reused_after_a_restart() {
    let mut fx = TestFx::default();
    let mut first = Core::default();
    first.start_epoch(0);
    let a = on_worker_joined(&mut first, &mut fx, 0, ConnId(1), worker(1));
    let b = on_worker_joined(&mut first, &mut fx, 0, ConnId(2), worker(1));
    assert_eq!((a, b), (WorkerId(1), WorkerId(2)), "the first epoch counts from w1");

    let mut second = Core::default();
    second.start_epoch(1);
    let c = on_worker_joined(&mut second, &mut fx, 0, ConnId(1), worker(1));
    assert_eq!(c, WorkerId((1 << 32) + 1));
    assert!(c != a && c != b);
    // Epochs far beyond any real count still give distinct, valid ids.
    let mut late = Core::default();
    late.start_epoch(u64::MAX);
    let d = on_worker_joined(&mut late, &mut fx, 0, ConnId(1), worker(1));
    let e = on_worker_joined(&mut late, &mut fx, 0, ConnId(2), worker(1));
    assert!(d != e);
}

#[test]
fn a_job_id_with_other_tasks_is_refused_and_the_same_tasks_are_not() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(3));
    assert!(matches!(last_client(&mut fx), ToClient::Submitted { tasks: 3, .. }));

    // Same count, other arguments: another job under the same id.
    let mut other = inc_tasks(3);
    other.swap(0, 2);
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), other.clone());
    let ToClient::Error { message, .. } = last_client(&mut fx) else { panic!("accepted") };
    assert!(message.contains(&format!("job {job} exists with other tasks")), "{message}");
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(4));
    assert!(matches!(last_client(&mut fx), ToClient::Error { .. }));
    // The same tasks again (a lost reply): harmless.
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "j".into(), inc_tasks(3));
    assert!(matches!(last_client(&mut fx), ToClient::Submitted { tasks: 3, .. }));
    assert_eq!(fx.journal.len(), 1, "nothing journaled for the resubmissions");
    assert_eq!(core.ready.len(), 3);

    // After a restart the journal tells the two apart just as well, with
    // the digest it keeps, or (a journal written before it kept one) not.
    let journal = std::mem::take(&mut fx.journal);
    let mut unkept = journal.clone();
    for r in &mut unkept {
        if let crate::journal_record::Record::JobSubmitted { digest, .. } = r {
            assert_ne!(*digest, 0, "the record keeps the digest");
            *digest = 0;
        }
    }
    for records in [journal, unkept] {
        let mut again = Core::default();
        replay(&mut again, 1, records);
        on_submit(&mut again, &mut fx, 2, CLIENT, job, "j".into(), inc_tasks(3));
        assert!(matches!(last_client(&mut fx), ToClient::Submitted { tasks: 3, .. }));
        on_submit(&mut again, &mut fx, 2, CLIENT, job, "j".into(), other.clone());
        assert!(matches!(last_client(&mut fx), ToClient::Error { .. }));
        assert!(fx.journal.is_empty());
        again.sanity_check();
    }
}

#[test]
fn a_retry_is_due_exactly_after_its_backoff() {
    let mut core = Core::default();
    let backoff = core.config.retry_backoff_us;
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    assert_eq!(core.next_deadline(), None);
    let mut t = keyed("a", &[]);
    t.retries = 2;
    let job = submit(&mut core, &mut fx, vec![t]).unwrap();
    let a = fx.take_assignments(ConnId(1));
    on_reports(&mut core, &mut fx, 1_000, ConnId(1), 1, vec![report(&a[0], Outcome::err("flaky"))]);
    assert_eq!(core.next_deadline(), Some(1_000 + backoff));
    on_deadline(&mut core, &mut fx, 1_000 + backoff - 1);
    assert!(fx.take_assignments(ConnId(1)).is_empty(), "still backing off");
    on_deadline(&mut core, &mut fx, 1_000 + backoff);
    let again = fx.take_assignments(ConnId(1));
    assert_eq!(again[0].attempt, 2, "out as soon as its backoff is over");
    assert_eq!(core.next_deadline(), None);
    // The second failure waits twice as long.
    let t2 = 2_000 + backoff;
    on_reports(&mut core, &mut fx, t2, ConnId(1), 2, vec![report(&again[0], Outcome::err("flaky"))]);
    assert_eq!(core.next_deadline(), Some(t2 + 2 * backoff));
    assert_eq!(core.jobs.get_job(job).tasks[0].state, TaskState::Delayed);
    core.sanity_check();

    // The end of a reclaim grace period is a deadline too.
    let mut held = Core::default();
    submit(&mut held, &mut TestFx::default(), vec![keyed("a", &[])]).unwrap();
    begin_recovery(&mut held, 0, 5);
    assert_eq!(held.next_deadline(), Some(5));
    on_deadline(&mut held, &mut TestFx::default(), 5);
    assert_eq!(held.next_deadline(), None);
    assert!(held.hold_until.is_none(), "the grace period is over");
}

#[test]
fn an_unknown_function_is_refused_at_submit_once_workers_are_there() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let typo = |n| {
        let mut t = inc_tasks(n);
        t[n - 1].kind = TaskKind::Fn { name: "incc".into(), args: vec![0xc0] };
        t
    };
    // No worker yet: the workers to come may have it.
    submit(&mut core, &mut fx, typo(1)).unwrap();

    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    let mut other = worker(1);
    other.functions = vec!["sleep".into(), "inc".into()];
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), other);
    let journaled = fx.journal.len();
    let jobs = core.jobs.len();
    let message = submit(&mut core, &mut fx, typo(3)).unwrap_err();
    assert_eq!(message, "task 2: no registered worker has function \"incc\" (they have: inc, sleep)");
    assert_eq!((fx.journal.len(), core.jobs.len()), (journaled, jobs), "nothing changed");
    // A function only one worker has is fine; commands need none.
    let mut mixed = inc_tasks(1);
    mixed.push(crate::protocol::TaskSpec::new(TaskKind::Fn { name: "sleep".into(), args: vec![0xc0] }));
    submit(&mut core, &mut fx, mixed).unwrap();
    core.sanity_check();
}
