//! Workers in a Slurm allocation: their threads from `SLURM_CPUS_PER_TASK` /
//! `SLURM_CPUS_ON_NODE`, several per node as `srun -n N` starts them, and
//! walltimes: a worker whose allocation ends soon takes no task expected to
//! outlast it, drains before the end (finishing what it runs, handing back
//! what it queued) and leaves in time; a nanny does not start it again.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// The Slurm variables a worker reads.
const SLURM_VARS: [&str; 4] =
    ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_JOB_END_TIME", "SLURM_JOB_ID"];

/// A worker (`extra` flags) of `cluster`, in a Slurm environment of `env` only.
fn worker_with(cluster: &Cluster, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = cluster.command(&["worker"]);
    cmd.args(extra);
    for v in SLURM_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    Proc::spawn(name, cmd, cluster.dir.path())
}

fn worker(cluster: &Cluster, name: &str, extra: &[&str]) -> Proc {
    worker_with(cluster, name, extra, &[])
}

#[test]
fn workers_started_as_srun_tasks_take_their_threads_from_slurm() {
    let cluster = Cluster::scheduler_only();
    // As `srun -n 2 --cpus-per-task 2 actord worker`: the same command twice.
    let task_env = [("SLURM_CPUS_PER_TASK", "2"), ("SLURM_CPUS_ON_NODE", "4")];
    let a = worker_with(&cluster, "task0", &[], &task_env);
    let b = worker_with(&cluster, "task1", &[], &task_env);
    let c = worker_with(&cluster, "node", &[], &[("SLURM_CPUS_ON_NODE", "3")]);
    let out = cluster.run(&["wait", "--workers", "3", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.run(&["ctl", "workers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots: BTreeMap<i64, u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["pid"].as_i64().unwrap(), w["slots"].as_u64().unwrap()))
        .collect();
    assert_eq!(slots[&(a.pid() as i64)], 2);
    assert_eq!(slots[&(b.pid() as i64)], 2);
    assert_eq!(slots[&(c.pid() as i64)], 3, "SLURM_CPUS_ON_NODE without SLURM_CPUS_PER_TASK");
    assert!(a.log_text().contains("from=SLURM_CPUS_PER_TASK"), "the log says where: {}", a.log_text());
    assert!(c.log_text().contains("from=SLURM_CPUS_ON_NODE"), "{}", c.log_text());
    // They share the node's work dir: every command writes its own files there.
    let job = submit(&cluster, &["--array", "1-30", "--", "sh", "-c", "echo $ACTORD_TASK"]);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outs = std::fs::read_dir(cluster.path("actord-jobs").join(&job)).unwrap().count();
    assert!(outs >= 30, "each task's output kept apart: {outs} files");
}

/// `ctl workers --json`: worker name (`w1`) by pid.
fn ids_by_pid(cluster: &Cluster) -> BTreeMap<i32, String> {
    cluster.workers().into_iter().map(|(id, pid, _)| (pid, id)).collect()
}

/// Each task's marks, `start WORKER` and `end WORKER` lines, by file name.
fn marks(dir: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), text.lines().map(String::from).collect())
        })
        .collect()
}

fn submit(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.run(&[&["submit"], args].concat());
    assert!(out.status.success(), "submit: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_worker_near_its_walltime_takes_no_long_task_and_leaves_in_time() {
    let cluster = Cluster::scheduler_only();
    let started = Instant::now();
    // It drains 5 s before its end, while tasks of 3 s still fit: it is busy then.
    let mut short =
        worker(&cluster, "short", &["--threads", "1", "--lifetime", "20s", "--walltime-margin", "5s"]);
    let open = worker(&cluster, "open", &["--threads", "2"]);
    let out = cluster.run(&["wait", "--workers", "2", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = ids_by_pid(&cluster);
    let (short_id, open_id) = (ids[&short.pid()].clone(), ids[&open.pid()].clone());

    let dir = cluster.path("marks");
    std::fs::create_dir(&dir).unwrap();
    let script = format!(
        "echo start $ACTORD_WORKER >> {d}/$ACTORD_JOB.$ACTORD_TASK; sleep 1; echo end $ACTORD_WORKER >> {d}/$ACTORD_JOB.$ACTORD_TASK",
        d = dir.display()
    );
    // Short tasks to keep both busy through the drain, and one that asks for 30 s.
    let many = submit(&cluster, &["--array", "1-60", "--time-request", "3s", "--", "sh", "-c", &script]);
    let long = submit(&cluster, &["--time-request", "30s", "--", "sh", "-c", &script]);

    let status = short.wait_exit(Duration::from_secs(25)).expect("the short worker leaves");
    let left_after = started.elapsed();
    assert!(status.success(), "it left cleanly: {status}\n{}", short.log_text());
    assert!(left_after < Duration::from_secs(20), "it left before its walltime: {left_after:?}");
    assert!(left_after > Duration::from_secs(14), "it did not leave early: {left_after:?}");
    let log = short.log_text();
    assert!(log.contains("the allocation ends soon: draining"), "{log}");
    assert!(
        log.contains("draining: finishing running tasks") && log.contains("running=1"),
        "busy at the drain: {log}"
    );

    for job in [&many, &long] {
        let out = cluster.run(&["gather", job]);
        assert!(out.status.success(), "job {job} completed: {}", stderr(&out));
    }
    let marks = marks(&dir);
    assert_eq!(marks.len(), 61, "every task ran");
    let long_marks = &marks[&format!("{long}.0")];
    assert_eq!(
        long_marks,
        &[format!("start {open_id}"), format!("end {open_id}")],
        "the long task ran on the open worker"
    );
    let mut on_short = 0;
    for (task, lines) in &marks {
        let starts = lines.iter().filter(|l| l.starts_with("start")).count();
        let ends = lines.iter().filter(|l| l.starts_with("end")).count();
        assert_eq!(starts, ends, "task {task} was killed mid-way: {lines:?}");
        on_short += lines.iter().filter(|l| **l == format!("end {short_id}")).count();
    }
    assert!(on_short > 0, "the short worker ran tasks before it drained");
    drop(open);
}

#[test]
fn a_nanny_does_not_restart_workers_past_the_walltime() {
    let cluster = Cluster::scheduler_only();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_actord"));
    cmd.env("ACTORD_LOG", "info").env_remove("SLURM_JOB_ID").env("SLURM_JOB_END_TIME", {
        let end = std::time::SystemTime::now() + Duration::from_secs(8);
        let s = end.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        format!("{s:.3}")
    });
    cmd.args(["nanny", "--workers", "2", "--threads", "1", "--walltime-margin", "3s", "--scheduler-file"])
        .arg(&cluster.file);
    let started = Instant::now();
    let mut nanny = Proc::spawn("nanny", cmd, cluster.dir.path());
    let out = cluster.run(&["wait", "--workers", "2", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = nanny.wait_exit(Duration::from_secs(15)).expect("the nanny exits by itself");
    assert!(status.success(), "{status}\n{}", nanny.log_text());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the nanny and its workers left before the end: {took:?}");
    let log = nanny.log_text();
    assert!(log.contains("from=SLURM_JOB_END_TIME") || log.contains("$SLURM_JOB_END_TIME"), "{log}");
    assert!(!log.contains("worker exited; restarting it"), "no worker was started again:\n{log}");
    assert_eq!(log.matches("not restarting it").count(), 2, "{log}");
}
