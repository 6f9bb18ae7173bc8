//! The journal in sled (see the module above for the layout).

use super::{DoneTask, Journal, JournalError, Record, JOURNAL_VERSION};
use crate::ids::JobId;
use crate::protocol::TaskSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most tasks per `jobs` value, so a huge job is written in pieces.
const TASKS_PER_PART: usize = 65_536;

#[derive(Serialize, Deserialize)]
struct JobPart {
    seq: u64,
    name: String,
    first: u32,
    total: u32,
    tasks: Vec<TaskSpec>,
    /// The job's function table (`py` tasks), in its first part only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    functions: Vec<bytes::Bytes>,
}

/// Who has the journal open, written beside it for the next one to read.
#[derive(Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    started: String,
}

pub struct SledJournal {
    dir: PathBuf,
    db: sled::Db,
    jobs: sled::Tree,
    done: sled::Tree,
    epoch: u64,
}

/// The one-line explanation of a failure to open sled at `dir`.
pub fn open_error_message(dir: &Path, e: &sled::Error) -> String {
    if let sled::Error::Io(io) = e {
        match io.raw_os_error() {
            Some(524) | Some(38) | Some(37) => {
                return format!(
                    "the file system of {} refuses file locks ({io}); put the journal on $SCRATCH, e.g. --journal $SCRATCH/actord/journal",
                    dir.display()
                )
            }
            _ => {}
        }
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") {
            let holder = std::fs::read_to_string(dir.join("holder.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
                .map(|h| format!("scheduler pid {} on {} (since {})", h.pid, h.host, h.started))
                .unwrap_or_else(|| "another scheduler".into());
            return format!("already in use by {holder}; stop it first, or give this one another --journal");
        }
    }
    e.to_string()
}

fn job_key(job: &JobId, suffix: &[u8]) -> Vec<u8> {
    let mut k = job.0.as_bytes().to_vec();
    k.extend_from_slice(suffix);
    k
}

fn key_job(key: &[u8]) -> Option<JobId> {
    Some(JobId(uuid::Uuid::from_slice(key.get(..16)?).ok()?))
}

impl SledJournal {
    /// Opens (or creates) the journal, bumps and flushes its epoch, and
    /// records this process as its holder.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| err(open_error_message(dir, &e)))?;
        let meta = db.open_tree("meta").map_err(|e| err(e.to_string()))?;
        match meta.get("version").map_err(|e| err(e.to_string()))? {
            Some(v) if v.as_ref() != JOURNAL_VERSION.to_be_bytes() => {
                return Err(err(format!(
                    "written by journal version {:?}; this actord reads version {JOURNAL_VERSION}",
                    v.as_ref()
                )))
            }
            Some(_) => {}
            None => {
                meta.insert("version", &JOURNAL_VERSION.to_be_bytes()).map_err(|e| err(e.to_string()))?;
            }
        }
        let epoch = match meta.get("epoch").map_err(|e| err(e.to_string()))? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
            None => 0,
        };
        meta.insert("epoch", &epoch.to_be_bytes()).map_err(|e| err(e.to_string()))?;
        db.flush().map_err(|e| err(e.to_string()))?;
        let holder = Holder {
            pid: std::process::id(),
            host: crate::util::hostname(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let _ = std::fs::write(dir.join("holder.json"), serde_json::to_string(&holder).unwrap_or_default());
        let jobs = db.open_tree("jobs").map_err(|e| err(e.to_string()))?;
        let done = db.open_tree("done").map_err(|e| err(e.to_string()))?;
        Ok(SledJournal { dir: dir.to_path_buf(), db, jobs, done, epoch })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the journal occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn forget(&self, job: &JobId) -> Result<(), JournalError> {
        let w = |e: sled::Error| JournalError::Write(e.to_string());
        for tree in [&self.jobs, &self.done] {
            let mut batch = sled::Batch::default();
            for item in tree.scan_prefix(job.0.as_bytes()) {
                batch.remove(item.map_err(w)?.0);
            }
            tree.apply_batch(batch).map_err(w)?;
        }
        Ok(())
    }
}

/// Values of the `done` tree other than a batch of outcomes (which is a
/// plain array, and stays so for journals written before).
#[derive(Serialize, serde::Deserialize)]
enum DoneEntry {
    Retried(Vec<u32>),
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, JournalError> {
    rmp_serde::to_vec(v).map_err(|e| JournalError::Write(e.to_string()))
}

impl Journal for SledJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let w = |e: sled::Error| JournalError::Write(e.to_string());
        let mut jobs = sled::Batch::default();
        let mut done = sled::Batch::default();
        for r in records {
            match r {
                Record::JobSubmitted { job, seq, name, tasks, functions } => {
                    for (part, chunk) in tasks.chunks(TASKS_PER_PART).enumerate() {
                        let value = JobPart {
                            seq: *seq,
                            name: name.clone(),
                            first: (part * TASKS_PER_PART) as u32,
                            total: tasks.len() as u32,
                            tasks: chunk.to_vec(),
                            functions: if part == 0 { functions.clone() } else { Vec::new() },
                        };
                        // Named fields: task specs leave out their defaults.
                        let bytes = rmp_serde::to_vec_named(&value)
                            .map_err(|e| JournalError::Write(e.to_string()))?;
                        jobs.insert(job_key(job, &(part as u32).to_be_bytes()), bytes);
                    }
                }
                Record::TasksDone { job, done: d } => {
                    let id = self.db.generate_id().map_err(w)?;
                    done.insert(job_key(job, &id.to_be_bytes()), encode(d)?);
                }
                Record::TasksRetried { job, idx } => {
                    // In the same tree, so that replay keeps the order.
                    let id = self.db.generate_id().map_err(w)?;
                    done.insert(job_key(job, &id.to_be_bytes()), encode(&DoneEntry::Retried(idx.clone()))?);
                }
                Record::JobForgotten { job } => {
                    // Staged writes first, so a forget after them removes them too.
                    self.jobs.apply_batch(std::mem::take(&mut jobs)).map_err(w)?;
                    self.done.apply_batch(std::mem::take(&mut done)).map_err(w)?;
                    self.forget(job)?;
                }
            }
        }
        self.jobs.apply_batch(jobs).map_err(w)?;
        self.done.apply_batch(done).map_err(w)
    }

    fn flusher(&self) -> super::Flush {
        let db = self.db.clone();
        Box::pin(async move {
            db.flush_async().await.map_err(|e| JournalError::Write(e.to_string()))?;
            Ok(())
        })
    }

    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        let corrupt =
            |key: &[u8], message: String| JournalError::Corrupt { key: format!("{key:02x?}"), message };
        let mut parts: BTreeMap<JobId, Vec<JobPart>> = BTreeMap::new();
        for item in self.jobs.iter() {
            let (k, v) = item.map_err(|e| corrupt(&[], e.to_string()))?;
            let job = key_job(&k).ok_or_else(|| corrupt(&k, "bad key".into()))?;
            let part: JobPart = rmp_serde::from_slice(&v).map_err(|e| corrupt(&k, e.to_string()))?;
            parts.entry(job).or_default().push(part);
        }
        let mut jobs: Vec<(u64, Record)> = Vec::with_capacity(parts.len());
        for (job, ps) in parts {
            let (seq, name, total) = (ps[0].seq, ps[0].name.clone(), ps[0].total as usize);
            let mut tasks = Vec::with_capacity(total);
            let mut functions = Vec::new();
            for mut p in ps {
                tasks.extend(p.tasks);
                functions.append(&mut p.functions);
            }
            if tasks.len() != total {
                // A torn write of a huge job: it was never acknowledged.
                tracing::warn!(job = %job, have = tasks.len(), total, "ignoring an incompletely written job");
                continue;
            }
            jobs.push((seq, Record::JobSubmitted { job, seq, name, tasks, functions }));
        }
        jobs.sort_by_key(|(seq, _)| *seq);
        let mut out: Vec<Record> = jobs.into_iter().map(|(_, r)| r).collect();
        for item in self.done.iter() {
            let (k, v) = item.map_err(|e| corrupt(&[], e.to_string()))?;
            let job = key_job(&k).ok_or_else(|| corrupt(&k, "bad key".into()))?;
            match rmp_serde::from_slice::<Vec<DoneTask>>(&v) {
                Ok(done) => out.push(Record::TasksDone { job, done }),
                Err(e) => match rmp_serde::from_slice::<DoneEntry>(&v) {
                    Ok(DoneEntry::Retried(idx)) => out.push(Record::TasksRetried { job, idx }),
                    Err(_) => return Err(corrupt(&k, e.to_string())),
                },
            }
        }
        Ok(out)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Outcome;

    /// sled releases its lock from a background thread after a drop.
    fn reopen(dir: &Path) -> SledJournal {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledJournal::open(dir) {
                Ok(j) => return j,
                Err(e) if std::time::Instant::now() >= deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    fn job(n: usize, seq: u64) -> (JobId, Record) {
        let job = JobId::new();
        let tasks = (0..n).map(|i| crate::client::cmd_task(vec![format!("t{i}")])).collect();
        (job, Record::JobSubmitted { job, seq, name: "t".into(), tasks, functions: Vec::new() })
    }

    fn done(job: JobId, idx: u32) -> Record {
        let outcome = Outcome::Ok { result: bytes::Bytes::from(vec![idx as u8]) };
        Record::TasksDone { job, done: vec![DoneTask { idx, attempt: 1, outcome, canceled: false }] }
    }

    #[tokio::test]
    async fn records_survive_reopen_in_order_and_forget_removes_a_job() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ja) = job(3, 1);
        let (b, jb) = job(TASKS_PER_PART + 5, 2);
        {
            let mut j = SledJournal::open(dir.path()).unwrap();
            assert_eq!(j.epoch(), 0);
            j.append(&[jb.clone(), done(b, 7)]).unwrap();
            j.append(&[ja.clone(), done(a, 0), done(a, 2)]).unwrap();
            j.flush().await.unwrap();
        }
        let mut j = reopen(dir.path());
        assert_eq!(j.epoch(), 1);
        let r = j.replay().unwrap();
        assert_eq!(r.len(), 5);
        assert!(r[0] == ja && r[1] == jb, "jobs come first, by submission seq, reassembled from parts");
        assert!(r[2..].contains(&done(a, 0)) && r[2..].contains(&done(a, 2)) && r[2..].contains(&done(b, 7)));

        j.append(&[Record::JobForgotten { job: b }]).unwrap();
        j.flush().await.unwrap();
        drop(j);
        let j = reopen(dir.path());
        assert_eq!(j.epoch(), 2);
        let r = j.replay().unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[0] == ja);
    }

    #[tokio::test]
    async fn a_retry_replays_between_the_outcomes_it_voids_and_the_next_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ja) = job(2, 1);
        let retried = Record::TasksRetried { job: a, idx: vec![1] };
        {
            let mut j = SledJournal::open(dir.path()).unwrap();
            j.append(&[ja.clone(), done(a, 1)]).unwrap();
            j.append(&[retried.clone(), done(a, 1), done(a, 0)]).unwrap();
            j.flush().await.unwrap();
        }
        let r = reopen(dir.path()).replay().unwrap();
        assert_eq!(r, vec![ja, done(a, 1), retried, done(a, 1), done(a, 0)]);
    }

    #[test]
    fn a_second_opener_is_told_who_holds_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledJournal::open(dir.path()).unwrap();
        // Same process: sled refuses the second open of a locked directory.
        let err = SledJournal::open(dir.path()).err().expect("second open refused").to_string();
        assert!(err.contains(&format!("scheduler pid {}", std::process::id())), "{err}");
        assert!(err.contains("already in use"), "{err}");
    }

    #[test]
    fn file_systems_without_locks_get_a_hint() {
        let e = sled::Error::Io(std::io::Error::from_raw_os_error(524));
        let msg = open_error_message(Path::new("/global/homes/u"), &e);
        assert!(msg.contains("refuses file locks") && msg.contains("$SCRATCH"), "{msg}");
    }
}
