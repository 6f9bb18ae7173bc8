//! Durability: kill -9 of the scheduler loses nothing (DESIGN.md §4,
//! guarantees 1–4). Tasks mark their own start and end in a file, which
//! proves what ran how often.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A short reclaim grace keeps the tests quick; workers reconnect well within it.
const CONFIG: &str = "[scheduler]\nreclaim_grace = \"2s\"\n";

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

/// Per task: how often it started and ended.
fn marks(path: &Path) -> BTreeMap<u32, (u32, u32)> {
    let mut m: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut f = line.split_whitespace();
        let (what, task) = (f.next().unwrap(), f.next().unwrap().parse().unwrap());
        let e = m.entry(task).or_default();
        if what == "start" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    m
}

/// Waits (bounded) until the outage has been seen `times` times so far by
/// the nanny, both of its workers and, if given, a waiting client: everyone
/// is running on without the scheduler.
fn wait_until_outage_seen(cluster: &Cluster, client: Option<&Proc>, times: usize) {
    let count = |text: String, what: &str| text.matches(what).count();
    let seen = wait_until(Duration::from_secs(30), || {
        let nanny = || cluster.nanny.as_ref().expect("a nanny").log_text();
        count(nanny(), "nanny lost the scheduler") >= times
            && count(nanny(), "running tasks go on") >= 2 * times
            && client.is_none_or(|c| count(c.log_text(), "lost the scheduler; reconnecting") >= times)
    });
    assert!(seen, "the outage went unnoticed:\n{}", cluster.nanny.as_ref().unwrap().log_text());
}

/// A different number on every run (kill moments vary from run to run).
fn seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.subsec_nanos() as u64 ^ (std::process::id() as u64) << 7
}

/// The scheduler's CPU time so far, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11..13).map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum()).unwrap_or(0)
}

fn ended(path: &Path) -> usize {
    marks(path).values().map(|(_, e)| *e as usize).sum()
}

/// Submits `n` tasks that each mark start, sleep, mark end and print their
/// index; returns the job id.
fn submit_marked(cluster: &Cluster, n: u32, sleep: &str) -> String {
    let m = cluster.path("marks");
    let script = format!(
        "echo start $ACTORD_TASK >> {m}; sleep {sleep}; echo end $ACTORD_TASK >> {m}; echo $ACTORD_TASK",
        m = m.display()
    );
    let out = cluster.run(&["submit", "--array", &format!("1-{n}"), "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// Every task ran exactly once and printed its own index.
fn assert_each_ran_once(cluster: &Cluster, n: u32, gathered: &serde_json::Value) {
    let m = marks(&cluster.path("marks"));
    assert_eq!(m.len(), n as usize, "{m:?}");
    for (task, (starts, ends)) in &m {
        assert_eq!((*starts, *ends), (1, 1), "task {task} started {starts}× and ended {ends}×: {m:?}");
    }
    assert_eq!(gathered["finished"], n);
    for (i, r) in gathered["results"].as_array().unwrap().iter().enumerate() {
        let out = std::fs::read_to_string(r["stdout"].as_str().unwrap()).unwrap();
        assert_eq!(out.trim(), (i + 1).to_string());
        assert!(r["stdout"].as_str().unwrap().ends_with(&format!("/{i}.1.out")), "attempt 1 only: {r}");
    }
}

/// kill -9 of the scheduler mid-job, restart on another port once the
/// workers, the nanny and the waiting client have all seen it gone:
/// the job completes, the gather that was waiting carries on, no finished
/// task runs again and no running task is killed or restarted (the workers
/// reclaim them from the new scheduler).
#[test]
fn a_killed_scheduler_restarts_and_nothing_is_lost_or_run_twice() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let job = submit_marked(&cluster, 8, "2");
    let out_file = cluster.path("gathered.json");
    let mut gather = Proc::spawn(
        "gather",
        cluster.command(&["gather", &job, "--out", out_file.to_str().unwrap()]),
        cluster.dir.path(),
    );
    let marks_file = cluster.path("marks");
    // Kill just after a task has started, so that it outlives the outage.
    assert!(wait_until(Duration::from_secs(30), || ended(&marks_file) >= 2));
    let started = |m: &BTreeMap<u32, (u32, u32)>| m.values().map(|(s, _)| *s as usize).sum::<usize>();
    let seen = started(&marks(&marks_file));
    assert!(wait_until(Duration::from_secs(30), || started(&marks(&marks_file)) > seen));
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster.file).unwrap()).unwrap();
    cluster.kill_scheduler();
    wait_until_outage_seen(&cluster, Some(&gather), 1);
    cluster.restart_scheduler();
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster.file).unwrap()).unwrap();
    assert_eq!(after["epoch"].as_u64().unwrap(), before["epoch"].as_u64().unwrap() + 1);
    assert_ne!(after["instance"], before["instance"]);

    let status = gather.wait_exit(Duration::from_secs(60)).expect("gather finishes");
    assert!(status.success(), "{}", gather.log_text());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_each_ran_once(&cluster, 8, &doc);
    let log = cluster.scheduler.log_text();
    assert!(log.contains("journal replayed") && log.contains("worker reclaimed its running tasks"), "{log}");
    // The nanny's workers are the same processes: they rode the outage out.
    assert_eq!(cluster.workers().len(), 2);
}

/// Three kills at pseudo-random moments during one job.
#[test]
fn three_scheduler_kills_during_one_job() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let job = submit_marked(&cluster, 16, "0.4");
    let marks_file = cluster.path("marks");
    let seed = seed();
    for k in 0..3u64 {
        // Kill after a further 1–3 tasks have ended (varies with the seed).
        let target = ended(&marks_file) + 1 + ((seed >> (k * 4)) % 3) as usize;
        assert!(wait_until(Duration::from_secs(60), || ended(&marks_file) >= target.min(15)));
        cluster.kill_scheduler();
        wait_until_outage_seen(&cluster, None, k as usize + 1);
        cluster.restart_scheduler();
    }
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_each_ran_once(&cluster, 16, &json(&out));
}

/// kill -9 while a large job is being submitted: after the restart the job
/// is either all there or not there at all, and submitting it again with the
/// same id works either way.
#[test]
fn a_kill_during_submit_leaves_all_or_nothing() {
    let mut cluster = Cluster::start_with_config(1, 1, CONFIG);
    let n = 200_000;
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..n).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let job = uuid::Uuid::new_v4().to_string();
    let args = ["map", "inc", "--inputs", inputs.to_str().unwrap(), "--job-id", &job];
    let mut submit = Proc::spawn("submit", cluster.command(&args), cluster.dir.path());
    // Kill at a moment that varies from run to run: before the submission
    // arrives, while the scheduler works on it, or once it is journaled.
    let phase = seed() / 1000 % 3;
    let pid = cluster.scheduler.pid();
    let idle = cpu_ticks(pid);
    match phase {
        0 => {}
        1 => assert!(wait_until(Duration::from_secs(30), || cpu_ticks(pid) > idle + 2), "never busy"),
        _ => assert!(wait_until(Duration::from_secs(30), || cluster
            .scheduler
            .log_text()
            .contains("job submitted"))),
    }
    cluster.kill_scheduler();
    let was_there = cluster.scheduler.log_text().contains("job submitted");
    eprintln!("killed in phase {phase}; job submitted before the kill: {was_there}");
    cluster.restart_scheduler();
    // The interrupted client reconnects and resubmits the same id by itself.
    let status = submit.wait_exit(Duration::from_secs(60)).expect("submit returns");
    assert!(status.success(), "{}", submit.log_text());
    // And submitting again by hand is harmless.
    let out = cluster.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), job);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["tasks"], n);
    let results = doc["results"].as_array().unwrap();
    assert!(results.iter().enumerate().all(|(i, r)| r.as_i64() == Some(i as i64 + 1)));
}

/// A journal with 100,000 finished tasks replays correctly after kill -9.
#[test]
fn a_journal_of_100k_finished_tasks_replays() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..100_000).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let job = stdout(&cluster.run(&["map", "inc", "--inputs", inputs.to_str().unwrap()]));
    let first = cluster.run(&["gather", &job]);
    assert!(first.status.success(), "{}", stderr(&first));
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let again = cluster.run(&["gather", &job]);
    assert!(again.status.success(), "{}", stderr(&again));
    let (a, b) = (json(&first), json(&again));
    assert_eq!(b["finished"], 100_000);
    assert!(a["results"] == b["results"], "results differ after replay");
    assert!(cluster.scheduler.log_text().contains("journal replayed"));
}

/// One journal, one scheduler: a second one is refused and told who holds it.
#[test]
fn a_second_scheduler_on_the_same_journal_is_refused() {
    let cluster = Cluster::scheduler_only();
    let out = actord()
        .args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"])
        .arg(cluster.path("other.json"))
        .arg("--journal")
        .arg(cluster.path("journal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("already in use by scheduler pid {}", cluster.scheduler.pid())), "{err}");
}

/// Forgetting a finished job drops it for good, also across a restart;
/// an unfinished job cannot be forgotten.
#[test]
fn forgotten_jobs_stay_forgotten() {
    let mut cluster = Cluster::start_with_config(1, 1, CONFIG);
    let done = stdout(&cluster.run(&["submit", "--fn", "inc", "--args", "1"]));
    assert!(cluster.run(&["gather", &done]).status.success());
    let busy = stdout(&cluster.run(&["submit", "--fn", "sleep", "--args", "60000"]));
    let out = cluster.run(&["ctl", "forget", &busy]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unfinished"), "{}", stderr(&out));
    let out = cluster.run(&["ctl", "forget", &done]);
    assert!(out.status.success(), "{}", stderr(&out));
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let out = cluster.run(&["gather", &done]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job"), "{}", stderr(&out));
}

/// The console runs the ctl commands over one connection, explains typos,
/// and carries on across a scheduler restart (it reconnects and says so).
#[test]
fn the_console_survives_a_scheduler_restart() {
    use std::io::{BufRead, Write};
    let mut cluster = Cluster::start_with_config(1, 1, CONFIG);
    let mut child = KillOnDrop(
        cluster
            .command(&["console"])
            .env("XDG_STATE_HOME", cluster.path("state"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str| -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(what) {
                return true;
            }
        }
        false
    };
    writeln!(stdin, "status").unwrap();
    assert!(wait_for("workers    1 (1 slots)"));
    writeln!(stdin, "stauts").unwrap();
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    writeln!(stdin, "status").unwrap();
    assert!(wait_for("epoch      1"), "status after the restart");
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("unrecognized subcommand 'stauts'"), "{err}");
    assert!(err.contains("reconnected to"), "{err}");
    assert!(cluster.path("state/actord/console_history").exists());
}

/// A child with piped stdio, killed (by pid) and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
