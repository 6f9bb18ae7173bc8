//! The page's actions (retry, cancel) as requests of an in-process client:
//! a session of its own on the scheduler actor, so an answer comes, like
//! any client's, only once what it promises is journaled.

use crate::actors::msgs::{SchedMsg, SessionHandle, SessionMsg};
use crate::ids::ConnId;
use crate::protocol::{FromClient, Role, ToClient};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connection ids of the page's requests, far above the listener's.
static NEXT: AtomicU64 = AtomicU64::new(1 << 62);
/// How long an action may take (its journal flush included).
const ACTION_WAIT: Duration = Duration::from_secs(30);

/// Receives the one answer of a request.
struct Answer;

impl Actor for Answer {
    type Msg = SessionMsg;
    type State = Option<tokio::sync::oneshot::Sender<Vec<bytes::Bytes>>>;
    type Arguments = tokio::sync::oneshot::Sender<Vec<bytes::Bytes>>;

    async fn pre_start(
        &self,
        _: ActorRef<SessionMsg>,
        reply: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(reply))
    }

    async fn handle(
        &self,
        _: ActorRef<SessionMsg>,
        msg: SessionMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let (SessionMsg::Frames(frames), Some(reply)) = (msg, st.take()) {
            let _ = reply.send(frames);
        }
        Ok(())
    }
}

/// Sends `request` to the scheduler as a client would and waits for its
/// answer: `Ok(message)` for `Done`, `Err` with the scheduler's error.
pub async fn request(scheduler: &ActorRef<SchedMsg>, request: FromClient) -> Result<String, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (actor, join) = Actor::spawn(None, Answer, tx).await.map_err(|e| e.to_string())?;
    let conn = ConnId(NEXT.fetch_add(1, Ordering::Relaxed));
    let session = SessionHandle {
        actor: actor.clone(),
        queued: Arc::new(AtomicUsize::new(0)),
        abort: tokio_util::sync::CancellationToken::new(),
    };
    let sent = scheduler.cast(SchedMsg::Connected { conn, role: Role::Client, session }).is_ok()
        && scheduler.cast(SchedMsg::Client { conn, msg: request }).is_ok();
    let answer = match sent {
        false => Err("the scheduler is not running".to_string()),
        true => match tokio::time::timeout(ACTION_WAIT, rx).await {
            Ok(Ok(frames)) => decode(&frames),
            Ok(Err(_)) => Err("the scheduler closed the request".into()),
            Err(_) => Err(format!("no answer within {ACTION_WAIT:?}")),
        },
    };
    let _ = scheduler.cast(SchedMsg::Closed { conn });
    actor.stop(None);
    let _ = join.await;
    answer
}

fn decode(frames: &[bytes::Bytes]) -> Result<String, String> {
    let first = frames.first().ok_or("an empty answer")?;
    match crate::protocol::conn::decode::<ToClient>(first).map_err(|e| e.to_string())? {
        ToClient::Done { message } => Ok(message),
        ToClient::Error { message, .. } => Err(message),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
