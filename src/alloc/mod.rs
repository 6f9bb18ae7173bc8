//! The adaptive allocator (`actord alloc`): from the scheduler's backlog and
//! the Slurm allocations it holds, which allocations to submit or cancel
//! (`decide`, pure), and the state file that keeps them across its restarts.

pub mod slurm;

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors of the allocator's state file and of the Slurm commands it runs.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("cannot read the allocator's state file {path}: {error}")]
    ReadState { path: String, error: String },
    #[error("the allocator's state file {path} is damaged ({error}); move it away to start afresh (its allocations must then be cancelled by hand)")]
    BadState { path: String, error: String },
    #[error("cannot write the allocator's state file {path}: {error}")]
    WriteState { path: String, error: String },
    #[error("`{command}` failed: {error}")]
    Command { command: String, error: String },
}

/// What the allocator may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min_workers: u32,
    pub max_workers: u32,
    /// Workers the nanny of each allocation runs.
    pub workers_per_alloc: u32,
    /// Task slots of each of those workers.
    pub threads: u32,
    /// How long the scheduler must be idle before allocations beyond
    /// `min_workers` are cancelled.
    pub idle_timeout_ms: u64,
}

/// Where a Slurm allocation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocState {
    /// Submitted, waiting in Slurm's queue.
    Pending,
    /// Running its nanny.
    Running,
}

/// One allocation this allocator submitted and Slurm still has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alloc {
    /// Slurm's job id.
    pub id: String,
    pub state: AllocState,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
}

/// The scheduler's backlog, from `Status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Ready tasks no worker has yet.
    pub waiting: u64,
    /// Tasks handed to workers (running, or queued on them).
    pub busy: u64,
}

impl Backlog {
    pub fn idle(&self) -> bool {
        self.waiting == 0 && self.busy == 0
    }
}

/// What to do this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Allocations to submit.
    pub submit: u32,
    /// Allocations to cancel (Slurm job ids): pending ones first, then the newest.
    pub cancel: Vec<String>,
}

/// Decides from the backlog and the allocations held: enough allocations
/// for the waiting tasks (counting the pending ones' workers as already
/// coming) and for `min_workers`, never beyond `max_workers`; once the
/// scheduler has been idle since `idle_since` for `idle_timeout`, cancel
/// down to what `min_workers` needs (beyond `max_workers` at any time).
pub fn decide(
    policy: &Policy,
    backlog: Backlog,
    allocs: &[Alloc],
    idle_since: Option<u64>,
    now_ms: u64,
) -> Decision {
    let per_alloc = policy.workers_per_alloc.max(1) as u64;
    let slots_per_alloc = per_alloc * policy.threads.max(1) as u64;
    let held = allocs.len() as u64;
    let max_allocs = policy.max_workers as u64 / per_alloc;
    let min_allocs = (policy.min_workers as u64).div_ceil(per_alloc).min(max_allocs);
    let mut keep = held;
    let idle_long =
        backlog.idle() && idle_since.is_some_and(|t| now_ms.saturating_sub(t) >= policy.idle_timeout_ms);
    if held > max_allocs {
        keep = max_allocs;
    } else if idle_long {
        keep = held.min(min_allocs);
    }
    let mut decision = Decision { submit: 0, cancel: cancel_order(allocs, (held - keep) as usize) };
    if keep < held {
        return decision;
    }
    let pending = allocs.iter().filter(|a| a.state == AllocState::Pending).count() as u64;
    let uncovered = backlog.waiting.saturating_sub(pending * slots_per_alloc);
    let for_backlog = held + uncovered.div_ceil(slots_per_alloc);
    let want = for_backlog.max(min_allocs).min(max_allocs);
    decision.submit = want.saturating_sub(held).min(u32::MAX as u64) as u32;
    decision
}

/// The `n` allocations to cancel: pending ones (newest first), then running ones (newest first).
fn cancel_order(allocs: &[Alloc], n: usize) -> Vec<String> {
    let mut order: Vec<&Alloc> = allocs.iter().collect();
    order.sort_by_key(|a| (a.state == AllocState::Running, std::cmp::Reverse(a.submitted_ms)));
    order.into_iter().take(n).map(|a| a.id.clone()).collect()
}

/// What the allocator keeps on disk: its allocations and since when the
/// scheduler has been idle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocFile {
    pub allocs: Vec<Alloc>,
    #[serde(default)]
    pub idle_since_ms: Option<u64>,
}

/// The largest state file read (a few hundred allocations take a few KiB).
const MAX_STATE: u64 = 4 << 20;

impl AllocFile {
    /// Reads the state file; a missing one is an empty state.
    pub fn load(path: &Path) -> Result<AllocFile, AllocError> {
        let shown = path.display().to_string();
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AllocFile::default()),
            Err(e) => return Err(AllocError::ReadState { path: shown, error: e.to_string() }),
        };
        let mut text = Vec::new();
        if let Err(e) = file.take(MAX_STATE + 1).read_to_end(&mut text) {
            return Err(AllocError::ReadState { path: shown, error: e.to_string() });
        }
        if text.len() as u64 > MAX_STATE {
            return Err(AllocError::BadState { path: shown, error: format!("over {MAX_STATE} bytes") });
        }
        serde_json::from_slice(&text).map_err(|e| AllocError::BadState { path: shown, error: e.to_string() })
    }

    /// Writes it whole (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<(), AllocError> {
        let err = |e: std::io::Error| AllocError::WriteState {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).expect("the state serializes");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests;
