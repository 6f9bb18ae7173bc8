//! The journal in sled (see the module above for the layout): framing of
//! records, the high-water mark kept after every flush, and the checks at open.

use super::check::{Expected, Outcomes, Scan};
use super::hwm::{self, JobMark};
use super::layout::{is_zero, job_key, DoneEntry, TASKS_PER_PART};
use super::{frame, Journal, JournalError, Record, JOURNAL_VERSION};
use crate::ids::JobId;
use crate::journal_record::{PartTasks, TaskList, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Who has the journal open, written beside it for the next one to read.
#[derive(Serialize, Deserialize)]
pub(super) struct Holder {
    pub(super) pid: u32,
    pub(super) host: String,
    pub(super) started: String,
}

/// How to open a journal.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Start on a damaged journal, dropping what cannot be replayed.
    pub repair: bool,
    /// The scheduler file names this journal at this epoch.
    pub expected: Option<Expected>,
}

pub struct SledJournal {
    pub(super) dir: PathBuf,
    pub(super) db: sled::Db,
    pub(super) jobs: sled::Tree,
    pub(super) done: sled::Tree,
    pub(super) forgotten: sled::Tree,
    /// Events and per-job timing for the status page.
    pub(super) history: super::history::HistoryStore,
    pub(super) epoch: u64,
    /// Sequence number of the last record written.
    pub(super) lsn: u64,
    /// Live records per job, for the high-water mark.
    pub(super) marks: BTreeMap<JobId, JobMark>,
    /// What the checks at open read, handed to the first `replay`.
    pub(super) opened: std::sync::Mutex<Option<Vec<Record>>>,
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
    if let sled::Error::Corruption { .. } = e {
        return format!(
            "is damaged: sled found it corrupt ({e}); restore it from a copy, or move it aside to start a new one"
        );
    }
    e.to_string()
}

impl SledJournal {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[cfg(test)]
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Bytes the journal occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The high-water mark for everything appended so far.
    pub(super) fn mark_bytes(&self) -> Vec<u8> {
        hwm::encode(JOURNAL_VERSION, self.epoch, self.lsn, &self.marks)
    }

    fn next(&mut self, job: &JobId) -> u64 {
        self.lsn += 1;
        self.marks.entry(*job).or_default().records += 1;
        self.lsn
    }

    /// A tombstone first (so any prefix of sled's log that holds the removal
    /// holds it too), then every key under the job's uuid in both trees.
    fn forget(&mut self, job: &JobId) -> Result<(), JournalError> {
        let w = |e: sled::Error| JournalError::Write(e.to_string());
        self.lsn += 1;
        let key = job_key(job, &[]);
        self.forgotten.insert(key.as_slice(), frame::frame(&key, self.lsn, &[])).map_err(w)?;
        self.marks.remove(job);
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

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, JournalError> {
    rmp_serde::to_vec(v).map_err(|e| JournalError::Write(e.to_string()))
}

/// A `JobPart` as written, borrowing the tasks (the same bytes: the same
/// fields in the same order).
#[derive(Serialize)]
struct JobPartRef<'a> {
    seq: u64,
    name: &'a str,
    first: u32,
    total: u32,
    tasks: &'a [&'a TaskSpec],
    #[serde(skip_serializing_if = "<[bytes::Bytes]>::is_empty")]
    functions: &'a [bytes::Bytes],
    #[serde(skip_serializing_if = "is_zero")]
    digest: u64,
}

/// The fields of a `JobPart` but its tasks.
struct PartHead<'a> {
    seq: u64,
    name: &'a str,
    first: u32,
    total: u32,
    functions: &'a [bytes::Bytes],
    digest: u64,
}

/// A part whose tasks are encoded already, written field by field with the
/// bytes `JobPartRef` has for the same tasks.
fn encode_part_raw(h: &PartHead, n: usize, tasks: &[u8]) -> Result<Vec<u8>, JournalError> {
    let e = |e: &dyn std::fmt::Display| JournalError::Write(e.to_string());
    let mut out = Vec::with_capacity(tasks.len() + 64);
    let fields = 5 + u32::from(!h.functions.is_empty()) + u32::from(h.digest != 0);
    // (At most 7 fields: a fixmap.)
    out.push(0x80 | fields as u8);
    let field = |out: &mut Vec<u8>, key: &str| rmp_serde::encode::write_named(out, key).map_err(|x| e(&x));
    field(&mut out, "seq")?;
    rmp_serde::encode::write_named(&mut out, &h.seq).map_err(|x| e(&x))?;
    field(&mut out, "name")?;
    rmp_serde::encode::write_named(&mut out, h.name).map_err(|x| e(&x))?;
    field(&mut out, "first")?;
    rmp_serde::encode::write_named(&mut out, &h.first).map_err(|x| e(&x))?;
    field(&mut out, "total")?;
    rmp_serde::encode::write_named(&mut out, &h.total).map_err(|x| e(&x))?;
    field(&mut out, "tasks")?;
    array_len(&mut out, n as u32);
    out.extend_from_slice(tasks);
    if !h.functions.is_empty() {
        field(&mut out, "functions")?;
        rmp_serde::encode::write_named(&mut out, h.functions).map_err(|x| e(&x))?;
    }
    if h.digest != 0 {
        field(&mut out, "digest")?;
        rmp_serde::encode::write_named(&mut out, &h.digest).map_err(|x| e(&x))?;
    }
    Ok(out)
}

/// A msgpack array header, as rmp writes it (the shortest form).
fn array_len(out: &mut Vec<u8>, n: u32) {
    match n {
        0..=15 => out.push(0x90 | n as u8),
        16..=0xffff => {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A job's `jobs` values, one at a time (each handed to `f` with its part
/// number): its tasks in parts of at most `TASKS_PER_PART`, each as msgpack
/// with named fields (task specs leave out their defaults).
fn each_job_payload(
    seq: u64,
    name: &str,
    tasks: &TaskList,
    functions: &[bytes::Bytes],
    digest: u64,
    mut f: impl FnMut(u32, Vec<u8>),
) -> Result<(), JournalError> {
    let total = tasks.len() as u32;
    for (part, chunk) in tasks.parts().into_iter().enumerate() {
        let h = PartHead {
            seq,
            name,
            first: (part * TASKS_PER_PART) as u32,
            total,
            functions: if part == 0 { functions } else { &[] },
            digest: if part == 0 { digest } else { 0 },
        };
        let bytes = match chunk {
            PartTasks::Specs(specs) => {
                let value = JobPartRef {
                    seq: h.seq,
                    name: h.name,
                    first: h.first,
                    total: h.total,
                    tasks: &specs,
                    functions: h.functions,
                    digest: h.digest,
                };
                rmp_serde::to_vec_named(&value).map_err(|e| JournalError::Write(e.to_string()))?
            }
            PartTasks::Encoded { n, bytes } => encode_part_raw(&h, n, bytes)?,
        };
        f(part as u32, bytes);
    }
    Ok(())
}

/// A job's `jobs` values, all of them (see `each_job_payload`).
pub fn job_payloads(
    seq: u64,
    name: &str,
    tasks: &TaskList,
    functions: &[bytes::Bytes],
    digest: u64,
) -> Result<Vec<Vec<u8>>, JournalError> {
    let mut out = Vec::with_capacity(tasks.len().div_ceil(TASKS_PER_PART));
    each_job_payload(seq, name, tasks, functions, digest, |_, p| out.push(p))?;
    Ok(out)
}

/// The payloads a record is written as, in order: one per `jobs` part for
/// a submission, one `done` value for outcomes or a retry, and an empty
/// tombstone for a forget.
pub fn payloads(record: &Record) -> Result<Vec<Vec<u8>>, JournalError> {
    match record {
        Record::JobSubmitted { seq, name, tasks, functions, digest, .. } => {
            job_payloads(*seq, name, tasks, functions, *digest)
        }
        Record::TasksDone { done, .. } => Ok(vec![done.encode().map_err(JournalError::Write)?]),
        Record::TasksRetried { idx, .. } => Ok(vec![encode(&DoneEntry::Retried(idx.clone()))?]),
        Record::ResultsLost { idx, .. } => Ok(vec![encode(&DoneEntry::Lost(idx.clone()))?]),
        Record::JobForgotten { .. } => Ok(vec![Vec::new()]),
        Record::History(h) => Ok(vec![super::history::payload(h)?]),
    }
}

impl Journal for SledJournal {
    fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let w = |e: sled::Error| JournalError::Write(e.to_string());
        let mut jobs = sled::Batch::default();
        let mut done = sled::Batch::default();
        for r in records {
            match r {
                Record::JobSubmitted { job, seq, name, tasks, functions, digest } => {
                    self.marks.entry(*job).or_default().set_name(name);
                    // Each part framed as soon as it is encoded.
                    each_job_payload(*seq, name, tasks, functions, *digest, |part, bytes| {
                        let key = job_key(job, &part.to_be_bytes());
                        let lsn = self.next(job);
                        jobs.insert(key.as_slice(), frame::frame(&key, lsn, &bytes));
                    })?;
                }
                Record::TasksDone { job, .. }
                | Record::TasksRetried { job, .. }
                | Record::ResultsLost { job, .. } => {
                    // Retries in the same tree as outcomes, so that replay keeps the order.
                    let lsn = self.next(job);
                    let key = job_key(job, &lsn.to_be_bytes());
                    for payload in payloads(r)? {
                        done.insert(key.as_slice(), frame::frame(&key, lsn, &payload));
                    }
                }
                Record::JobForgotten { job } => {
                    // Staged writes first, so a forget after them removes them too.
                    self.jobs.apply_batch(std::mem::take(&mut jobs)).map_err(w)?;
                    self.done.apply_batch(std::mem::take(&mut done)).map_err(w)?;
                    self.forget(job)?;
                    self.history.forget(job)?;
                }
                Record::History(h) => self.history.append(h)?,
            }
        }
        self.jobs.apply_batch(jobs).map_err(w)?;
        self.done.apply_batch(done).map_err(w)
    }

    /// sled's flush, then the high-water mark of what it made durable
    /// (written off the runtime's threads).
    fn flusher(&self) -> super::Flush {
        let mut db = super::drop_aside::DropAside(Some(self.db.clone()));
        let dir = self.dir.clone();
        let mark = self.mark_bytes();
        Box::pin(async move {
            db.get().flush_async().await.map_err(|e| JournalError::Write(e.to_string()))?;
            db.release();
            let write = tokio::task::spawn_blocking(move || hwm::write_atomic(&dir, &mark, false));
            match write.await {
                Ok(r) => r.map_err(|e| JournalError::Write(format!("high-water mark: {e}"))),
                Err(e) => Err(JournalError::Write(format!("high-water mark: {e}"))),
            }
        })
    }

    fn replay(&self) -> Result<Vec<Record>, JournalError> {
        if let Some(records) = self.opened.lock().ok().and_then(|mut o| o.take()) {
            return Ok(records);
        }
        Ok(Scan::read(&self.jobs, &self.done, &self.forgotten, Outcomes::Check).into_live().0)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal_record::{DoneTask, Outcome};
    use crate::persistence::layout::decode_part;

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
        let tasks = (0..n).map(|i| crate::journal_record::TaskSpec::cmd(vec![format!("t{i}")])).collect();
        (
            job,
            Record::JobSubmitted {
                job,
                seq,
                name: "t".into(),
                tasks,
                functions: Vec::new(),
                digest: seq * 7,
            },
        )
    }

    #[test]
    fn the_digest_is_kept_in_the_first_part_and_absent_when_not_known() {
        let tasks: TaskList = (0..TASKS_PER_PART + 1).map(|_| TaskSpec::cmd(vec!["t".into()])).collect();
        let parts = job_payloads(1, "j", &tasks, &[], 42).unwrap();
        let digests: Vec<u64> = parts.into_iter().map(|p| decode_part(&p.into()).unwrap().digest).collect();
        assert_eq!(digests, [42, 0]);
        // Not known (0): the part has the bytes it had before digests were kept.
        let one: TaskList = vec![TaskSpec::cmd(vec!["t".into()])].into();
        let old = job_payloads(1, "j", &one, &[], 0).unwrap();
        let new = job_payloads(1, "j", &one, &[], 42).unwrap();
        assert!(old[0].len() < new[0].len());
        assert_eq!(decode_part(&old[0].clone().into()).unwrap().digest, 0);
    }

    #[test]
    fn parts_of_encoded_tasks_have_the_bytes_of_parts_of_decoded_ones() {
        let spec = |i: usize| TaskSpec {
            key: i.is_multiple_of(5).then(|| format!("k{i}")),
            ..TaskSpec::cmd(vec![format!("t{i}")])
        };
        let functions = [bytes::Bytes::from_static(b"f")];
        for n in [1, 15, 16, 300, TASKS_PER_PART, TASKS_PER_PART + 1] {
            let specs: Vec<TaskSpec> = (0..n).map(spec).collect();
            let mut enc = crate::journal_record::EncodedTasks::default();
            specs.iter().for_each(|s| enc.push(s, &mut |_| {}));
            let (enc, dec) = (TaskList::Encoded(enc), TaskList::from(specs));
            for (fs, digest) in [(&functions[..], 9), (&[][..], 0), (&functions[..], 0), (&[][..], u64::MAX)]
            {
                let a = job_payloads(3, "job", &enc, fs, digest).unwrap();
                let b = job_payloads(3, "job", &dec, fs, digest).unwrap();
                assert_eq!(a, b, "n = {n}");
            }
        }
    }

    fn done(job: JobId, idx: u32) -> Record {
        let outcome = Outcome::Ok { result: bytes::Bytes::from(vec![idx as u8]) };
        Record::TasksDone { job, done: vec![DoneTask { idx, attempt: 1, outcome, canceled: false }].into() }
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
