//! The journal's bytes, pinned: every record variant, built from wire types
//! through the conversions the scheduler uses, encoded as the journal
//! writes it, against `golden.hex` (checked in). A failure here means the
//! journal's on-disk format changed: bump `JOURNAL_VERSION` with a
//! migration, or restore the bytes. `ACTORD_BLESS_GOLDEN=1` rewrites the
//! file after an intended change.

use super::{DoneTask, HistoryRecord, Record};
use crate::ids::JobId;
use crate::persistence::payloads;
use crate::protocol::{Dep, Outcome, TaskKind, TaskSpec};
use bytes::Bytes;

fn job() -> JobId {
    "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a".parse().unwrap()
}

/// Wire task specs covering every field and kind.
fn wire_tasks() -> Vec<TaskSpec> {
    let cmd = TaskKind::Cmd {
        argv: vec!["echo".into(), "{task}".into()],
        env: vec![("A".into(), "1".into())],
        discard_output: true,
        cwd: Some("/w".into()),
    };
    let full = TaskSpec {
        key: Some("a".into()),
        kind: cmd,
        max_worker_kills: Some(3),
        deps: vec![Dep::key("0"), Dep { job: Some(job()), key: "b".into() }],
        priority: -1,
        retries: 2,
        time_limit_ms: Some(1500),
        resources: [("gpus".to_string(), 1)].into(),
        time_request_ms: None,
    };
    let plain_cmd = TaskSpec::new(TaskKind::Cmd {
        argv: vec!["true".into()],
        env: vec![],
        discard_output: false,
        cwd: None,
    });
    let f = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0x01] });
    let py = TaskSpec::new(TaskKind::Py { func: 0, args: Bytes::from_static(b"p") });
    vec![full, plain_cmd, f, py]
}

fn stored() -> crate::protocol::StoredResult {
    crate::protocol::StoredResult {
        path: format!("{}/3-2.bin", job()),
        size: 2 << 20,
        checksum: "ab".repeat(32),
    }
}

fn done(idx: u32, attempt: u32, outcome: Outcome, canceled: bool) -> DoneTask {
    DoneTask { idx, attempt, outcome: outcome.into(), canceled }
}

/// One record of each variant, as the core builds them from wire types.
fn records() -> Vec<(&'static str, Record)> {
    let submitted = Record::JobSubmitted {
        job: job(),
        seq: 7,
        name: "golden".into(),
        tasks: wire_tasks().into_iter().map(Into::into).collect(),
        functions: vec![Bytes::from_static(b"pickle")],
        // (Not known: written as a journal before it was kept.)
        digest: 0,
    };
    let outcomes = vec![
        done(0, 1, Outcome::Ok { result: Bytes::from_static(&[7]) }, false),
        done(2, 3, Outcome::Err { error: "boom".into(), exception: Some(Bytes::from_static(b"e")) }, true),
        done(1, 1, Outcome::err("c"), false),
    ];
    vec![
        ("JobSubmitted", submitted),
        ("TasksDone", Record::TasksDone { job: job(), done: outcomes.into() }),
        (
            "TasksDone",
            Record::TasksDone { job: job(), done: vec![done(3, 2, Outcome::Stored(stored()), false)].into() },
        ),
        ("TasksRetried", Record::TasksRetried { job: job(), idx: vec![0, 2] }),
        ("JobForgotten", Record::JobForgotten { job: job() }),
        (
            "History",
            Record::History(HistoryRecord::Event { at: 5, kind: "worker-lost".into(), text: "w1".into() }),
        ),
        (
            "History",
            Record::History(HistoryRecord::JobTimes { job: job(), submitted_at: 1, done_at: Some(2) }),
        ),
        ("ResultsLost", Record::ResultsLost { job: job(), idx: vec![1] }),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `variant payload-hex` lines, one per payload.
fn render() -> String {
    let mut out = String::new();
    for (name, r) in records() {
        for p in payloads(&r).unwrap() {
            out.push_str(&format!("{name} {}\n", hex(&p)));
        }
    }
    out
}

#[test]
fn every_record_variant_keeps_its_bytes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journal_record/golden.hex");
    let now = render();
    if std::env::var_os("ACTORD_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    for (want, got) in golden.lines().zip(now.lines()) {
        assert_eq!(got, want, "a journal record's bytes changed (see this file's comment)");
    }
    assert_eq!(golden.lines().count(), now.lines().count(), "{now}");
    assert_eq!(
        golden.lines().count(),
        8,
        "one payload per variant (two kinds of history record, and a stored outcome)"
    );
}
