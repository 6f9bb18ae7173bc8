//! One worker process of a nanny slot: `WorkerProc` starts it through the
//! spawn helper, watches its exit and its memory, and stops it (SIGTERM,
//! then SIGKILL after the grace) when the actor stops.

use super::msg::{NannyMsg, OverMemory, ENV_NANNY_PID, ENV_NANNY_SLOT};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::path::PathBuf;
use std::time::Duration;

pub enum WorkerProcMsg {
    Exited(String),
    CheckMemory,
}

pub struct WorkerProc;

pub struct WorkerProcArgs {
    pub(super) slot: u32,
    pub(super) exe: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) nanny: ActorRef<NannyMsg>,
    pub(super) memory_limit: Option<u64>,
    pub(super) memory_poll: Duration,
    pub(super) stop_grace: Duration,
}

pub struct WorkerProcState {
    slot: u32,
    pid: i32,
    waiter: Option<tokio::task::JoinHandle<()>>,
    exited: bool,
    memory_limit: Option<u64>,
    /// Set when this actor killed the worker for its memory use.
    killed_for: Option<String>,
    nanny: ActorRef<NannyMsg>,
    stop_grace: Duration,
}

impl Actor for WorkerProc {
    type Msg = WorkerProcMsg;
    type State = WorkerProcState;
    type Arguments = WorkerProcArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerProcMsg>,
        args: WorkerProcArgs,
    ) -> Result<WorkerProcState, ActorProcessingErr> {
        let mut cmd = std::process::Command::new(&args.exe);
        cmd.arg("worker")
            .args(&args.args)
            .env(ENV_NANNY_PID, std::process::id().to_string())
            .env(ENV_NANNY_SLOT, args.slot.to_string())
            .envs(args.env.iter().map(|(k, v)| (k, v)));
        // The worker dies with its nanny and leads its own process group.
        crate::process::supervised(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        let mut child =
            cmd.spawn().map_err(|e| format!("cannot start {} worker: {e}", args.exe.display()))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(slot = args.slot, pid, "worker process started");
        let _ = args.nanny.cast(NannyMsg::Started { slot: args.slot, pid });
        let me = myself.clone();
        let waiter = tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = me.cast(WorkerProcMsg::Exited(status));
        });
        if args.memory_limit.is_some() {
            myself.send_interval(args.memory_poll, || WorkerProcMsg::CheckMemory);
        }
        Ok(WorkerProcState {
            slot: args.slot,
            pid: pid as i32,
            waiter: Some(waiter),
            exited: false,
            memory_limit: args.memory_limit,
            killed_for: None,
            stop_grace: args.stop_grace,
            nanny: args.nanny,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerProcMsg>,
        msg: WorkerProcMsg,
        st: &mut WorkerProcState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerProcMsg::Exited(status) => {
                st.exited = true;
                let why = match st.killed_for.take() {
                    Some(reason) => reason,
                    None => format!("worker process {} exited: {status}", st.pid),
                };
                tracing::warn!(slot = st.slot, pid = st.pid, %status, "worker process exited");
                myself.stop(Some(why));
            }
            WorkerProcMsg::CheckMemory => {
                let (Some(limit), false) = (st.memory_limit, st.exited || st.killed_for.is_some()) else {
                    return Ok(());
                };
                let rss = tree_rss_bytes(st.pid);
                if rss > limit {
                    let reason = format!(
                        "worker process {} used {} of memory, over the limit of {}",
                        st.pid,
                        crate::util::format_size(rss),
                        crate::util::format_size(limit)
                    );
                    tracing::warn!(
                        slot = st.slot,
                        pid = st.pid,
                        rss,
                        limit,
                        "worker over its memory limit; restarting it"
                    );
                    // The scheduler hears why first, so the task's error says so.
                    let (done, sent) = tokio::sync::oneshot::channel();
                    let k = OverMemory { slot: st.slot, reason: reason.clone(), done };
                    if st.nanny.cast(NannyMsg::OverMemory(k)).is_ok() {
                        let _ = tokio::time::timeout(Duration::from_millis(500), sent).await;
                    }
                    st.killed_for = Some(reason);
                    crate::process::kill(st.pid as u32);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerProcMsg>,
        st: &mut WorkerProcState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(mut waiter) = st.waiter.take() else { return Ok(()) };
        if st.exited || st.pid <= 0 {
            return Ok(());
        }
        let exited = async {
            let _ = (&mut waiter).await;
        };
        if !crate::process::stop_async(st.pid as u32, st.stop_grace, exited).await {
            tracing::warn!(
                slot = st.slot,
                pid = st.pid,
                "worker did not stop within the grace period; killed it"
            );
        }
        Ok(())
    }
}

/// Resident memory of a process and all its descendants (cmd tasks), in bytes.
pub fn tree_rss_bytes(pid: i32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += crate::util::proc_rss_kib(&p.to_string()) * 1024;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
                }
            }
        }
    }
    total
}
