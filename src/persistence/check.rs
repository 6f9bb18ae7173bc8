//! Verification of a journal against its high-water mark: what sled holds,
//! what was lost or is unreadable, which jobs that touches; and the repair
//! that drops what cannot be replayed.

use super::hwm::{HighWater, JobMark};
use super::layout::{decode_done, decode_part, key_job, JobPart};
use super::{frame, Record};
use crate::ids::JobId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A stored value that is not a sound record.
pub struct BadRecord {
    pub tree: &'static str,
    pub key: sled::IVec,
    pub job: Option<JobId>,
    pub why: String,
}

/// Whether a scan checks each outcome batch wholly (`Check`) or leaves that
/// to the replay that reads them (`Defer`: only their checksum, and that
/// each is a batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcomes {
    Check,
    Defer,
}

/// Everything read from the trees, sound or not.
#[derive(Default)]
pub struct Scan {
    /// Parts of each submitted job with their sequence numbers and keys.
    pub parts: BTreeMap<JobId, Vec<(u64, sled::IVec, JobPart)>>,
    /// Outcome batches and retries, in key order (by job, then sequence).
    pub done: Vec<(u64, sled::IVec, Record)>,
    /// Jobs forgotten since the last open, with the sequence of the forget.
    pub tombstones: BTreeMap<JobId, u64>,
    pub bad: Vec<BadRecord>,
    /// sled failed to read a tree (its own checks found damage).
    pub errors: Vec<String>,
    pub max_lsn: u64,
}

/// Runs `f`, turning a panic (sled panics on some damage) into an error
/// without the default panic message and backtrace.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "sled panicked".into())
    })
}

impl Scan {
    /// Reads the trees, the jobs on a thread of their own beside the rest
    /// (decoding is most of the time an open takes).
    pub fn read(jobs: &sled::Tree, done: &sled::Tree, forgotten: &sled::Tree, outcomes: Outcomes) -> Scan {
        let (mut s, rest) = std::thread::scope(|scope| {
            let parts = scope.spawn(|| {
                let mut s = Scan::default();
                s.read_tree("jobs", jobs, |s, k, lsn, payload| {
                    let job = key_job(k).ok_or("bad key")?;
                    let part = decode_part(&payload)?;
                    s.parts.entry(job).or_default().push((lsn, k.into(), part));
                    Ok(())
                });
                s
            });
            let rest = Scan::read_done(done, forgotten, outcomes);
            // (A panic in sled reading the jobs goes on here: `quietly` reports it.)
            let s = parts.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (s, rest)
        });
        s.done = rest.done;
        s.tombstones = rest.tombstones;
        s.bad.extend(rest.bad);
        s.errors.extend(rest.errors);
        s.max_lsn = s.max_lsn.max(rest.max_lsn);
        s
    }

    /// The `done` and `forgotten` trees.
    fn read_done(done: &sled::Tree, forgotten: &sled::Tree, outcomes: Outcomes) -> Scan {
        let mut s = Scan::default();
        s.read_tree("done", done, |s, k, lsn, payload| {
            let job = key_job(k).ok_or("bad key")?;
            s.done.push((lsn, k.into(), decode_done(job, &payload, outcomes == Outcomes::Check)?));
            Ok(())
        });
        s.read_tree("forgotten", forgotten, |s, k, lsn, _| {
            s.tombstones.insert(key_job(k).ok_or("bad key")?, lsn);
            Ok(())
        });
        s
    }

    fn read_tree(
        &mut self,
        name: &'static str,
        tree: &sled::Tree,
        mut add: impl FnMut(&mut Scan, &[u8], u64, bytes::Bytes) -> Result<(), String>,
    ) {
        for item in tree.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    self.errors.push(format!("sled cannot read its {name} tree: {e}"));
                    return;
                }
            };
            // (The value read, shared: what is kept of it is sliced, not copied.)
            let v = bytes::Bytes::from_owner(v);
            let result = frame::unframe(&k, &v).map_err(|e| e.to_string()).and_then(|(lsn, payload)| {
                self.max_lsn = self.max_lsn.max(lsn);
                add(self, &k, lsn, v.slice_ref(payload))
            });
            if let Err(why) = result {
                self.bad.push(BadRecord { tree: name, job: key_job(&k), key: k, why });
            }
        }
    }

    /// Jobs whose every part is there.
    fn complete(&self) -> impl Iterator<Item = (&JobId, &Vec<(u64, sled::IVec, JobPart)>)> {
        self.parts
            .iter()
            .filter(|(_, ps)| ps.iter().map(|(_, _, p)| p.tasks.n).sum::<usize>() == ps[0].2.total as usize)
    }

    /// Sound records of each job, for the new high-water mark.
    fn counts(&self, up_to: u64) -> BTreeMap<JobId, u64> {
        let mut n: BTreeMap<JobId, u64> = BTreeMap::new();
        for (job, ps) in &self.parts {
            *n.entry(*job).or_default() += ps.iter().filter(|(l, _, _)| *l <= up_to).count() as u64;
        }
        for (lsn, _, r) in &self.done {
            if *lsn <= up_to {
                *n.entry(r.job()).or_default() += 1;
            }
        }
        n
    }

    /// How many records `into_live` returns, and how many of them are jobs.
    pub fn live_counts(&self) -> (u64, usize) {
        let complete: std::collections::BTreeSet<JobId> = self.complete().map(|(j, _)| *j).collect();
        let done = self.done.iter().filter(|(_, _, r)| complete.contains(&r.job())).count();
        ((complete.len() + done) as u64, complete.len())
    }

    /// The replayable records (complete jobs by submission, then their
    /// outcomes) and the mark of every job they hold. Consumes the scan:
    /// the specs move into the records, never copied.
    pub fn into_live(self) -> (Vec<Record>, BTreeMap<JobId, JobMark>) {
        let complete: std::collections::BTreeSet<JobId> = self.complete().map(|(j, _)| *j).collect();
        let mut jobs: Vec<(u64, Record)> = Vec::new();
        let mut marks: BTreeMap<JobId, JobMark> = BTreeMap::new();
        for (job, ps) in self.parts {
            if !complete.contains(&job) {
                continue;
            }
            let first = &ps[0].2;
            let (seq, name, digest) = (first.seq, first.name.clone(), first.digest);
            let mut tasks = Vec::with_capacity(ps.len());
            let mut functions = Vec::new();
            let mark = marks.entry(job).or_default();
            mark.records = ps.len() as u64;
            mark.set_name(&name);
            for (_, _, p) in ps {
                // Kept in their parts: no copy into one list.
                tasks.push(p.tasks);
                functions.extend(p.functions);
            }
            let tasks = crate::journal_record::TaskList::Stored(tasks);
            jobs.push((seq, Record::JobSubmitted { job, seq, name, tasks, functions, digest }));
        }
        jobs.sort_by_key(|(seq, _)| *seq);
        let mut out: Vec<Record> = jobs.into_iter().map(|(_, r)| r).collect();
        for (_, _, r) in self.done {
            if let Some(mark) = marks.get_mut(&r.job()) {
                mark.records += 1;
                out.push(r);
            }
        }
        (out, marks)
    }

    /// Removes what `live` leaves out: unreadable records, jobs with parts
    /// missing, outcomes of jobs that are not there.
    pub fn drop_unreplayable(&self, jobs: &sled::Tree, done: &sled::Tree) -> Result<u64, sled::Error> {
        let complete: std::collections::BTreeSet<JobId> = self.complete().map(|(j, _)| *j).collect();
        let (mut jb, mut db) = (sled::Batch::default(), sled::Batch::default());
        let mut n = 0;
        for b in &self.bad {
            match b.tree {
                "jobs" => jb.remove(b.key.clone()),
                "done" => db.remove(b.key.clone()),
                _ => continue,
            }
            n += 1;
        }
        for (job, ps) in &self.parts {
            if !complete.contains(job) {
                for (_, k, _) in ps {
                    jb.remove(k.clone());
                    n += 1;
                }
            }
        }
        for (_, k, r) in &self.done {
            if !complete.contains(&r.job()) {
                db.remove(k.clone());
                n += 1;
            }
        }
        jobs.apply_batch(jb)?;
        done.apply_batch(db)?;
        Ok(n)
    }
}

/// What damage did to one job.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Affected {
    pub name: String,
    /// Its submission is gone: the job is lost as a whole.
    pub entirely: bool,
    /// Records the high-water mark counts that are not there.
    pub lost: u64,
    /// Records there that fail their checksum or do not decode.
    pub unreadable: u64,
    /// Records there that the high-water mark does not count.
    pub unexpected: u64,
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    /// Sound, replayable records and complete jobs.
    pub records: u64,
    pub jobs: usize,
    pub epoch: Option<u64>,
    /// Damage not tied to one job.
    pub problems: Vec<String>,
    pub affected: BTreeMap<JobId, Affected>,
}

/// Where the scheduler file says this journal was: (epoch, file).
pub type Expected = (u64, PathBuf);

/// Compares what sled holds (`scan`, `epoch` from its meta tree) with the
/// high-water mark and with what the scheduler file says.
pub fn compare(
    dir: &Path,
    scan: &Scan,
    mark: &Result<Option<HighWater>, String>,
    epoch: Option<u64>,
    expected: Option<&Expected>,
) -> Report {
    let (records, jobs) = scan.live_counts();
    let mut r = Report {
        dir: dir.to_path_buf(),
        records,
        jobs,
        epoch,
        problems: scan.errors.clone(),
        affected: BTreeMap::new(),
    };
    let hwm = super::hwm::path(dir);
    match mark {
        Err(why) => r.problems.push(format!("its high-water mark {} {why}", hwm.display())),
        Ok(None) if !scan.parts.is_empty() || !scan.done.is_empty() || epoch.is_some_and(|e| e > 0) => {
            r.problems.push(format!(
                "its high-water mark {} is missing, so lost records cannot be ruled out",
                hwm.display()
            ))
        }
        Ok(None) => {}
        Ok(Some(h)) => compare_with_mark(&mut r, scan, h),
    }
    if let Some((want, file)) = expected {
        if epoch.is_none_or(|e| e < *want) {
            let is = epoch.map_or("is missing or empty".to_string(), |e| format!("is at epoch {e}"));
            r.problems.push(format!(
                "the scheduler file {} says this journal reached epoch {want}, but it {is}",
                file.display()
            ));
        }
    }
    for b in &scan.bad {
        let what = format!("{} record {:02x?}: {}", b.tree, b.key.as_ref(), b.why);
        match b.job {
            Some(job) if b.tree != "forgotten" => r.affected.entry(job).or_default().unreadable += 1,
            _ => r.problems.push(format!("unreadable {what}")),
        }
    }
    for (job, ps) in &scan.parts {
        if let Some(a) = r.affected.get_mut(job) {
            if a.name.is_empty() {
                a.name = ps[0].2.name.clone();
            }
        }
    }
    r
}

fn compare_with_mark(r: &mut Report, scan: &Scan, h: &HighWater) {
    match r.epoch {
        None => r.problems.push(format!(
            "the database is missing or empty, but the high-water mark says epoch {} with {} jobs",
            h.epoch,
            h.jobs.len()
        )),
        Some(e) if e < h.epoch => r.problems.push(format!(
            "the database is at epoch {e}, older than its high-water mark (epoch {}): it lost its latest writes",
            h.epoch
        )),
        Some(_) => {}
    }
    let mut unreadable: BTreeMap<JobId, u64> = BTreeMap::new();
    for b in scan.bad.iter().filter(|b| b.tree != "forgotten") {
        if let Some(job) = b.job {
            *unreadable.entry(job).or_default() += 1;
        }
    }
    let have = scan.counts(h.last_lsn);
    let complete: std::collections::BTreeSet<JobId> = scan.complete().map(|(j, _)| *j).collect();
    let jobs: std::collections::BTreeSet<JobId> = h.jobs.keys().chain(have.keys()).copied().collect();
    for job in jobs {
        if scan.tombstones.get(&job).is_some_and(|t| *t > h.last_lsn) {
            continue; // forgotten after the mark was written
        }
        let want = h.jobs.get(&job).map_or(0, |m| m.records);
        let got = have.get(&job).copied().unwrap_or(0) + unreadable.get(&job).copied().unwrap_or(0);
        if got == want && (want == 0 || complete.contains(&job)) {
            continue;
        }
        let a = r.affected.entry(job).or_default();
        a.name = h.jobs.get(&job).map(|m| m.name.clone()).unwrap_or_default();
        a.lost = want.saturating_sub(got);
        a.unexpected = got.saturating_sub(want);
        a.entirely = want > 0 && !complete.contains(&job);
    }
}

impl Affected {
    fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.entirely {
            what.push("lost entirely".to_string());
        }
        if self.lost > 0 {
            what.push(format!("{} records lost", self.lost));
        }
        if self.unreadable > 0 {
            what.push(format!("{} records unreadable", self.unreadable));
        }
        if self.unexpected > 0 {
            what.push(format!("{} records the high-water mark does not know", self.unexpected));
        }
        what.join(", ")
    }
}

impl Report {
    pub fn is_damaged(&self) -> bool {
        !self.problems.is_empty() || !self.affected.is_empty()
    }

    /// Each affected job as `job <uuid> "name": what happened`.
    pub fn jobs_affected(&self) -> Vec<String> {
        self.affected.iter().map(|(job, a)| format!("job {job} {:?}: {}", a.name, a.describe())).collect()
    }

    /// The one-line refusal.
    pub fn message(&self) -> String {
        let mut parts = self.problems.clone();
        let jobs = self.jobs_affected();
        if jobs.is_empty() {
            parts.push("jobs affected: unknown".into());
        } else {
            parts.push(format!("jobs affected: {}", jobs.join("; ")));
        }
        format!(
            "journal {} is damaged: {}. Start the scheduler with --journal-repair to keep what is intact \
             and drop the rest (`actord journal check {}` shows the same), or restore the journal from a copy",
            self.dir.display(),
            parts.join("; "),
            self.dir.display()
        )
    }

    /// Logs, as a repair starts, everything it will drop.
    pub fn log_repair(&self) {
        for p in &self.problems {
            tracing::warn!(journal = %self.dir.display(), problem = %p, "journal repair: damage found");
        }
        for (job, a) in &self.affected {
            if a.entirely {
                tracing::warn!(job = %job, name = ?a.name, "journal repair: job lost");
            } else {
                tracing::warn!(
                    job = %job,
                    name = ?a.name,
                    lost_records = a.lost,
                    unreadable_records = a.unreadable,
                    "journal repair: job lost task outcomes; those tasks run again"
                );
            }
        }
    }
}

impl Record {
    /// The job a record is kept under (nil for history records, which are
    /// kept apart from every job's).
    pub fn job(&self) -> JobId {
        match self {
            Record::History(crate::journal_record::HistoryRecord::JobTimes { job, .. }) => *job,
            Record::History(_) => JobId(uuid::Uuid::nil()),
            Record::JobSubmitted { job, .. }
            | Record::TasksDone { job, .. }
            | Record::JobForgotten { job }
            | Record::TasksRetried { job, .. }
            | Record::ResultsLost { job, .. } => *job,
        }
    }
}
