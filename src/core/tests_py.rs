//! Core tests of `py` tasks: the function table is checked at submit,
//! journaled, sent once per worker connection; executor deaths count as kills.

use super::testenv::step::{on_reports, on_submit_job, on_worker_joined};
use super::testenv::{ok, report, worker, TestFx, CLIENT};
use super::*;
use crate::ids::{ConnId, JobId};
use crate::journal_record::Record;
use crate::protocol::{Assignment, PyFunction, TaskReport, TaskSpec};
use crate::protocol::{Outcome, TaskKind, ToClient, ToWorker};
use bytes::Bytes;

fn py_tasks(n: usize, func: u32) -> Vec<TaskSpec> {
    (0..n).map(|i| TaskSpec::new(TaskKind::Py { func, args: Bytes::from(vec![i as u8]) })).collect()
}

fn submit(core: &mut Core, fx: &mut TestFx, job: JobId, tasks: Vec<TaskSpec>, functions: Vec<Bytes>) {
    on_submit_job(core, fx, 0, CLIENT, SubmitMsg::with_functions(job, "py".into(), tasks, functions));
}

/// Takes every `Assign` sent to `conn`: its tasks and its functions.
fn take_assigns(fx: &mut TestFx, conn: ConnId) -> (Vec<Assignment>, Vec<PyFunction>) {
    let (mut tasks, mut functions) = (Vec::new(), Vec::new());
    fx.workers.retain(|(c, m)| match m {
        ToWorker::Assign { tasks: t, functions: f } if *c == conn => {
            tasks.extend(t.iter().cloned());
            functions.extend(f.iter().cloned());
            false
        }
        _ => true,
    });
    (tasks, functions)
}

#[test]
fn a_py_task_outside_the_function_table_refuses_the_job() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    let job = JobId::new();
    submit(&mut core, &mut fx, job, py_tasks(2, 1), vec![Bytes::from_static(b"f")]);
    match &fx.clients[..] {
        [(CLIENT, ToClient::Error { message, .. })] => {
            assert!(
                message.contains("function 1 is not in the job's function table (1 entries)"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.journal.is_empty() && core.jobs.is_empty());
    core.sanity_check();
}

#[test]
fn each_function_goes_to_each_worker_connection_once_and_is_journaled() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    on_worker_joined(&mut core, &mut fx, 0, ConnId(2), worker(1));
    fx.workers.clear();
    let job = JobId::new();
    let table = vec![Bytes::from_static(b"f0"), Bytes::from_static(b"f1")];
    let mut tasks = py_tasks(6, 0);
    tasks.extend(py_tasks(2, 1));
    submit(&mut core, &mut fx, job, tasks, table.clone());
    assert!(
        matches!(&fx.journal[..], [Record::JobSubmitted { functions, .. }] if *functions == table),
        "{:?}",
        fx.journal
    );
    fx.journal.clear();
    fx.clients.clear();
    let mut sent: Vec<(ConnId, u32)> = Vec::new();
    let mut done = 0;
    while done < 8 {
        let mut progressed = false;
        for conn in [ConnId(1), ConnId(2)] {
            let (tasks, functions) = take_assigns(&mut fx, conn);
            sent.extend(functions.iter().map(|f| (conn, f.func)));
            for f in &functions {
                assert_eq!(f.job, job);
                assert_eq!(f.pickle, table[f.func as usize]);
            }
            for a in &tasks {
                let TaskKind::Py { func, .. } = a.kind else { panic!("{a:?}") };
                assert!(sent.contains(&(conn, func)), "task {} came before its function", a.task);
            }
            if !tasks.is_empty() {
                progressed = true;
                done += tasks.len();
                let reports = tasks.iter().map(|a| report(a, ok(1))).collect();
                on_reports(&mut core, &mut fx, 1, conn, 1, reports);
                core.sanity_check();
            }
        }
        assert!(progressed, "nothing assigned with {done} of 8 done");
    }
    sent.sort();
    let mut unique = sent.clone();
    unique.dedup();
    assert_eq!(sent, unique, "a function was sent twice to one connection");

    // Replay restores the table.
    let mut replayed = Core::default();
    let functions = table.clone();
    let record = Record::JobSubmitted {
        job,
        seq: 0,
        name: "py".into(),
        tasks: py_tasks(1, 1).into_iter().map(Into::into).collect(),
        functions,
        digest: 0,
    };
    replay(&mut replayed, 0, vec![record]);
    assert_eq!(replayed.jobs.get_job(job).functions, table);
    replayed.sanity_check();
}

#[test]
fn a_task_that_kills_its_executor_runs_again_then_fails_naming_it() {
    let mut core = Core::default();
    let mut fx = TestFx::default();
    on_worker_joined(&mut core, &mut fx, 0, ConnId(1), worker(1));
    fx.workers.clear();
    let job = JobId::new();
    let mut tasks = py_tasks(1, 0);
    tasks[0].retries = 5; // executor deaths are not failures: retries do not apply
    submit(&mut core, &mut fx, job, tasks, vec![Bytes::from_static(b"f")]);
    fx.journal.clear();
    fx.clients.clear();
    for attempt in 1..=3u32 {
        let (tasks, functions) = take_assigns(&mut fx, ConnId(1));
        assert_eq!(functions.len(), usize::from(attempt == 1), "sent once per connection");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].attempt, attempt);
        let died = TaskReport {
            executor_died: true,
            ..report(&tasks[0], Outcome::err("the Python executor was killed by signal 11 (SIGSEGV)"))
        };
        on_reports(&mut core, &mut fx, 1, ConnId(1), u64::from(attempt), vec![died]);
        core.sanity_check();
    }
    let t = &core.jobs.get_job(job).tasks[0];
    assert_eq!(t.state, TaskState::Failed);
    match &core.jobs.get_job(job).outcome(0) {
        Some(Outcome::Err { error, .. }) => {
            assert!(error.contains("killed its Python executor 3 times"), "{error}");
            assert!(error.contains("SIGSEGV"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(take_assigns(&mut fx, ConnId(1)).0.is_empty(), "not assigned again");
    assert!(
        matches!(&fx.journal[..], [Record::TasksDone { done, .. }] if done.len() == 1 && !done.tasks()[0].outcome.is_ok())
    );
}
