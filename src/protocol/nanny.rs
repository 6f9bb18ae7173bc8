//! Nanny ⇄ scheduler: `FromNanny` and `ToNanny`, and the slots a nanny reports.

use serde::{Deserialize, Serialize};

/// What a nanny slot is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    Running {
        pid: u32,
    },
    /// The worker exited; a new one starts after `in_ms` (backoff).
    Restarting {
        in_ms: u64,
        last_exit: String,
    },
    /// Too many restarts within the restart window: the slot is left empty.
    Failed {
        reason: String,
    },
    /// An operator retired its worker: the slot is left empty.
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub slot: u32,
    pub state: SlotState,
    /// Restarts since the nanny started.
    pub restarts: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromNanny {
    /// First message after the handshake, and again after a reconnect.
    Register { host: String, pid: u32, slots: Vec<SlotInfo> },
    /// A slot changed state.
    Slot { info: SlotInfo },
    /// The worker of this slot is over the memory limit and is killed right
    /// after this message: its running tasks fail (or retry) saying so.
    OverMemory { slot: u32, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToNanny {
    Registered {
        nanny: u64,
    },
    /// Restart the worker in this slot (an operator asked).
    RestartWorker {
        slot: u32,
    },
    /// Retire the worker in this slot: SIGTERM (it drains), no restart.
    RetireWorker {
        slot: u32,
    },
    /// The scheduler shuts down for good (`ctl shutdown`): stop every
    /// worker and exit, instead of waiting for another scheduler.
    Shutdown,
    Error {
        message: String,
    },
    /// Start workers in these slots (`ctl scale`): each is a retired slot
    /// of this nanny or the next one after its last.
    StartWorkers {
        slots: Vec<u32>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NannyInfo {
    pub id: u64,
    pub host: String,
    pub pid: u32,
    pub slots: Vec<SlotInfo>,
}
