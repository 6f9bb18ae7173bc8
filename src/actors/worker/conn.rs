//! A worker's connection to the scheduler, as the `Connection` actor: dials
//! (re-reading the scheduler file, backing off) until it is through or the
//! death timeout passes, then writes what the `Worker` gives it, sends
//! heartbeats, and has its reader (a linked child actor) forward each
//! decoded frame to the `Worker`. It stops when the connection is lost; the
//! `Worker` decides.

use super::msg::{WorkerError, WorkerMsg};
use crate::protocol::conn::{decode, encode, next_frame, FrameSink, FrameStream};
use crate::protocol::{Conn, FromWorker, Role, ToWorker};
use crate::schedfile::{wait_for_file, SchedulerFile};
use bytes::Bytes;
use futures::SinkExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// First delay between two failed attempts; doubles up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

pub(super) enum ConnMsg {
    /// Try to connect (again).
    Dial,
    /// Frames to write, in order.
    Frames(Vec<Bytes>),
    /// One message to write.
    Send(FromWorker),
    Heartbeat,
    /// The reader ended: the connection is lost.
    ReaderEnded(String),
}

pub(super) struct ConnArgs {
    pub scheduler_file: PathBuf,
    pub max_frame: usize,
    pub heartbeat: Duration,
    /// Give up (and end the worker) when not through by then.
    pub death_timeout: Duration,
    pub worker: ActorRef<WorkerMsg>,
}

pub(super) struct ConnState {
    args: ConnArgs,
    give_up: Instant,
    backoff: Duration,
    last_error: String,
    sink: Option<FrameSink>,
    reader: Option<ActorRef<ReaderMsg>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Whether the worker has written anything yet (heartbeats wait for
    /// its registration).
    registered: bool,
    address: String,
}

pub(super) struct Connection;

impl Actor for Connection {
    type Msg = ConnMsg;
    type State = ConnState;
    type Arguments = ConnArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnMsg>,
        args: ConnArgs,
    ) -> Result<ConnState, ActorProcessingErr> {
        myself.cast(ConnMsg::Dial)?;
        Ok(ConnState {
            give_up: Instant::now() + args.death_timeout,
            args,
            backoff: BACKOFF_MIN,
            last_error: String::new(),
            sink: None,
            reader: None,
            heartbeat: None,
            registered: false,
            address: String::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnMsg>,
        msg: ConnMsg,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnMsg::Dial => dial(&myself, st).await?,
            ConnMsg::Frames(frames) => {
                for f in frames {
                    write(&myself, st, f).await;
                }
                if st.sink.is_some() {
                    let _ = st.args.worker.cast(WorkerMsg::Written);
                }
            }
            ConnMsg::Send(msg) => {
                st.registered = true;
                match encode(&msg) {
                    Ok(f) => write(&myself, st, f).await,
                    Err(e) => tracing::error!(error = %e, "cannot encode a message to the scheduler"),
                }
            }
            ConnMsg::Heartbeat if st.registered => {
                let beat = FromWorker::Heartbeat { rss_kib: crate::util::rss_kib() };
                if let Ok(f) = encode(&beat) {
                    write(&myself, st, f).await;
                }
            }
            ConnMsg::Heartbeat => {}
            ConnMsg::ReaderEnded(why) => myself.stop(Some(format!("lost {}: {why}", st.address))),
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<ConnMsg>, st: &mut ConnState) -> Result<(), ActorProcessingErr> {
        if let Some(mut sink) = st.sink.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
        if let Some(r) = st.reader.take() {
            let _ = r.kill_and_wait(None).await;
        }
        if let Some(task) = st.heartbeat.take() {
            task.abort();
        }
        Ok(())
    }

    /// Policy: a reader that fails (it never should) loses the connection,
    /// logged; the `Worker` dials again as for any lost connection.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ConnMsg>,
        evt: SupervisionEvent,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = evt {
            tracing::warn!(scheduler = %st.address, error = %err, "connection reader failed; dropping the connection");
            myself.stop(Some(format!("lost {}: its reader failed: {err}", st.address)));
        }
        Ok(())
    }
}

/// One attempt; on failure the next is due after the backoff. Policy:
/// retry, 50 ms doubling to 500 ms, re-reading the scheduler file each
/// time, until the death timeout; then the worker ends with the last error.
async fn dial(myself: &ActorRef<ConnMsg>, st: &mut ConnState) -> Result<(), ActorProcessingErr> {
    let remaining = st.give_up.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        let why = std::mem::take(&mut st.last_error);
        return Err(Box::new(WorkerError::SchedulerGone(st.args.death_timeout, why)));
    }
    match connect(&st.args, remaining).await {
        Ok((conn, file)) => {
            let (sink, stream) = conn.into_split();
            st.sink = Some(sink);
            st.address = file.address.clone();
            let args = ReaderArgs { stream, worker: st.args.worker.clone(), conn: myself.clone() };
            let (reader, _) = Actor::spawn_linked(None, ConnReader, args, myself.get_cell()).await?;
            st.reader = Some(reader);
            st.heartbeat = Some(myself.send_interval(st.args.heartbeat, || ConnMsg::Heartbeat));
            tracing::info!(scheduler = %file.address, "connected to the scheduler");
            st.args
                .worker
                .cast(WorkerMsg::Connected { address: file.address, results_dir: file.results_dir })?;
        }
        Err(e) => {
            tracing::debug!(error = %e, retry_in_ms = st.backoff.as_millis() as u64, "cannot reach the scheduler yet");
            st.last_error = e;
            myself.send_after(st.backoff, || ConnMsg::Dial);
            st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
        }
    }
    Ok(())
}

async fn connect(args: &ConnArgs, timeout: Duration) -> Result<(Conn, SchedulerFile), String> {
    let file = wait_for_file(&args.scheduler_file, timeout).await?;
    let (conn, _) = Conn::connect_epoch(
        file.socket_addr(),
        Role::Worker,
        &file.auth(),
        file.epoch,
        args.max_frame,
        Duration::from_secs(5).min(timeout.max(Duration::from_millis(100))),
    )
    .await
    .map_err(|e| format!("cannot reach scheduler at {} ({}): {e}", file.address, file.describe()))?;
    Ok((conn, file))
}

async fn write(myself: &ActorRef<ConnMsg>, st: &mut ConnState, frame: Bytes) {
    let Some(sink) = st.sink.as_mut() else { return };
    if let Err(e) = sink.send(frame).await {
        st.sink = None;
        myself.stop(Some(format!("lost {}: {e}", st.address)));
    }
}

pub(super) enum ReaderMsg {
    /// Read, decode and forward the next frame.
    Next,
}

/// The `Connection`'s reader, its linked child: forwards every decoded
/// frame to the `Worker` until the connection ends, then tells the
/// `Connection` (`ReaderEnded`) and stops.
pub(super) struct ConnReader;

pub(super) struct ReaderArgs {
    stream: FrameStream,
    worker: ActorRef<WorkerMsg>,
    conn: ActorRef<ConnMsg>,
}

impl Actor for ConnReader {
    type Msg = ReaderMsg;
    type State = ReaderArgs;
    type Arguments = ReaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReaderMsg>,
        args: ReaderArgs,
    ) -> Result<ReaderArgs, ActorProcessingErr> {
        myself.cast(ReaderMsg::Next)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<ReaderMsg>,
        _: ReaderMsg,
        st: &mut ReaderArgs,
    ) -> Result<(), ActorProcessingErr> {
        let frame = match next_frame(&mut st.stream).await {
            Ok(f) => f,
            Err(e) => {
                let _ = st.conn.cast(ConnMsg::ReaderEnded(e.to_string()));
                myself.stop(Some("connection closed".into()));
                return Ok(());
            }
        };
        match decode::<ToWorker>(&frame) {
            Ok(msg) => {
                if st.worker.cast(WorkerMsg::Frame(msg)).is_err() {
                    myself.stop(Some("the worker is gone".into()));
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a message this worker does not understand"),
        }
        Ok(myself.cast(ReaderMsg::Next)?)
    }
}
