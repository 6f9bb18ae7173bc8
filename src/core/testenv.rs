//! The core tests' environment: an effect sink that round-trips every
//! message through the codec, small builders, and each event as the actor
//! runs it (the handler, then `Core::finish_step`).

use super::*;
use crate::ids::{ConnId, JobId};
use crate::journal_record::Record;
use crate::protocol::{Assignment, Outcome, TaskKind, TaskReport, TaskSpec, ToClient, ToNanny, ToWorker};
use bytes::Bytes;

#[derive(Default)]
pub(super) struct TestFx {
    pub(super) workers: Vec<(ConnId, ToWorker)>,
    pub(super) clients: Vec<(ConnId, ToClient)>,
    pub(super) nannies: Vec<(ConnId, ToNanny)>,
    pub(super) journal: Vec<Record>,
    pub(super) closed: Vec<ConnId>,
    /// Messages to workers marked to wait for the journal flush.
    pub(super) after_flush: usize,
}

impl Effects for TestFx {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        assert!(!matches!(msg, ToWorker::Ack { .. }), "an acknowledgement must wait for the flush");
        // Round-trip through the codec, as the real sink would encode it.
        let bytes = crate::protocol::conn::encode(&msg).unwrap();
        self.workers.push((conn, crate::protocol::conn::decode(&bytes).unwrap()));
    }
    fn to_worker_after_flush(&mut self, conn: ConnId, msg: ToWorker) {
        assert!(matches!(msg, ToWorker::Ack { .. }), "only an acknowledgement promises durability: {msg:?}");
        self.after_flush += 1;
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
        ends_at: None,
    }
}

pub(super) fn ok(v: i64) -> Outcome {
    Outcome::Ok { result: Bytes::from(rmp_serde::to_vec(&v).unwrap()) }
}

pub(super) fn report(a: &Assignment, outcome: Outcome) -> TaskReport {
    TaskReport {
        task: a.task,
        attempt: a.attempt,
        outcome,
        micros: 10,
        executor_died: false,
        lost_inputs: Vec::new(),
    }
}

pub(super) const CLIENT: ConnId = ConnId(100);

pub(super) fn keyed(key: &str, deps: &[&str]) -> TaskSpec {
    let mut t = TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![0xc0] });
    t.key = Some(key.into());
    t.deps = deps.iter().map(|d| crate::protocol::Dep::key(*d)).collect();
    t
}

pub(super) fn submit(core: &mut Core, fx: &mut TestFx, tasks: Vec<TaskSpec>) -> Result<JobId, String> {
    let job = JobId::new();
    step::on_submit(core, fx, 0, CLIENT, job, "g".into(), tasks);
    match fx.clients.pop() {
        Some((_, ToClient::Submitted { .. })) => Ok(job),
        Some((_, ToClient::Error { message, .. })) => Err(message),
        other => panic!("unexpected {other:?}"),
    }
}

pub(super) fn err(e: &str) -> Outcome {
    Outcome::err(e)
}

/// Events as the scheduler actor runs them: the handler, then the one
/// scheduling pass it may have asked for. (Tests and the simulation import
/// these by name, over the bare handlers.)
pub(super) mod step {
    use super::super::{self as core, Core, Effects, LostWorkerReason, NewWorker};
    use crate::ids::{ConnId, JobId, TaskId, WorkerId};
    use crate::protocol::{TaskReport, TaskSpec};

    pub fn on_worker_joined(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        conn: ConnId,
        w: NewWorker,
    ) -> WorkerId {
        let id = core::on_worker_joined(core, fx, now, conn, w);
        core.finish_step(fx);
        id
    }
    pub fn on_worker_lost(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        id: WorkerId,
        why: LostWorkerReason,
    ) {
        core::on_worker_lost(core, fx, now, id, why);
        core.finish_step(fx);
    }
    pub fn on_connection_closed(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId) {
        core::on_connection_closed(core, fx, now, conn);
        core.finish_step(fx);
    }
    pub fn on_heartbeat(core: &mut Core, fx: &mut impl Effects, now: u64, conn: ConnId, rss_kib: u64) {
        core::on_heartbeat(core, fx, now, conn, rss_kib);
        core.finish_step(fx);
    }
    pub fn on_reports(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        conn: ConnId,
        batch: u64,
        reports: Vec<TaskReport>,
    ) {
        core::on_reports(core, fx, now, conn, core::ReportsMsg { batch, reports });
        core.finish_step(fx);
    }
    pub fn on_submit(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        conn: ConnId,
        job: JobId,
        name: String,
        tasks: Vec<TaskSpec>,
    ) {
        on_submit_job(core, fx, now, conn, core::SubmitMsg::new(job, name, tasks));
    }
    pub fn on_submit_job(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        conn: ConnId,
        msg: core::SubmitMsg,
    ) {
        core::on_submit_job(core, fx, now, conn, msg);
        core.finish_step(fx);
    }
    pub fn on_tick(core: &mut Core, fx: &mut impl Effects, now: u64) {
        core::on_tick(core, fx, now);
        core.finish_step(fx);
    }
    pub fn on_deadline(core: &mut Core, fx: &mut impl Effects, now: u64) {
        core::on_deadline(core, now);
        core.finish_step(fx);
    }
    pub fn on_released(core: &mut Core, fx: &mut impl Effects, conn: ConnId, tasks: Vec<TaskId>) {
        core::on_released(core, conn, tasks);
        core.finish_step(fx);
    }
    pub fn on_worker_draining(core: &mut Core, fx: &mut impl Effects, conn: ConnId, returned: Vec<TaskId>) {
        core::on_worker_draining(core, conn, returned);
        core.finish_step(fx);
    }
    pub fn on_cancel(
        core: &mut Core,
        fx: &mut impl Effects,
        now: u64,
        conn: ConnId,
        job: JobId,
        keys: Vec<String>,
    ) {
        core::on_cancel(core, fx, now, conn, core::CancelMsg { job, keys });
        core.finish_step(fx);
    }
    pub fn on_retry(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
        core::on_retry(core, fx, conn, job);
        core.finish_step(fx);
    }
    pub fn on_forget(core: &mut Core, fx: &mut impl Effects, conn: ConnId, job: JobId) {
        core::on_forget(core, fx, conn, job);
        core.finish_step(fx);
    }
    pub fn on_retire_worker(core: &mut Core, fx: &mut impl Effects, conn: ConnId, worker: WorkerId) {
        core::on_retire_worker(core, fx, conn, worker);
        core.finish_step(fx);
    }
}
