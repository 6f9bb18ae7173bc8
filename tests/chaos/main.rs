//! Chaos tests: real processes, real signals.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use nix::sys::signal::Signal;
use std::time::Duration;

/// kill -9 of the nanny leaves no worker processes behind (PR_SET_PDEATHSIG).
#[test]
fn killing_the_nanny_leaves_no_workers() {
    let mut cluster = Cluster::start(3, 1);
    let pids = cluster.worker_pids();
    assert_eq!(pids.len(), 3);
    let nanny = cluster.nanny.as_mut().unwrap();
    nanny.signal(Signal::SIGKILL);
    nanny.wait_exit(Duration::from_secs(10)).expect("nanny dies");
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|p| !pid_alive(*p))),
        "orphaned workers: {:?}",
        pids.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
    // The scheduler notices they are gone.
    assert!(wait_until(Duration::from_secs(10), || cluster.worker_pids().is_empty()));
}

/// A worker killed mid-job: its tasks are rerun elsewhere and the job completes.
#[test]
fn job_completes_when_a_worker_is_killed() {
    let cluster = Cluster::start(2, 1);
    let pids = cluster.worker_pids();
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, "200\n".repeat(10)).unwrap();
    let out = cluster.run(&["map", "sleep", "--inputs", inputs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    // Kill one worker while it runs a 200 ms task.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "gather after a worker died: {}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["finished"], 10);
}
