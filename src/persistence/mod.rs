//! The scheduler's journal: versioned records (`journal_record`), appended in groups and
//! flushed once per group (group commit), replayed into the core at start-up.
//!
//! On disk (sled, on a shared file system such as `$SCRATCH`), format 2:
//! - every value in `jobs`, `done` and `forgotten` is a framed record:
//!   crc32 (u32 BE, over the key's length, the key and the rest), then its
//!   sequence number (lsn, u64 BE, one counter for the whole journal, never
//!   reused), then its payload (msgpack);
//! - `meta`: `version` (u32 BE) and `epoch` (u64 BE, bumped at every open);
//! - `jobs`: key `job uuid ++ part (u32 BE)` → a `JobPart` (≤ 65,536 tasks;
//!   the first part also holds the function table and, since it is kept,
//!   the submission's digest, absent in older journals);
//! - `done`: key `job uuid ++ lsn (u64 BE)` → a batch of finished tasks
//!   (`Vec<DoneTask>`), or a retry (`{"Retried": [idx]}`), in the order they
//!   happened;
//! - `forgotten`: key `job uuid` → an empty record: a tombstone, written
//!   before the job's records are removed;
//! - `hwm` beside them (not in sled): the high-water mark, crc32 (BE) then
//!   msgpack `[version, epoch, last_lsn, {job: [records, name]}]`, replaced
//!   atomically (tmp, fsync, rename) after every flush, off the scheduler's
//!   loop, with what the flush made durable;
//! - `history` (`history.rs`): the status page's events (the last 1000)
//!   and per-job timing, outside the checks above: damage there is logged
//!   and skipped;
//! - `holder.json` beside them: pid, host and start time of the scheduler
//!   that has it open.
//!
//! Forgetting a job removes every key under its uuid in both trees, and the
//! job from the mark. Checking at open (and `actord journal check`): every
//! record's checksum and decoding (of a job part: its fields and the
//! structure and count of its task list, whose specs are decoded at replay,
//! straight into the job; outcome batches wholly, kept as read; a
//! scheduler's start leaves that to its replay, which reads them anyway,
//! and on a batch that does not decode checks the whole journal as
//! `journal check` does, before anything is committed); the epoch in `meta` against the mark's
//! and the scheduler file's (a deleted or rolled-back database); and, per
//! job, the records with lsn ≤ `last_lsn` against the mark's count. The mark
//! is written only after sled's flush, so it may lag (records after
//! `last_lsn` are not counted) but never leads; a forget the mark has not
//! seen yet is excused by its tombstone. Tombstones are cleared at open,
//! once a new mark (which no longer lists those jobs) is durable. Damage is
//! refused with one message naming the jobs it touches; a repair drops what
//! cannot be replayed and writes a mark for what is left.

mod check;
#[cfg(test)]
mod damage_tests;
mod drop_aside;
mod frame;
mod history;
mod hwm;
mod layout;
mod lock_wait;
mod open;
mod sled_journal;

pub use check::{Affected, Expected, Report};
pub use open::verify;
pub use sled_journal::{open_error_message, payloads, OpenOptions, SledJournal};

pub use crate::journal_record::{DoneList, DoneTask, Record, JOURNAL_VERSION};

use std::path::PathBuf;

/// Merges adjacent `TasksDone` records of the same job (one group commit
/// holds one per report frame): fewer, larger records to write and replay.
pub fn coalesce(records: Vec<Record>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    for r in records {
        match (out.last_mut(), r) {
            (
                Some(Record::TasksDone { job: a, done: DoneList::Tasks(done) }),
                Record::TasksDone { job: b, done: DoneList::Tasks(more) },
            ) if *a == b => {
                done.extend(more);
            }
            (_, r) => out.push(r),
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("journal write failed: {0}")]
    Write(String),
    /// Damage found at open: the whole report in one line.
    #[error("{0}")]
    Damaged(String),
}

/// A flush of everything appended so far, runnable off the scheduler's loop.
pub type Flush = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), JournalError>> + Send>>;

/// Where records go. `append` stages; the future from `flusher` makes
/// everything appended before it durable.
pub trait Journal: Send + 'static {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError>;
    fn flusher(&self) -> Flush;
    fn flush(&self) -> Flush {
        self.flusher()
    }
    /// Every live record, jobs first, for replay at start-up.
    fn replay(&self) -> Result<Vec<Record>, JournalError>;
    /// Restarts of this journal so far (0 for a new one).
    fn epoch(&self) -> u64;
}

/// In-memory journal: for tests, and for a scheduler run with `--no-journal`.
#[derive(Default)]
pub struct MemJournal {
    pub records: Vec<Record>,
}

impl Journal for MemJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        for r in records {
            if let Record::JobForgotten { job } = r {
                self.records.retain(|x| match x {
                    Record::JobSubmitted { job: j, .. }
                    | Record::TasksDone { job: j, .. }
                    | Record::TasksRetried { job: j, .. }
                    | Record::ResultsLost { job: j, .. } => j != job,
                    Record::History(crate::journal_record::HistoryRecord::JobTimes { job: j, .. }) => {
                        j != job
                    }
                    Record::History(_) => true,
                    Record::JobForgotten { .. } => false,
                });
            } else {
                self.records.push(r.clone());
            }
        }
        Ok(())
    }
    fn flusher(&self) -> Flush {
        Box::pin(async { Ok(()) })
    }
    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        let (mut jobs, done): (Vec<Record>, Vec<Record>) =
            self.records.iter().cloned().partition(|r| matches!(r, Record::JobSubmitted { .. }));
        jobs.extend(done);
        Ok(jobs)
    }
    fn epoch(&self) -> u64 {
        0
    }
}

/// The journals a scheduler can run with, as one type the actor can own.
pub enum AnyJournal {
    Mem(MemJournal),
    Sled(SledJournal),
}

impl Journal for AnyJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        match self {
            AnyJournal::Mem(j) => j.append(records),
            AnyJournal::Sled(j) => j.append(records),
        }
    }
    fn flusher(&self) -> Flush {
        match self {
            AnyJournal::Mem(j) => j.flusher(),
            AnyJournal::Sled(j) => j.flusher(),
        }
    }
    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        match self {
            AnyJournal::Mem(j) => j.replay(),
            AnyJournal::Sled(j) => j.replay(),
        }
    }
    fn epoch(&self) -> u64 {
        match self {
            AnyJournal::Mem(j) => j.epoch(),
            AnyJournal::Sled(j) => j.epoch(),
        }
    }
}

impl AnyJournal {
    /// Where it is on disk, and how many bytes it takes there (`None`: in memory).
    pub fn location(&self) -> Option<(PathBuf, u64)> {
        match self {
            AnyJournal::Mem(_) => None,
            AnyJournal::Sled(j) => Some((j.dir().to_path_buf(), j.size_on_disk())),
        }
    }
}

/// The journal directory: the flag, else `$SCRATCH/actord/journal`, else
/// `$XDG_STATE_HOME/actord/journal`, else `~/.local/state/actord/journal`.
pub fn resolve_dir(flag: Option<&str>) -> Result<PathBuf, String> {
    if let Some(f) = flag {
        return crate::util::expand_path(f);
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(s) = var("SCRATCH") {
        return Ok(PathBuf::from(s).join("actord/journal"));
    }
    if let Some(s) = var("XDG_STATE_HOME") {
        return Ok(PathBuf::from(s).join("actord/journal"));
    }
    let home = var("HOME").ok_or("cannot choose a journal directory: set --journal, $SCRATCH or $HOME")?;
    Ok(PathBuf::from(home).join(".local/state/actord/journal"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;
    use crate::journal_record::Outcome;

    #[test]
    fn adjacent_results_of_one_job_merge_and_order_is_kept() {
        let (a, b) = (JobId::new(), JobId::new());
        let done = |job, idx| Record::TasksDone {
            job,
            done: vec![DoneTask {
                idx,
                attempt: 1,
                outcome: Outcome::Err { error: "x".into(), exception: None },
                canceled: false,
            }]
            .into(),
        };
        let retry = Record::TasksRetried { job: a, idx: vec![0] };
        let merged =
            coalesce(vec![done(a, 0), done(a, 1), done(b, 0), retry.clone(), done(a, 0), done(a, 2)]);
        let shape: Vec<(JobId, Vec<u32>)> = merged
            .iter()
            .filter_map(|r| match r {
                Record::TasksDone { job, done } => Some((*job, done.tasks().iter().map(|d| d.idx).collect())),
                _ => None,
            })
            .collect();
        assert_eq!(shape, vec![(a, vec![0, 1]), (b, vec![0]), (a, vec![0, 2])]);
        assert_eq!(merged[2], retry, "a retry stays between the outcomes it separates");
    }
}
