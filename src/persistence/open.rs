//! Opening a journal: sled's database, the checks against the high-water
//! mark (see the module above), then the commit to a new run (its epoch,
//! its mark, its holder). A scheduler's open leaves the check of outcome
//! batches to its replay, which reads them anyway (`open_replaying`).

use super::check::{quietly, Expected, Outcomes, Scan};
use super::hwm::{self, HighWater, JobMark};
use super::sled_journal::{open_error_message, Holder, OpenOptions, SledJournal};
use super::{JournalError, Record, JOURNAL_VERSION};
use crate::ids::JobId;
use std::collections::BTreeMap;
use std::path::Path;

/// sled's database, with its panics and corruption errors reported as damage.
fn open_db(dir: &Path) -> Result<sled::Db, JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    match super::lock_wait::open(dir, || quietly(|| sled::Config::new().path(dir).open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(err(open_error_message(dir, &e))),
        Err(panic) => Err(err(format!(
            "is damaged: sled cannot open it ({panic}); restore it from a copy, or move it aside to start a new one"
        ))),
    }
}

/// The epoch in the meta tree (`None`: a new or emptied database), after
/// refusing journals of another version.
fn read_meta(dir: &Path, meta: &sled::Tree) -> Result<Option<u64>, JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    match meta.get("version").map_err(|e| err(e.to_string()))? {
        Some(v) if v.as_ref() != JOURNAL_VERSION.to_be_bytes() => {
            let found = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).ok();
            return Err(err(format!(
                "was written in journal format {}; this actord reads format {JOURNAL_VERSION} only and does not \
                 migrate: finish its jobs with the actord that wrote it, or move it aside to start a new journal",
                found.map_or(format!("{:02x?}", v.as_ref()), |f| f.to_string())
            )));
        }
        _ => {}
    }
    let epoch = meta.get("epoch").map_err(|e| err(e.to_string()))?;
    Ok(epoch.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

/// The database, its trees and everything they hold, for checks.
pub struct Opened {
    pub db: sled::Db,
    pub trees: [sled::Tree; 4],
    pub epoch: Option<u64>,
    pub scan: Scan,
}

/// Opens sled at `dir` and reads every tree (sled's panics become errors).
pub fn open_and_scan(dir: &Path, outcomes: Outcomes) -> Result<Opened, JournalError> {
    scan_db(dir, open_db(dir)?, outcomes)
}

/// Reads every tree of an open database.
fn scan_db(dir: &Path, db: sled::Db, outcomes: Outcomes) -> Result<Opened, JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    let tree = |name: &str| db.open_tree(name).map_err(|e| err(e.to_string()));
    let trees = [tree("meta")?, tree("jobs")?, tree("done")?, tree("forgotten")?];
    let epoch = read_meta(dir, &trees[0])?;
    let scan = quietly(|| Scan::read(&trees[1], &trees[2], &trees[3], outcomes))
        .map_err(|p| err(format!("is damaged: sled fails reading it ({p})")))?;
    Ok(Opened { db, trees, epoch, scan })
}

/// The checks `open_with` makes, changing nothing: `actord journal check`.
pub fn verify(dir: &Path, expected: Option<&Expected>) -> Result<super::Report, JournalError> {
    let err = |message: &str| JournalError::Open { path: dir.to_path_buf(), message: message.into() };
    let mark = HighWater::read(dir);
    let (scan, epoch) = if dir.join("db").exists() {
        let o = open_and_scan(dir, Outcomes::Check)?;
        (o.scan, o.epoch)
    } else if (dir.is_dir() && !matches!(mark, Ok(None))) || expected.is_some() {
        // A mark without its database, or a journal the scheduler file remembers.
        (Scan::default(), None)
    } else {
        return Err(err("holds no journal"));
    };
    Ok(super::check::compare(dir, &scan, &mark, epoch, expected))
}

/// A journal read and checked (damage refused, or dropped by a repair),
/// not yet committed to this run.
struct Checked {
    opened: Opened,
    /// The replayable records (`None`: handed to a replay already).
    records: Option<Vec<Record>>,
    marks: BTreeMap<JobId, JobMark>,
    lsn: u64,
    history: super::history::HistoryStore,
}

/// The directory, ready to hold a journal.
fn prepare(dir: &Path) -> Result<(), JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    if dir.is_file() {
        return Err(err("is a file, not a directory: give --journal a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))
}

/// Verifies what `db` holds against the high-water mark: damage is refused
/// unless `repair`, which drops what cannot be replayed.
fn check(dir: &Path, opts: &OpenOptions, db: sled::Db, outcomes: Outcomes) -> Result<Checked, JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    let mark = HighWater::read(dir);
    let opened = scan_db(dir, db, outcomes)?;
    let scan = &opened.scan;
    let report = super::check::compare(dir, scan, &mark, opened.epoch, opts.expected.as_ref());
    if report.is_damaged() {
        if !opts.repair {
            return Err(JournalError::Damaged(report.message()));
        }
        report.log_repair();
    }
    // Also what a crash left half-written: never acknowledged.
    let [_, jobs, done, _] = &opened.trees;
    let dropped = scan.drop_unreplayable(jobs, done).map_err(|e| err(e.to_string()))?;
    if dropped > 0 {
        tracing::warn!(journal = %dir.display(), records = dropped, "dropped unreplayable records");
    }
    let lsn = scan.max_lsn.max(mark.ok().flatten().map_or(0, |m| m.last_lsn));
    let mut opened = opened;
    let (mut records, marks) = std::mem::take(&mut opened.scan).into_live();
    let (history, past) = super::history::HistoryStore::open(&opened.db).map_err(|e| err(e.to_string()))?;
    records.extend(past);
    Ok(Checked { opened, records: Some(records), marks, lsn, history })
}

/// Bumps and flushes the epoch, writes a new high-water mark, clears the
/// tombstones it covers, and records this process as the holder.
fn commit(dir: &Path, c: Checked) -> Result<SledJournal, JournalError> {
    let err = |message: String| JournalError::Open { path: dir.to_path_buf(), message };
    let Checked {
        opened: Opened { db, trees: [meta, jobs, done, forgotten], epoch, .. },
        records,
        marks,
        lsn,
        history,
    } = c;
    let epoch = epoch.map_or(0, |e| e + 1);
    let w = |e: sled::Error| err(e.to_string());
    meta.insert("version", &JOURNAL_VERSION.to_be_bytes()).map_err(w)?;
    meta.insert("epoch", &epoch.to_be_bytes()).map_err(w)?;
    db.flush().map_err(w)?;
    let j = SledJournal {
        dir: dir.to_path_buf(),
        db,
        jobs,
        done,
        forgotten,
        history,
        epoch,
        lsn,
        marks,
        opened: std::sync::Mutex::new(records),
    };
    hwm::write_atomic(dir, &j.mark_bytes(), true)
        .map_err(|e| err(format!("cannot write its high-water mark: {e}")))?;
    // The mark now covers every forget: their tombstones have served.
    j.forgotten.clear().map_err(w)?;
    let holder = Holder {
        pid: std::process::id(),
        host: crate::util::hostname(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let _ = std::fs::write(dir.join("holder.json"), serde_json::to_string(&holder).unwrap_or_default());
    Ok(j)
}

impl SledJournal {
    /// Opens (or creates) an intact journal: see `open_with`.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// Opens (or creates) the journal and verifies it against its
    /// high-water mark: damage is refused unless `repair`, which drops what
    /// cannot be replayed. Then bumps and flushes its epoch, writes a new
    /// high-water mark, and records this process as its holder.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Self, JournalError> {
        prepare(dir)?;
        commit(dir, check(dir, opts, open_db(dir)?, Outcomes::Check)?)
    }

    /// `open_with`, its records handed to `replay` before the commit, and
    /// the outcome batches checked by that replay instead of at open (it
    /// reads them anyway): `replay` says whether every batch it read was
    /// sound. If one was not, the journal is checked wholly, as `open_with`
    /// does (refused, or repaired), and what is left replayed again; the
    /// journal is committed only after a replay of sound records.
    pub fn open_replaying(
        dir: &Path,
        opts: &OpenOptions,
        mut replay: impl FnMut(Vec<Record>) -> bool,
    ) -> Result<Self, JournalError> {
        prepare(dir)?;
        let mut c = check(dir, opts, open_db(dir)?, Outcomes::Defer)?;
        if !replay(c.records.take().unwrap_or_default()) {
            c = check(dir, opts, c.opened.db, Outcomes::Check)?;
            replay(c.records.take().unwrap_or_default());
        }
        commit(dir, c)
    }
}
