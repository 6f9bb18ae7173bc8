//! The scheduler actor: owns the core and the journal, runs each incoming
//! message through a core handler, then executes the effects — journal
//! first (one flush per group), then one write per connection.

use super::msgs::{SchedMsg, SessionHandle, SessionMsg};
use super::outbox::Outbox;
use crate::core::{self, Core, Effects};
use crate::ids::ConnId;
use crate::persistence::{AnyJournal, Journal};
use crate::protocol::{FromClient, FromNanny, FromWorker, ToClient, ToNanny, ToWorker};
use crate::util::now_micros;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;

mod dash;
mod stored;

/// How long a scheduler shutting down for good waits for the nannies and
/// workers it told so to hang up.
const FAREWELL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct SchedulerActor;

pub struct SchedulerArgs {
    pub core: Core,
    pub journal: AnyJournal,
    /// How often to check for workers that stopped sending heartbeats.
    pub tick: std::time::Duration,
    /// Least time between the starts of two journal flushes.
    pub commit_interval: std::time::Duration,
    /// Notified when an admin asked the scheduler to stop.
    pub shutdown: Arc<tokio::sync::Notify>,
    /// Records the journal held at start-up.
    pub records_replayed: u64,
    /// Bytes queued for one connection at most; past it the connection is closed.
    pub max_send_queue: usize,
    /// Why the actor failed, if it does: told to clients by the scheduler file.
    pub failure: Arc<std::sync::Mutex<Option<String>>>,
    /// A journal flush taking longer than this counts as failed.
    pub flush_timeout: std::time::Duration,
    /// The results store: a forgotten job's files are removed there.
    pub store: Option<std::path::PathBuf>,
}

pub struct SchedulerState {
    core: Core,
    journal: AnyJournal,
    sessions: HashMap<ConnId, SessionHandle>,
    max_send_queue: usize,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    flush_timeout: std::time::Duration,
    store: Option<std::path::PathBuf>,
    outbox: Outbox,
    /// A `Flush` is already in the mailbox: later steps join its group.
    flush_queued: bool,
    /// The group whose records are being flushed; its messages wait for it.
    in_flight: Option<Outbox>,
    /// Restarts of the journal: reported by `ctl status`.
    epoch: u64,
    /// An admin asked to stop: tell the process once the answer is out.
    shutdown_requested: bool,
    shutdown: Arc<tokio::sync::Notify>,
    /// Connections told that the scheduler shuts down for good, until they
    /// have closed: the process stops after that.
    farewell: std::collections::HashSet<ConnId>,
    /// `shutdown --keep-workers`: stop without telling anyone.
    keep_workers: bool,
    /// Group commit: flushes start at most once per `commit_interval`, so
    /// a stream of single results shares fsyncs.
    commit_interval: std::time::Duration,
    last_flush: Option<std::time::Instant>,
    /// A `Flush` is scheduled for when the interval is over.
    flush_timer: bool,
    /// A `Deadline` is scheduled for this time (µs since the Unix epoch).
    wake_at: Option<u64>,
    started: std::time::Instant,
    records_replayed: u64,
    records_appended: u64,
    flushes: u64,
    last_flush_done: Option<std::time::Instant>,
    /// (time, outcomes so far) at each tick of the last ten seconds or so.
    throughput: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// How long the last journal flush took, and all of them (status page).
    flush_latency: Option<std::time::Duration>,
    flush_seconds_total: f64,
}

impl SchedulerState {
    fn journal_info(&self) -> crate::protocol::JournalInfo {
        let location = self.journal.location();
        crate::protocol::JournalInfo {
            path: location.as_ref().map(|(p, _)| p.display().to_string()),
            bytes: location.map(|(_, b)| b).unwrap_or(0),
            records: self.records_replayed + self.records_appended,
            records_replayed: self.records_replayed,
            flushes: self.flushes,
            last_flush_ms_ago: self.last_flush_done.map(|t| t.elapsed().as_millis() as u64),
            epoch: self.epoch,
            results_dir: self.store.as_ref().map(|d| d.display().to_string()),
            results: core::stored_results(&self.core),
        }
    }

    /// (time, outcomes so far) at each tick, for the last ten seconds or so.
    fn note_throughput(&mut self) {
        let t = std::time::Instant::now();
        self.throughput.push_back((t, self.core.outcomes_total()));
        while self.throughput.len() > 2
            && self.throughput.get(1).is_some_and(|(t1, _)| t.duration_since(*t1).as_secs() >= 10)
        {
            self.throughput.pop_front();
        }
    }

    fn status_extra(&self) -> core::StatusExtra {
        let location = self.journal.location();
        let tasks_per_s = match (self.throughput.front(), self.throughput.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        core::StatusExtra {
            epoch: self.epoch,
            uptime_s: self.started.elapsed().as_secs(),
            journal_path: location.as_ref().map(|(p, _)| p.display().to_string()),
            journal_bytes: location.map(|(_, b)| b).unwrap_or(0),
            tasks_per_s,
        }
    }
}

impl Actor for SchedulerActor {
    type Msg = SchedMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        myself.send_interval(args.tick, || SchedMsg::Tick);
        let epoch = args.journal.epoch();
        Ok(SchedulerState {
            core: args.core,
            journal: args.journal,
            sessions: HashMap::new(),
            max_send_queue: args.max_send_queue,
            failure: args.failure,
            flush_timeout: args.flush_timeout,
            store: args.store,
            outbox: Outbox::new(args.max_send_queue),
            flush_queued: false,
            in_flight: None,
            commit_interval: args.commit_interval,
            epoch,
            shutdown_requested: false,
            shutdown: args.shutdown,
            farewell: Default::default(),
            keep_workers: false,
            last_flush: None,
            flush_timer: false,
            wake_at: None,
            started: std::time::Instant::now(),
            records_replayed: args.records_replayed,
            records_appended: 0,
            flushes: 0,
            last_flush_done: None,
            throughput: Default::default(),
            flush_latency: None,
            flush_seconds_total: 0.0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedMsg>,
        msg: SchedMsg,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let result = handle_msg(myself, msg, st);
        if let Err(e) = &result {
            tracing::error!(error = %e, "the scheduler cannot go on; stopping");
            *st.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            // A journal whose writes failed can block forever when dropped
            // (sled flushes on drop): let it go on a thread nobody waits for.
            let journal = std::mem::replace(&mut st.journal, AnyJournal::Mem(Default::default()));
            let _ = std::thread::Builder::new().name("journal-drop".into()).spawn(move || drop(journal));
        }
        result
    }
}

fn handle_msg(
    myself: ActorRef<SchedMsg>,
    msg: SchedMsg,
    st: &mut SchedulerState,
) -> Result<(), ActorProcessingErr> {
    {
        let now = now_micros();
        st.core.set_clock(now);
        let (core, fx) = (&mut st.core, &mut st.outbox);
        match msg {
            SchedMsg::Connected { conn, role, session } => {
                tracing::debug!(conn = %conn, ?role, "session connected");
                st.sessions.insert(conn, session);
            }
            SchedMsg::Worker { conn, msg } => worker_msg(core, fx, now, conn, msg),
            SchedMsg::Client { conn, msg } => client_msg(&myself, st, now, conn, msg),
            SchedMsg::Nanny { conn, msg } => nanny_msg(core, fx, now, conn, msg),
            SchedMsg::Submit { conn, msg } => core::on_submit_job(core, fx, now, conn, msg),
            SchedMsg::Closed { conn } => {
                st.sessions.remove(&conn);
                core::on_connection_closed(core, fx, now, conn);
                if st.farewell.remove(&conn) {
                    stop_if_done(st);
                }
            }
            SchedMsg::FarewellOver => {
                st.farewell.clear();
                stop_if_done(st);
            }
            SchedMsg::StoredChecked { conn, task, path, lost } => {
                stored::on_checked(core, fx, conn, task, &path, lost)
            }
            SchedMsg::Dashboard { query, reply } => {
                let _ = reply.send(dash::answer(st, now, query));
                return Ok(());
            }
            SchedMsg::Deadline => {
                st.wake_at = None;
                core::on_deadline(core, now);
            }
            SchedMsg::Tick => {
                core::on_tick(core, fx, now);
                st.note_throughput();
            }
            SchedMsg::Flush => {
                st.flush_queued = false;
                return start_flush(&myself, st);
            }
            SchedMsg::FlushTimer => {
                st.flush_timer = false;
                return start_flush(&myself, st);
            }
            SchedMsg::Flushed(result) => return on_flushed(&myself, st, result),
        }
        // The one scheduling pass of this event, if a handler asked for it.
        st.core.finish_step(&mut st.outbox);
        st.outbox.records.extend(st.core.take_history().into_iter().map(crate::persistence::Record::History));
        stage_submissions(st)?;
        arm_deadline(&myself, st, now);
        stop_if_drained(&myself, st);
        let waiting = st.in_flight.is_none() && !st.outbox.is_empty();
        if !st.flush_queued && (waiting || !st.outbox.urgent.is_empty()) {
            st.flush_queued = true;
            myself.cast(SchedMsg::Flush)?;
        }
        Ok(())
    }
}

/// A group commit is durable: what waited for it goes out, the next starts.
fn on_flushed(
    myself: &ActorRef<SchedMsg>,
    st: &mut SchedulerState,
    result: Result<(), String>,
) -> Result<(), ActorProcessingErr> {
    if let Err(e) = result {
        // Promises can no longer be kept: stop rather than run on.
        tracing::error!(error = %e, "journal flush failed; stopping the scheduler");
        return Err(e.into());
    }
    st.flushes += 1;
    st.last_flush_done = Some(std::time::Instant::now());
    if let Some(took) = st.last_flush.map(|t| t.elapsed()) {
        st.flush_latency = Some(took);
        st.flush_seconds_total += took.as_secs_f64();
    }
    if let Some(out) = st.in_flight.take() {
        send(st, out);
    }
    start_flush(myself, st)
}

/// `shutdown --drain`: once nothing runs any more, stop when what is
/// gathered is durable and sent.
fn stop_if_drained(myself: &ActorRef<SchedMsg>, st: &mut SchedulerState) {
    if st.core.is_stopping() && !st.shutdown_requested && st.core.assigned_count() == 0 {
        tracing::info!("drained: no task is running any more; stopping");
        st.shutdown_requested = true;
        if !st.keep_workers {
            farewell(myself, st);
        }
        stop_if_done(st);
    }
}

/// A worker's message, through its core handler.
fn worker_msg(core: &mut Core, fx: &mut Outbox, now: u64, conn: ConnId, msg: FromWorker) {
    match msg {
        FromWorker::Register { slots, host, pid, functions, nanny, running, resources, walltime_end_ms } => {
            let ends_at = walltime_end_ms.map(|ms| ms.saturating_mul(1000));
            let w = core::NewWorker { slots, host, pid, functions, nanny, running, resources, ends_at };
            core::on_worker_joined(core, fx, now, conn, w);
        }
        FromWorker::Reports { batch, reports } => {
            core::on_reports(core, fx, now, conn, core::ReportsMsg { batch, reports })
        }
        FromWorker::Heartbeat { rss_kib } => core::on_heartbeat(core, fx, now, conn, rss_kib),
        FromWorker::Draining { returned } => core::on_worker_draining(core, conn, returned),
        FromWorker::Released { tasks } => core::on_released(core, conn, tasks),
        FromWorker::Goodbye => {
            if let Some(w) = core.worker_by_conn(conn) {
                core::on_worker_lost(core, fx, now, w, core::LostWorkerReason::Goodbye);
            }
        }
    }
}

/// A client's (or an operator's) message: a core handler, or what the
/// process itself answers (journal figures, shutdown, log level).
fn client_msg(myself: &ActorRef<SchedMsg>, st: &mut SchedulerState, now: u64, conn: ConnId, msg: FromClient) {
    let (core, fx) = (&mut st.core, &mut st.outbox);
    match msg {
        // Answered by the connection's reader, which reads the store.
        FromClient::ReadStored { .. } => {
            let message = "ReadStored is answered by the connection, not the scheduler".into();
            fx.to_client(conn, ToClient::Error { job: None, message });
        }
        FromClient::StoredLost { job, idx, path } => {
            stored::on_lost(myself, st.store.clone(), (core, fx), conn, crate::ids::TaskId { job, idx }, path)
        }
        FromClient::Submit { job, name, tasks, functions } => core::on_submit_job(
            core,
            fx,
            now,
            conn,
            core::SubmitMsg::with_functions(job, name, tasks, functions),
        ),
        FromClient::Watch { job } => core::on_watch(core, fx, conn, job),
        FromClient::Workers => core::on_list_workers(core, fx, now, conn),
        FromClient::Nannies => core::on_list_nannies(core, fx, conn),
        FromClient::RestartWorker { worker } => core::on_restart_worker(core, fx, conn, worker),
        FromClient::Forget { job } => core::on_forget(core, fx, conn, job),
        FromClient::Cancel { job, keys } => {
            core::on_cancel(core, fx, now, conn, core::CancelMsg { job, keys })
        }
        FromClient::Resolve { job, key } => core::on_resolve(core, fx, conn, job, key),
        FromClient::Unwatch { job } => core::on_unwatch(core, fx, conn, job),
        FromClient::Tasks { job } => core::on_tasks(core, fx, conn, job),
        FromClient::Jobs => core::on_jobs(core, fx, conn),
        FromClient::Shutdown => {
            tracing::info!("shutdown requested");
            let message = "the scheduler is stopping; its workers and nannies exit".into();
            fx.to_client(conn, ToClient::Done { message });
            st.shutdown_requested = true;
            farewell(myself, st);
        }
        FromClient::StopKeepingWorkers { drain: false } => {
            tracing::info!("shutdown requested; workers wait for the next scheduler");
            let message = "the scheduler is stopping; its workers wait for the next one".into();
            fx.to_client(conn, ToClient::Done { message });
            st.keep_workers = true;
            st.shutdown_requested = true;
        }
        FromClient::StopKeepingWorkers { drain: true } => {
            st.keep_workers = true;
            drain_and_stop(core, fx, conn);
        }
        FromClient::Explain { job, key } => core::on_explain(core, fx, conn, job, key),
        FromClient::Status => {
            let extra = st.status_extra();
            core::on_status(&st.core, &mut st.outbox, conn, extra)
        }
        FromClient::Job { job } => core::on_job(core, fx, now, conn, job),
        FromClient::Retry { job } => core::on_retry(core, fx, conn, job),
        FromClient::RetireWorker { worker } => core::on_retire_worker(core, fx, conn, worker),
        FromClient::Scale { workers } => core::on_scale(core, fx, conn, workers),
        FromClient::Journal => {
            let journal = st.journal_info();
            st.outbox.to_client(conn, ToClient::Journal { journal });
        }
        FromClient::DrainAndShutdown => drain_and_stop(core, fx, conn),
        FromClient::LogLevel { level } => {
            let reply = match crate::util::set_log_level(&level) {
                Ok(()) => {
                    tracing::warn!(level = ?level, "log level changed");
                    ToClient::Done { message: format!("log level is now {level:?}") }
                }
                Err(message) => ToClient::Error { job: None, message },
            };
            fx.to_client(conn, reply);
        }
    }
}

/// A nanny's message, through its core handler.
fn nanny_msg(core: &mut Core, fx: &mut Outbox, now: u64, conn: ConnId, msg: FromNanny) {
    match msg {
        FromNanny::Register { host, pid, slots } => {
            core::on_nanny_registered(core, fx, conn, core::NannyMsg { host, pid, slots })
        }
        FromNanny::Slot { info } => core::on_nanny_slot(core, conn, info),
        FromNanny::OverMemory { slot, reason } => {
            core::on_worker_over_memory(core, fx, now, conn, core::OverMemoryMsg { slot, reason })
        }
    }
}

/// Schedules a `Deadline` for the core's next due time, unless one comes
/// as early already: retries wait their backoff, not the next tick.
fn arm_deadline(myself: &ActorRef<SchedMsg>, st: &mut SchedulerState, now: u64) {
    let Some(due) = st.core.next_deadline() else { return };
    if st.wake_at.is_some_and(|at| at <= due) {
        return;
    }
    st.wake_at = Some(due);
    let wait = std::time::Duration::from_micros(due.saturating_sub(now));
    myself.send_after(wait, || SchedMsg::Deadline);
}

/// Journal first: the records of a group are appended, then flushed off the
/// actor's loop while it goes on handling events; the group's messages are
/// sent only once that flush is done (`Flushed`). One flush at a time, so
/// messages to each connection keep their order.
fn start_flush(myself: &ActorRef<SchedMsg>, st: &mut SchedulerState) -> Result<(), ActorProcessingErr> {
    for conn in std::mem::take(&mut st.outbox.overflowed) {
        cut_off(st, conn);
    }
    for (conn, frames) in std::mem::take(&mut st.outbox.urgent) {
        deliver(st, conn, frames);
    }
    st.outbox.bytes.retain(|c, _| st.outbox.frames.contains_key(c));
    if st.in_flight.is_some() || st.outbox.is_empty() {
        return Ok(());
    }
    if st.outbox.records.is_empty() && st.outbox.staged == 0 {
        let out = std::mem::replace(&mut st.outbox, Outbox::new(st.max_send_queue));
        send(st, out);
        return Ok(());
    }
    let now = std::time::Instant::now();
    if let Some(last) = st.last_flush {
        let due = last + st.commit_interval;
        if now < due {
            if !st.flush_timer {
                st.flush_timer = true;
                myself.send_after(due - now, || SchedMsg::FlushTimer);
            }
            return Ok(());
        }
    }
    st.last_flush = Some(now);
    let mut out = std::mem::replace(&mut st.outbox, Outbox::new(st.max_send_queue));
    out.records = crate::persistence::coalesce(std::mem::take(&mut out.records));
    st.journal.append(&out.records)?;
    st.records_appended += out.records.len() as u64;
    let forgotten: Vec<crate::ids::JobId> = out
        .records
        .iter()
        .filter_map(|r| match r {
            crate::persistence::Record::JobForgotten { job } => Some(*job),
            _ => None,
        })
        .collect();
    let store = st.store.clone().filter(|_| !forgotten.is_empty());
    // Appended: what the records hold (a job's task specs) need not wait
    // in memory for the flush.
    out.records = Vec::new();
    let flush = st.journal.flusher();
    let me = myself.clone();
    let limit = st.flush_timeout;
    tokio::spawn(async move {
        // A flush that never ends (a full disk can leave sled waiting for
        // good, a hung file system too) is a failed flush: promises wait on it.
        let result = match tokio::time::timeout(limit, flush).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "journal flush did not finish within {limit:?} (scheduler.flush_timeout): is its disk full or its file system hung?"
            )),
        };
        if let (Ok(()), Some(dir)) = (&result, store) {
            // Durably forgotten: their stored results go too.
            let _ = tokio::task::spawn_blocking(move || remove_stored(&dir, &forgotten)).await;
        }
        let _ = me.cast(SchedMsg::Flushed(result));
    });
    st.in_flight = Some(out);
    Ok(())
}

/// Appends the group's records at once when they hold a submission, so
/// that its task specs (the bulk of a large job's memory) are dropped now
/// rather than kept until the group's flush starts; the group's messages
/// still wait for that flush.
fn stage_submissions(st: &mut SchedulerState) -> Result<(), ActorProcessingErr> {
    if !st.outbox.records.iter().any(|r| matches!(r, crate::persistence::Record::JobSubmitted { .. })) {
        return Ok(());
    }
    let records = crate::persistence::coalesce(std::mem::take(&mut st.outbox.records));
    st.journal.append(&records)?;
    st.records_appended += records.len() as u64;
    st.outbox.staged += records.len();
    Ok(())
}

/// `shutdown --drain`: hand out nothing more; the scheduler stops once the
/// running tasks are reported and journaled.
fn drain_and_stop(core: &mut Core, fx: &mut Outbox, conn: ConnId) {
    tracing::info!("shutdown requested: draining first");
    core::on_drain(core, fx);
    let message = format!(
        "draining: no new tasks; the scheduler stops once {} assigned tasks have finished",
        core.assigned_count()
    );
    fx.to_client(conn, ToClient::Done { message });
}

/// Shutting down for good (`ctl shutdown`), unlike a crash or SIGTERM:
/// every nanny is told to stop its workers, every worker without a nanny
/// to exit; the process stops once they have hung up (at most FAREWELL_WAIT).
fn farewell(myself: &ActorRef<SchedMsg>, st: &mut SchedulerState) {
    let (nannies, alone) = st.core.farewell_conns();
    for conn in nannies.into_iter().filter(|c| st.sessions.contains_key(c)) {
        st.outbox.to_nanny(conn, ToNanny::Shutdown);
        st.farewell.insert(conn);
    }
    for conn in alone.into_iter().filter(|c| st.sessions.contains_key(c)) {
        st.outbox.to_worker(conn, ToWorker::Shutdown);
        st.farewell.insert(conn);
    }
    tracing::info!(
        told = st.farewell.len(),
        "telling nannies and workers that this scheduler shuts down for good"
    );
    myself.send_after(FAREWELL_WAIT, || SchedMsg::FarewellOver);
}

/// Lets the process stop once a requested shutdown has nothing left to send.
fn stop_if_done(st: &SchedulerState) {
    if st.shutdown_requested && st.farewell.is_empty() && st.in_flight.is_none() && st.outbox.is_empty() {
        st.shutdown.notify_one();
    }
}

fn send(st: &SchedulerState, out: Outbox) {
    if st.shutdown_requested && st.farewell.is_empty() {
        st.shutdown.notify_one();
    }
    for (conn, frames) in out.frames {
        deliver(st, conn, frames);
    }
    for conn in out.closes {
        if let Some(s) = st.sessions.get(&conn) {
            let _ = s.actor.cast(SessionMsg::Close);
        }
    }
}

/// Hands frames to a connection's session, closing a connection whose peer
/// has left more than `max_send_queue` bytes unread. A session that stopped
/// meanwhile is reported by `Closed`.
fn deliver(st: &SchedulerState, conn: ConnId, frames: Vec<Bytes>) {
    let Some(s) = st.sessions.get(&conn) else { return };
    if !s.abort.is_cancelled() && !s.deliver(frames, st.max_send_queue) {
        cut_off(st, conn);
    }
}

/// Closes a connection whose peer has more than `max_send_queue` bytes
/// waiting for it, and says so.
fn cut_off(st: &SchedulerState, conn: ConnId) {
    let Some(s) = st.sessions.get(&conn) else { return };
    if s.abort.is_cancelled() {
        return; // cut off already
    }
    // Cancelling interrupts a write in progress; stopping ends an idle session.
    s.abort.cancel();
    s.actor.stop(Some("send queue full".into()));
    tracing::warn!(
        conn = %conn,
        limit = %crate::util::format_size(st.max_send_queue as u64),
        "closing a connection whose peer does not read what it is sent (send queue full)"
    );
}

/// Removes forgotten jobs' files from the results store.
fn remove_stored(dir: &std::path::Path, jobs: &[crate::ids::JobId]) {
    for job in jobs {
        match crate::results_store::remove_job(dir, *job) {
            Ok(()) => tracing::debug!(job = %job, "stored results removed"),
            Err(e) => tracing::warn!(job = %job, error = %e, "cannot remove the job's stored results"),
        }
    }
}
