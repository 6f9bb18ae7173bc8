//! Damage to a sled journal and what opening it says: lost records, lost
//! jobs, flipped bytes, old formats; and forgets, which are not damage.

use super::*;
use crate::ids::JobId;
use std::path::Path;
use std::time::{Duration, Instant};

/// sled releases its lock from a background thread after a drop.
fn retry<T>(mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if e.contains("in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

fn open(dir: &Path, repair: bool) -> Result<SledJournal, String> {
    let opts = OpenOptions { repair, expected: None };
    retry(|| SledJournal::open_with(dir, &opts).map_err(|e| e.to_string()))
}

/// The raw database, to damage it as a disk would.
fn raw(dir: &Path) -> sled::Db {
    retry(|| sled::Config::new().path(dir).open().map_err(|e| open_error_message(dir, &e))).unwrap()
}

fn job(name: &str) -> (JobId, Record) {
    let job = JobId::new();
    let tasks = (0..3).map(|i| crate::journal_record::TaskSpec::cmd(vec![format!("t{i}")])).collect();
    (job, Record::JobSubmitted { job, seq: 1, name: name.into(), tasks, functions: Vec::new(), digest: 0 })
}

fn done(job: JobId, idx: u32) -> Record {
    let outcome = crate::journal_record::Outcome::Ok { result: bytes::Bytes::from(vec![idx as u8]) };
    Record::TasksDone { job, done: vec![DoneTask { idx, attempt: 1, outcome, canceled: false }].into() }
}

/// Two jobs, `a` with two outcome records and `b` with one, flushed.
async fn two_jobs(dir: &Path) -> (JobId, JobId) {
    let (a, ja) = job("alpha");
    let (b, jb) = job("beta");
    let mut j = open(dir, false).unwrap();
    j.append(&[ja, jb, done(a, 0)]).unwrap();
    j.append(&[done(a, 1), done(b, 2)]).unwrap();
    j.flush().await.unwrap();
    (a, b)
}

#[tokio::test]
async fn lost_records_and_a_lost_job_are_named_and_a_repair_drops_them_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_jobs(dir.path()).await;
    {
        let db = raw(dir.path());
        let done_tree = db.open_tree("done").unwrap();
        let first_of_a = done_tree.scan_prefix(a.0.as_bytes()).next().unwrap().unwrap().0;
        done_tree.remove(first_of_a).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        for k in jobs.scan_prefix(b.0.as_bytes()).keys() {
            jobs.remove(k.unwrap()).unwrap();
        }
        db.flush().unwrap();
    }
    let err = open(dir.path(), false).err().expect("damage refused");
    assert!(err.contains(&format!("job {a} \"alpha\": 1 records lost")), "{err}");
    assert!(err.contains(&format!("job {b} \"beta\": lost entirely")), "{err}");
    assert!(err.contains("--journal-repair") && !err.contains('\n'), "{err}");
    assert!(verify(dir.path(), None).unwrap().is_damaged(), "the offline check agrees");

    let j = open(dir.path(), true).expect("a repair starts");
    let kept = j.replay().unwrap();
    assert_eq!(kept.len(), 2, "a's submission and its one surviving outcome: {kept:?}");
    assert!(kept.iter().all(|r| r.job() == a));
    drop(j);
    let j = open(dir.path(), false).expect("consistent again after the repair");
    assert_eq!(j.replay().unwrap().len(), 2);
    assert!(!verify(dir.path(), None).unwrap_or_default().is_damaged());
}

#[tokio::test]
async fn a_flipped_byte_in_a_record_is_reported_as_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_jobs(dir.path()).await;
    {
        let db = raw(dir.path());
        let done_tree = db.open_tree("done").unwrap();
        let (k, v) = done_tree.scan_prefix(a.0.as_bytes()).next().unwrap().unwrap();
        let mut bad = v.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        done_tree.insert(k, bad).unwrap();
        db.flush().unwrap();
    }
    let err = open(dir.path(), false).err().expect("damage refused");
    assert!(err.contains(&format!("job {a} \"alpha\": 1 records unreadable")), "{err}");
    let report = verify(dir.path(), None).unwrap();
    assert_eq!(report.affected[&a].unreadable, 1);
    let j = open(dir.path(), true).unwrap();
    assert_eq!(j.replay().unwrap().len(), 4, "both jobs, a's good outcome and b's");
}

/// Replaces the first value under `job` in `tree` by `payload(old payload)`,
/// framed with a sound checksum: damage only decoding can see.
fn reframe(dir: &Path, tree: &str, job: JobId, payload: impl Fn(&[u8]) -> Vec<u8>) {
    let db = raw(dir);
    let t = db.open_tree(tree).unwrap();
    let (k, v) = t.scan_prefix(job.0.as_bytes()).next().unwrap().unwrap();
    let (lsn, old) = frame::unframe(&k, &v).unwrap();
    t.insert(k.clone(), frame::frame(&k, lsn, &payload(old))).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn a_sound_checksum_over_a_malformed_part_or_batch_is_still_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_jobs(dir.path()).await;
    // a's part: its task list announces one spec more than it holds (3 → 4).
    reframe(dir.path(), "jobs", a, |old| {
        let at = old.windows(6).position(|w| w == b"\xa5tasks").unwrap() + 6;
        let mut p = old.to_vec();
        assert_eq!(p[at], 0x93, "a fixarray of 3");
        p[at] = 0x94;
        p
    });
    // b's batch: an outcome that is not one.
    reframe(dir.path(), "done", b, |_| rmp_serde::to_vec(&vec![vec![1u32]]).unwrap());
    let err = open(dir.path(), false).err().expect("damage refused");
    assert!(err.contains(&format!("job {a} \"alpha\"")) && err.contains("lost entirely"), "{err}");
    assert!(err.contains(&format!("job {b} \"beta\": 1 records unreadable")), "{err}");
    let report = verify(dir.path(), None).unwrap();
    assert_eq!((report.affected[&a].unreadable, report.affected[&b].unreadable), (1, 1));
    let j = open(dir.path(), true).unwrap();
    let kept = j.replay().unwrap();
    assert!(kept.iter().all(|r| r.job() == b) && kept.len() == 1, "only b's submission: {kept:?}");
}

/// Opens as a scheduler does, the batches checked by a replay that says
/// whether they were sound; records each replay's verdict in `seen`.
fn open_replaying(dir: &Path, repair: bool, seen: &mut Vec<bool>) -> Result<SledJournal, String> {
    let opts = OpenOptions { repair, expected: None };
    retry(|| {
        SledJournal::open_replaying(dir, &opts, |records| {
            let sound = records.iter().all(|r| match r {
                Record::TasksDone { done, .. } => done.for_each_view(|_| {}).is_ok(),
                _ => true,
            });
            seen.push(sound);
            sound
        })
        .map_err(|e| e.to_string())
    })
}

#[tokio::test]
async fn a_malformed_batch_left_to_replay_is_refused_and_repaired_as_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_jobs(dir.path()).await;
    let mut seen = Vec::new();
    assert_eq!(open_replaying(dir.path(), false, &mut seen).unwrap().replay().unwrap().len(), 5);
    assert_eq!(seen, [true], "sound: one replay (a later one reads the trees again)");
    reframe(dir.path(), "done", b, |_| rmp_serde::to_vec(&vec![vec![1u32]]).unwrap());
    let epoch = || retry(|| verify(dir.path(), None).map(|r| r.epoch).map_err(|e| e.to_string())).unwrap();
    let before = epoch();
    seen.clear();
    let err = open_replaying(dir.path(), false, &mut seen).err().expect("damage refused");
    assert_eq!(err, open(dir.path(), false).err().expect("refused at open too"), "the same refusal");
    assert!(err.contains(&format!("job {b} \"beta\": 1 records unreadable")), "{err}");
    assert_eq!(seen, [false], "found by the replay; nothing replayed after the check");
    assert_eq!(epoch(), before, "a refused open changes nothing");
    seen.clear();
    let j = open_replaying(dir.path(), true, &mut seen).unwrap();
    assert_eq!(seen, [false, true], "replayed again once repaired");
    assert_eq!(j.epoch(), before.unwrap() + 1);
    drop(j);
    let kept = open(dir.path(), false).expect("intact once repaired").replay().unwrap();
    assert!(kept.iter().all(|r| r.job() == a || matches!(r, Record::JobSubmitted { .. })), "{kept:?}");
    assert_eq!(kept.len(), 4, "both jobs and a's two batches");
}

#[tokio::test]
async fn forgetting_is_not_damage_even_when_the_mark_has_not_seen_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_jobs(dir.path()).await;
    let mut j = open(dir.path(), false).unwrap();
    j.append(&[Record::JobForgotten { job: b }]).unwrap();
    // sled's flush only: a crash before the mark is replaced.
    j.db().flush().unwrap();
    drop(j);
    let j = open(dir.path(), false).expect("a forget is not a loss");
    assert!(j.replay().unwrap().iter().all(|r| r.job() == a));
    drop(j);
    let mut j = open(dir.path(), false).expect("nor after its tombstone is cleared");
    j.append(&[Record::JobForgotten { job: a }]).unwrap();
    j.flush().await.unwrap();
    drop(j);
    assert_eq!(open(dir.path(), false).unwrap().replay().unwrap(), vec![]);
}

#[tokio::test]
async fn records_written_after_the_last_mark_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_jobs(dir.path()).await;
    let mut j = open(dir.path(), false).unwrap();
    j.append(&[done(a, 2)]).unwrap();
    j.db().flush().unwrap();
    drop(j);
    assert_eq!(open(dir.path(), false).expect("a lagging mark is no damage").replay().unwrap().len(), 6);
}

#[tokio::test]
async fn a_deleted_database_an_old_format_and_a_scheduler_file_ahead_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_jobs(dir.path()).await;
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("hwm"), copy.path().join("hwm")).unwrap();
    let err = open(copy.path(), false).err().expect("a mark without its database");
    assert!(err.contains("missing or empty") && err.contains(&a.to_string()), "{err}");

    let fresh = tempfile::tempdir().unwrap();
    let expected = Some((3, fresh.path().join("scheduler.json")));
    let opts = OpenOptions { repair: false, expected };
    let err = SledJournal::open_with(&fresh.path().join("j"), &opts).err().unwrap().to_string();
    assert!(err.contains("says this journal reached epoch 3, but it is missing or empty"), "{err}");

    {
        let db = raw(dir.path());
        db.open_tree("meta").unwrap().insert("version", &1u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = open(dir.path(), true).err().expect("an old format is refused, even with repair");
    assert!(err.contains("format 1") && err.contains("does not migrate"), "{err}");
}
