//! The nanny's link to the scheduler, as the `Link` actor (the `Nanny`'s
//! linked child): registers the nanny, keeps the scheduler told about every
//! slot, forwards the scheduler's requests.

use super::msg::{NannyMsg, OverMemory};
use crate::protocol::conn::{decode, encode, next_frame};
use crate::protocol::{Conn, FromNanny, Role, SlotInfo, ToNanny, DEFAULT_MAX_FRAME};
use futures::SinkExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) enum LinkMsg {
    /// Run the link until the nanny is gone or the scheduler dismissed it.
    Run,
}

/// The `Nanny`'s end of its link: the actor, and where slot changes and
/// over-memory kills go.
pub(super) struct LinkHandle {
    pub actor: ActorRef<LinkMsg>,
    pub events: mpsc::UnboundedSender<SlotInfo>,
    pub over_memory: mpsc::UnboundedSender<OverMemory>,
}

pub(super) struct LinkActor;

pub(super) struct LinkArgs {
    file: PathBuf,
    /// Every slot's last known state, sent on the first registration.
    slots: Vec<SlotInfo>,
    events: mpsc::UnboundedReceiver<SlotInfo>,
    kills: mpsc::UnboundedReceiver<OverMemory>,
    nanny: ActorRef<NannyMsg>,
    dismissed: Arc<AtomicBool>,
}

/// Starts the link as a child of `nanny`, knowing the slots as `slots`.
pub(super) async fn start(
    nanny: &ActorRef<NannyMsg>,
    file: PathBuf,
    slots: Vec<SlotInfo>,
    dismissed: Arc<AtomicBool>,
) -> Result<LinkHandle, ActorProcessingErr> {
    let (events, rx) = mpsc::unbounded_channel();
    let (over_memory, kills) = mpsc::unbounded_channel();
    let args = LinkArgs { file, slots, events: rx, kills, nanny: nanny.clone(), dismissed };
    let (actor, _) = Actor::spawn_linked(None, LinkActor, args, nanny.get_cell()).await?;
    Ok(LinkHandle { actor, events, over_memory })
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    /// Taken by the one `Run`.
    type State = Option<LinkArgs>;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> Result<Option<LinkArgs>, ActorProcessingErr> {
        myself.cast(LinkMsg::Run)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        _: LinkMsg,
        st: &mut Option<LinkArgs>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(args) = st.take() {
            link_loop(args).await;
            myself.stop(Some("link done".into()));
        }
        Ok(())
    }
}

/// Keeps the nanny registered with the scheduler: reconnects (re-reading
/// the scheduler file) when it is lost, re-sends the slots' state, forwards
/// slot changes and the scheduler's restart requests.
async fn link_loop(args: LinkArgs) {
    let LinkArgs { file, slots, events, kills, nanny, dismissed } = args;
    let slots = slots.into_iter().map(|info| (info.slot, info)).collect();
    let mut link = Link { slots, events, kills, nanny, dismissed };
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let f = crate::schedfile::wait_for_file(&file, Duration::from_secs(3600)).await?;
            Conn::connect(f.socket_addr(), Role::Nanny, &f.auth(), DEFAULT_MAX_FRAME, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())
        };
        let conn = match connected.await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!(error = %e, "nanny cannot reach the scheduler yet");
                if !link.wait(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if !link.serve(conn).await {
            return;
        }
        tracing::warn!("nanny lost the scheduler; reconnecting (workers keep running)");
    }
}

struct Link {
    /// Every slot's last state, sent again on each registration.
    slots: BTreeMap<u32, SlotInfo>,
    events: mpsc::UnboundedReceiver<SlotInfo>,
    kills: mpsc::UnboundedReceiver<OverMemory>,
    nanny: ActorRef<NannyMsg>,
    dismissed: Arc<AtomicBool>,
}

impl Link {
    /// Waits `backoff`, applying slot changes meanwhile so the next
    /// Register is current. `false`: the nanny is gone.
    async fn wait(&mut self, backoff: Duration) -> bool {
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return true,
                ev = self.events.recv() => match ev {
                    Some(info) => { self.slots.insert(info.slot, info); }
                    None => return false,
                },
                // No scheduler to tell: let the kill go ahead.
                Some(k) = self.kills.recv() => drop(k),
            }
        }
    }

    /// Registers and serves one connection. `false`: the link is done (the
    /// nanny is gone, or the scheduler dismissed it); `true`: reconnect.
    async fn serve(&mut self, mut conn: Conn) -> bool {
        let register = FromNanny::Register {
            host: crate::util::hostname(),
            pid: std::process::id(),
            slots: self.slots.values().cloned().collect(),
        };
        if conn.write(&register).await.is_err() {
            return true;
        }
        let (mut sink, mut stream) = conn.into_split();
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(info) = ev else { return false };
                    self.slots.insert(info.slot, info.clone());
                    let Ok(frame) = encode(&FromNanny::Slot { info }) else { continue };
                    if sink.send(frame).await.is_err() {
                        return true;
                    }
                }
                Some(k) = self.kills.recv() => {
                    let msg = FromNanny::OverMemory { slot: k.slot, reason: k.reason };
                    let Ok(frame) = encode(&msg) else { continue };
                    let sent = sink.send(frame).await;
                    let _ = k.done.send(());
                    if sent.is_err() {
                        return true;
                    }
                }
                frame = next_frame(&mut stream) => {
                    let Ok(frame) = frame else { return true };
                    if !self.on_frame(&frame) {
                        return false;
                    }
                }
            }
        }
    }

    /// `false`: the scheduler dismissed the nanny.
    fn on_frame(&self, frame: &[u8]) -> bool {
        match decode::<ToNanny>(frame) {
            Ok(ToNanny::Registered { nanny: id }) => {
                tracing::info!(nanny = id, "nanny registered with the scheduler")
            }
            Ok(ToNanny::RestartWorker { slot }) => {
                let _ = self.nanny.cast(NannyMsg::RestartWorker(slot));
            }
            Ok(ToNanny::RetireWorker { slot }) => {
                let _ = self.nanny.cast(NannyMsg::RetireWorker(slot));
            }
            Ok(ToNanny::Shutdown) => {
                tracing::info!("the scheduler shuts down for good; stopping the workers");
                self.dismissed.store(true, Ordering::SeqCst);
                let _ = self.nanny.cast(NannyMsg::Shutdown);
                return false;
            }
            Ok(ToNanny::StartWorkers { slots }) => {
                let _ = self.nanny.cast(NannyMsg::StartWorkers(slots));
            }
            Ok(ToNanny::Error { message }) => {
                tracing::warn!(message = ?message, "scheduler reports an error")
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a message this nanny does not understand"),
        }
        true
    }
}
