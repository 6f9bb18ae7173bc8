//! Pins the bytes a few messages encode to, one per direction: moving or
//! renaming a type must not change what travels (docs/protocol.md).

use super::conn::{decode, encode};
use super::*;
use crate::ids::{JobId, TaskId, WorkerId};
use bytes::Bytes;

fn job() -> JobId {
    "5f0c6a1e-8d2b-4c3a-9e7f-1a2b3c4d5e6f".parse().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes `msg`, compares with `want` (hex), and decodes it back.
fn pinned<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(msg: &T, want: &str) {
    let bytes = encode(msg).unwrap();
    assert_eq!(hex(&bytes), want, "the encoding of {msg:?} changed");
    let back: T = decode(&bytes).unwrap();
    assert_eq!(format!("{back:?}"), format!("{msg:?}"));
}

fn spec() -> TaskSpec {
    let kind = TaskKind::Cmd {
        argv: vec!["echo".into()],
        env: vec![("A".into(), "1".into())],
        discard_output: true,
        cwd: None,
    };
    TaskSpec {
        key: Some("a".into()),
        deps: vec![Dep::key("0"), Dep { job: Some(job()), key: "3".into() }],
        priority: -1,
        retries: 2,
        resources: [("gpus".to_string(), 1)].into(),
        ..TaskSpec::new(kind)
    }
}

#[test]
fn from_client_submit() {
    let f = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![1] });
    let msg = FromClient::Submit { job: job(), name: "j".into(), tasks: vec![spec(), f], functions: vec![] };
    pinned(&msg, "81a65375626d697484a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa46e616d65a16aa57461736b739286a36b6579a161a46b696e6481a3436d6483a46172677691a46563686fa3656e769192a141a131ae646973636172645f6f7574707574c3a4646570739282a36a6f62c0a36b6579a13082a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa36b6579a133a87072696f72697479ffa77265747269657302a97265736f757263657381a4677075730181a46b696e6481a2466e82a46e616d65a3696e63a461726773c40101a966756e6374696f6e7390");
}

#[test]
fn to_client_outcomes() {
    let outcomes = vec![
        TaskOutcome { idx: 0, attempts: 1, outcome: Outcome::Ok { result: Bytes::from_static(&[7]) } },
        TaskOutcome { idx: 1, attempts: 2, outcome: Outcome::err("boom") },
    ];
    pinned(&ToClient::Outcomes { job: job(), outcomes }, "81a84f7574636f6d657382a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa86f7574636f6d65739283a369647800a8617474656d70747301a76f7574636f6d6581a24f6b81a6726573756c74c4010783a369647801a8617474656d70747302a76f7574636f6d6581a345727282a56572726f72a4626f6f6da9657863657074696f6ec0");
}

#[test]
fn to_worker_assign() {
    let a = Assignment {
        task: TaskId { job: job(), idx: 4 },
        key: None,
        attempt: 1,
        inputs: vec![Bytes::from_static(&[1, 2])],
        kind: TaskKind::Py { func: 0, args: Bytes::from_static(b"p") },
        time_limit_ms: Some(500),
        resources: Resources::new(),
        pending_inputs: vec![(0, TaskId { job: job(), idx: 3 })],
        has_dependents: true,
        stored_inputs: vec![],
    };
    let f = PyFunction { job: job(), func: 0, pickle: Bytes::from_static(b"f") };
    pinned(&ToWorker::Assign { tasks: vec![a], functions: vec![f] }, "81a641737369676e82a57461736b739187a47461736b82a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa369647804a7617474656d707401a6696e7075747391c4020102a46b696e6481a2507982a466756e6300a461726773c40170ad74696d655f6c696d69745f6d73cd01f4ae70656e64696e675f696e7075747391920082a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa369647803ae6861735f646570656e64656e7473c3a966756e6374696f6e739183a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa466756e6300a67069636b6c65c40166");
    pinned(&ToWorker::Registered { worker: WorkerId(3) }, "81aa5265676973746572656481a6776f726b657203");
}

#[test]
fn from_worker_reports() {
    let r = TaskReport {
        task: TaskId { job: job(), idx: 4 },
        attempt: 1,
        outcome: Outcome::Err { error: "x".into(), exception: Some(Bytes::from_static(b"e")) },
        micros: 12,
        executor_died: true,
        lost_inputs: Vec::new(),
    };
    pinned(&FromWorker::Reports { batch: 9, reports: vec![r] }, "81a75265706f72747382a5626174636809a77265706f7274739185a47461736b82a36a6f62c4105f0c6a1e8d2b4c3a9e7f1a2b3c4d5e6fa369647804a7617474656d707401a76f7574636f6d6581a345727282a56572726f72a178a9657863657074696f6ec40165a66d6963726f730cad6578656375746f725f64696564c3");
}

#[test]
fn nanny_both_ways() {
    let info = SlotInfo {
        slot: 1,
        state: SlotState::Restarting { in_ms: 50, last_exit: "signal 9".into() },
        restarts: 2,
    };
    pinned(&FromNanny::Slot { info }, "81a4536c6f7481a4696e666f83a4736c6f7401a5737461746581aa52657374617274696e6782a5696e5f6d7332a96c6173745f65786974a87369676e616c2039a8726573746172747302");
    pinned(&ToNanny::RetireWorker { slot: 1 }, "81ac526574697265576f726b657281a4736c6f7401");
    pinned(&ToNanny::StartWorkers { slots: vec![2, 3] }, "81ac5374617274576f726b65727381a5736c6f7473920203");
    pinned(&FromClient::Scale { workers: 4 }, "81a55363616c6581a7776f726b65727304");
}
