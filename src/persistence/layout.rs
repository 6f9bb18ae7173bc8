//! The shapes of the values in the journal's trees (see the module above):
//! job parts, keys under a job's uuid, and the `done` tree's entries.

use super::Record;
use crate::ids::JobId;
use crate::journal_record::msgpack::{Malformed, Reader};
use crate::journal_record::{DoneList, StoredPart};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::journal_record::TASKS_PER_PART;

/// A stored part of a job: its header decoded, its tasks kept as read
/// (their structure checked, each spec decoded only at replay).
pub struct JobPart {
    pub seq: u64,
    pub name: String,
    pub total: u32,
    pub tasks: StoredPart,
    /// The job's function table (`py` tasks), in its first part only.
    pub functions: Vec<bytes::Bytes>,
    /// The submission's digest, in its first part only (absent: not known).
    pub digest: u64,
}

pub fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub fn job_key(job: &JobId, suffix: &[u8]) -> Vec<u8> {
    let mut k = job.0.as_bytes().to_vec();
    k.extend_from_slice(suffix);
    k
}

pub fn key_job(key: &[u8]) -> Option<JobId> {
    Some(JobId(uuid::Uuid::from_slice(key.get(..16)?).ok()?))
}

/// A part's fields as written (a map of named fields; see `JobPartRef`),
/// its tasks walked to check their structure and count, not decoded.
pub fn decode_part(payload: &Bytes) -> Result<JobPart, String> {
    let bad = |e: &dyn std::fmt::Display| format!("does not decode: {e}");
    let mut r = Reader::new(payload);
    let (mut seq, mut name, mut first, mut total, mut tasks) = (None, None, None, None, None);
    let (mut functions, mut digest) = (Vec::new(), 0);
    for _ in 0..r.map_len().map_err(|e| bad(&e))? {
        let field = r.str().map_err(|e| bad(&e))?;
        let dup = match field {
            "seq" => seq.replace(r.int::<u64>().map_err(|e| bad(&e))?).is_some(),
            "name" => name.replace(r.str().map_err(|e| bad(&e))?).is_some(),
            "first" => first.replace(r.int::<u32>().map_err(|e| bad(&e))?).is_some(),
            "total" => total.replace(r.int::<u32>().map_err(|e| bad(&e))?).is_some(),
            "tasks" => tasks.replace(part_tasks(&mut r, payload).map_err(|e| bad(&e))?).is_some(),
            "functions" => {
                functions = rmp_serde::from_slice(r.value().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                false
            }
            "digest" => {
                digest = r.int::<u64>().map_err(|e| bad(&e))?;
                false
            }
            _ => r.skip().map(|_| false).map_err(|e| bad(&e))?,
        };
        if dup {
            return Err(bad(&format!("field {field:?} twice")));
        }
    }
    let missing = |f: &str| bad(&format!("no field {f:?}"));
    first.ok_or_else(|| missing("first"))?;
    Ok(JobPart {
        seq: seq.ok_or_else(|| missing("seq"))?,
        name: name.ok_or_else(|| missing("name"))?.to_string(),
        // (Parts are read in key order: their first task is checked present, not used.)
        total: total.ok_or_else(|| missing("total"))?,
        tasks: tasks.ok_or_else(|| missing("tasks"))?,
        functions,
        digest,
    })
}

/// A part's list of tasks: each one skipped (its structure checked), the
/// whole kept as a slice of the value.
fn part_tasks(r: &mut Reader, payload: &Bytes) -> Result<StoredPart, Malformed> {
    let n = r.array_len()? as usize;
    let start = r.pos();
    for _ in 0..n {
        r.skip()?;
    }
    Ok(StoredPart { n, bytes: payload.slice(start..r.pos()) })
}

/// Values of the `done` tree other than a batch of outcomes (a plain array).
#[derive(Serialize, Deserialize)]
pub enum DoneEntry {
    Retried(Vec<u32>),
    /// Stored results found missing or corrupt (`Record::ResultsLost`).
    Lost(Vec<u32>),
}

/// A `done` value as a record; `check`: an outcome batch is read wholly
/// (else only known to be one, and read by the replay that takes it).
pub fn decode_done(job: JobId, payload: &Bytes, check: bool) -> Result<Record, String> {
    if !check && matches!(payload.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) {
        return Ok(Record::TasksDone { job, done: DoneList::Stored(payload.clone()) });
    }
    // (Nothing kept but the bytes: each outcome is read again at replay.)
    match crate::journal_record::each_done(payload, |_| {}) {
        Some(Ok(_)) => Ok(Record::TasksDone { job, done: DoneList::Stored(payload.clone()) }),
        Some(Err(e)) => Err(format!("does not decode: {e}")),
        None => match rmp_serde::from_slice::<DoneEntry>(payload) {
            Ok(DoneEntry::Retried(idx)) => Ok(Record::TasksRetried { job, idx }),
            Ok(DoneEntry::Lost(idx)) => Ok(Record::ResultsLost { job, idx }),
            Err(e) => Err(format!("does not decode: {e}")),
        },
    }
}
