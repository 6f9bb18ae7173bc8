//! `actord alloc` against a real scheduler and scripts standing in for
//! sbatch, squeue and scancel: the `--dry-run` lines, submitting for a
//! backlog, keeping its allocations across its own restart, cancelling when
//! idle, and bad flags or a damaged state file refused with nothing changed.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A script in `dir` that plays one Slurm command over `dir/queue` (lines `id|STATE`).
fn fake(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nQ={}/queue\n{body}\n", dir.display())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn fakes(dir: &Path) -> [String; 6] {
    std::fs::write(dir.join("queue"), "").unwrap();
    let sbatch = fake(
        dir,
        "sbatch",
        r#"echo "$@" >> "$Q.sbatch"; n=$(( $(wc -l < "$Q.sbatch") + 100 )); echo "$n|PENDING" >> "$Q"; echo "$n""#,
    );
    let squeue = fake(dir, "squeue", r#"echo >> "$Q.calls"; cat "$Q""#);
    let scancel = fake(
        dir,
        "scancel",
        r#"echo "$@" >> "$Q.scancel"; for id in "$@"; do grep -v "^$id|" "$Q" > "$Q.new"; mv "$Q.new" "$Q"; done"#,
    );
    ["--sbatch".into(), sbatch, "--squeue".into(), squeue, "--scancel".into(), scancel]
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

fn held(state: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(state) else { return vec![] };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["allocs"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect()
}

/// A job of `n` tasks that no worker runs yet: a backlog of n.
fn backlog(cluster: &Cluster, n: u32) -> String {
    let out = cluster.run(&["submit", "--array", &format!("1-{n}"), "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn dry_run_prints_the_sbatch_lines_and_runs_nothing() {
    let cluster = Cluster::scheduler_only();
    backlog(&cluster, 3);
    let state = cluster.path("alloc.json");
    let out = cluster.run(&[
        "alloc",
        "--dry-run",
        "--max-workers",
        "2",
        "--walltime",
        "30m",
        "--sbatch-arg=--qos=debug",
        "--sbatch",
        "/no/such/sbatch",
        "--squeue",
        "/no/such/squeue",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "two allocations of one worker (max 2) for 3 tasks:\n{text}");
    let file = cluster.file.display().to_string();
    for l in &lines {
        assert!(l.starts_with("/no/such/sbatch --parsable --job-name=actord-alloc --ntasks=1 --cpus-per-task=1 --time=0-00:30:00 --qos=debug '--wrap=exec "), "{l}");
        assert!(l.ends_with(&format!(" nanny --scheduler-file {file} --workers 1 --threads 1'")), "{l}");
    }
    assert!(!state.exists(), "a dry run writes no state");
}

#[test]
fn submits_for_a_backlog_keeps_its_allocations_across_a_restart_and_cancels_when_idle() {
    let cluster = Cluster::scheduler_only();
    let job = backlog(&cluster, 2);
    let dir = cluster.dir.path();
    let state = cluster.path("alloc.json");
    let f = fakes(dir);
    let start = || {
        let mut args = vec!["alloc", "--max-workers", "1", "--interval", "100ms", "--idle-timeout", "1s"];
        let f: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
        args.extend(f);
        let mut cmd = cluster.command(&args);
        cmd.arg("--state").arg(&state);
        Proc::spawn("alloc", cmd, dir)
    };
    let mut alloc = start();
    assert!(wait_until(Duration::from_secs(20), || held(&state) == ["101"]), "{}", alloc.log_text());
    alloc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(alloc.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()), "{}", alloc.log_text());
    assert_eq!(held(&state), ["101"], "stopping leaves the allocation in the state file");

    // A new run finds it, running now, and counts it.
    std::fs::write(dir.join("queue"), "101|RUNNING\n").unwrap();
    let alloc = start();
    let sbatch_log = dir.join("queue.sbatch");
    assert!(wait_until(Duration::from_secs(10), || alloc.log_text().contains("allocator started")));
    // Several rounds (each asks squeue): none may submit again.
    let calls = lines(&dir.join("queue.calls")).len();
    assert!(wait_until(Duration::from_secs(10), || lines(&dir.join("queue.calls")).len() >= calls + 3));
    assert_eq!(lines(&sbatch_log).len(), 1, "the held allocation counts (max 1)");
    assert_eq!(held(&state), ["101"]);

    // Nothing left to do: after the idle timeout it is cancelled.
    let out = cluster.run(&["ctl", "cancel", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(20), || held(&state).is_empty()), "{}", alloc.log_text());
    assert_eq!(lines(&dir.join("queue.scancel")), ["101"]);

    // An allocation that ends by itself (squeue no longer lists it) is dropped.
    backlog(&cluster, 1);
    assert!(wait_until(Duration::from_secs(20), || held(&state) == ["102"]), "{}", alloc.log_text());
    std::fs::write(dir.join("queue"), "").unwrap();
    assert!(wait_until(Duration::from_secs(20), || alloc.log_text().contains("allocation ended")));
}

#[test]
fn bad_flags_and_a_damaged_state_file_are_refused_and_change_nothing() {
    let cluster = Cluster::scheduler_only();
    let out = cluster.run(&["alloc", "--max-workers", "2", "--min-workers", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--min-workers 3 is above --max-workers 2"), "{}", stderr(&out));
    let out = cluster.run(&["alloc", "--max-workers", "2", "--idle-timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let state = cluster.path("alloc.json");
    std::fs::write(&state, "not json").unwrap();
    let out = cluster.run(&["alloc", "--max-workers", "2", "--state", state.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "not json");
}
