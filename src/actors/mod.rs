//! The in-process actors (ractor, no cluster feature) and how they supervise
//! each other.
//!
//! ```text
//! scheduler process
//!   Root                      supervisor of the two below; policy: never
//!   │                         restarted — a failure (or either stopping by
//!   │                         itself) is logged and ends the process with an
//!   │                         error; a graceful stop stops Listener, then
//!   │                         SchedulerActor (its last flush)
//!   ├─ SchedulerActor         owns Core + journal; effects: journal, then sends
//!   ├─ Dashboard              the status page (`crate::dashboard`): its HTTP
//!   │                         server and snapshot feed tasks; policy: never
//!   │                         restarted — its failure is logged and the
//!   │                         scheduler runs on without a page
//!   └─ Listener               supervisor of the acceptor and the sessions
//!       ├─ Acceptor           waits on the socket; its failure fails Listener
//!       ├─ Session (conn 1)   handshake, writes frames
//!       │   └─ Reader         decode → SchedulerActor; a failure closes the session
//!       └─ Session (conn n)   policy: never restarted (the peer reconnects);
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
//!     └─ Link                 registers the nanny with the scheduler, reports
//!                             slot changes, forwards restart requests;
//!                             policy: failed → logged, a new link after 1 s
//!                             told the slots' last state (workers run on);
//!                             ended (dismissed) → stays ended
//! worker process
//!   Worker                    owns the book of tasks (held, queued, pinned,
//!     │                       canceled, deadlines) and the unacknowledged
//!     │                       reports; supervisor of:
//!     ├─ Connection           dials (re-reading the scheduler file, backoff
//!     │   │                   50 ms doubling to 500 ms) until through or
//!     │   │                   death_timeout; writes frames (one report
//!     │   │                   batch at a time, then `Written`), heartbeats.
//!     │   │                   policy: lost → logged, dialed again at once
//!     │   │                   (tasks keep running); failed to get through
//!     │   │                   within death_timeout → the worker exits
//!     │   └─ ConnReader       decode → Worker; a failure drops the
//!     │                       connection (logged), which is then lost
//!     ├─ Slot 0               owns a thread that takes attempts from the
//!     │                       ready queue: fn, cmd (`crate::process`), py
//!     │                       (a Python executor per slot); starts at once
//!     │                       the pinned task its result completes (the
//!     │                       pins: the one table shared with the Worker);
//!     │                       tells the Worker through the slots' event
//!     │                       queue (one wake-up per burst)
//!     └─ Slot n               policy: a panic fails the slot; its attempt is
//!                             reported failed with the panic's message and
//!                             the slot restarted at once, logged
//! ```
//!
//! Stopping the root (`Scheduler::serve` once its shutdown signal fires,
//! `Nanny` stop) stops its children; a scheduler or listener that fails
//! ends the process with an error instead of running on half-alive. The
//! `Worker`, once dismissed, drained or past its death timeout, lets its
//! `Connection` write what is queued, stops its slots, and ends the process.

pub mod listener;
pub mod msgs;
pub mod nanny;
mod outbox;
pub mod reader;
pub mod root;
pub mod scheduler;
pub mod session;
mod submit_frame;
pub mod worker;

use crate::core::{Core, CoreConfig};
use crate::persistence::{AnyJournal, Expected, Journal, MemJournal, OpenOptions, Record, SledJournal};
use crate::schedfile::SchedulerFile;
use ractor::{Actor, ActorRef};
use root::{Root, RootArgs};
use scheduler::SchedulerArgs;
use session::SessionConfig;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
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
    /// TLS, secret and certificate (`--no-tls`, `--insecure`, `--tls-cert`, …).
    pub security: crate::security::SecurityArgs,
    /// Open connections at most (`scheduler.max_connections`).
    pub max_connections: usize,
    /// The status page (`--dashboard ADDR`); `None`: `--no-dashboard`.
    pub dashboard: Option<crate::dashboard::page::DashboardOptions>,
    /// The results store; `None`: `results/` in the journal directory (no
    /// store without a journal).
    pub results_dir: Option<PathBuf>,
}

impl SchedulerOptions {
    /// Where the results store is, if there is one.
    pub fn store(&self) -> Option<PathBuf> {
        self.journal.as_ref()?;
        self.results_dir.clone().or_else(|| self.journal.as_ref().map(|j| j.join("results")))
    }
}

/// A started scheduler: its root supervisor and what it wrote to its
/// scheduler file. `serve` runs it until its shutdown signal.
pub struct Scheduler {
    pub file: SchedulerFile,
    pub path: PathBuf,
    root: ActorRef<()>,
    root_join: tokio::task::JoinHandle<()>,
    /// Notified when an admin asked the scheduler to stop (`ctl shutdown`).
    asked: Arc<tokio::sync::Notify>,
    /// Why the scheduler or the listener failed, once one has.
    failure: Arc<Mutex<Option<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] crate::persistence::JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot write scheduler file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("cannot start actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::page::BindError),
    #[error("cannot create the results store {}: {source} (give --results-dir DIR)", path.display())]
    Store { path: PathBuf, source: std::io::Error },
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

/// Binds the scheduler's listening socket (`HOST:PORT`; port 0 picks one).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr: addr.to_string(), source })
}

/// Why `run` returned an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The scheduler or the listener failed while serving.
    #[error("the scheduler stopped: {0}")]
    Failed(String),
}

/// Runs a scheduler on `listener` until `shutdown` resolves or an admin asks
/// it to stop (`Ok`), or until it fails.
pub async fn run(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    opts: SchedulerOptions,
) -> Result<(), RunError> {
    let scheduler = start(listener, opts).await?;
    scheduler.serve(shutdown).await.map_err(RunError::Failed)
}

/// The journal opened and replayed into a new core, ready for a new epoch.
fn recover(opts: &SchedulerOptions) -> Result<(Core, AnyJournal, u64), StartError> {
    let opened = std::time::Instant::now();
    let now = crate::util::now_micros();
    let mut core = Core::new(opts.core.clone());
    let (mut n_records, mut replayed) = (0, std::time::Duration::ZERO);
    // The core rebuilt from the records the open hands over (again, after
    // a check of the whole journal, if a batch of outcomes was unsound).
    let mut replay = |records: Vec<Record>| {
        let t = std::time::Instant::now();
        n_records = records.len();
        core = Core::new(opts.core.clone());
        let sound = crate::core::replay(&mut core, now, records);
        replayed = t.elapsed();
        sound
    };
    let journal = match &opts.journal {
        Some(dir) => {
            let opts = OpenOptions {
                repair: opts.journal_repair,
                expected: expected_epoch(&opts.scheduler_file, dir),
            };
            AnyJournal::Sled(SledJournal::open_replaying(dir, &opts, &mut replay)?)
        }
        None => {
            let journal = AnyJournal::Mem(MemJournal::default());
            replay(journal.replay()?);
            journal
        }
    };
    let t0 = opened + (opened.elapsed() - replayed);
    if let AnyJournal::Sled(j) = &journal {
        let (jobs, tasks) = core.job_count();
        tracing::info!(
            journal = %j.dir().display(),
            epoch = j.epoch(),
            records = n_records,
            jobs,
            tasks,
            bytes = j.size_on_disk(),
            open_ms = (t0 - opened).as_millis() as u64,
            ms = replayed.as_millis() as u64,
            "journal replayed"
        );
    }
    crate::core::begin_recovery(&mut core, now, opts.reclaim_grace.as_micros() as u64);
    core.start_epoch(journal.epoch());
    note_start(&mut core, now, &journal, n_records, replayed);
    Ok((core, journal, n_records as u64))
}

/// The status page's events of this start: the journal replayed, the
/// scheduler started (or restarted, past the first epoch).
fn note_start(core: &mut Core, now: u64, journal: &AnyJournal, records: usize, took: std::time::Duration) {
    let (jobs, tasks) = core.job_count();
    let host = crate::util::hostname();
    let pid = std::process::id();
    if let AnyJournal::Sled(j) = journal {
        let text = format!(
            "journal {} replayed: {records} records, {jobs} jobs, {tasks} tasks in {} ms",
            j.dir().display(),
            took.as_millis()
        );
        core.note_event(now, "journal-replayed", text);
    }
    let (kind, text) = match journal.epoch() {
        0 => ("scheduler-started", format!("scheduler started on {host} (pid {pid})")),
        e => ("scheduler-restarted", format!("scheduler restarted on {host} (pid {pid}), epoch {e}")),
    };
    core.note_event(now, kind, text);
}

/// What the status page bound to `socket` says of itself and its scheduler.
fn page_info(
    socket: &std::net::TcpListener,
    file: &SchedulerFile,
    security: &crate::security::ServerSecurity,
) -> Result<crate::dashboard::page::PageInfo, StartError> {
    let local =
        socket.local_addr().map_err(|source| StartError::Bind { addr: "the status page".into(), source })?;
    let insecure = security.mode == crate::security::Mode::Insecure;
    Ok(crate::dashboard::page::PageInfo {
        token: (!insecure).then(|| crate::dashboard::page::token(&security.secret)),
        loopback: local.ip().is_loopback(),
        url: format!("http://{}/", advertised(local, None)),
        scheduler: file.address.clone(),
        security: serde_json::to_value(security.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    })
}

/// What the scheduler file says of this run.
fn scheduler_file(
    opts: &SchedulerOptions,
    local: std::net::SocketAddr,
    epoch: u64,
    security: &crate::security::ServerSecurity,
) -> SchedulerFile {
    SchedulerFile {
        address: format!("tcp://{}", advertised(local, opts.advertise.as_deref())),
        instance: uuid::Uuid::new_v4(),
        epoch,
        pid: std::process::id(),
        host: crate::util::hostname(),
        journal: opts.journal.as_ref().map(|p| p.display().to_string()),
        dashboard: None,
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: env!("CARGO_PKG_VERSION").into(),
        secret: security.secret.clone(),
        mode: security.mode,
        tls_fingerprint: security.tls.as_ref().map(|t| t.fingerprint.clone()),
        stopped: None,
        results_dir: opts.store().map(|d| std::path::absolute(&d).unwrap_or(d).display().to_string()),
    }
}

/// Opens and replays the journal, starts the root supervisor serving
/// `listener`, and writes the scheduler file once it is listening.
pub async fn start(
    listener: tokio::net::TcpListener,
    opts: SchedulerOptions,
) -> Result<Scheduler, StartError> {
    let local =
        listener.local_addr().map_err(|source| StartError::Bind { addr: "the listener".into(), source })?;
    let dashboard = match &opts.dashboard {
        Some(d) => crate::dashboard::page::bind(d)?,
        None => None,
    };
    let (core, journal, records_replayed) = recover(&opts)?;
    let security = crate::security::ServerSecurity::prepare(&opts.security, opts.journal.as_deref())?;
    let mut file = scheduler_file(&opts, local, journal.epoch(), &security);
    let dashboard = match dashboard {
        Some(socket) => {
            let info = page_info(&socket, &file, &security)?;
            file.dashboard = Some(info.url.clone());
            Some((socket, info))
        }
        None => None,
    };
    let link = dashboard.as_ref().map(|(_, info)| info.link());
    let store = opts.store().map(|d| std::path::absolute(&d).unwrap_or(d));
    if let Some(d) = &store {
        std::fs::create_dir_all(d).map_err(|source| StartError::Store { path: d.clone(), source })?;
    }
    let asked = Arc::new(tokio::sync::Notify::new());
    let failure = Arc::new(Mutex::new(None));
    // Check heartbeats a few times per timeout.
    let tick =
        std::time::Duration::from_micros((opts.core.heartbeat_timeout_us / 4).clamp(10_000, 1_000_000));
    let scheduler = SchedulerArgs {
        core,
        journal,
        tick,
        commit_interval: opts.commit_interval,
        shutdown: asked.clone(),
        records_replayed,
        max_send_queue: opts.max_send_queue,
        failure: failure.clone(),
        flush_timeout: opts.flush_timeout,
        store: store.clone(),
    };
    let session = SessionConfig {
        security,
        instance: file.instance,
        epoch: file.epoch,
        max_frame: opts.max_frame,
        store,
    };
    let max_connections = opts.max_connections;
    let args =
        RootArgs { scheduler, listener, session, max_connections, failure: failure.clone(), dashboard };
    let (root, root_join) = Actor::spawn(None, Root, args).await?;
    if let Err(source) = file.write_atomic(&opts.scheduler_file) {
        root.stop(None);
        let _ = root_join.await;
        return Err(StartError::File { path: opts.scheduler_file.clone(), source });
    }
    tracing::info!(address = %file.address, file = %opts.scheduler_file.display(), "scheduler listening");
    if let Some(link) = link {
        tracing::info!(link = %link, "status page");
    }
    Ok(Scheduler { file, path: opts.scheduler_file, root, root_join, asked, failure })
}

impl Scheduler {
    /// Serves until `shutdown` resolves or an admin asks to stop (then stops
    /// gracefully: `Ok`), or until the scheduler or the listener fails
    /// (`Err`, with why, also written to the scheduler file).
    pub async fn serve(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), String> {
        let asked = self.asked.clone();
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown signal; stopping"),
            _ = asked.notified() => tracing::info!("stopping as an admin asked"),
            _ = &mut self.root_join => return Err(self.mark_failed()),
        }
        self.stop().await;
        Ok(())
    }

    /// After a failure: rewrites the scheduler file (if still this run's) to
    /// say why, so clients tell their user at once instead of waiting for an
    /// answer. Returns the reason.
    fn mark_failed(&self) -> String {
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

    /// Stops the root (listener first, then the scheduler), and removes the
    /// scheduler file if it is still this run's.
    async fn stop(self) {
        self.root.stop(None);
        let _ = self.root_join.await;
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
