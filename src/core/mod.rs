//! The scheduler's state machine. Pure: no I/O, no clock, no async. Handlers
//! update `Core` and record what must happen in an `Effects` sink; the
//! scheduler actor executes those effects (journal first, then messages).

mod admin;
mod build;
mod check;
mod compact;
mod dashboard;
mod deadlines;
mod graph;
mod history;
mod lifecycle;
mod lost;
mod maps;
mod pins;
mod queue;
mod replay;
mod reports;
mod scale;
mod schedule;
#[cfg(test)]
mod sim;
mod state;
mod submit;
mod task;
#[cfg(test)]
mod testenv;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faults;
#[cfg(test)]
mod tests_py;
#[cfg(test)]
mod tests_stored;
#[cfg(test)]
mod tests_submit;
#[cfg(test)]
mod tests_walltime;
mod timers;
mod views;
mod worker;

pub use admin::*;
pub use build::{Build, JobBuilder};
pub use dashboard::*;
pub use graph::{key_index, task_name};
pub use history::{Event, History};
pub use lifecycle::*;
pub use lost::{on_client_stored_lost, stored_result_of};
pub use maps::{TaskMap, WorkerMap};
pub use pins::Leave;
pub use queue::ReadyEntry;
pub use replay::*;
pub use reports::*;
pub use scale::{on_scale, plan_scale, Candidate, NannyView, ScalePlan, MAX_SCALE};
pub use schedule::*;
pub use state::*;
pub use submit::*;
pub use task::*;
pub use timers::*;
pub use views::*;
pub use worker::*;

use crate::ids::ConnId;
use crate::journal_record::Record;
use crate::protocol::{ToClient, ToNanny, ToWorker};

/// Everything a handler may cause outside the core.
/// The core says which messages wait for the step's records to be durable
/// (as raft-rs's `Ready` marks its persisted messages): the sink obeys.
pub trait Effects {
    /// A message that promises nothing durable (an assignment, a steal, a
    /// registration): sent at once. A task handed out before its job is
    /// durable is at worst run for nothing.
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker);
    /// A message that promises what the step journaled (an acknowledgement:
    /// the worker forgets those results): sent once the records are flushed.
    fn to_worker_after_flush(&mut self, conn: ConnId, msg: ToWorker);
    /// Replies and outcomes: a client may rely on any of them, so every one
    /// is sent once the step's records are flushed.
    fn to_client(&mut self, conn: ConnId, msg: ToClient);
    /// Nannies are promised nothing durable: sent at once.
    fn to_nanny(&mut self, conn: ConnId, msg: ToNanny);
    /// Appended and flushed before any message of the same step is sent.
    fn journal(&mut self, record: Record);
    /// Close a connection after its pending messages are sent.
    fn close(&mut self, conn: ConnId);
}

/// Tunables of the scheduling policy (from config/actord.toml).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How much queued work (µs of estimated run time) each slot may hold
    /// beyond the task it runs, so that workers never wait for the scheduler.
    pub prefetch_target_us: u64,
    /// Upper bound on queued tasks per slot, whatever the estimate.
    pub max_prefetch_per_slot: u32,
    /// A task that has killed this many workers fails instead of looping.
    pub max_worker_kills: u32,
    /// A worker silent for this long is declared lost (hung, or stopped).
    pub heartbeat_timeout_us: u64,
    /// First delay before a failed task is retried; doubles per failure.
    pub retry_backoff_us: u64,
    /// Finished jobs are forgotten this long after they finish (`None`: kept
    /// until forgotten by hand).
    pub retention_us: Option<u64>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            prefetch_target_us: 20_000,
            max_prefetch_per_slot: 2048,
            max_worker_kills: 3,
            heartbeat_timeout_us: 10_000_000,
            retry_backoff_us: 1_000_000,
            retention_us: None,
        }
    }
}
