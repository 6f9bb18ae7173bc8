//! The scheduler's journal: versioned records, appended in groups and
//! flushed once per group, replayed into the core at start-up.

use crate::ids::{JobId, TaskId};
use crate::protocol::{Outcome, TaskSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bump when `Record` changes shape; replay refuses other versions.
pub const JOURNAL_VERSION: u32 = 1;

/// One journal record. Replay applies them in order through the core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    JobSubmitted { job: JobId, name: String, tasks: Vec<TaskSpec> },
    TaskDone { task: TaskId, attempt: u32, outcome: Outcome },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("journal write failed: {0}")]
    Write(String),
    #[error("journal record {seq} is unreadable: {message}")]
    Corrupt { seq: u64, message: String },
}

/// Where records go. `append` buffers; `flush` makes everything appended durable.
pub trait Journal: Send + 'static {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError>;
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), JournalError>> + Send;
    /// All records in order, for replay at start-up.
    fn replay(&self) -> Result<Vec<Record>, JournalError>;
}

/// In-memory journal for tests and for a scheduler run without persistence.
#[derive(Default)]
pub struct MemJournal {
    pub records: Vec<Record>,
    pub flushes: u64,
}

impl Journal for MemJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        self.records.extend_from_slice(records);
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), JournalError> {
        self.flushes += 1;
        Ok(())
    }
    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        Ok(self.records.clone())
    }
}

/// The journal in sled on a (shared) directory: tree `records`, keys are
/// big-endian sequence numbers, values are msgpack `Record`s.
pub struct SledJournal {
    db: sled::Db,
    records: sled::Tree,
    next_seq: u64,
}

impl SledJournal {
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| err(describe_open_error(&e)))?;
        let meta = db.open_tree("meta").map_err(|e| err(e.to_string()))?;
        match meta.get("version").map_err(|e| err(e.to_string()))? {
            Some(v) if v.as_ref() != JOURNAL_VERSION.to_be_bytes() => {
                return Err(err(format!(
                    "written by journal version {:?}, this actord reads version {JOURNAL_VERSION}",
                    v.as_ref()
                )))
            }
            Some(_) => {}
            None => {
                meta.insert("version", &JOURNAL_VERSION.to_be_bytes()).map_err(|e| err(e.to_string()))?;
            }
        }
        let records = db.open_tree("records").map_err(|e| err(e.to_string()))?;
        let next_seq = match records.last().map_err(|e| err(e.to_string()))? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])) + 1,
            None => 0,
        };
        Ok(SledJournal { db, records, next_seq })
    }
}

fn describe_open_error(e: &sled::Error) -> String {
    let text = e.to_string();
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        "already open by another scheduler (sled holds an exclusive lock on it)".into()
    } else {
        text
    }
}

impl Journal for SledJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let mut batch = sled::Batch::default();
        for r in records {
            let bytes = rmp_serde::to_vec_named(r).map_err(|e| JournalError::Write(e.to_string()))?;
            batch.insert(&self.next_seq.to_be_bytes(), bytes);
            self.next_seq += 1;
        }
        self.records.apply_batch(batch).map_err(|e| JournalError::Write(e.to_string()))
    }

    async fn flush(&mut self) -> Result<(), JournalError> {
        self.db.flush_async().await.map_err(|e| JournalError::Write(e.to_string()))?;
        Ok(())
    }

    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for item in self.records.iter() {
            let (k, v) = item.map_err(|e| JournalError::Corrupt { seq: 0, message: e.to_string() })?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let rec = rmp_serde::from_slice(&v)
                .map_err(|e| JournalError::Corrupt { seq, message: e.to_string() })?;
            out.push(rec);
        }
        Ok(out)
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
    async fn flush(&mut self) -> Result<(), JournalError> {
        match self {
            AnyJournal::Mem(j) => j.flush().await,
            AnyJournal::Sled(j) => j.flush().await,
        }
    }
    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        match self {
            AnyJournal::Mem(j) => j.replay(),
            AnyJournal::Sled(j) => j.replay(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskKind;

    #[tokio::test]
    async fn sled_journal_round_trips_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let recs = vec![
            Record::JobSubmitted {
                job,
                name: "t".into(),
                tasks: vec![TaskSpec {
                    key: None,
                    kind: TaskKind::Cmd { argv: vec!["true".into()] },
                    max_worker_kills: None,
                }],
            },
            Record::TaskDone {
                task: TaskId { job, idx: 0 },
                attempt: 1,
                outcome: Outcome::Ok { result: bytes::Bytes::from_static(b"\xc0") },
            },
        ];
        {
            let mut j = SledJournal::open(dir.path()).unwrap();
            j.append(&recs[..1]).unwrap();
            j.append(&recs[1..]).unwrap();
            j.flush().await.unwrap();
        }
        // sled releases its lock from a background thread after the drop:
        // reopen with a bounded retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let j = loop {
            match SledJournal::open(dir.path()) {
                Ok(j) => break j,
                Err(e) if std::time::Instant::now() >= deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        assert_eq!(j.replay().unwrap(), recs);
        assert_eq!(j.next_seq, 2);
    }
}
