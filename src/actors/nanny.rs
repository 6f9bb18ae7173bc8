//! The nanny: one `WorkerProc` actor per worker process, supervised by the
//! `Nanny` actor, which restarts a slot whose process exits (at once, then
//! with exponential backoff), gives up on a slot past its restart intensity,
//! and restarts workers over the memory limit. A link task keeps the
//! scheduler told about every slot. Workers die with the nanny
//! (`PR_SET_PDEATHSIG`).

use crate::protocol::conn::{decode, encode, next_frame};
use crate::protocol::{Conn, FromNanny, Role, SlotInfo, SlotState, ToNanny, DEFAULT_MAX_FRAME};
use futures::SinkExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Environment a nanny gives its workers: its pid and their slot.
pub const ENV_NANNY_PID: &str = "ACTORD_NANNY_PID";
pub const ENV_NANNY_SLOT: &str = "ACTORD_NANNY_SLOT";

#[derive(Clone, Debug)]
pub struct NannyOptions {
    /// The binary to run as `exe worker …` (normally this one).
    pub exe: PathBuf,
    /// Arguments after `worker`.
    pub worker_args: Vec<String>,
    /// Extra arguments and environment for each slot's worker (e.g. its GPUs).
    pub per_slot: Vec<SlotExtra>,
    pub workers: u32,
    /// Where the scheduler is, for the nanny's own registration.
    pub scheduler_file: PathBuf,
    /// Restart intensity: at most `max_restarts` per slot within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// First delay when a worker keeps dying; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Restart a worker whose process tree's RSS exceeds this many bytes.
    pub memory_limit: Option<u64>,
    pub memory_poll: Duration,
    /// How long a worker may take to drain after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// A worker that dies sooner than this after starting is in a crash loop
    /// and backs off; one that lived longer is restarted at once.
    pub min_uptime: Duration,
    /// Set when the scheduler said it shuts down for good and the nanny
    /// stopped for that (not a failure).
    pub dismissed: Arc<AtomicBool>,
}

/// A slot's own worker arguments and environment.
pub type SlotExtra = (Vec<String>, Vec<(String, String)>);

pub enum NannyMsg {
    /// A worker process of this slot is up.
    Started { slot: u32, pid: u32 },
    /// The backoff of a slot is over: start its worker.
    Respawn(u32),
    /// An operator asked (through the scheduler) to restart this slot's worker.
    RestartWorker(u32),
    /// An operator asked to retire this slot's worker: SIGTERM (the worker
    /// drains, however long its running tasks take), no restart.
    RetireWorker(u32),
    /// Stop every worker (SIGTERM, then SIGKILL after the grace), then the nanny.
    Shutdown,
    /// A slot's worker is over the memory limit: tell the scheduler why
    /// before it is killed (`done` once that is sent, or dropped).
    OverMemory(OverMemory),
}

/// A worker about to be killed for its memory, on its way to the scheduler.
pub struct OverMemory {
    slot: u32,
    reason: String,
    done: tokio::sync::oneshot::Sender<()>,
}

pub struct Nanny;

struct Slot {
    actor: Option<ActorRef<WorkerProcMsg>>,
    /// Restarts within the restart window, oldest first.
    recent: VecDeque<Instant>,
    total_restarts: u32,
    /// The next exit was asked for: restart at once, not counted.
    requested: bool,
    /// When the current worker was started, to tell a crash loop from a
    /// worker that ran fine for a while.
    started: Instant,
    /// Deaths in a row within `min_uptime` of starting.
    quick_deaths: u32,
    /// Pid of the current worker process (0 before it started).
    pid: u32,
    /// Retired by an operator: left empty when its worker exits.
    retired: bool,
}

pub struct NannyState {
    opts: NannyOptions,
    slots: Vec<Slot>,
    stopping: bool,
    /// Slot changes for the scheduler link.
    events: mpsc::UnboundedSender<SlotInfo>,
    /// Workers about to be killed for their memory, for the scheduler link.
    over_memory: mpsc::UnboundedSender<OverMemory>,
    link: tokio::task::JoinHandle<()>,
}

impl NannyState {
    fn tell(&self, slot: u32, state: SlotState) {
        let restarts = self.slots[slot as usize].total_restarts;
        let _ = self.events.send(SlotInfo { slot, state, restarts });
    }
}

async fn spawn_slot(
    myself: &ActorRef<NannyMsg>,
    opts: &NannyOptions,
    slot: u32,
) -> Result<ActorRef<WorkerProcMsg>, ActorProcessingErr> {
    let (extra, env) = opts.per_slot.get(slot as usize).cloned().unwrap_or_default();
    let args = WorkerProcArgs {
        slot,
        exe: opts.exe.clone(),
        args: opts.worker_args.iter().cloned().chain(extra).collect(),
        env,
        nanny: myself.clone(),
        memory_limit: opts.memory_limit,
        memory_poll: opts.memory_poll,
        stop_grace: opts.stop_grace,
    };
    let (actor, _) = Actor::spawn_linked(None, WorkerProc, args, myself.get_cell()).await?;
    Ok(actor)
}

/// Delay before restarting a slot after `recent` quick deaths in a row
/// beyond the first.
fn backoff(opts: &NannyOptions, recent: usize) -> Duration {
    if recent == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (recent - 1).min(16);
    (opts.backoff_base * factor).min(opts.backoff_max)
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
        let (events, rx) = mpsc::unbounded_channel();
        let (over_memory, kills) = mpsc::unbounded_channel();
        let link = tokio::spawn(link_loop(
            opts.scheduler_file.clone(),
            opts.workers,
            (rx, kills),
            myself.clone(),
            opts.dismissed.clone(),
        ));
        let mut slots = Vec::new();
        for slot in 0..opts.workers {
            let actor = spawn_slot(&myself, &opts, slot).await?;
            slots.push(Slot {
                actor: Some(actor),
                recent: VecDeque::new(),
                total_restarts: 0,
                requested: false,
                started: Instant::now(),
                quick_deaths: 0,
                pid: 0,
                retired: false,
            });
        }
        tracing::info!(workers = opts.workers, "nanny started its workers");
        Ok(NannyState { opts, slots, stopping: false, events, over_memory, link })
    }

    async fn handle(
        &self,
        myself: ActorRef<NannyMsg>,
        msg: NannyMsg,
        st: &mut NannyState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NannyMsg::Started { slot, pid } => {
                if let Some(s) = st.slots.get_mut(slot as usize) {
                    s.pid = pid;
                }
                st.tell(slot, SlotState::Running { pid })
            }
            NannyMsg::RetireWorker(slot) => {
                let Some(s) = st.slots.get_mut(slot as usize) else {
                    tracing::warn!(slot, "retire asked for a slot this nanny does not have");
                    return Ok(());
                };
                if s.actor.is_some() && s.pid > 0 && !s.retired {
                    tracing::info!(
                        slot,
                        pid = s.pid,
                        "retiring the worker as asked: it drains, then its slot stays empty"
                    );
                    s.retired = true;
                    signal(s.pid as i32, nix::sys::signal::Signal::SIGTERM);
                }
            }
            NannyMsg::Respawn(slot) => {
                let s = &st.slots[slot as usize];
                if !st.stopping && s.actor.is_none() {
                    let actor = spawn_slot(&myself, &st.opts, slot).await?;
                    let s = &mut st.slots[slot as usize];
                    s.actor = Some(actor);
                    s.started = Instant::now();
                }
            }
            NannyMsg::RestartWorker(slot) => {
                let Some(s) = st.slots.get_mut(slot as usize) else {
                    tracing::warn!(slot, "restart asked for a slot this nanny does not have");
                    return Ok(());
                };
                tracing::info!(slot, "restarting the worker as asked");
                s.retired = false;
                match &s.actor {
                    Some(a) => {
                        s.requested = true;
                        a.stop(Some("restart requested".into()));
                    }
                    None if !st.stopping => {
                        // A failed slot gets a fresh start.
                        s.recent.clear();
                        s.quick_deaths = 0;
                        s.actor = Some(spawn_slot(&myself, &st.opts, slot).await?);
                        s.started = Instant::now();
                    }
                    None => {}
                }
            }
            NannyMsg::OverMemory(k) => {
                let _ = st.over_memory.send(k);
            }
            NannyMsg::Shutdown => {
                st.stopping = true;
                for slot in &mut st.slots {
                    if let Some(a) = slot.actor.take() {
                        let _ = a.stop_and_wait(None, Some(st.opts.stop_grace * 2)).await;
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
        let slot = idx as u32;
        let opts = st.opts.clone();
        let s = &mut st.slots[idx];
        s.actor = None;
        s.pid = 0;
        if s.retired {
            tracing::info!(slot, "retired worker exited; its slot stays empty");
            st.tell(slot, SlotState::Retired);
            return Ok(());
        }
        // Policy: an asked-for restart is immediate and not counted; otherwise
        // restart at once, then with doubling delays while the slot keeps
        // dying; past `max_restarts` within `restart_window`, give up on it.
        if std::mem::take(&mut s.requested) {
            s.actor = Some(spawn_slot(&myself, &opts, slot).await?);
            s.started = Instant::now();
            return Ok(());
        }
        let now = Instant::now();
        if now.duration_since(s.started) < opts.min_uptime {
            s.quick_deaths += 1;
        } else {
            s.quick_deaths = 0;
        }
        while s.recent.front().is_some_and(|t| now.duration_since(*t) > opts.restart_window) {
            s.recent.pop_front();
        }
        if s.recent.len() as u32 >= opts.max_restarts {
            let reason = format!(
                "worker exited {} times within {:?}; last: {why}",
                s.recent.len() + 1,
                opts.restart_window
            );
            tracing::error!(slot, %reason, "worker slot failed: not restarting it");
            st.tell(slot, SlotState::Failed { reason });
            return Ok(());
        }
        let delay = backoff(&opts, s.quick_deaths.saturating_sub(1) as usize);
        s.recent.push_back(now);
        s.total_restarts += 1;
        tracing::warn!(slot, restart_in_ms = delay.as_millis() as u64, reason = %why, "worker exited; restarting it");
        st.tell(slot, SlotState::Restarting { in_ms: delay.as_millis() as u64, last_exit: why });
        if delay.is_zero() {
            st.slots[idx].actor = Some(spawn_slot(&myself, &opts, slot).await?);
            st.slots[idx].started = Instant::now();
        } else {
            myself.send_after(delay, move || NannyMsg::Respawn(slot));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NannyMsg>,
        st: &mut NannyState,
    ) -> Result<(), ActorProcessingErr> {
        st.link.abort();
        Ok(())
    }
}

/// Keeps the nanny registered with the scheduler: reconnects (re-reading
/// the scheduler file) when it is lost, re-sends the slots' state, forwards
/// slot changes and the scheduler's restart requests.
async fn link_loop(
    file: PathBuf,
    workers: u32,
    (mut events, mut kills): (mpsc::UnboundedReceiver<SlotInfo>, mpsc::UnboundedReceiver<OverMemory>),
    nanny: ActorRef<NannyMsg>,
    dismissed: Arc<AtomicBool>,
) {
    let mut slots: BTreeMap<u32, SlotInfo> = (0..workers)
        .map(|slot| (slot, SlotInfo { slot, state: SlotState::Running { pid: 0 }, restarts: 0 }))
        .collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let f = crate::schedfile::wait_for_file(&file, Duration::from_secs(3600)).await?;
            Conn::connect(f.socket_addr(), Role::Nanny, &f.auth(), DEFAULT_MAX_FRAME, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())
        };
        let mut conn = match connected.await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!(error = %e, "nanny cannot reach the scheduler yet");
                // Apply slot changes meanwhile, so the next Register is current.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        ev = events.recv() => match ev {
                            Some(info) => { slots.insert(info.slot, info); }
                            None => return,
                        },
                        // No scheduler to tell: let the kill go ahead.
                        Some(k) = kills.recv() => drop(k),
                    }
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let register = FromNanny::Register {
            host: crate::util::hostname(),
            pid: std::process::id(),
            slots: slots.values().cloned().collect(),
        };
        if conn.write(&register).await.is_err() {
            continue;
        }
        let (mut sink, mut stream) = conn.into_split();
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(info) = ev else { return };
                    slots.insert(info.slot, info.clone());
                    let Ok(frame) = encode(&FromNanny::Slot { info }) else { continue };
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
                Some(k) = kills.recv() => {
                    let msg = FromNanny::OverMemory { slot: k.slot, reason: k.reason };
                    let Ok(frame) = encode(&msg) else { continue };
                    let sent = sink.send(frame).await;
                    let _ = k.done.send(());
                    if sent.is_err() {
                        break;
                    }
                }
                frame = next_frame(&mut stream) => {
                    let Ok(frame) = frame else { break };
                    match decode::<ToNanny>(&frame) {
                        Ok(ToNanny::Registered { nanny: id }) => tracing::info!(nanny = id, "nanny registered with the scheduler"),
                        Ok(ToNanny::RestartWorker { slot }) => {
                            let _ = nanny.cast(NannyMsg::RestartWorker(slot));
                        }
                        Ok(ToNanny::RetireWorker { slot }) => {
                            let _ = nanny.cast(NannyMsg::RetireWorker(slot));
                        }
                        Ok(ToNanny::Shutdown) => {
                            tracing::info!("the scheduler shuts down for good; stopping the workers");
                            dismissed.store(true, Ordering::SeqCst);
                            let _ = nanny.cast(NannyMsg::Shutdown);
                            return;
                        }
                        Ok(ToNanny::Error { message }) => tracing::warn!(message = ?message, "scheduler reports an error"),
                        Err(e) => tracing::warn!(error = %e, "ignoring a message this nanny does not understand"),
                    }
                }
            }
        }
        tracing::warn!("nanny lost the scheduler; reconnecting (workers keep running)");
    }
}

pub enum WorkerProcMsg {
    Exited(String),
    CheckMemory,
}

pub struct WorkerProc;

pub struct WorkerProcArgs {
    slot: u32,
    exe: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nanny: ActorRef<NannyMsg>,
    memory_limit: Option<u64>,
    memory_poll: Duration,
    stop_grace: Duration,
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
        let mut cmd = tokio::process::Command::new(&args.exe);
        cmd.arg("worker")
            .args(&args.args)
            .env(ENV_NANNY_PID, std::process::id().to_string())
            .env(ENV_NANNY_SLOT, args.slot.to_string())
            .envs(args.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: prctl is async-signal-safe; the worker dies with its nanny.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
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
                    signal(st.pid, nix::sys::signal::Signal::SIGKILL);
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
        signal(st.pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(st.stop_grace, &mut waiter).await.is_err() {
            tracing::warn!(
                slot = st.slot,
                pid = st.pid,
                "worker did not stop within the grace period; killing it"
            );
            signal(st.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waiter.await;
        }
        Ok(())
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let opts = NannyOptions {
            exe: PathBuf::new(),
            worker_args: vec![],
            per_slot: vec![],
            workers: 1,
            scheduler_file: PathBuf::new(),
            max_restarts: 5,
            restart_window: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            memory_limit: None,
            memory_poll: Duration::from_secs(1),
            stop_grace: Duration::from_secs(5),
            min_uptime: Duration::from_secs(1),
            dismissed: Default::default(),
        };
        let delays: Vec<u128> = (0..7).map(|n| backoff(&opts, n).as_millis()).collect();
        assert_eq!(delays, vec![0, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn rss_of_this_process_is_seen() {
        let rss = tree_rss_bytes(std::process::id() as i32);
        assert!(rss > 1 << 20, "{rss}");
    }
}
