//! Core tests of stored results: references recorded and journaled, handed
//! to consumers as stored inputs; a lost one re-runs its producer, and the
//! consumer waits for it; forged losses change nothing.

use super::testenv::step::{on_reports, on_submit, on_worker_joined};
use super::testenv::{report, worker, TestFx, CLIENT};
use super::*;
use crate::ids::{ConnId, JobId, TaskId};
use crate::journal_record::Record;
use crate::protocol::{Dep, Outcome, StoredResult, TaskKind, TaskSpec};

fn stored(t: TaskId, attempt: u32) -> Outcome {
    Outcome::Stored(StoredResult {
        path: crate::results_store::relative_path(t, attempt),
        size: 2 << 20,
        checksum: format!("{:064x}", attempt),
    })
}

fn task(deps: Vec<Dep>) -> TaskSpec {
    let mut t = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0xc0] });
    t.key = Some("t".into());
    t.deps = deps;
    t
}

#[test]
fn a_lost_stored_input_reruns_its_producer_and_its_reader_waits() {
    let (mut core, mut fx) = (Core::default(), TestFx::default());
    let w = ConnId(1);
    on_worker_joined(&mut core, &mut fx, 0, w, worker(1));
    // Job A makes a stored result; job B reads it.
    let a_job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, a_job, "a".into(), vec![task(vec![])]);
    let a = fx.take_assignments(w).remove(0);
    on_reports(&mut core, &mut fx, 0, w, 1, vec![report(&a, stored(a.task, 1))]);
    assert!(fx.journal.iter().any(|r| matches!(r, Record::TasksDone { done, .. }
        if matches!(done.tasks()[0].outcome, crate::journal_record::Outcome::Stored { .. }))));
    let b_job = JobId::new();
    on_submit(
        &mut core,
        &mut fx,
        0,
        CLIENT,
        b_job,
        "b".into(),
        vec![task(vec![Dep { job: Some(a_job), key: "t".into() }])],
    );
    let b = fx.take_assignments(w).remove(0);
    assert_eq!(b.inputs.len(), 1);
    assert_eq!(
        b.stored_inputs,
        vec![(
            0,
            match stored(a.task, 1) {
                Outcome::Stored(s) => s,
                _ => unreachable!(),
            }
        )]
    );

    // Forged: a task that is not its input, or a report of an attempt it does not hold.
    let forged = |attempt, lost: Vec<TaskId>| {
        let mut r = report(&b, Outcome::err("lost"));
        r.attempt = attempt;
        r.lost_inputs = lost;
        r
    };
    let journaled = fx.journal.len();
    on_reports(&mut core, &mut fx, 0, w, 2, vec![forged(b.attempt + 5, vec![a.task])]);
    assert_eq!(fx.journal.len(), journaled, "{:?}", fx.journal);
    // (Not its input: nothing voided, but the reader runs again.)
    on_reports(&mut core, &mut fx, 0, w, 3, vec![forged(b.attempt, vec![TaskId { job: b_job, idx: 0 }])]);
    assert_eq!(fx.journal.len(), journaled, "{:?}", fx.journal);
    assert_eq!(core.get_task(a.task).state, TaskState::Finished);
    let b = fx.take_assignments(w).remove(0);

    // The real thing: A's task runs again (attempt 2), B's waits for it.
    on_reports(&mut core, &mut fx, 0, w, 4, vec![forged(b.attempt, vec![a.task])]);
    assert_eq!(fx.journal[journaled..], [Record::ResultsLost { job: a_job, idx: vec![0] }]);
    let again = fx.take_assignments(w);
    assert_eq!(again.iter().map(|x| (x.task, x.attempt)).collect::<Vec<_>>(), vec![(a.task, 2)]);
    assert_eq!(core.get_task(b.task).state, TaskState::Waiting);
    assert_eq!(core.jobs.get_job(a_job).finished, 0);
    core.sanity_check();
    on_reports(&mut core, &mut fx, 0, w, 5, vec![report(&again[0], stored(a.task, 2))]);
    let b2 = fx.take_assignments(w).remove(0);
    assert_eq!(b2.task, b.task);
    assert_eq!(b2.stored_inputs[0].1.path, crate::results_store::relative_path(a.task, 2));
    assert_eq!(stored_results(&core).files, 2, "both references are counted");
    core.sanity_check();

    // Replay of what was journaled gives the same: A done with attempt 2's
    // result, B ready to run with it.
    let mut replayed = Core::default();
    replay(&mut replayed, 0, std::mem::take(&mut fx.journal));
    assert_eq!(replayed.jobs.get_job(a_job).finished, 1);
    assert_eq!(replayed.outcome(a.task), Some(stored(a.task, 2)));
    assert_eq!(replayed.get_task(b.task).state, TaskState::Ready);
    replayed.sanity_check();
}

#[test]
fn a_client_that_finds_a_stored_result_lost_has_it_run_again() {
    let (mut core, mut fx) = (Core::default(), TestFx::default());
    let w = ConnId(1);
    on_worker_joined(&mut core, &mut fx, 0, w, worker(1));
    let job = JobId::new();
    on_submit(&mut core, &mut fx, 0, CLIENT, job, "a".into(), vec![task(vec![])]);
    let a = fx.take_assignments(w).remove(0);
    on_reports(&mut core, &mut fx, 0, w, 1, vec![report(&a, stored(a.task, 1))]);
    let path = crate::results_store::relative_path(a.task, 1);
    assert_eq!(stored_result_of(&core, a.task).unwrap().map(|r| r.path), Some(path.clone()));
    fx.journal.clear();

    // A reference it no longer has changes nothing (answered: wait for it).
    let old = crate::results_store::relative_path(a.task, 7);
    on_client_stored_lost(&mut core, &mut fx, CLIENT, a.task, &old, "checksum mismatch");
    assert!(fx.journal.is_empty(), "{:?}", fx.journal);
    assert!(matches!(core.get_task(a.task).outcome, compact::Stored::Ref(_)));

    // Its own: journaled, the task runs again, the client is told to wait.
    on_client_stored_lost(&mut core, &mut fx, CLIENT, a.task, &path, "checksum mismatch");
    assert!(fx.journal.iter().any(|r| matches!(r, Record::ResultsLost { idx, .. } if idx == &vec![0])));
    assert!(fx
        .clients
        .iter()
        .any(|(c, m)| *c == CLIENT && matches!(m, crate::protocol::ToClient::StoredRerun { idx: 0, .. })));
    assert_eq!(stored_result_of(&core, a.task), Ok(None), "no outcome while it runs again");
    core.finish_step(&mut fx);
    let again = fx.take_assignments(w).remove(0);
    assert_eq!((again.task, again.attempt), (a.task, 2));

    // A task without a stored result (failed, unknown job) is an error.
    assert!(stored_result_of(&core, TaskId { job: JobId::new(), idx: 0 }).is_err());
}
