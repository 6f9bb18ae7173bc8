//! The shapes of the values in the journal's trees (see the module above):
//! job parts, keys under a job's uuid, and the `done` tree's entries.

use super::{DoneTask, Record};
use crate::ids::JobId;
use crate::journal_record::TaskSpec;
use serde::{Deserialize, Serialize};

pub use crate::journal_record::TASKS_PER_PART;

#[derive(Serialize, Deserialize)]
pub struct JobPart {
    pub seq: u64,
    pub name: String,
    pub first: u32,
    pub total: u32,
    #[serde(deserialize_with = "sized_list")]
    pub tasks: Vec<TaskSpec>,
    /// The job's function table (`py` tasks), in its first part only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<bytes::Bytes>,
    /// The submission's digest, in its first part only (absent: not known).
    #[serde(default, skip_serializing_if = "is_zero")]
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

pub fn decode_part(payload: &[u8]) -> Result<JobPart, String> {
    rmp_serde::from_slice(payload).map_err(|e| format!("does not decode: {e}"))
}

/// Values of the `done` tree other than a batch of outcomes (a plain array).
#[derive(Serialize, Deserialize)]
pub enum DoneEntry {
    Retried(Vec<u32>),
    /// Stored results found missing or corrupt (`Record::ResultsLost`).
    Lost(Vec<u32>),
}

/// A list decoded into room made for its announced length at once (up to a
/// part's worth): growing a list of 65,536 specs step by step copies it
/// over and over, most of the time an open takes.
fn sized_list<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct List<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for List<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(TASKS_PER_PART));
            while let Some(x) = seq.next_element()? {
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(List(std::marker::PhantomData))
}

/// An outcome batch, in room made for it at once.
#[derive(Deserialize)]
struct DoneList(#[serde(deserialize_with = "sized_list")] Vec<DoneTask>);

pub fn decode_done(job: JobId, payload: &[u8]) -> Result<Record, String> {
    match rmp_serde::from_slice::<DoneList>(payload) {
        Ok(DoneList(done)) => Ok(Record::TasksDone { job, done }),
        Err(e) => match rmp_serde::from_slice::<DoneEntry>(payload) {
            Ok(DoneEntry::Retried(idx)) => Ok(Record::TasksRetried { job, idx }),
            Ok(DoneEntry::Lost(idx)) => Ok(Record::ResultsLost { job, idx }),
            Err(_) => Err(format!("does not decode: {e}")),
        },
    }
}
