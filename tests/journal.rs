//! An honest journal (DESIGN.md §4, guarantee 8): damage to a real
//! scheduler's sled journal — 16 flipped bytes, a lost 4 KiB tail, a deleted
//! database or directory — stops the restart with one message naming the
//! jobs, `actord journal check` says the same, and `--journal-repair` starts
//! anyway, logs what it lost, and leaves a consistent journal.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// A cluster that finished two jobs (3,000 `inc` tasks, 20 commands), whose
/// scheduler was then killed -9 and whose workers are gone.
fn finished_and_killed() -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::start(2, 1);
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..3000).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let mut jobs = Vec::new();
    for submit in [
        vec!["map", "inc", "--inputs", inputs.to_str().unwrap()],
        vec!["submit", "--array", "1-20", "--", "true"],
    ] {
        let out = cluster.run(&submit);
        assert!(out.status.success(), "{}", stderr(&out));
        let job = stdout(&out);
        let out = cluster.run(&["gather", &job, "--out", cluster.path("g.json").to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        jobs.push(job);
    }
    cluster.kill_scheduler();
    cluster.nanny = None;
    (cluster, jobs)
}

fn journal(cluster: &Cluster) -> PathBuf {
    cluster.path("journal")
}

fn scheduler(cluster: &Cluster, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = actord();
    cmd.args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"]).arg(&cluster.file);
    cmd.arg("--journal").arg(journal(cluster)).args(extra);
    Proc::spawn(name, cmd, cluster.dir.path())
}

/// The job ids among `jobs` that `text` names.
fn named(text: &str, jobs: &[String]) -> BTreeSet<String> {
    jobs.iter().filter(|j| text.contains(j.as_str())).cloned().collect()
}

/// The restart refuses with one message and exit 1; the offline check
/// agrees; a repair starts, logs what it lost, and a plain start then works.
fn refused_then_repaired(cluster: &Cluster, jobs: &[String], what: &str) {
    let mut refused = scheduler(cluster, "refused", &[]);
    let status = refused.wait_exit(Duration::from_secs(30)).expect("a damaged journal stops the restart");
    let log = refused.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    let message: Vec<&str> = log.lines().filter(|l| l.contains("is damaged")).collect();
    assert_eq!(message.len(), 1, "one message: {log}");
    assert!(message[0].contains(what) && message[0].contains("--journal-repair"), "{log}");
    assert!(!log.contains("panicked") && !log.contains("scheduler listening"), "{log}");
    let lost = named(message[0], jobs);
    assert!(!lost.is_empty(), "names the jobs it touches: {log}");

    let out = actord().args(["journal", "check"]).arg(journal(cluster)).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("DAMAGED"), "{}", stdout(&out));
    assert_eq!(named(&stdout(&out), jobs), lost, "the check names the same jobs: {}", stdout(&out));

    let old = std::fs::read_to_string(&cluster.file).unwrap_or_default();
    let mut repaired = scheduler(cluster, "repaired", &["--journal-repair"]);
    let file = cluster.file.clone();
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(&file).is_ok_and(|s| s != old)),
        "the repair never started:\n{}",
        repaired.log_text()
    );
    let log = repaired.log_text();
    assert!(log.contains("journal repair"), "{log}");
    let warned: BTreeSet<String> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("journal repair: job"))
        .flat_map(|l| named(l, jobs))
        .collect();
    assert_eq!(warned, lost, "a warning per job lost or that lost outcomes: {log}");
    let out = cluster.run(&["ctl", "shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(repaired.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0));

    let out = actord().args(["journal", "check"]).arg(journal(cluster)).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "consistent after the repair: {}", stdout(&out));
    let old = std::fs::read_to_string(&cluster.file).unwrap_or_default();
    let again = scheduler(cluster, "again", &[]);
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(&file).is_ok_and(|s| s != old)),
        "a plain start after the repair:\n{}",
        again.log_text()
    );
}

#[test]
fn sixteen_flipped_bytes_in_the_middle_of_the_database_are_refused_then_repaired() {
    let (cluster, jobs) = finished_and_killed();
    let db = journal(&cluster).join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&db, bytes).unwrap();
    refused_then_repaired(&cluster, &jobs, "jobs affected");
}

#[test]
fn a_database_that_lost_its_last_4_kib_is_refused_then_repaired() {
    let (cluster, jobs) = finished_and_killed();
    let db = std::fs::OpenOptions::new().write(true).open(journal(&cluster).join("db")).unwrap();
    let len = db.metadata().unwrap().len();
    db.set_len(len - 4096).unwrap();
    drop(db);
    refused_then_repaired(&cluster, &jobs, "jobs affected");
}

#[test]
fn a_deleted_database_or_directory_is_refused_then_repaired() {
    let (cluster, jobs) = finished_and_killed();
    std::fs::remove_file(journal(&cluster).join("db")).unwrap();
    refused_then_repaired(&cluster, &jobs, "missing or empty");

    // The last start (killed when it went out of scope) left a scheduler
    // file that says epoch 1 (the repair began a new database at 0); now the whole directory goes.
    std::fs::remove_dir_all(journal(&cluster)).unwrap();
    let mut refused = scheduler(&cluster, "refused-dir", &[]);
    let status = refused.wait_exit(Duration::from_secs(30)).expect("refused");
    let log = refused.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("says this journal reached epoch 1, but it is missing or empty"), "{log}");
}
