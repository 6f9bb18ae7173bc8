//! The snapshot feed: asks the scheduler actor for a snapshot at most once
//! per `PERIOD` (and, unasked, only while someone is subscribed to the
//! stream), serialises it once, and fans it out through a `watch`.

use super::PageInfo;
use crate::actors::msgs::{DashAnswer, DashQuery, SchedMsg};
use crate::core::{JobDetailView, Snapshot};
use crate::ids::JobId;
use ractor::ActorRef;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Least time between two snapshots.
pub const PERIOD: Duration = Duration::from_millis(500);
/// Subscribers to the stream at most.
pub const MAX_SUBSCRIBERS: usize = 64;
/// How long the scheduler has to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// One snapshot and its JSON.
pub struct Frame {
    pub snap: Snapshot,
    pub json: Arc<str>,
    pub at: Instant,
}

pub struct Feed {
    scheduler: ActorRef<SchedMsg>,
    info: Arc<PageInfo>,
    tx: watch::Sender<Option<Arc<Frame>>>,
    subscribers: Arc<AtomicUsize>,
    wake: tokio::sync::Notify,
    /// One fetch at a time: concurrent readers share its result.
    fetching: tokio::sync::Mutex<()>,
}

/// Counts one subscriber while it lives.
pub struct Subscription(Arc<AtomicUsize>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feed {
    pub fn new(scheduler: ActorRef<SchedMsg>, info: Arc<PageInfo>) -> Feed {
        Feed {
            scheduler,
            info,
            tx: watch::channel(None).0,
            subscribers: Arc::new(AtomicUsize::new(0)),
            wake: tokio::sync::Notify::new(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Refreshes the snapshot every `PERIOD` while anyone is subscribed,
    /// and sleeps otherwise. Ends only if the scheduler actor is gone.
    pub async fn run(&self) {
        loop {
            while self.subscribers.load(Ordering::Relaxed) == 0 {
                self.wake.notified().await;
            }
            if let Err(e) = self.fresh().await {
                if self.scheduler.get_status() >= ractor::ActorStatus::Stopping {
                    return;
                }
                tracing::warn!(error = %e, "status page: no snapshot");
            }
            tokio::time::sleep(PERIOD).await;
        }
    }

    /// A new subscriber and the feed to read, or `None` past the cap.
    pub fn subscribe(&self) -> Option<(Subscription, watch::Receiver<Option<Arc<Frame>>>)> {
        let n = self.subscribers.fetch_add(1, Ordering::Relaxed);
        let sub = Subscription(self.subscribers.clone());
        if n >= MAX_SUBSCRIBERS {
            return None;
        }
        self.wake.notify_one();
        Some((sub, self.tx.subscribe()))
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// The latest snapshot if it is younger than `PERIOD`, else a new one.
    pub async fn fresh(&self) -> Result<Arc<Frame>, String> {
        let recent = || self.tx.borrow().clone().filter(|f| f.at.elapsed() < PERIOD);
        if let Some(f) = recent() {
            return Ok(f);
        }
        let _one = self.fetching.lock().await;
        if let Some(f) = recent() {
            return Ok(f);
        }
        let DashAnswer::Snapshot(mut snap) = self.ask(DashQuery::Snapshot).await? else {
            return Err("the scheduler answered another question".into());
        };
        snap.system.address = self.info.scheduler.clone();
        snap.system.dashboard = self.info.url.clone();
        snap.system.security = self.info.security.clone();
        let json: Arc<str> = serde_json::to_string(&snap).map_err(|e| e.to_string())?.into();
        let frame = Arc::new(Frame { snap: *snap, json, at: Instant::now() });
        self.tx.send_replace(Some(frame.clone()));
        Ok(frame)
    }

    /// One job's detail (`None`: no such job).
    pub async fn job(&self, job: JobId) -> Result<Option<Box<JobDetailView>>, String> {
        match self.ask(DashQuery::Job(job)).await? {
            DashAnswer::Job(j) => Ok(j),
            DashAnswer::Snapshot(_) => Err("the scheduler answered another question".into()),
        }
    }

    async fn ask(&self, query: DashQuery) -> Result<DashAnswer, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.scheduler
            .cast(SchedMsg::Dashboard { query, reply })
            .map_err(|_| "the scheduler is not running".to_string())?;
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("the scheduler dropped the question".into()),
            Err(_) => Err(format!("the scheduler did not answer within {ANSWER_WAIT:?}")),
        }
    }
}
