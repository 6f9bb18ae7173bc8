//! The tutorial job end to end on real processes: a scheduler, a nanny with
//! two workers, and `actord darts`, checked against CPython's own
//! `throw_darts` on the same inputs.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;

/// The tutorial's throw_darts and the Dask harness's make_inputs, run by
/// python3 on the inputs actord reports, for a bit-for-bit reference.
const REFERENCE_PY: &str = r#"
import json, random, sys
doc = json.load(open(sys.argv[1]))
def throw_darts(args):
    darts, seed = args
    random.seed(seed)
    count = 0
    for i in range(darts):
        x = random.random()
        y = random.random()
        if x * x + y * y < 1.0:
            count += 1
    return (count, darts)
def make_inputs(n_inputs, scale, input_seed):
    rng = random.Random(input_seed)
    floor = max(1, int(1000000 * scale))
    mean = 10000000.0 * scale
    return [(max(floor, int(rng.expovariate(1.0 / mean))), i + 192837465) for i in range(n_inputs)]
inputs = make_inputs(doc["n"], doc["scale"], doc["input_seed"])
print(json.dumps({"inputs": inputs, "results": [throw_darts(a) for a in inputs]}))
"#;

#[test]
fn darts_on_a_scheduler_and_a_nanny_with_two_workers_matches_cpython() {
    let mut cluster = Cluster::start(2, 1);
    let pids = cluster.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| pid_alive(*p)));

    let out_file = cluster.path("out.json");
    let out =
        cluster.run(&["darts", "--inputs", "20", "--scale", "0.01", "--out", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "darts failed: {}", stderr(&out));
    let printed_pi: f64 = stdout(&out).parse().expect("darts prints π on stdout");

    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(doc["n"], 20);
    assert_eq!(doc["workers"], 2);
    let reference = Command::new("python3")
        .arg("-c")
        .arg(REFERENCE_PY)
        .arg(&out_file)
        .output()
        .expect("python3 is needed for the CPython reference");
    assert!(reference.status.success(), "python3: {}", stderr(&reference));
    let reference: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    assert_eq!(doc["inputs"], reference["inputs"], "inputs differ from the Dask harness's");
    assert_eq!(doc["results"], reference["results"], "per-task results differ from CPython's");

    let in_circle: u64 = doc["results"].as_array().unwrap().iter().map(|r| r[0].as_u64().unwrap()).sum();
    let darts: u64 = doc["results"].as_array().unwrap().iter().map(|r| r[1].as_u64().unwrap()).sum();
    let pi = 4.0 * in_circle as f64 / darts as f64;
    assert_eq!(pi, doc["pi"].as_f64().unwrap());
    assert_eq!(pi, printed_pi);
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "implausible π {pi}");

    // Clean shutdown: SIGTERM to the nanny stops its workers; then the scheduler.
    let nanny = cluster.nanny.as_mut().unwrap();
    nanny.signal(Signal::SIGTERM);
    let status = nanny.wait_exit(Duration::from_secs(15)).expect("nanny exits on SIGTERM");
    assert!(status.success(), "nanny: {status}");
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|p| !pid_alive(*p))),
        "workers left behind"
    );
    cluster.scheduler.signal(Signal::SIGTERM);
    let status = cluster.scheduler.wait_exit(Duration::from_secs(15)).expect("scheduler exits on SIGTERM");
    assert!(status.success(), "scheduler: {status}");
    assert!(!cluster.file.exists(), "a cleanly stopped scheduler removes its file");
}

#[test]
fn local_runs_the_whole_cluster_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let out = actord()
        .args([
            "local",
            "--workers",
            "2",
            "--threads",
            "1",
            "darts",
            "--inputs",
            "10",
            "--scale",
            "0.01",
            "--out",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "local failed: {}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 10);
    assert_eq!(doc["workers"], 2);
    // The seed-1 inputs at scale 0.01 start with 14429 darts (CPython: make_inputs(10, 0.01, 1)[0]).
    assert_eq!(doc["inputs"][0], serde_json::json!([14429, 192837465]));
}

#[test]
fn map_submit_and_gather_from_separate_processes() {
    let cluster = Cluster::start(2, 2);
    let inputs = cluster.path("in.jsonl");
    std::fs::write(&inputs, (0..50).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let out = cluster.run(&["map", "inc", "--inputs", inputs.to_str().unwrap()]);
    assert!(out.status.success(), "map: {}", stderr(&out));
    let job = stdout(&out);
    assert_eq!(job.lines().count(), 1, "map prints the job id alone");

    let res = cluster.path("res.json");
    let out = cluster.run(&["gather", &job, "--out", res.to_str().unwrap()]);
    assert!(out.status.success(), "gather: {}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&res).unwrap()).unwrap();
    let want: Vec<i64> = (1..=50).collect();
    assert_eq!(doc["results"], serde_json::json!(want));
    assert_eq!(doc["failed"], 0);

    // cmd tasks as an array: each sees its own index.
    let marks = cluster.path("marks");
    let script = format!("echo \"$ACTORD_TASK $ACTORD_ATTEMPT\" >> {}", marks.display());
    let out = cluster.run(&["submit", "--array", "1-5", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "submit: {}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert!(out.status.success(), "gather cmd: {}", stderr(&out));
    let mut lines: Vec<String> = std::fs::read_to_string(&marks).unwrap().lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, vec!["1 1", "2 1", "3 1", "4 1", "5 1"]);

    // One fn task with JSON args.
    let out = cluster.run(&["submit", "--fn", "add", "--args", "[2, 40]"]);
    assert!(out.status.success(), "submit fn: {}", stderr(&out));
    let out = cluster.run(&["gather", &stdout(&out)]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"], serde_json::json!([42]));

    // A failing command: exit 1, the error carries the tail of stderr.
    let out = cluster.run(&["submit", "--", "sh", "-c", "echo disk full >&2; exit 3"]);
    let out = cluster.run(&["gather", &stdout(&out)]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = doc["failures"][0]["error"].as_str().unwrap();
    assert!(err.contains("exit code 3") && err.contains("disk full"), "{err}");
}

#[test]
fn clients_wait_for_a_scheduler_that_starts_later_and_name_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    // A client started first waits for the file...
    let mut waiter = actord();
    waiter.args(["wait", "--workers", "0", "--timeout", "30s", "--scheduler-file"]).arg(&file);
    let mut waiter = Proc::spawn("waiter", waiter, dir.path());
    let mut sched = actord();
    sched.args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"]).arg(&file);
    sched.arg("--journal").arg(dir.path().join("journal"));
    let mut sched = Proc::spawn("scheduler", sched, dir.path());
    let status = waiter.wait_exit(Duration::from_secs(30)).expect("wait returns");
    assert!(status.success(), "{}", waiter.log_text());

    // ...and a client facing a dead scheduler's file says whose it was.
    let contents: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    sched.signal(Signal::SIGKILL);
    sched.wait_exit(Duration::from_secs(10)).unwrap();
    let out = actord().args(["wait", "--timeout", "1s", "--scheduler-file"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let pid = contents["pid"].as_i64().unwrap().to_string();
    assert!(err.contains(&pid) && err.contains("is gone"), "{err}");

    // Missing file and bad flags are one-line errors.
    let out = actord()
        .args(["wait", "--timeout", "200ms", "--scheduler-file"])
        .arg(dir.path().join("none.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("did not appear"), "{}", stderr(&out));
    let out = actord().args(["wait", "--timeout", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid duration"), "{}", stderr(&out));
}

#[test]
fn ctl_status_and_jobs_show_the_scheduler_at_a_glance() {
    let cluster = Cluster::start(2, 1);
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "1"]);
    let job = stdout(&out);
    assert!(cluster.run(&["gather", &job]).status.success());
    let out = cluster.run(&["ctl", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["workers"].as_u64(), s["slots"].as_u64(), s["nannies"].as_u64()),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!((s["jobs"].as_u64(), s["tasks_finished"].as_u64()), (Some(1), Some(1)));
    assert!(s["address"].as_str().unwrap().starts_with("tcp://127.0.0.1:"));
    let out = cluster.run(&["ctl", "status"]);
    assert!(stdout(&out).contains("workers    2 (2 slots), 1 nannies"), "{}", stdout(&out));
    let out = cluster.run(&["ctl", "jobs", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs[0]["id"].as_str().map(|s| s.to_string()), Some(job.clone()));
    assert_eq!(jobs[0]["finished"], 1);
    let out = cluster.run(&["ctl", "jobs"]);
    assert!(stdout(&out).contains(&job) && stdout(&out).contains("done"), "{}", stdout(&out));
}

#[test]
fn ctl_shutdown_stops_the_scheduler_cleanly() {
    let mut cluster = Cluster::scheduler_only();
    let out = cluster.run(&["ctl", "shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = cluster.scheduler.wait_exit(Duration::from_secs(15)).expect("scheduler exits");
    assert!(status.success(), "{}", cluster.scheduler.log_text());
    assert!(!cluster.file.exists(), "a cleanly stopped scheduler removes its file");
}
