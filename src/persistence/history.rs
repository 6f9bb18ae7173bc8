//! The journal's `history` tree: the status page's events and per-job
//! timing, kept apart from the jobs' records and bounded (the last
//! `KEEP_EVENTS` events; one timing entry per job, gone with its job).
//!
//! Keys: `0x01 ++ n (u64 BE)` → an event, `0x02 ++ job uuid` → its timing;
//! values framed like every record (crc32 over key and rest, then `n`).
//! History is what the page shows, not what the jobs need: a damaged entry
//! is logged and skipped, never a reason to refuse the journal.

use super::{frame, JournalError};
use crate::ids::JobId;
use crate::journal_record::{HistoryRecord, Record};

/// Events kept in the journal at most (older ones are trimmed).
pub const KEEP_EVENTS: u64 = 1000;
/// Trim in steps, not at every event.
const TRIM_SLACK: u64 = 100;

const EVENT: u8 = 1;
const JOB: u8 = 2;

/// The tree and where its events stand.
pub struct HistoryStore {
    tree: sled::Tree,
    /// Number of the next event written.
    next: u64,
    /// Events in the tree now.
    events: u64,
}

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

fn w(e: sled::Error) -> JournalError {
    JournalError::Write(e.to_string())
}

/// The payload a history record is written as (named fields, so that
/// fields added later default when reading older entries).
pub fn payload(r: &HistoryRecord) -> Result<Vec<u8>, JournalError> {
    rmp_serde::to_vec_named(r).map_err(|e| JournalError::Write(e.to_string()))
}

impl HistoryStore {
    /// Opens the tree (created empty in journals written before it existed)
    /// and reads what it holds: events oldest first, then job timings.
    pub fn open(db: &sled::Db) -> Result<(HistoryStore, Vec<Record>), sled::Error> {
        let tree = db.open_tree("history")?;
        let (mut out, mut next, mut events) = (Vec::new(), 0u64, 0u64);
        for item in tree.iter() {
            let (k, v) = item?;
            if k.first() == Some(&EVENT) {
                events += 1;
                if let Some(n) = k.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    next = next.max(u64::from_be_bytes(n).saturating_add(1));
                }
            }
            match frame::unframe(&k, &v).map_err(|e| e.to_string()).and_then(|(_, p)| {
                rmp_serde::from_slice::<HistoryRecord>(p).map_err(|e| format!("does not decode: {e}"))
            }) {
                Ok(r) => out.push(Record::History(r)),
                Err(error) => {
                    tracing::warn!(key = ?k.as_ref(), error = %error, "skipping a damaged history entry")
                }
            }
        }
        Ok((HistoryStore { tree, next, events }, out))
    }

    /// Writes a history record (durable with the next flush); trims old
    /// events past the bound.
    pub fn append(&mut self, r: &HistoryRecord) -> Result<(), JournalError> {
        let bytes = payload(r)?;
        match r {
            HistoryRecord::Event { .. } => {
                let n = self.next;
                self.next += 1;
                let k = key(EVENT, &n.to_be_bytes());
                self.tree.insert(k.as_slice(), frame::frame(&k, n, &bytes)).map_err(w)?;
                self.events += 1;
                if self.events > KEEP_EVENTS + TRIM_SLACK {
                    self.trim()?;
                }
            }
            HistoryRecord::JobTimes { job, .. } => {
                let k = key(JOB, job.0.as_bytes());
                self.tree.insert(k.as_slice(), frame::frame(&k, 0, &bytes)).map_err(w)?;
            }
        }
        Ok(())
    }

    /// Removes the oldest events, keeping `KEEP_EVENTS`.
    fn trim(&mut self) -> Result<(), JournalError> {
        let drop = self.events.saturating_sub(KEEP_EVENTS);
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix([EVENT]).take(drop as usize) {
            batch.remove(item.map_err(w)?.0);
        }
        self.tree.apply_batch(batch).map_err(w)?;
        self.events -= drop;
        Ok(())
    }

    /// A forgotten job's timing goes with it.
    pub fn forget(&mut self, job: &JobId) -> Result<(), JournalError> {
        self.tree.remove(key(JOB, job.0.as_bytes())).map_err(w)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> HistoryRecord {
        HistoryRecord::Event { at: i, kind: "test".into(), text: format!("event {i}") }
    }

    #[test]
    fn events_are_bounded_oldest_first_and_job_times_follow_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (mut h, first) = HistoryStore::open(&db).unwrap();
        assert!(first.is_empty());
        for i in 0..KEEP_EVENTS + TRIM_SLACK + 5 {
            h.append(&event(i)).unwrap();
        }
        let (a, b) = (JobId::new(), JobId::new());
        for job in [a, b] {
            h.append(&HistoryRecord::JobTimes { job, submitted_at: 1, done_at: None }).unwrap();
        }
        h.append(&HistoryRecord::JobTimes { job: a, submitted_at: 1, done_at: Some(9) }).unwrap();
        h.forget(&b).unwrap();
        drop(h);
        let (h, back) = HistoryStore::open(&db).unwrap();
        let ats: Vec<u64> = back
            .iter()
            .filter_map(|r| match r {
                Record::History(HistoryRecord::Event { at, .. }) => Some(*at),
                _ => None,
            })
            .collect();
        // Trimmed to KEEP_EVENTS once past it by TRIM_SLACK; 4 more since.
        assert_eq!(ats.len() as u64, KEEP_EVENTS + 4, "trimmed to the bound");
        assert_eq!(ats.last(), Some(&(KEEP_EVENTS + TRIM_SLACK + 4)), "the newest kept, in order");
        assert!(ats.windows(2).all(|p| p[0] < p[1]));
        let times: Vec<&Record> =
            back.iter().filter(|r| matches!(r, Record::History(HistoryRecord::JobTimes { .. }))).collect();
        assert_eq!(
            times,
            [&Record::History(HistoryRecord::JobTimes { job: a, submitted_at: 1, done_at: Some(9) })]
        );
        assert_eq!(h.next, KEEP_EVENTS + TRIM_SLACK + 5, "numbers go on after reopen");
    }

    #[test]
    fn a_damaged_entry_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (mut h, _) = HistoryStore::open(&db).unwrap();
        h.append(&event(1)).unwrap();
        h.append(&event(2)).unwrap();
        let k = key(EVENT, &0u64.to_be_bytes());
        let mut v = h.tree.get(&k).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0xff;
        h.tree.insert(k, v).unwrap();
        let (_, back) = HistoryStore::open(&db).unwrap();
        assert_eq!(back, vec![Record::History(event(2))]);
    }
}
