//! What the nanny's parts tell each other (the `Nanny`'s messages), and the
//! environment it gives its workers.

/// Environment a nanny gives its workers: its pid and their slot.
pub const ENV_NANNY_PID: &str = "ACTORD_NANNY_PID";
pub const ENV_NANNY_SLOT: &str = "ACTORD_NANNY_SLOT";

pub enum NannyMsg {
    /// A worker process of this slot is up.
    Started { slot: u32, pid: u32 },
    /// The backoff of a slot is over: start its worker.
    Respawn(u32),
    /// An operator asked (through the scheduler) to restart this slot's worker.
    RestartWorker(u32),
    /// An operator asked to retire this slot's worker: SIGTERM (the worker
    /// drains, however long its running tasks take), no restart.
    RetireWorker(u32),
    /// `ctl scale`: start workers in these slots (retired ones, or new
    /// ones right after the last).
    StartWorkers(Vec<u32>),
    /// The scheduler link failed a while ago: start a new one.
    RestartLink,
    /// Stop every worker (SIGTERM, then SIGKILL after the grace), then the nanny.
    Shutdown,
    /// A slot's worker is over the memory limit: tell the scheduler why
    /// before it is killed (`done` once that is sent, or dropped).
    OverMemory(OverMemory),
}

/// A worker about to be killed for its memory, on its way to the scheduler.
pub struct OverMemory {
    pub(super) slot: u32,
    pub(super) reason: String,
    pub(super) done: tokio::sync::oneshot::Sender<()>,
}
