//! The nanny: one `WorkerProc` actor per worker process, supervised by the
//! `Nanny` actor, which restarts a slot whose process exits (at once, then
//! with exponential backoff), gives up on a slot past its restart intensity,
//! and restarts workers over the memory limit. A linked `Link` actor keeps
//! the scheduler told about every slot (`link`). Workers die with the nanny
//! (`crate::process`: `PR_SET_PDEATHSIG`, their own process group).

mod link;
mod msg;
mod proc;

pub use msg::{NannyMsg, OverMemory, ENV_NANNY_PID, ENV_NANNY_SLOT};

use link::LinkHandle;
pub use proc::tree_rss_bytes;
use proc::{WorkerProc, WorkerProcArgs, WorkerProcMsg};

use crate::protocol::{SlotInfo, SlotState};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// When its workers drain for the end of the allocation: a worker that
    /// exits after that is not started again, and once none is left the
    /// nanny exits (as dismissed).
    pub drain_at: Option<std::time::SystemTime>,
    /// Set when the scheduler said it shuts down for good and the nanny
    /// stopped for that (not a failure).
    pub dismissed: Arc<AtomicBool>,
}

/// A slot's own worker arguments and environment.
pub type SlotExtra = (Vec<String>, Vec<(String, String)>);

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

impl Slot {
    fn new(actor: Option<ActorRef<WorkerProcMsg>>) -> Slot {
        Slot {
            actor,
            recent: VecDeque::new(),
            total_restarts: 0,
            requested: false,
            started: Instant::now(),
            quick_deaths: 0,
            pid: 0,
            retired: false,
        }
    }
}

/// The most slots a nanny keeps (`ctl scale` adds slots one past the last).
const MAX_SLOTS: usize = crate::core::MAX_SCALE as usize;

/// How long after its link failed the nanny starts a new one.
const LINK_RESTART: Duration = Duration::from_secs(1);

pub struct NannyState {
    opts: NannyOptions,
    slots: Vec<Slot>,
    stopping: bool,
    /// The scheduler link: slot changes and over-memory kills go there.
    link: LinkHandle,
    /// What the link was last told about each slot, for a new link.
    told: BTreeMap<u32, SlotInfo>,
}

impl NannyState {
    fn tell(&mut self, slot: u32, state: SlotState) {
        let restarts = self.slots[slot as usize].total_restarts;
        let info = SlotInfo { slot, state, restarts };
        self.told.insert(slot, info.clone());
        let _ = self.link.events.send(info);
    }

    /// Policy: a worker that exits once the allocation's end is near is
    /// not started again; once none is left, the nanny exits (status 0).
    fn left_at_walltime(&mut self, myself: &ActorRef<NannyMsg>, slot: u32, why: &str) {
        tracing::info!(slot, reason = %why, "worker exited as the allocation ends; not restarting it");
        self.slots[slot as usize].retired = true;
        self.tell(slot, SlotState::Retired);
        if self.slots.iter().all(|s| s.actor.is_none()) {
            tracing::info!("every worker has left before the end of the allocation; the nanny exits");
            self.opts.dismissed.store(true, std::sync::atomic::Ordering::SeqCst);
            myself.stop(None);
        }
    }

    /// A new scheduler link, knowing the slots as last told.
    async fn restart_link(&mut self, myself: &ActorRef<NannyMsg>) -> Result<(), ActorProcessingErr> {
        let slots = self.told.values().cloned().collect();
        let file = self.opts.scheduler_file.clone();
        // The old one is gone; should it not be, it must not talk for us.
        self.link.actor.kill();
        self.link = link::start(myself, file, slots, self.opts.dismissed.clone()).await?;
        tracing::info!("nanny started a new scheduler link");
        Ok(())
    }

    /// `ctl scale`: a retired slot gets a worker again (one still draining
    /// is kept instead), a slot right after the last one is added.
    async fn start_workers(
        &mut self,
        myself: &ActorRef<NannyMsg>,
        slots: Vec<u32>,
    ) -> Result<(), ActorProcessingErr> {
        for slot in slots {
            let idx = slot as usize;
            if idx == self.slots.len() && idx < MAX_SLOTS {
                self.slots.push(Slot::new(None));
            }
            let Some(s) = self.slots.get_mut(idx) else {
                tracing::warn!(
                    slot,
                    slots = self.slots.len(),
                    "asked to start a worker in a slot out of range"
                );
                continue;
            };
            if self.stopping || (s.actor.is_some() && !s.retired) {
                continue;
            }
            s.retired = false;
            let pid = s.pid;
            if s.actor.is_some() {
                // Still draining after a retire: it exits, and comes back at once.
                s.requested = true;
                self.tell(slot, SlotState::Running { pid });
                continue;
            }
            s.recent.clear();
            s.quick_deaths = 0;
            s.actor = Some(spawn_slot(myself, &self.opts, slot).await?);
            s.started = Instant::now();
            tracing::info!(slot, "starting a worker as asked (scale)");
            self.tell(slot, SlotState::Running { pid: 0 });
        }
        Ok(())
    }

    /// An operator retired a slot: its worker drains (SIGTERM) and is not
    /// restarted; a slot without a worker process right now stays empty.
    fn retire(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            tracing::warn!(slot, "retire asked for a slot this nanny does not have");
            return;
        };
        if s.retired {
            return;
        }
        s.retired = true;
        s.requested = false;
        match (&s.actor, s.pid) {
            (Some(_), 0) => tracing::info!(slot, "retiring a worker that is starting: it stops once up"),
            (Some(_), pid) => {
                tracing::info!(
                    slot,
                    pid,
                    "retiring the worker as asked: it drains, then its slot stays empty"
                );
                crate::process::terminate(pid);
            }
            (None, _) => {
                tracing::info!(slot, "retiring an empty slot: it stays empty");
                self.tell(slot, SlotState::Retired);
            }
        }
    }
}

/// Policy: a link that ended by itself (the scheduler dismissed the nanny)
/// stays ended; one that failed is started again after `LINK_RESTART`,
/// knowing the slots as last told, while the workers keep running.
fn link_ended(myself: &ActorRef<NannyMsg>, failed: bool, why: &str) {
    if !failed {
        tracing::debug!(reason = ?why, "the nanny's scheduler link ended");
        return;
    }
    tracing::error!(
        error = %why,
        restart_in_ms = LINK_RESTART.as_millis() as u64,
        "the nanny's scheduler link failed; starting a new one"
    );
    myself.send_after(LINK_RESTART, || NannyMsg::RestartLink);
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
        let told: BTreeMap<u32, SlotInfo> = (0..opts.workers)
            .map(|slot| (slot, SlotInfo { slot, state: SlotState::Running { pid: 0 }, restarts: 0 }))
            .collect();
        let link = link::start(
            &myself,
            opts.scheduler_file.clone(),
            told.values().cloned().collect(),
            opts.dismissed.clone(),
        )
        .await?;
        let mut slots = Vec::new();
        for slot in 0..opts.workers {
            let actor = spawn_slot(&myself, &opts, slot).await?;
            slots.push(Slot::new(Some(actor)));
        }
        tracing::info!(workers = opts.workers, "nanny started its workers");
        Ok(NannyState { opts, slots, stopping: false, link, told })
    }

    async fn handle(
        &self,
        myself: ActorRef<NannyMsg>,
        msg: NannyMsg,
        st: &mut NannyState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NannyMsg::Started { slot, pid } => {
                let Some(s) = st.slots.get_mut(slot as usize) else { return Ok(()) };
                s.pid = pid;
                if s.retired {
                    // Retired while it started: it drains (it has nothing yet) and stops.
                    crate::process::terminate(pid);
                } else {
                    st.tell(slot, SlotState::Running { pid })
                }
            }
            NannyMsg::StartWorkers(slots) => st.start_workers(&myself, slots).await?,
            NannyMsg::RetireWorker(slot) => st.retire(slot),
            NannyMsg::Respawn(slot) => {
                let s = &st.slots[slot as usize];
                if !st.stopping && s.actor.is_none() && !s.retired {
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
                let _ = st.link.over_memory.send(k);
            }
            NannyMsg::RestartLink if !st.stopping => st.restart_link(&myself).await?,
            NannyMsg::RestartLink => {}
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
        let (cell, why, failed) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_default(), false),
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), true),
            _ => return Ok(()),
        };
        if st.stopping {
            return Ok(());
        }
        if cell.get_id() == st.link.actor.get_id() {
            link_ended(&myself, failed, &why);
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
        if opts.drain_at.is_some_and(|t| std::time::SystemTime::now() >= t) {
            st.left_at_walltime(&myself, slot, &why);
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
        let _ = st.link.actor.kill_and_wait(None).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(workers: u32, scheduler_file: PathBuf) -> NannyOptions {
        NannyOptions {
            exe: PathBuf::new(),
            worker_args: vec![],
            per_slot: vec![],
            workers,
            scheduler_file,
            max_restarts: 5,
            restart_window: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            memory_limit: None,
            memory_poll: Duration::from_secs(1),
            stop_grace: Duration::from_secs(5),
            min_uptime: Duration::from_secs(1),
            drain_at: None,
            dismissed: Default::default(),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let opts = options(1, PathBuf::new());
        let delays: Vec<u128> = (0..7).map(|n| backoff(&opts, n).as_millis()).collect();
        assert_eq!(delays, vec![0, 100, 200, 400, 800, 1000, 1000]);
    }

    /// The scheduler link is a child actor of the nanny, and a new link
    /// replaces the old one (which is stopped), still as its child.
    #[tokio::test]
    async fn the_link_is_a_child_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(0, dir.path().join("no-scheduler.json"));
        let (nanny, handle) = Actor::spawn(None, Nanny, opts).await.unwrap();
        let children = nanny.get_children();
        assert_eq!(children.len(), 1, "the link is the nanny's only child");
        let old = children[0].clone();
        nanny.cast(NannyMsg::RestartLink).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = nanny.get_children();
            if now.len() == 1 && now[0].get_id() != old.get_id() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no new link: {:?}",
                now.iter().map(|c| c.get_id()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(old.get_status(), ractor::ActorStatus::Stopped);
        nanny.stop(None);
        handle.await.unwrap();
        assert!(nanny.get_children().is_empty());
    }

    #[test]
    fn rss_of_this_process_is_seen() {
        let rss = tree_rss_bytes(std::process::id() as i32);
        assert!(rss > 1 << 20, "{rss}");
    }
}
