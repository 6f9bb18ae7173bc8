//! `actord ctl` against a real cluster: every command's JSON output and exit
//! codes, retry, retire-worker, shutdown --drain, log-level, and the
//! interactive console driven through a pseudo-terminal.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = "[scheduler]\nreclaim_grace = \"1s\"\n[worker]\nheartbeat = \"200ms\"\n";

fn ctl_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = vec!["ctl"];
    full.extend_from_slice(args);
    full.push("--json");
    let out = cluster.run(&full);
    assert!(out.status.success(), "ctl {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {}", stdout(&out)))
}

/// A command task that says it started, then waits for `go` to appear.
fn gated(cluster: &Cluster, name: &str) -> String {
    format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.02; done",
        cluster.path(&format!("started-{name}")).display(),
        cluster.path("go").display()
    )
}

/// Maps `inc` over `values` and waits for the results; returns the job id.
fn map_inc(cluster: &Cluster, values: &[i64]) -> String {
    let inputs = cluster.path("inputs.jsonl");
    std::fs::write(&inputs, values.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "inc", "--inputs", inputs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    job
}

fn submit_cmd(cluster: &Cluster, script: &str) -> String {
    let out = cluster.run(&["submit", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn every_ctl_command_answers_in_json_with_reliable_exit_codes() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let done_job = map_inc(&cluster, &[1, 2, 3]);
    let jobs = ctl_json(&cluster, &["jobs"]);
    assert_eq!(jobs[0]["id"], done_job.as_str());

    let s = ctl_json(&cluster, &["status"]);
    assert_eq!((s["workers"].as_u64(), s["slots"].as_u64()), (Some(2), Some(2)), "{s}");
    assert_eq!(s["tasks_finished"], 3);
    assert!(s["journal_path"].as_str().unwrap().ends_with("journal"), "{s}");
    assert!(s["journal_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["uptime_s"].is_u64() && s["tasks_per_s"].is_number(), "{s}");
    assert_eq!(s["draining"], false);
    assert_eq!(s["pid"], cluster.scheduler.pid());

    // Heartbeats carry each worker's memory; the scheduler says when it last heard.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let w = ctl_json(&cluster, &["workers"]);
            w.as_array().unwrap().iter().all(|w| w["rss_kib"].as_u64().unwrap() > 1000)
        }),
        "workers report their RSS"
    );
    let w = ctl_json(&cluster, &["workers"]);
    for w in w.as_array().unwrap() {
        assert!(w["last_heard_ms"].as_u64().unwrap() < 5000, "{w}");
        assert_eq!(w["draining"], false);
        assert!(w["nanny"]["pid"].is_u64(), "{w}");
    }
    let table = stdout(&cluster.run(&["ctl", "workers"]));
    assert!(table.contains("HEARD") && table.contains("RSS") && table.contains("ms ago"), "{table}");

    let n = ctl_json(&cluster, &["nannies"]);
    assert_eq!(n[0]["slots"].as_array().unwrap().len(), 2, "{n}");

    let j = ctl_json(&cluster, &["job", &done_job]);
    assert_eq!(j["info"]["finished"], 3, "{j}");
    assert_eq!(j["states"], json!({"finished": 3}));
    assert!(j["elapsed_s"].as_f64().unwrap() > 0.0 && j["tasks_per_s"].as_f64().unwrap() > 0.0, "{j}");
    let text = stdout(&cluster.run(&["ctl", "job", &done_job]));
    assert!(text.contains("finished 3") && text.contains("tasks/s"), "{text}");

    let t = ctl_json(&cluster, &["tasks", &done_job, "--state", "finished"]);
    assert_eq!(t.as_array().unwrap().len(), 3);
    let e = ctl_json(&cluster, &["explain", &done_job, "1"]);
    assert_eq!(e["ok"], true);
    assert!(e["message"].as_str().unwrap().contains("finished"), "{e}");

    let jr = ctl_json(&cluster, &["journal"]);
    assert_eq!(jr["path"], s["journal_path"]);
    assert!(jr["records"].as_u64().unwrap() >= 2, "a submit and some results: {jr}");
    assert!(jr["flushes"].as_u64().unwrap() >= 1 && jr["last_flush_ms_ago"].is_u64(), "{jr}");
    let text = stdout(&cluster.run(&["ctl", "journal"]));
    assert!(text.contains("records") && text.contains("flushes"), "{text}");

    // A job waiting on a gate: cancel it, then retry it.
    let job = submit_cmd(&cluster, &gated(&cluster, "a"));
    assert!(wait_until(Duration::from_secs(20), || cluster.path("started-a").exists()));
    let c = ctl_json(&cluster, &["cancel", &job]);
    assert!(c["message"].as_str().unwrap().contains("canceled 1"), "{c}");
    let out = cluster.run(&["gather", &job]);
    assert_eq!(out.status.code(), Some(1), "a canceled job gathers as failed");
    std::fs::write(cluster.path("go"), "").unwrap();
    let r = ctl_json(&cluster, &["retry", &job]);
    assert!(r["message"].as_str().unwrap().contains("retrying 1 tasks"), "{r}");
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "the retried task finishes: {}", stderr(&out));
    let r = ctl_json(&cluster, &["retry", &job]);
    assert!(r["message"].as_str().unwrap().contains("no failed"), "{r}");

    let f = ctl_json(&cluster, &["forget", &done_job]);
    assert_eq!(f["ok"], true);
    let out = cluster.run(&["ctl", "job", &done_job, "--json"]);
    assert_eq!(out.status.code(), Some(1), "a forgotten job is gone");
    assert!(stderr(&out).contains("no job"), "{}", stderr(&out));

    // Log level: a bad one is refused and changes nothing; a good one takes effect.
    let out = cluster.run(&["ctl", "log-level", "loud"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad log level"), "{}", stderr(&out));
    let l = ctl_json(&cluster, &["log-level", "debug"]);
    assert_eq!(l["ok"], true, "{l}");
    ctl_json(&cluster, &["status"]);
    assert!(
        wait_until(Duration::from_secs(5), || cluster.scheduler.log_text().contains("session connected")),
        "debug lines after log-level debug"
    );

    // Usage errors exit 2 and say what is wrong.
    for args in [&["ctl", "job", "not-a-uuid"][..], &["ctl", "retire-worker", "x"], &["ctl", "bogus"]] {
        let out = cluster.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    let out = cluster.run(&["ctl", "retire-worker", "w99", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no worker w99"), "{}", stderr(&out));

    let sd = ctl_json(&cluster, &["shutdown"]);
    assert_eq!(sd["ok"], true);
    let mut cluster = cluster;
    assert!(cluster.scheduler.wait_exit(Duration::from_secs(20)).is_some(), "the scheduler stops");
}

#[test]
fn retire_worker_lets_its_running_task_finish_then_stops_it_for_good() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let job = submit_cmd(&cluster, &gated(&cluster, "r"));
    assert!(wait_until(Duration::from_secs(20), || cluster.path("started-r").exists()));
    let tasks = ctl_json(&cluster, &["tasks", &job]);
    let busy = format!("w{}", tasks[0]["worker"]);
    let workers = cluster.workers();
    let (_, busy_pid, busy_slot) = workers.iter().find(|w| w.0 == busy).cloned().unwrap();
    let other = workers.iter().find(|w| w.0 != busy).cloned().unwrap();

    let r = ctl_json(&cluster, &["retire-worker", &busy]);
    assert!(r["message"].as_str().unwrap().contains("retiring"), "{r}");
    let w = ctl_json(&cluster, &["workers"]);
    let entry = w.as_array().unwrap().iter().find(|x| format!("w{}", x["id"]) == busy).unwrap().clone();
    assert_eq!(entry["draining"], true, "{entry}");
    assert_eq!(entry["running"], 1, "its task keeps running: {entry}");
    assert!(pid_alive(busy_pid));

    // New work goes to the other worker only.
    let map_job = map_inc(&cluster, &[1, 2, 3, 4]);
    let t = ctl_json(&cluster, &["tasks", &map_job]);
    assert!(t.as_array().unwrap().iter().all(|t| t["state"] == "finished"), "{t}");

    std::fs::write(cluster.path("go"), "").unwrap();
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "the running task finished on the retiring worker: {}", stderr(&out));
    let t = ctl_json(&cluster, &["tasks", &job]);
    assert_eq!(t[0]["attempts"], 1, "it ran once: {t}");
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(busy_pid)), "the retired worker stops");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let n = ctl_json(&cluster, &["nannies"]);
            n[0]["slots"].as_array().unwrap().iter().any(|s| s["state"] == "Retired")
        }),
        "its nanny leaves the slot empty"
    );
    let now = cluster.workers();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].0, other.0, "the other worker stays");
    assert!(now.iter().all(|w| w.2 != busy_slot), "no replacement in the retired slot");
    let text = stdout(&cluster.run(&["ctl", "nannies"]));
    assert!(text.contains("retired"), "{text}");
}

#[test]
fn shutdown_drain_waits_for_running_tasks_and_journals_them() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let job = submit_cmd(&cluster, &gated(&cluster, "d"));
    assert!(wait_until(Duration::from_secs(20), || cluster.path("started-d").exists()));
    let mut drain = Proc::spawn(
        "drain",
        cluster.command(&["ctl", "shutdown", "--drain", "--keep-workers"]),
        cluster.dir.path(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || ctl_json(&cluster, &["status"])["draining"] == true),
        "the scheduler says it is draining"
    );
    // Nothing new is handed out while draining.
    let queued = cluster.run(&["submit", "--", "true"]);
    let queued = stdout(&queued);
    let t = ctl_json(&cluster, &["tasks", &queued]);
    assert_eq!(t[0]["state"], "ready", "{t}");
    assert!(drain.wait_exit(Duration::from_millis(300)).is_none(), "it waits for the running task");
    assert!(pid_alive(cluster.scheduler.pid()));

    std::fs::write(cluster.path("go"), "").unwrap();
    let status = drain.wait_exit(Duration::from_secs(30)).expect("ctl shutdown --drain returns");
    assert!(status.success(), "{}", drain.log_text());
    assert!(drain.log_text().contains("tasks still running"), "{}", drain.log_text());
    assert!(cluster.scheduler.wait_exit(Duration::from_secs(20)).is_some(), "the scheduler stopped");

    // The next scheduler has the drained task's result; the queued job runs
    // on the workers that waited for it.
    cluster.restart_scheduler();
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = ctl_json(&cluster, &["tasks", &job]);
    assert_eq!((t[0]["state"].as_str(), t[0]["attempts"].as_u64()), (Some("finished"), Some(1)), "{t}");
    let out = cluster.run(&["gather", &queued]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A failed task and the dependent that failed with it run again on
/// `ctl retry`, and the retry survives a scheduler restart.
#[test]
fn retry_reruns_failed_tasks_and_their_dependents_durably() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let flag = cluster.path("fixed");
    let graph = json!({"tasks": [
        {"key": "a", "cmd": ["sh", "-c", format!("test -e {}", flag.display())]},
        {"key": "b", "cmd": ["true"], "deps": ["a"]},
        {"key": "c", "cmd": ["true"]},
    ]});
    let path = cluster.path("graph.json");
    std::fs::write(&path, graph.to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let out = cluster.run(&["gather", &job]);
    assert_eq!(out.status.code(), Some(1), "a fails, b with it");
    let j = ctl_json(&cluster, &["job", &job]);
    assert_eq!(j["states"], json!({"failed": 2, "finished": 1}), "{j}");

    std::fs::write(&flag, "").unwrap();
    let r = ctl_json(&cluster, &["retry", &job]);
    assert!(r["message"].as_str().unwrap().contains("retrying 2 tasks"), "{r}");
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = ctl_json(&cluster, &["tasks", &job]);
    let attempts: Vec<u64> = t.as_array().unwrap().iter().map(|t| t["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![2, 1, 1], "a ran twice, b once (it never ran before), c once: {t}");

    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let j = ctl_json(&cluster, &["job", &job]);
    assert_eq!(j["states"], json!({"finished": 3}), "replayed with the retry: {j}");
}

/// The interactive console on a pseudo-terminal: a command, a typo, tab
/// completion of a command and of a job id.
#[test]
fn the_console_completes_and_explains_typos_on_a_terminal() {
    use expectrl::Expect;
    let cluster = Cluster::start_with_config(1, 1, CONFIG);
    let job = map_inc(&cluster, &[5]);

    let mut cmd = cluster.command(&["console"]);
    cmd.env("XDG_STATE_HOME", cluster.path("state")).env("TERM", "xterm").env("NO_COLOR", "1");
    let mut console = expectrl::Session::spawn(cmd).expect("console on a pty");
    let pid = console.get_process().pid();
    let _guard = KillPid(pid.as_raw());
    console.set_expect_timeout(Some(Duration::from_secs(20)));
    console.expect("actord> ").expect("prompt");

    console.send_line("status").unwrap();
    console.expect("workers    1 (1 slots)").expect("status output");
    console.expect("actord> ").unwrap();

    console.send_line("wrokers").unwrap();
    console.expect("unrecognized subcommand").expect("the typo is explained");
    console.expect("actord> ").unwrap();

    // Tab completes a command ("journ" → "journal") and a job id.
    console.send("journ\t").unwrap();
    console.send("\r").unwrap();
    console.expect("flushes").expect("the completed command ran");
    console.expect("actord> ").unwrap();
    console.send(format!("job {}\t", &job[..8])).unwrap();
    console.send("\r").unwrap();
    console.expect("finished 1").expect("the completed id names the job");
    console.expect("actord> ").unwrap();

    console.send_line("quit").unwrap();
    console.expect(expectrl::Eof).expect("the console exits");
}

struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A worker started without a nanny is retired by the scheduler itself:
/// it drains and exits cleanly.
#[test]
fn retire_worker_stops_a_worker_without_a_nanny() {
    let cluster = Cluster::scheduler_with_config(Some(CONFIG));
    let mut worker =
        Proc::spawn("worker", cluster.command(&["worker", "--threads", "1"]), cluster.dir.path());
    let out = cluster.run(&["wait", "--workers", "1", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (id, pid, _) = cluster.workers()[0].clone();
    assert_eq!(pid, worker.pid());
    let r = ctl_json(&cluster, &["retire-worker", &id]);
    assert_eq!(r["ok"], true, "{r}");
    let status = worker.wait_exit(Duration::from_secs(20)).expect("the retired worker exits");
    assert!(status.success(), "{status:?}: {}", worker.log_text());
    assert!(worker.log_text().contains("retired by the scheduler"), "{}", worker.log_text());
    assert!(wait_until(Duration::from_secs(10), || cluster.workers().is_empty()), "it left the scheduler");
}
