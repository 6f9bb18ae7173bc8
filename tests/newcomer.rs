//! The README as a new user follows it: `local` running a job to its end,
//! graph files with integer keys and precise errors, client flags after the
//! subcommand, answers on stdout, cmd tasks' working directory, a dead
//! scheduler reported at once, and `ctl shutdown` ending the cluster.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a bounded run printed.
struct Ran {
    code: Option<i32>,
    out: String,
    err: String,
}

/// Runs `cmd` with stdout and stderr kept apart; killed (by pid, through
/// `Proc`) if it outlasts `timeout`.
fn run_bounded(mut cmd: Command, dir: &Path, name: &str, timeout: Duration) -> Ran {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut p = Proc { child, name: name.into(), log: err_path.clone() };
    let status = p.wait_exit(timeout);
    let ran = Ran {
        code: status.and_then(|s| s.code()),
        out: std::fs::read_to_string(&out_path).unwrap_or_default(),
        err: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(status.is_some(), "{name} did not finish within {timeout:?}: {}", ran.err);
    ran
}

/// `actord local …` in `dir`, with its temporary files under `dir/tmp`
/// and its default logging unless `log` says otherwise.
fn local_with_log(dir: &Path, log: Option<&str>, args: &[&str]) -> Ran {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = actord();
    cmd.env_remove("ACTORD_LOG").env_remove("RUST_LOG");
    if let Some(l) = log {
        cmd.env("ACTORD_LOG", l);
    }
    cmd.env("TMPDIR", &tmp).current_dir(dir).arg("local").args(args);
    run_bounded(cmd, dir, "local", Duration::from_secs(90))
}

fn local(dir: &Path, args: &[&str]) -> Ran {
    local_with_log(dir, None, args)
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn local_runs_its_submit_to_the_end_and_exits_with_the_jobs_status() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let script = format!("sleep 0.05; touch {}/$ACTORD_TASK", marks.display());
    let r = local(dir.path(), &["--workers", "2", "submit", "--array", "1-30", "--", "sh", "-c", &script]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert_eq!(left_in(&marks).len(), 30, "every command ran before local returned");
    assert!(r.out.contains("30 of 30 tasks finished, 0 failed"), "a summary on stdout: {}", r.out);
    assert!(r.out.contains(&dir.path().join("actord-jobs").display().to_string()), "{}", r.out);
    assert!(!r.err.contains(" INFO "), "local logs at warn by default: {}", r.err);
    assert!(left_in(&dir.path().join("tmp")).is_empty(), "its temporary directory is gone");

    let r = local(dir.path(), &["submit", "--array", "1-3", "--", "sh", "-c", "exit $ACTORD_TASK"]);
    assert_eq!(r.code, Some(1), "a failed task fails local: {} {}", r.out, r.err);
    assert!(r.out.contains("0 of 3 tasks finished, 3 failed"), "{}", r.out);
    assert!(r.err.contains("failed with exit code 2"), "{}", r.err);

    let inputs = dir.path().join("in.jsonl");
    std::fs::write(&inputs, "1\n2\n3\n").unwrap();
    let r = local(dir.path(), &["map", "inc", "--inputs", inputs.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    let doc: serde_json::Value = serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("{e}: {}", r.out));
    assert_eq!(doc["results"], serde_json::json!([2, 3, 4]));
    assert!(left_in(&dir.path().join("tmp")).is_empty());
}

#[test]
fn local_checks_its_flags_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--workers", "0", "ctl", "status"][..], "--workers must be at least 1"),
        (&["--threads", "0", "darts"][..], "--threads must be at least 1"),
        (&["submit", "--array", "5-1", "--", "true"][..], "expected a range"),
        (&["darts", "--inputs", "0"][..], "--inputs must be at least 1"),
        (&["submit", "--graph", "missing.json"][..], "cannot read it"),
    ] {
        let start = Instant::now();
        let r = local_with_log(dir.path(), Some("info"), args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.err);
        assert!(r.err.contains(says), "{args:?}: {}", r.err);
        assert!(!r.err.contains("scheduler listening"), "{args:?}: nothing started: {}", r.err);
        assert!(start.elapsed() < Duration::from_secs(5), "{args:?}");
        assert!(left_in(&dir.path().join("tmp")).is_empty(), "{args:?}: nothing left behind");
    }
}

fn submit_graph(cluster: &Cluster, name: &str, text: &str) -> std::process::Output {
    let path = cluster.path(name);
    std::fs::write(&path, text).unwrap();
    cluster.run(&["submit", "--graph", path.to_str().unwrap()])
}

#[test]
fn graph_files_take_integer_keys_and_name_the_task_and_field_at_fault() {
    let cluster = Cluster::start(1, 1);
    let first = stdout(&cluster.run(&["submit", "--fn", "inc", "--args", "1"]));
    let text = format!(
        r#"{{"tasks": [{{"fn": "inc", "deps": [{{"job": "{first}", "key": 0}}]}},
                       {{"key": 5, "fn": "add", "args": 10, "deps": [0]}},
                       {{"fn": "sum", "deps": [5, "0"]}}]}}"#
    );
    let out = submit_graph(&cluster, "ints.json", &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"], serde_json::json!([3, 13, 16]), "{doc}");

    let diamond = r#"{"name": "diamond", "tasks": [
      {"key": "a", "fn": "inc", "args": 1},
      {"key": "b", "fn": "inc", "deps": ["a"]},
      {"key": "c", "fn": "add", "args": 10, "deps": ["a"]},
      {"key": "d", "fn": "add", "arg": 5, "deps": ["b", "c"]}
    ]}"#;
    let out = submit_graph(&cluster, "diamond.json", diamond);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("diamond.json: task 3 (\"d\"): unknown field \"arg\", expected one of \"key\", \"fn\""),
        "{err}"
    );
    let out = submit_graph(&cluster, "deps.json", r#"[{"fn": "inc", "deps": [true]}]"#);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("task 0: dependency 0 (true): expected a key"), "{}", stderr(&out));
}

#[test]
fn client_flags_work_after_the_subcommand_and_show_in_every_help() {
    let cluster = Cluster::scheduler_only();
    let file = cluster.file.to_str().unwrap();
    let out = actord().args(["ctl", "status", "--scheduler-file", file]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("scheduler  tcp://127.0.0.1:"), "{}", stdout(&out));
    let out = actord().args(["ctl", "jobs", "--scheduler-file", file, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    let out = actord().args(["ctl", "--json", "--scheduler-file", file, "status"]).output().unwrap();
    assert!(out.status.success(), "the old order still works: {}", stderr(&out));

    for (cmd, json) in [
        (&["ctl", "status"][..], true),
        (&["ctl", "tasks"][..], true),
        (&["ctl", "log-level"][..], true),
        (&["gather"][..], false),
        (&["submit"][..], false),
        (&["wait"][..], false),
        (&["console"][..], false),
    ] {
        let out = actord().args(cmd).arg("--help").output().unwrap();
        let help = stdout(&out);
        assert!(help.contains("--scheduler-file") && help.contains("--config"), "{cmd:?}: {help}");
        assert_eq!(help.contains("--json"), json, "{cmd:?}: {help}");
    }
}

#[test]
fn one_sentence_answers_go_to_stdout_and_bad_states_are_refused() {
    let cluster = Cluster::start(1, 1);
    let job = stdout(&cluster.run(&["submit", "--fn", "fail", "--args", "\"boom\""]));
    assert_eq!(cluster.run(&["gather", &job]).status.code(), Some(1));

    let out = cluster.run(&["ctl", "retry", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("retrying 1"), "the answer on stdout: {:?}", stdout(&out));
    assert!(!stderr(&out).contains("retrying"), "{}", stderr(&out));
    assert_eq!(cluster.run(&["gather", &job]).status.code(), Some(1));
    let out = cluster.run(&["ctl", "forget", &job]);
    assert!(out.status.success() && !stdout(&out).is_empty(), "{}", stderr(&out));
    let out = cluster.run(&["ctl", "log-level", "info"]);
    assert!(stdout(&out).contains("log level is now"), "{:?}", stdout(&out));

    let busy = stdout(&cluster.run(&["submit", "--fn", "sleep", "--args", "60000"]));
    let out = cluster.run(&["ctl", "tasks", &busy, "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "--state \"bogus\": expected one of waiting, ready, unschedulable, retrying, queued, running, finished, failed, canceled"
        ),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "no empty table: {}", stdout(&out));
    let out = cluster.run(&["ctl", "cancel", &busy]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).is_empty() && !stderr(&out).contains("cancel"), "{}", stderr(&out));
}

/// `pwd` of a command task, as it wrote it.
fn pwd_of(cluster: &Cluster, submit: Command, name: &str) -> (String, String) {
    let out_file = cluster.path(&format!("{name}.pwd"));
    let mut submit = submit;
    submit.args(["--", "sh", "-c"]).arg(format!("pwd > {}", out_file.display()));
    let out = submit.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    (job, std::fs::read_to_string(&out_file).unwrap().trim().to_string())
}

#[test]
fn command_tasks_run_in_their_jobs_directory_or_in_cwd() {
    let cluster = Cluster::start(1, 1);
    let (job, pwd) = pwd_of(&cluster, cluster.command(&["submit"]), "default");
    let expected = cluster.dir.path().join("actord-jobs").join(&job).canonicalize().unwrap();
    assert_eq!(Path::new(&pwd).canonicalize().unwrap(), expected);

    let elsewhere = cluster.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut submit = cluster.command(&["submit", "--cwd", "elsewhere"]);
    submit.current_dir(cluster.dir.path());
    let (_, pwd) = pwd_of(&cluster, submit, "cwd");
    assert_eq!(Path::new(&pwd).canonicalize().unwrap(), elsewhere.canonicalize().unwrap());

    // A relative program is the one where you submit.
    let script = elsewhere.join("run.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho ran > {}\n", cluster.path("ran").display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut submit = cluster.command(&["submit", "--", "./run.sh"]);
    let out = submit.current_dir(&elsewhere).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cluster.path("ran").exists());
}

#[test]
fn a_dead_schedulers_file_is_reported_at_once() {
    let mut cluster = Cluster::scheduler_only();
    let pid = cluster.scheduler.pid();
    cluster.kill_scheduler();
    for args in [&["ctl", "status"][..], &["gather", "00000000-0000-4000-8000-000000000000"][..]] {
        let start = Instant::now();
        let out = cluster.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        let file = cluster.file.display().to_string();
        assert!(err.contains(&format!("the scheduler that wrote {file} (pid {pid}, started")), "{err}");
        assert!(err.contains("is gone"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", start.elapsed());
    }
    // A scheduler started right after the client replaces the dead one's
    // file in time: the client waits for it, as `actord scheduler & actord
    // ctl status` in a script would.
    let mut status = Proc::spawn("status", cluster.command(&["ctl", "status"]), cluster.dir.path());
    let polling = || status.log_text().contains("waiting for the scheduler to answer");
    assert!(wait_until(Duration::from_secs(10), polling), "{}", status.log_text());
    cluster.restart_scheduler();
    let done = status.wait_exit(Duration::from_secs(30)).expect("ctl status returns");
    assert!(done.success(), "{}", status.log_text());
}

#[test]
fn ctl_shutdown_ends_the_whole_cluster_at_once() {
    let mut cluster = Cluster::start(2, 1);
    let mut alone = actord();
    alone.args(["worker", "--threads", "1", "--scheduler-file"]).arg(&cluster.file);
    let mut alone = Proc::spawn("alone", alone, cluster.dir.path());
    let out = cluster.run(&["wait", "--workers", "3", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pids = cluster.worker_pids();
    let out = cluster.run(&["ctl", "shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("workers and nannies exit"), "{}", stdout(&out));
    let start = Instant::now();
    let status = cluster.scheduler.wait_exit(Duration::from_secs(15)).expect("the scheduler exits");
    assert!(status.success(), "{}", cluster.scheduler.log_text());
    let nanny = cluster.nanny.as_mut().unwrap();
    let status = nanny.wait_exit(Duration::from_secs(15)).expect("the nanny exits, not reconnecting");
    assert!(status.success(), "{}", nanny.log_text());
    let status = alone.wait_exit(Duration::from_secs(15)).expect("a worker without a nanny exits");
    assert!(status.success(), "{}", alone.log_text());
    assert!(wait_until(Duration::from_secs(10), || pids.iter().all(|p| !pid_alive(*p))), "workers gone");
    assert!(start.elapsed() < Duration::from_secs(10), "at once, not after a death timeout");
}

#[test]
fn a_task_whose_worker_exceeds_the_memory_limit_says_so() {
    let mut cluster = Cluster::scheduler_with_config(Some("[nanny]\nmemory_poll = \"50ms\"\n"));
    cluster.spawn_nanny(1, 1, &["--memory-limit", "80MB"]);
    let out = cluster.run(&["wait", "--workers", "1", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hog = "import time; b = b'x' * 200_000_000; time.sleep(60)";
    let out = cluster.run(&["submit", "--max-worker-kills", "1", "--", "python3", "-c", hog]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("was running on 1 worker that died (w1); w1: it exceeded the memory limit"),
        "{err}"
    );
    assert!(err.contains("over the limit of"), "{err}");
}

#[test]
fn shutdown_drain_ends_the_cluster_too_unless_told_to_keep_the_workers() {
    let mut cluster = Cluster::start(1, 1);
    let out = cluster.run(&["ctl", "shutdown", "--drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("drained; the scheduler stopped"), "{}", stdout(&out));
    let nanny = cluster.nanny.as_mut().unwrap();
    let status = nanny.wait_exit(Duration::from_secs(15)).expect("the nanny exits after a drain");
    assert!(status.success(), "{}", nanny.log_text());

    let mut cluster = Cluster::start(1, 1);
    let pids = cluster.worker_pids();
    let out = cluster.run(&["ctl", "shutdown", "--keep-workers"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("its workers wait for the next one"), "{}", stdout(&out));
    assert!(cluster.scheduler.wait_exit(Duration::from_secs(15)).is_some(), "the scheduler stops");
    cluster.restart_scheduler();
    let out = cluster.run(&["wait", "--workers", "1", "--timeout", "30s"]);
    assert!(out.status.success(), "the same workers come back: {}", stderr(&out));
    assert_eq!(cluster.worker_pids(), pids);
}
