//! The scheduler actor: owns the core and the journal, runs each incoming
//! message through a core handler, then executes the effects — journal
//! first (one flush per group), then one write per connection.

use super::session::SessionMsg;
use crate::core::{self, Core, Effects};
use crate::ids::ConnId;
use crate::persistence::{AnyJournal, Journal, Record};
use crate::protocol::{conn::encode, FromClient, FromNanny, FromWorker, Role, ToClient, ToNanny, ToWorker};
use crate::util::now_micros;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;

pub enum SchedMsg {
    /// A session finished its handshake; messages from it follow.
    Connected {
        conn: ConnId,
        role: Role,
        session: ActorRef<SessionMsg>,
    },
    Worker {
        conn: ConnId,
        msg: FromWorker,
    },
    Client {
        conn: ConnId,
        msg: FromClient,
    },
    Nanny {
        conn: ConnId,
        msg: FromNanny,
    },
    Closed {
        conn: ConnId,
    },
    /// Execute the effects gathered since the last flush.
    Flush,
    /// Periodic: check heartbeats.
    Tick,
}

/// Effects of the steps since the last flush, executed together.
#[derive(Default)]
pub struct Outbox {
    records: Vec<Record>,
    frames: HashMap<ConnId, Vec<Bytes>>,
    closes: Vec<ConnId>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.frames.is_empty() && self.closes.is_empty()
    }
    fn push<T: serde::Serialize>(&mut self, conn: ConnId, msg: &T) {
        match encode(msg) {
            Ok(b) => self.frames.entry(conn).or_default().push(b),
            Err(e) => tracing::error!(conn = %conn, error = %e, "cannot encode a message"),
        }
    }
}

impl Effects for Outbox {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        self.push(conn, &msg);
    }
    fn to_client(&mut self, conn: ConnId, msg: ToClient) {
        self.push(conn, &msg);
    }
    fn to_nanny(&mut self, conn: ConnId, msg: ToNanny) {
        self.push(conn, &msg);
    }
    fn journal(&mut self, record: Record) {
        self.records.push(record);
    }
    fn close(&mut self, conn: ConnId) {
        self.closes.push(conn);
    }
}

pub struct SchedulerActor;

pub struct SchedulerArgs {
    pub core: Core,
    pub journal: AnyJournal,
    /// How often to check for workers that stopped sending heartbeats.
    pub tick: std::time::Duration,
}

pub struct SchedulerState {
    core: Core,
    journal: AnyJournal,
    sessions: HashMap<ConnId, ActorRef<SessionMsg>>,
    outbox: Outbox,
    /// A `Flush` is already in the mailbox: later steps join its group.
    flush_queued: bool,
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
        Ok(SchedulerState {
            core: args.core,
            journal: args.journal,
            sessions: HashMap::new(),
            outbox: Outbox::default(),
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedMsg>,
        msg: SchedMsg,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_micros();
        let (core, fx) = (&mut st.core, &mut st.outbox);
        match msg {
            SchedMsg::Connected { conn, role, session } => {
                tracing::debug!(conn = %conn, ?role, "session connected");
                st.sessions.insert(conn, session);
            }
            SchedMsg::Worker { conn, msg } => match msg {
                FromWorker::Register { slots, host, pid, functions, nanny, running } => {
                    let w = core::NewWorker { slots, host, pid, functions, nanny, running };
                    core::on_worker_joined(core, fx, now, conn, w);
                }
                FromWorker::Reports { reports } => core::on_reports(core, fx, now, conn, reports),
                FromWorker::Heartbeat => core::on_heartbeat(core, fx, now, conn),
                FromWorker::Draining { returned } => core::on_worker_draining(core, fx, conn, returned),
                FromWorker::Goodbye => {
                    if let Some(w) = core.worker_by_conn.get(&conn).copied() {
                        core::on_worker_lost(core, fx, now, w, core::GOODBYE);
                    }
                }
            },
            SchedMsg::Client { conn, msg } => match msg {
                FromClient::Submit { job, name, tasks } => {
                    core::on_submit(core, fx, now, conn, job, name, tasks)
                }
                FromClient::Watch { job } => core::on_watch(core, fx, conn, job),
                FromClient::Workers => core::on_list_workers(core, fx, conn),
                FromClient::Nannies => core::on_list_nannies(core, fx, conn),
                FromClient::RestartWorker { worker } => core::on_restart_worker(core, fx, conn, worker),
                FromClient::Forget { job } => core::on_forget(core, fx, conn, job),
            },
            SchedMsg::Nanny { conn, msg } => match msg {
                FromNanny::Register { host, pid, slots } => {
                    core::on_nanny_registered(core, fx, conn, host, pid, slots)
                }
                FromNanny::Slot { info } => core::on_nanny_slot(core, conn, info),
            },
            SchedMsg::Closed { conn } => {
                st.sessions.remove(&conn);
                core::on_connection_closed(core, fx, now, conn);
            }
            SchedMsg::Tick => core::on_tick(core, fx, now),
            SchedMsg::Flush => {
                st.flush_queued = false;
                return flush(st).await;
            }
        }
        if !st.flush_queued && !st.outbox.is_empty() {
            st.flush_queued = true;
            myself.cast(SchedMsg::Flush)?;
        }
        Ok(())
    }
}

/// Journal first: nothing is sent that promises what is not yet durable.
async fn flush(st: &mut SchedulerState) -> Result<(), ActorProcessingErr> {
    let out = std::mem::take(&mut st.outbox);
    if !out.records.is_empty() {
        st.journal.append(&out.records)?;
        st.journal.flush().await?;
    }
    for (conn, frames) in out.frames {
        if let Some(s) = st.sessions.get(&conn) {
            // A session that stopped meanwhile is reported by `Closed`.
            let _ = s.cast(SessionMsg::Frames(frames));
        }
    }
    for conn in out.closes {
        if let Some(s) = st.sessions.get(&conn) {
            let _ = s.cast(SessionMsg::Close);
        }
    }
    Ok(())
}
