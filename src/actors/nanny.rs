//! The nanny: one `WorkerProc` actor per worker process, supervised by the
//! `Nanny` actor, which restarts a slot whose process exits on its own.
//! Worker processes die with the nanny (`PR_SET_PDEATHSIG`).

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Environment a nanny gives its workers: its pid and their slot.
pub const ENV_NANNY_PID: &str = "ACTORD_NANNY_PID";
pub const ENV_NANNY_SLOT: &str = "ACTORD_NANNY_SLOT";

/// How long a worker may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct NannyOptions {
    /// The binary to run as `exe worker …` (normally this one).
    pub exe: PathBuf,
    /// Arguments after `worker`.
    pub worker_args: Vec<String>,
    pub workers: u32,
    /// Restart intensity: at most `max_restarts` per slot within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

pub enum NannyMsg {
    /// Stop every worker (SIGTERM, then SIGKILL after a grace), then the nanny.
    Shutdown,
}

pub struct Nanny;

struct Slot {
    actor: Option<ActorRef<WorkerProcMsg>>,
    restarts: VecDeque<Instant>,
}

pub struct NannyState {
    opts: NannyOptions,
    slots: Vec<Slot>,
    stopping: bool,
}

async fn spawn_slot(
    myself: &ActorRef<NannyMsg>,
    opts: &NannyOptions,
    slot: u32,
) -> Result<ActorRef<WorkerProcMsg>, ActorProcessingErr> {
    let args = WorkerProcArgs { slot, exe: opts.exe.clone(), args: opts.worker_args.clone() };
    let (actor, _) = Actor::spawn_linked(None, WorkerProc, args, myself.get_cell()).await?;
    Ok(actor)
}

impl Actor for Nanny {
    type Msg = NannyMsg;
    type State = NannyState;
    type Arguments = NannyOptions;

    async fn pre_start(
        &self,
        myself: ActorRef<NannyMsg>,
        opts: NannyOptions,
    ) -> Result<NannyState, ActorProcessingErr> {
        let mut slots = Vec::new();
        for slot in 0..opts.workers {
            let actor = spawn_slot(&myself, &opts, slot).await?;
            slots.push(Slot { actor: Some(actor), restarts: VecDeque::new() });
        }
        tracing::info!(workers = opts.workers, "nanny started its workers");
        Ok(NannyState { opts, slots, stopping: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<NannyMsg>,
        msg: NannyMsg,
        st: &mut NannyState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NannyMsg::Shutdown => {
                st.stopping = true;
                for slot in &mut st.slots {
                    if let Some(a) = slot.actor.take() {
                        let _ = a.stop_and_wait(None, Some(STOP_GRACE * 2)).await;
                    }
                }
                tracing::info!("nanny stopped its workers");
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NannyMsg>,
        evt: SupervisionEvent,
        st: &mut NannyState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_default()),
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            _ => return Ok(()),
        };
        if st.stopping {
            return Ok(());
        }
        let Some(idx) =
            st.slots.iter().position(|s| s.actor.as_ref().map(|a| a.get_id()) == Some(cell.get_id()))
        else {
            return Ok(());
        };
        // Policy: restart at once while the slot stays within its restart
        // intensity; past it, report the slot failed and leave it empty.
        let slot = &mut st.slots[idx];
        slot.actor = None;
        let now = Instant::now();
        while slot.restarts.front().is_some_and(|t| now.duration_since(*t) > st.opts.restart_window) {
            slot.restarts.pop_front();
        }
        if slot.restarts.len() as u32 >= st.opts.max_restarts {
            tracing::error!(
                slot = idx,
                restarts = slot.restarts.len(),
                window = ?st.opts.restart_window,
                reason = %why,
                "worker slot failed: too many restarts, not restarting"
            );
            return Ok(());
        }
        slot.restarts.push_back(now);
        tracing::warn!(slot = idx, reason = %why, "worker exited; restarting it");
        slot.actor = Some(spawn_slot(&myself, &st.opts, idx as u32).await?);
        Ok(())
    }
}

pub enum WorkerProcMsg {
    Exited(String),
}

pub struct WorkerProc;

pub struct WorkerProcArgs {
    slot: u32,
    exe: PathBuf,
    args: Vec<String>,
}

pub struct WorkerProcState {
    slot: u32,
    pid: i32,
    waiter: Option<tokio::task::JoinHandle<()>>,
    exited: bool,
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
        let mut cmd = tokio::process::Command::new(&args.exe);
        cmd.arg("worker")
            .args(&args.args)
            .env(ENV_NANNY_PID, std::process::id().to_string())
            .env(ENV_NANNY_SLOT, args.slot.to_string());
        // SAFETY: prctl is async-signal-safe; the worker dies with its nanny.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| format!("cannot start {} worker: {e}", args.exe.display()))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        tracing::info!(slot = args.slot, pid, "worker process started");
        let waiter = tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = myself.cast(WorkerProcMsg::Exited(status));
        });
        Ok(WorkerProcState { slot: args.slot, pid, waiter: Some(waiter), exited: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerProcMsg>,
        msg: WorkerProcMsg,
        st: &mut WorkerProcState,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerProcMsg::Exited(status) = msg;
        st.exited = true;
        tracing::warn!(slot = st.slot, pid = st.pid, %status, "worker process exited");
        myself.stop(Some(format!("worker process {} exited: {status}", st.pid)));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerProcMsg>,
        st: &mut WorkerProcState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(mut waiter) = st.waiter.take() else {
            return Ok(());
        };
        if st.exited || st.pid <= 0 {
            return Ok(());
        }
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(st.pid);
        let _ = kill(pid, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, &mut waiter).await.is_err() {
            tracing::warn!(slot = st.slot, pid = st.pid, "worker ignored SIGTERM; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waiter.await;
        }
        Ok(())
    }
}
