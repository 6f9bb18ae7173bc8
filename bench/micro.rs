//! Microbenchmarks (divan) for the pieces on the per-task path:
//! - `core`: the pure state machine driving a whole job (submit, assign,
//!   report, outcomes) with effects that only count;
//! - `codec`: msgpack encoding and decoding of the batched frames;
//! - `journal`: sled group commit — one flush per group of records.
//!
//!   cargo bench --bench micro                 all of them
//!   cargo bench --bench micro -- journal      those whose name matches

use actord::core::{self, Core, Effects, NewWorker};
use actord::ids::{ConnId, JobId, TaskId};
use actord::persistence::{DoneTask, Journal, Record, SledJournal};
use actord::protocol::conn::{decode, encode};
use actord::protocol::{
    Assignment, Dep, FromWorker, Outcome, TaskKind, TaskReport, TaskSpec, ToClient, ToNanny, ToWorker,
};
use bytes::Bytes;
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

fn inc(i: i64) -> TaskSpec {
    TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: rmp_serde::to_vec(&i).unwrap() })
}

fn ok(v: i64) -> Outcome {
    Outcome::Ok { result: Bytes::from(rmp_serde::to_vec(&v).unwrap()) }
}

/// Effects that keep only the assignments (to answer them) and count the rest.
#[derive(Default)]
struct Counting {
    assigned: Vec<(ConnId, Assignment)>,
    other: usize,
}

impl Effects for Counting {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        match msg {
            ToWorker::Assign { tasks, .. } => self.assigned.extend(tasks.into_iter().map(|t| (conn, t))),
            _ => self.other += 1,
        }
    }
    fn to_worker_after_flush(&mut self, conn: ConnId, msg: ToWorker) {
        self.to_worker(conn, msg);
    }
    fn to_client(&mut self, _: ConnId, msg: ToClient) {
        black_box(msg);
        self.other += 1;
    }
    fn to_nanny(&mut self, _: ConnId, msg: ToNanny) {
        black_box(msg);
    }
    fn journal(&mut self, record: Record) {
        black_box(record);
        self.other += 1;
    }
    fn close(&mut self, _: ConnId) {}
}

fn new_worker() -> NewWorker {
    NewWorker {
        slots: 1,
        host: "bench".into(),
        pid: 1,
        functions: vec!["inc".into()],
        nanny: None,
        running: vec![],
        resources: Default::default(),
        ends_at: None,
    }
}

/// Runs one job of `tasks` through a core with two one-slot workers,
/// answering each assignment batch with one report batch, as workers do.
fn drive(tasks: Vec<TaskSpec>) -> usize {
    let mut core = Core::default();
    let mut fx = Counting::default();
    let (w1, w2, client) = (ConnId(1), ConnId(2), ConnId(3));
    core::on_worker_joined(&mut core, &mut fx, 0, w1, new_worker());
    core::on_worker_joined(&mut core, &mut fx, 0, w2, new_worker());
    let job = JobId::new();
    core::on_submit_job(&mut core, &mut fx, 1, client, core::SubmitMsg::new(job, "bench".into(), tasks));
    core.finish_step(&mut fx);
    core::on_watch(&mut core, &mut fx, client, job);
    let mut batch = [0u64; 3];
    let mut done = 0;
    let mut now = 2;
    while !fx.assigned.is_empty() {
        let assigned = std::mem::take(&mut fx.assigned);
        for conn in [w1, w2] {
            let reports: Vec<TaskReport> = assigned
                .iter()
                .filter(|(c, _)| *c == conn)
                .map(|(_, a)| TaskReport {
                    task: a.task,
                    attempt: a.attempt,
                    outcome: ok(1),
                    micros: 1,
                    executor_died: false,
                    lost_inputs: Vec::new(),
                })
                .collect();
            if reports.is_empty() {
                continue;
            }
            done += reports.len();
            batch[conn.0 as usize] += 1;
            now += 1;
            let msg = core::ReportsMsg { batch: batch[conn.0 as usize], reports };
            core::on_reports(&mut core, &mut fx, now, conn, msg);
            core.finish_step(&mut fx);
        }
    }
    done
}

/// A map of n independent tasks through the core.
#[divan::bench(args = [10_000, 100_000])]
fn core_map(bencher: Bencher, n: usize) {
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .with_inputs(|| (0..n as i64).map(inc).collect::<Vec<_>>())
        .bench_values(|tasks| assert_eq!(drive(tasks), n));
}

/// A chain of n tasks (each depends on the previous) through the core.
#[divan::bench(args = [10_000])]
fn core_chain(bencher: Bencher, n: usize) {
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .with_inputs(|| {
            (0..n)
                .map(|i| TaskSpec {
                    key: Some(i.to_string()),
                    deps: if i == 0 { vec![] } else { vec![Dep::key((i - 1).to_string())] },
                    ..inc(0)
                })
                .collect::<Vec<_>>()
        })
        .bench_values(|tasks| assert_eq!(drive(tasks), n));
}

fn assignments(n: usize) -> ToWorker {
    let job = JobId::new();
    ToWorker::Assign {
        tasks: (0..n)
            .map(|i| Assignment {
                task: TaskId { job, idx: i as u32 },
                key: None,
                attempt: 1,
                inputs: vec![],
                kind: TaskKind::Fn { name: "inc".into(), args: rmp_serde::to_vec(&(i as i64)).unwrap() },
                time_limit_ms: None,
                resources: Default::default(),
                pending_inputs: vec![],
                has_dependents: false,
                stored_inputs: Vec::new(),
            })
            .collect(),
        functions: vec![],
    }
}

fn reports(n: usize) -> FromWorker {
    let job = JobId::new();
    FromWorker::Reports {
        batch: 1,
        reports: (0..n)
            .map(|i| TaskReport {
                task: TaskId { job, idx: i as u32 },
                attempt: 1,
                outcome: ok(i as i64),
                micros: 3,
                executor_died: false,
                lost_inputs: Vec::new(),
            })
            .collect(),
    }
}

/// Encoding one Assign frame of n tasks.
#[divan::bench(args = [1, 1000])]
fn codec_encode_assign(bencher: Bencher, n: usize) {
    let msg = assignments(n);
    bencher.counter(divan::counter::ItemsCount::new(n)).bench(|| encode(black_box(&msg)).unwrap());
}

/// Decoding one Assign frame of n tasks.
#[divan::bench(args = [1, 1000])]
fn codec_decode_assign(bencher: Bencher, n: usize) {
    let frame = encode(&assignments(n)).unwrap();
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| decode::<ToWorker>(black_box(&frame)).unwrap());
}

/// Encoding and decoding one Reports frame of n results.
#[divan::bench(args = [1, 1000])]
fn codec_roundtrip_reports(bencher: Bencher, n: usize) {
    let msg = reports(n);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| decode::<FromWorker>(&encode(black_box(&msg)).unwrap()).unwrap());
}

/// Decoding a submit of 10,000 task specs (the client's map).
#[divan::bench]
fn codec_decode_submit_10k(bencher: Bencher) {
    let tasks: Vec<TaskSpec> = (0..10_000).map(inc).collect();
    let frame = encode(&tasks).unwrap();
    bencher
        .counter(divan::counter::ItemsCount::new(10_000usize))
        .bench(|| decode::<Vec<TaskSpec>>(black_box(&frame)).unwrap());
}

/// Group commit: `records` TasksDone records of 100 tasks each, appended,
/// then one flush (fsync) for the group. Throughput counts tasks.
#[divan::bench(args = [1, 10, 100], sample_count = 20, sample_size = 1)]
fn journal_group_commit(bencher: Bencher, records: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = SledJournal::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let job = JobId::new();
    let group: Vec<Record> = (0..records)
        .map(|r| Record::TasksDone {
            job,
            done: (0..100)
                .map(|i| DoneTask {
                    idx: (r * 100 + i) as u32,
                    attempt: 1,
                    outcome: ok(1).into(),
                    canceled: false,
                })
                .collect::<Vec<_>>()
                .into(),
        })
        .collect();
    bencher.counter(divan::counter::ItemsCount::new(records * 100)).bench_local(|| {
        journal.append(&group).unwrap();
        rt.block_on(journal.flusher()).unwrap();
    });
}
