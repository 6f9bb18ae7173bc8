//! The in-process actors (ractor, no cluster feature) and how they supervise
//! each other.
//!
//! ```text
//! scheduler process
//!   SchedulerActor            owns Core + journal; effects: journal, then sends
//!   Listener                  accepts TCP; supervisor of the sessions
//!     ├─ Session (conn 1)     handshake, decode → SchedulerActor, write frames
//!     └─ Session (conn n)     policy: never restarted (the peer reconnects);
//!                             a failure is logged, the others carry on
//! nanny process
//!   Nanny                     supervisor of one actor per worker process
//!     ├─ WorkerProc (slot 0)  spawns `actord worker` (`crate::process`:
//!     │                       PDEATHSIG, own process group), watches its
//!     │                       exit and its memory
//!     ├─ WorkerProc (slot n)  policy: restart at once; in a crash loop (deaths
//!     │                       within min_uptime) back off, doubling; past
//!     │                       max_restarts per restart_window leave the slot
//!     │                       empty and report it failed; an operator's
//!     │                       restart is immediate and not counted
//!     └─ (link task)          registers the nanny with the scheduler, reports
//!                             slot changes, forwards restart requests
//! worker process
//!   Worker                    owns the book of tasks (held, queued, pinned,
//!     │                       canceled, deadlines) and the unacknowledged
//!     │                       reports; supervisor of:
//!     ├─ Connection           dials (re-reading the scheduler file, backoff
//!     │                       50 ms doubling to 500 ms) until through or
//!     │                       death_timeout; writes frames, heartbeats; its
//!     │                       reader forwards decoded frames to the Worker.
//!     │                       policy: lost → logged, dialed again at once
//!     │                       (tasks keep running); failed to get through
//!     │                       within death_timeout → the worker exits
//!     ├─ Slot 0               owns a thread that takes attempts from the
//!     │                       ready queue: fn, cmd (`crate::process`), py
//!     │                       (a Python executor per slot); starts at once
//!     │                       the pinned task its result completes (the
//!     │                       pins: the one table shared with the Worker)
//!     └─ Slot n               policy: a panic fails the slot; its attempt is
//!                             reported failed with the panic's message and
//!                             the slot restarted at once, logged
//! ```
//!
//! Stopping the root (`SchedulerHandle::stop`, `Nanny` stop) stops its
//! children; a scheduler or listener that fails ends the process with an
//! error instead of running on half-alive. The `Worker`, once dismissed,
//! drained or past its death timeout, lets its `Connection` write what is
//! queued, stops its slots, and ends the process.

pub mod listener;
pub mod nanny;
pub mod scheduler;
pub mod session;
pub mod worker;

use crate::core::{Core, CoreConfig};
use crate::persistence::{AnyJournal, Expected, Journal, MemJournal, OpenOptions, SledJournal};
use crate::schedfile::SchedulerFile;
use listener::{Listener, ListenerArgs};
use ractor::{Actor, ActorRef};
use scheduler::{SchedMsg, SchedulerActor, SchedulerArgs};
use session::SessionConfig;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub host: String,
    pub port: u16,
    pub scheduler_file: PathBuf,
    /// `None`: results are kept in memory only.
    pub journal: Option<PathBuf>,
    pub max_frame: usize,
    /// Unread bytes queued for one connection at most (then it is closed).
    pub max_send_queue: usize,
    /// A journal flush taking longer than this stops the scheduler.
    pub flush_timeout: std::time::Duration,
    pub core: CoreConfig,
    /// After a restart, how long workers have to reclaim their running tasks.
    pub reclaim_grace: std::time::Duration,
    /// Least time between two journal flushes (group commit).
    pub commit_interval: std::time::Duration,
    /// Start on a damaged journal, keeping what is intact (`--journal-repair`).
    pub journal_repair: bool,
    /// The address peers should dial, `HOST` or `HOST:PORT` (`--advertise`);
    /// `None`: the bound address, or for a wildcard bind one of this host's.
    pub advertise: Option<String>,
}

/// A running scheduler: its actors and what it wrote to its scheduler file.
pub struct SchedulerHandle {
    pub file: SchedulerFile,
    pub path: PathBuf,
    scheduler: ActorRef<SchedMsg>,
    scheduler_join: tokio::task::JoinHandle<()>,
    listener: ActorRef<listener::ListenerMsg>,
    shutdown: std::sync::Arc<tokio::sync::Notify>,
    /// Why the scheduler actor failed, once it has.
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] crate::persistence::JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot write scheduler file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("cannot start actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

fn random_secret() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

/// The address peers should dial: `--advertise` if given (its port, else
/// the bound one); a wildcard bind advertises an address of this host that
/// others can reach — the host name's, if it is one of this host's
/// interfaces and not loopback, else the first such interface address —
/// and warns when there is only loopback.
fn advertised(local: std::net::SocketAddr, advertise: Option<&str>) -> String {
    use std::net::{IpAddr, ToSocketAddrs};
    if let Some(a) = advertise {
        let a = a.strip_prefix("tcp://").unwrap_or(a);
        return if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !a.ends_with(']') {
            a.to_string()
        } else {
            format!("{a}:{}", local.port())
        };
    }
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let mine = crate::util::interface_addrs();
    let usable = |ip: &IpAddr| !ip.is_loopback() && mine.contains(ip);
    let by_name = (crate::util::hostname().as_str(), local.port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && usable(&a.ip())))
        .map(|a| a.ip());
    let by_interface = || {
        let v4 = mine.iter().find(|ip| ip.is_ipv4() && !ip.is_loopback() && !is_link_local(ip));
        v4.or_else(|| mine.iter().find(|ip| !ip.is_loopback() && !is_link_local(ip))).copied()
    };
    match by_name.or_else(by_interface) {
        Some(ip) => std::net::SocketAddr::new(ip, local.port()).to_string(),
        None => {
            tracing::warn!(
                port = local.port(),
                "listening on all interfaces, but this host has only loopback: advertising 127.0.0.1, \
                 which workers on other nodes cannot reach (give --advertise ADDR)"
            );
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port()).to_string()
        }
    }
}

fn is_link_local(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// What the scheduler file left by the last run says about `journal`: the
/// epoch it reached there, if that is past the first.
pub fn expected_epoch(file: &std::path::Path, journal: &std::path::Path) -> Option<Expected> {
    let f = SchedulerFile::read(file).ok()?;
    let same = f.journal.as_deref().is_some_and(|j| std::path::Path::new(j) == journal);
    (same && f.epoch > 0).then(|| (f.epoch, file.to_path_buf()))
}

/// Opens and replays the journal, listens, and writes the scheduler file
/// once it is listening.
pub async fn start_scheduler(opts: SchedulerOptions) -> Result<SchedulerHandle, StartError> {
    let journal = match &opts.journal {
        Some(dir) => {
            let opts = OpenOptions {
                repair: opts.journal_repair,
                expected: expected_epoch(&opts.scheduler_file, dir),
            };
            AnyJournal::Sled(SledJournal::open_with(dir, &opts)?)
        }
        None => AnyJournal::Mem(MemJournal::default()),
    };
    let t0 = std::time::Instant::now();
    let records = journal.replay()?;
    let n_records = records.len();
    let mut core = Core::new(opts.core.clone());
    let now = crate::util::now_micros();
    crate::core::replay(&mut core, now, records);
    if let AnyJournal::Sled(j) = &journal {
        let tasks: usize = core.jobs.values().map(|j| j.tasks.len()).sum();
        tracing::info!(
            journal = %j.dir().display(),
            epoch = j.epoch(),
            records = n_records,
            jobs = core.jobs.len(),
            tasks,
            bytes = j.size_on_disk(),
            ms = t0.elapsed().as_millis() as u64,
            "journal replayed"
        );
    }
    crate::core::begin_recovery(&mut core, now, opts.reclaim_grace.as_micros() as u64);
    let epoch = journal.epoch();
    core.start_epoch(epoch);

    let addr = format!("{}:{}", opts.host, opts.port);
    let tcp = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind { addr: addr.clone(), source })?;
    let local = tcp.local_addr().map_err(|source| StartError::Bind { addr, source })?;

    let file = SchedulerFile {
        address: format!("tcp://{}", advertised(local, opts.advertise.as_deref())),
        instance: uuid::Uuid::new_v4(),
        epoch,
        pid: std::process::id(),
        host: crate::util::hostname(),
        journal: opts.journal.as_ref().map(|p| p.display().to_string()),
        dashboard: None,
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: env!("CARGO_PKG_VERSION").into(),
        secret: random_secret(),
        stopped: None,
    };
    let shutdown = std::sync::Arc::new(tokio::sync::Notify::new());
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None));
    // Check heartbeats a few times per timeout.
    let tick =
        std::time::Duration::from_micros((opts.core.heartbeat_timeout_us / 4).clamp(10_000, 1_000_000));
    let (scheduler, scheduler_join) = Actor::spawn(
        None,
        SchedulerActor,
        SchedulerArgs {
            core,
            journal,
            tick,
            commit_interval: opts.commit_interval,
            shutdown: shutdown.clone(),
            records_replayed: n_records as u64,
            max_send_queue: opts.max_send_queue,
            failure: failure.clone(),
            flush_timeout: opts.flush_timeout,
        },
    )
    .await?;
    let config = SessionConfig {
        secret: file.secret.clone(),
        instance: file.instance,
        epoch: file.epoch,
        max_frame: opts.max_frame,
    };
    let (listener, _) =
        Actor::spawn(None, Listener, ListenerArgs { listener: tcp, scheduler: scheduler.clone(), config })
            .await?;
    file.write_atomic(&opts.scheduler_file)
        .map_err(|source| StartError::File { path: opts.scheduler_file.clone(), source })?;
    tracing::info!(address = %file.address, file = %opts.scheduler_file.display(), "scheduler listening");
    Ok(SchedulerHandle {
        file,
        path: opts.scheduler_file,
        scheduler,
        scheduler_join,
        listener,
        shutdown,
        failure,
    })
}

impl SchedulerHandle {
    /// Resolves when an admin asked the scheduler to stop (`ctl shutdown`).
    pub fn shutdown_requested(&self) -> impl std::future::Future<Output = ()> + 'static {
        let notify = self.shutdown.clone();
        async move { notify.notified().await }
    }

    /// Resolves when the scheduler actor stops (a journal failure, or `stop`).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.scheduler_join).await;
    }

    /// After the scheduler actor failed: stops accepting and rewrites the
    /// scheduler file (if still this run's) to say why, so clients tell
    /// their user at once instead of waiting for an answer. Returns the reason.
    pub async fn fail(self) -> String {
        self.listener.stop(None);
        let reason = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the scheduler stopped unexpectedly".into());
        if SchedulerFile::read(&self.path).map(|f| f.instance) == Ok(self.file.instance) {
            let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let file = SchedulerFile { stopped: Some(format!("{reason} (at {stamp})")), ..self.file.clone() };
            if let Err(e) = file.write_atomic(&self.path) {
                tracing::error!(error = %e, path = %self.path.display(), "cannot mark the scheduler file as stopped");
            }
        }
        reason
    }

    /// Stops accepting, stops the scheduler, and removes the scheduler file
    /// if it is still this run's.
    pub async fn stop(self) {
        self.listener.stop(None);
        self.scheduler.stop(None);
        let _ = self.scheduler_join.await;
        if SchedulerFile::read(&self.path).map(|f| f.instance) == Ok(self.file.instance) {
            let _ = std::fs::remove_file(&self.path);
        }
        tracing::info!("scheduler stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_advertises_an_address_of_this_host() {
        let mine = crate::util::interface_addrs();
        assert!(mine.contains(&std::net::Ipv4Addr::LOCALHOST.into()), "{mine:?}");
        let addr: std::net::SocketAddr = advertised("0.0.0.0:5000".parse().unwrap(), None).parse().unwrap();
        assert_eq!(addr.port(), 5000);
        assert!(!addr.ip().is_unspecified());
        let other = mine.iter().any(|ip| !ip.is_loopback() && !is_link_local(ip));
        assert_eq!(!addr.ip().is_loopback(), other, "{addr} among {mine:?}");
        assert!(addr.ip().is_loopback() || mine.contains(&addr.ip()));
        assert_eq!(advertised("127.0.0.1:7".parse().unwrap(), None), "127.0.0.1:7");
        assert_eq!(advertised("0.0.0.0:7".parse().unwrap(), Some("node7")), "node7:7");
        assert_eq!(advertised("0.0.0.0:7".parse().unwrap(), Some("tcp://node7:8")), "node7:8");
    }
}
