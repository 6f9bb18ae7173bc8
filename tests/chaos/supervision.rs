//! Supervision: the nanny revives dead workers and the scheduler reroutes
//! their work (DESIGN.md §4, guarantees 5 and 6).

use crate::common::*;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn kill(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Whether the worker with this pid holds tasks right now.
fn holds_tasks(cluster: &Cluster, pid: i32) -> bool {
    let out = cluster.run(&["ctl", "workers", "--json"]);
    json(&out).as_array().unwrap().iter().any(|w| w["pid"] == pid && w["running"].as_u64() > Some(0))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

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
    assert!(wait_until(Duration::from_secs(10), || cluster.worker_pids().is_empty()));
}

/// kill -9 of one worker in the middle of a darts job: the job completes
/// with the same per-task results as an undisturbed run, the nanny is the
/// same process, and a new worker has registered in the dead one's slot.
#[test]
fn darts_survives_a_killed_worker_with_identical_results() {
    let cluster = Cluster::start(2, 1);
    let nanny_pid = cluster.nanny.as_ref().unwrap().pid();
    let before = cluster.workers();
    let (victim_id, victim_pid, victim_slot) = before[0].clone();

    let disturbed = cluster.path("disturbed.json");
    let mut darts = Proc::spawn(
        "darts",
        cluster.command(&["darts", "--inputs", "24", "--scale", "0.3", "--out", disturbed.to_str().unwrap()]),
        cluster.dir.path(),
    );
    // Kill the worker while it is running darts tasks.
    assert!(wait_until(Duration::from_secs(20), || holds_tasks(&cluster, victim_pid)));
    kill(victim_pid, Signal::SIGKILL);
    let status = darts.wait_exit(Duration::from_secs(120)).expect("darts finishes");
    assert!(status.success(), "{}", darts.log_text());

    // The nanny is the same process; the slot has a new worker.
    assert!(pid_alive(nanny_pid));
    assert!(wait_until(Duration::from_secs(10), || {
        let now = cluster.workers();
        now.len() == 2
            && now
                .iter()
                .any(|(id, pid, slot)| *slot == victim_slot && *pid != victim_pid && *id != victim_id)
    }));
    let log = cluster.scheduler.log_text();
    assert!(log.contains("worker lost") && log.contains(&victim_id), "{log}");

    // Same per-task results as an undisturbed run of the same inputs.
    let undisturbed = cluster.path("undisturbed.json");
    let out =
        cluster.run(&["darts", "--inputs", "24", "--scale", "0.3", "--out", undisturbed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&disturbed).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&undisturbed).unwrap()).unwrap();
    assert_eq!(a["inputs"], b["inputs"]);
    assert_eq!(a["results"], b["results"]);
    // And both equal the reference implementation, computed here.
    for (input, result) in a["inputs"].as_array().unwrap().iter().zip(a["results"].as_array().unwrap()) {
        let (d, s) = (input[0].as_u64().unwrap(), input[1].as_u64().unwrap());
        assert_eq!(result[0].as_u64().unwrap(), actord::darts::throw_darts(d, s as u128));
    }
}

/// Reads `start|end TASK WORKER` marks written by the tasks themselves.
fn read_marks(path: &std::path::Path) -> Vec<(String, u32, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect()
}

/// Only the killed worker's in-flight tasks run twice: every task ends once,
/// and the tasks started more than once are exactly those that were on the
/// killed worker without ending there.
#[test]
fn only_the_killed_workers_in_flight_tasks_run_again() {
    let cluster = Cluster::start(2, 1);
    let marks = cluster.path("marks");
    // (Tasks of 1 s: the kill lands well inside the victim's running task,
    // not in the instant it ends and before its report leaves.)
    let script = format!(
        "echo start $ACTORD_TASK $ACTORD_WORKER >> {m}; sleep 1; echo end $ACTORD_TASK $ACTORD_WORKER >> {m}",
        m = marks.display()
    );
    let out = cluster.run(&["submit", "--array", "1-12", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);

    let (victim_id, victim_pid, _) = cluster.workers()[0].clone();
    // Let the victim finish at least one task first, then kill it mid-task.
    assert!(wait_until(Duration::from_secs(20), || {
        let m = read_marks(&marks);
        m.iter().any(|(e, _, w)| e == "end" && *w == victim_id)
            && m.iter().filter(|(e, _, w)| e == "start" && *w == victim_id).count()
                > m.iter().filter(|(e, _, w)| e == "end" && *w == victim_id).count()
    }));
    kill(victim_pid, Signal::SIGKILL);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["finished"], 12);

    let m = read_marks(&marks);
    let mut starts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut ends: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (e, t, w) in m {
        if e == "start" {
            starts.entry(t).or_default().push(w)
        } else {
            ends.entry(t).or_default().push(w)
        }
    }
    assert!(ends.values().all(|w| w.len() == 1), "each task ends once: {ends:?}");
    assert_eq!(ends.len(), 12);
    let interrupted: Vec<u32> = starts
        .iter()
        .filter(|(t, ws)| ws.contains(&victim_id) && !ends[*t].contains(&victim_id))
        .map(|(t, _)| *t)
        .collect();
    let rerun: Vec<u32> = starts.iter().filter(|(_, ws)| ws.len() > 1).map(|(t, _)| *t).collect();
    assert!(!interrupted.is_empty(), "the victim was killed mid-task");
    assert_eq!(rerun, interrupted, "starts: {starts:?}");
}

/// SIGSTOP: the scheduler declares the worker lost after the heartbeat
/// timeout, the job completes on the other worker; after SIGCONT the stale
/// worker's late reports are dropped and it registers again.
#[test]
fn a_stopped_worker_is_declared_lost_and_its_late_reports_are_recorded_once() {
    let config = "[scheduler]\nheartbeat_timeout = \"1s\"\n[worker]\nheartbeat = \"100ms\"\n";
    let cluster = Cluster::start_with_config(2, 1, config);
    let (victim_id, victim_pid, _) = cluster.workers()[0].clone();
    // Darts tasks of ~0.1 s each (release build), with results we can check.
    let inputs: Vec<(u64, u64)> = (0..8).map(|i| (8_000_000 + i, 1000 + i)).collect();
    let file = cluster.path("in.jsonl");
    std::fs::write(&file, inputs.iter().map(|(d, s)| format!("[{d},{s}]\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "darts", "--inputs", file.to_str().unwrap()]);
    let job = stdout(&out);
    assert!(wait_until(Duration::from_secs(20), || holds_tasks(&cluster, victim_pid)));
    kill(victim_pid, Signal::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(15), || cluster
            .workers()
            .iter()
            .all(|(_, pid, _)| *pid != victim_pid)),
        "stopped worker never declared lost"
    );
    let out = cluster.run(&["gather", &job]);
    kill(victim_pid, Signal::SIGCONT);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json(&out);
    for ((d, s), r) in inputs.iter().zip(doc["results"].as_array().unwrap()) {
        assert_eq!(r, &serde_json::json!([actord::darts::throw_darts(*d, *s as u128), d]));
    }

    // It wakes up, reports late (dropped), and registers as a new incarnation.
    assert!(
        wait_until(Duration::from_secs(15), || cluster
            .workers()
            .iter()
            .any(|(id, pid, _)| *pid == victim_pid && *id != victim_id)),
        "woken worker never re-registered:\n{}",
        cluster.scheduler.log_text()
    );
    let log = cluster.scheduler.log_text();
    assert!(log.contains("no heartbeat for"), "{log}");
    assert!(log.contains("dropped late reports"), "{log}");
    // Nothing recorded twice, nothing changed: gathering again gives the same document.
    let again = json(&cluster.run(&["gather", &job]));
    assert_eq!(again["results"], doc["results"]);
    assert_eq!(again["finished"], 8);
}

/// A task that panics fails its slot: the worker reports the task failed
/// with the panic's message, starts the slot again, and goes on serving
/// with the same pid, on that slot too.
#[test]
fn a_panicking_slot_fails_its_task_and_the_worker_serves_on() {
    let cluster = Cluster::start(1, 1);
    let pids = cluster.worker_pids();
    assert_eq!(pids.len(), 1);
    let out = cluster.run(&["submit", "--fn", "panic", "--args", "\"boom\""]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = json(&out)["failures"][0]["error"].as_str().unwrap().to_string();
    assert_eq!(err, "panic panicked: boom");

    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..10).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "inc", "--inputs", inputs.to_str().unwrap()]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["results"], serde_json::json!((1..=10).collect::<Vec<i64>>()));
    assert_eq!(cluster.worker_pids(), pids, "the same worker process served on");
    let log = cluster.nanny.as_ref().unwrap().log_text();
    assert!(log.contains("slot panicked"), "{log}");
}

/// A task that crashes its worker every time fails after K worker deaths with
/// an error naming them; the other tasks finish.
#[test]
fn a_poison_task_fails_after_three_worker_deaths() {
    let cluster = Cluster::start(2, 1);
    let out = cluster.run(&["submit", "--fn", "crash"]);
    let poison = stdout(&out);
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..20).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "inc", "--inputs", inputs.to_str().unwrap()]);
    let good = stdout(&out);

    let out = cluster.run(&["gather", &poison]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = json(&out)["failures"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("3 workers that died"), "{err}");
    assert_eq!(err.matches(", w").count() + 1, 3, "names three workers: {err}");

    let out = cluster.run(&["gather", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["results"], serde_json::json!((1..=20).collect::<Vec<i64>>()));
    // The nanny kept its slots filled.
    assert!(wait_until(Duration::from_secs(20), || cluster.workers().len() == 2));
}

/// A worker that dies at start-up every time (here: over a tiny memory
/// limit) is restarted with growing delays, then its slot is reported
/// failed to the scheduler, and the nanny stops trying.
#[test]
fn a_worker_that_always_dies_backs_off_then_its_slot_fails() {
    let config = "[nanny]\nmax_restarts = 3\nbackoff_base = \"200ms\"\nmemory_poll = \"20ms\"\n";
    let mut cluster = Cluster::scheduler_with_config(Some(config));
    cluster.spawn_nanny(1, 1, &["--memory-limit", "1MB"]);
    let failed = || {
        let out = cluster.run(&["ctl", "nannies", "--json"]);
        out.status.success() && json(&out)[0]["slots"][0]["state"].get("Failed").is_some()
    };
    assert!(wait_until(Duration::from_secs(30), failed), "{}", cluster.nanny.as_ref().unwrap().log_text());
    let log = cluster.nanny.as_ref().unwrap().log_text();
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("worker exited; restarting it"))
        .map(|l| {
            l.split("restart_in_ms=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(delays, vec![0, 200, 400], "{log}");
    assert_eq!(log.matches("worker process started").count(), 4, "{log}");
    assert!(log.contains("over its memory limit"), "{log}");
    assert!(cluster.scheduler.log_text().contains("worker slot failed"));
    let out = cluster.run(&["ctl", "nannies"]);
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));
}

/// SIGTERM to the nanny drains its workers: queued tasks go back, running
/// ones finish and report, nothing runs twice; a new nanny finishes the job.
#[test]
fn sigterm_drains_workers_without_losing_or_repeating_work() {
    let mut cluster = Cluster::start(2, 1);
    let pids = cluster.worker_pids();
    let marks = cluster.path("marks");
    let script = format!(
        "echo start $ACTORD_TASK >> {m}; sleep 0.5; echo end $ACTORD_TASK >> {m}",
        m = marks.display()
    );
    let out = cluster.run(&["submit", "--array", "1-6", "--", "sh", "-c", &script]);
    let job = stdout(&out);
    assert!(wait_until(Duration::from_secs(20), || read_marks_simple(&marks)
        .iter()
        .filter(|l| l.0 == "start")
        .count()
        >= 2));
    let nanny = cluster.nanny.as_mut().unwrap();
    nanny.signal(Signal::SIGTERM);
    let status = nanny.wait_exit(Duration::from_secs(20)).expect("nanny exits");
    assert!(status.success(), "{}", nanny.log_text());
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|p| !pid_alive(*p))));
    // Every task that started has ended: running tasks were finished, not killed.
    let m = read_marks_simple(&marks);
    let mut started: Vec<u32> = m.iter().filter(|l| l.0 == "start").map(|l| l.1).collect();
    let mut ended: Vec<u32> = m.iter().filter(|l| l.0 == "end").map(|l| l.1).collect();
    started.sort();
    ended.sort();
    assert_eq!(started, ended, "a running task was killed instead of drained");

    cluster.start_nanny(2, 1);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = read_marks_simple(&marks);
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for l in m.iter().filter(|l| l.0 == "start") {
        *counts.entry(l.1).or_default() += 1;
    }
    assert_eq!(counts.len(), 6);
    assert!(counts.values().all(|c| *c == 1), "a task ran twice: {counts:?}");
}

fn read_marks_simple(path: &std::path::Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap())
        })
        .collect()
}

/// An operator restarts one worker through the scheduler and its nanny.
#[test]
fn ctl_restart_worker_replaces_it_through_its_nanny() {
    let cluster = Cluster::start(2, 1);
    let (id, pid, slot) = cluster.workers()[0].clone();
    let out = cluster.run(&["ctl", "restart-worker", &id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = json(&out);
    assert_eq!(answer["ok"], true);
    assert!(answer["message"].as_str().unwrap().contains("asked the nanny"), "{answer}");
    assert!(wait_until(Duration::from_secs(20), || {
        let w = cluster.workers();
        w.len() == 2 && w.iter().any(|(i, p, s)| *s == slot && *p != pid && *i != id)
    }));
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)));
    let nannies = json(&cluster.run(&["ctl", "nannies", "--json"]));
    assert_eq!(nannies[0]["slots"].as_array().unwrap().len(), 2);

    let out = cluster.run(&["ctl", "restart-worker", "w999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no worker w999"), "{}", stderr(&out));
    let out = cluster.run(&["ctl", "restart-worker", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A chain runs pinned on one worker (each link starts there as soon as the
/// previous one finishes); kill -9 of that worker mid-chain: the chain goes
/// on elsewhere, every link runs after the one it depends on, and the job
/// completes.
#[test]
fn a_chain_pinned_to_a_killed_worker_carries_on_elsewhere() {
    let cluster = Cluster::start(2, 1);
    let marks = cluster.path("marks");
    let n = 150;
    let step = format!("echo $ACTORD_TASK >> {}; sleep 0.01", marks.display());
    let tasks: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![(i - 1).to_string()] };
            serde_json::json!({"key": i.to_string(), "cmd": ["sh", "-c", &step], "deps": deps})
        })
        .collect();
    let graph = cluster.path("chain.json");
    std::fs::write(&graph, serde_json::json!({ "tasks": tasks }).to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", graph.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let seen = || std::fs::read_to_string(&marks).unwrap_or_default().lines().count();
    assert!(wait_until(Duration::from_secs(30), || seen() >= 30), "the chain runs");
    let busy: Vec<i32> = cluster.worker_pids().into_iter().filter(|p| holds_tasks(&cluster, *p)).collect();
    assert_eq!(busy.len(), 1, "the whole chain is on one worker");
    kill(busy[0], Signal::SIGKILL);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let order: Vec<u32> =
        std::fs::read_to_string(&marks).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    let mut first_seen = vec![usize::MAX; n];
    for (pos, k) in order.iter().enumerate() {
        first_seen[*k as usize] = first_seen[*k as usize].min(pos);
    }
    assert!(first_seen.iter().all(|p| *p != usize::MAX), "every link ran");
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "every link ran after the one before it");
    assert!(order.len() <= n + 2, "at most the killed link (and a queued one) ran again: {}", order.len());
}
