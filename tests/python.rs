//! `py` tasks on a real cluster: Python callables run in persistent executors
//! (one per worker slot), built and gathered from Python over the wire
//! protocol (tests/python/rawclient.py), with the project's venv.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The venv's interpreter (msgpack, cloudpickle), made by scripts/venv.sh.
fn venv_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("bash").arg(Path::new(ROOT).join("scripts/venv.sh")).output().unwrap();
        assert!(out.status.success(), "scripts/venv.sh failed: {}", stderr(&out));
        PathBuf::from(stdout(&out)).join("bin/python")
    })
}

/// A cluster of `workers` × 1 slot whose executors run `python`.
fn cluster(workers: u32, python: &Path, config: Option<&str>) -> Cluster {
    let mut c = Cluster::scheduler_with_config(config);
    c.spawn_nanny(workers, 1, &["--python", python.to_str().unwrap()]);
    let out = c.run(&["wait", "--workers", &workers.to_string(), "--timeout", "30s"]);
    assert!(out.status.success(), "workers never registered: {}", stderr(&out));
    c
}

/// Runs a Python script against the cluster (`r` is a connected `Raw`,
/// `D` the scratch directory) and returns the JSON it prints last.
fn py(c: &Cluster, script: &str) -> Value {
    let mut child = Command::new(venv_python());
    let path = format!("{ROOT}/tests/python:{ROOT}/python");
    let prelude =
        "import sys, json, os, time\nfrom rawclient import Raw, Dep\nr = Raw(sys.argv[1])\nD = sys.argv[2]\n";
    child.env("PYTHONPATH", path).arg("-c").arg(format!("{prelude}{script}")).arg(&c.file).arg(c.dir.path());
    let out = child.output().unwrap();
    assert!(out.status.success(), "script failed: {}\n{}", stderr(&out), stdout(&out));
    let text = stdout(&out);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn error_of(outcome: &Value) -> String {
    assert_eq!(outcome[0], "err", "{outcome}");
    outcome[1].as_str().unwrap().to_string()
}

#[test]
fn a_py_map_a_chain_and_failures_give_the_right_outcomes() {
    let c = cluster(2, venv_python(), None);
    let v = py(
        &c,
        r#"
def inc(x): return x + 1
def add(*xs, **kw): return sum(xs) + sum(kw.values())
def shout(x):
    print("hello from", x); print("to stderr", file=sys.stderr); return {"x": x, "s": {x, x + 1}}
class Bad(Exception): pass
def fail(x): raise Bad(f"bad input {x}")
def unpicklable(x):
    import threading
    return threading.Lock()
def slow(x): time.sleep(30)
def env(x): return [os.environ[k] for k in ("ACTORD_JOB", "ACTORD_TASK", "ACTORD_ATTEMPT", "ACTORD_WORKER")]
n = 300
tasks = [{"func": 0, "args": (i,)} for i in range(n)]
tasks.append({"func": 1, "args": (Dep(0), [Dep(1)][0]), "kwargs": {"k": Dep(2)}, "deps": [0, 1, 2]})
tasks.append({"func": 2, "args": (7,)})
tasks.append({"func": 3, "args": (5,)})
tasks.append({"func": 4, "args": (1,)})
tasks.append({"func": 5, "args": (1,), "time_limit_ms": 300})
chain0 = len(tasks)
tasks.append({"func": 0, "args": (0,)})
for k in range(1, 100):
    tasks.append({"func": 0, "args": (Dep(0),), "deps": [chain0 + k - 1]})
tasks.append({"func": 6, "args": (0,), "key": "the-env"})
job = r.submit(tasks, [inc, add, shout, fail, unpicklable, slow, env])
res = r.gather(job)
print(json.dumps({"job": job.hex(), "res": res}, default=repr))
"#,
    );
    let res = v["res"].as_array().unwrap();
    assert_eq!(res.len(), 300 + 5 + 100 + 1);
    for (i, o) in res[..300].iter().enumerate() {
        assert_eq!(o[0], "ok", "{o}");
        assert_eq!(o[1], i as i64 + 1);
    }
    // deps are substituted wherever Dep(i) stands: 1 + 2 + 3
    assert_eq!(res[300][1], 6, "{}", res[300]);
    assert_eq!(res[301][0], "ok", "{}", res[301]);
    let fail = error_of(&res[302]);
    assert!(fail.starts_with("Bad: bad input 5\n\nTraceback"), "{fail}");
    assert!(fail.contains("in fail"), "{fail}");
    assert!(!fail.contains("executor.py"), "the executor's own frames are left out: {fail}");
    assert_eq!(res[302][2], "Bad('bad input 5')", "the exception comes back pickled");
    let unp = error_of(&res[303]);
    assert!(unp.contains("cannot be pickled"), "{unp}");
    assert!(error_of(&res[304]).contains("time limit exceeded (300 ms)"), "{}", res[304]);
    assert_eq!(res[404][1], 100, "the chain's last link");
    let env = &res[405][1];
    assert_eq!(env[1], "the-env", "{env}");
    assert_eq!(env[2], "1", "{env}");
    assert!(env[3].as_str().unwrap().starts_with('w'), "{env}");
    assert_eq!(env[0].as_str().unwrap().replace('-', ""), v["job"].as_str().unwrap(), "{env}");
    // The printing task's stdout and stderr are in the job directory.
    let job = &v["job"].as_str().unwrap();
    let uuid = format!("{}-{}-{}-{}-{}", &job[0..8], &job[8..12], &job[12..16], &job[16..20], &job[20..]);
    let dir = c.path("actord-jobs").join(uuid);
    let out = std::fs::read_to_string(dir.join("301.1.out")).unwrap_or_else(|e| panic!("{e} in {dir:?}"));
    assert_eq!(out, "hello from 7\n");
    assert_eq!(std::fs::read_to_string(dir.join("301.1.err")).unwrap(), "to stderr\n");
    assert!(!dir.join("0.1.out").exists(), "no file for a task that printed nothing");
}

#[test]
fn an_executor_killed_mid_task_runs_the_task_again_and_a_segfault_fails_after_three_kills() {
    let c = cluster(2, venv_python(), None);
    let v = py(
        &c,
        r#"
def victim(d):
    mark = os.path.join(d, "started")
    if os.path.exists(mark):
        return "second run"
    with open(mark + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(mark + ".tmp", mark)
    time.sleep(60)
    return "first run"
job = r.submit([{"func": 0, "args": (D,)}], [victim])
print(json.dumps({"job": job.hex()}))
"#,
    );
    let mark = c.path("started");
    assert!(wait_until(Duration::from_secs(60), || mark.exists()), "the task never started");
    let pid: i32 = std::fs::read_to_string(&mark).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let job = v["job"].as_str().unwrap();
    let again = py(&c, &format!("print(json.dumps(r.gather(bytes.fromhex('{job}'))))"));
    assert_eq!(again[0][0], "ok", "{again}");
    assert_eq!(again[0][1], "second run");
    assert_eq!(again[0][2], 2, "the killed attempt counts");

    let v = py(
        &c,
        r#"
def segv(x):
    import ctypes
    print("about to crash", file=sys.stderr, flush=True)
    ctypes.string_at(0)
def fine(x): return x * 2
job = r.submit([{"func": 0, "args": (1,)}] + [{"func": 1, "args": (i,)} for i in range(20)], [segv, fine])
print(json.dumps(r.gather(job)))
"#,
    );
    let error = error_of(&v[0]);
    assert!(error.contains("killed its Python executor 3 times"), "{error}");
    assert!(error.contains("SIGSEGV"), "{error}");
    assert!(error.contains("about to crash"), "the executor's stderr tail: {error}");
    assert_eq!(v[0][3], 3, "three attempts");
    for (i, o) in v.as_array().unwrap()[1..].iter().enumerate() {
        assert_eq!(o[1], i as i64 * 2, "other tasks are unaffected: {o}");
    }
}

#[test]
fn a_missing_interpreter_or_one_that_cannot_import_actord_is_a_clear_task_error() {
    let c = cluster(1, Path::new("/nonexistent/bin/python3"), None);
    let v = py(&c, "job = r.submit([{'func': 0, 'args': (1,)}], [abs])\nprint(json.dumps(r.gather(job)))");
    let error = error_of(&v[0]);
    assert!(error.contains("@0: cannot start the Python executor (/nonexistent/bin/python3"), "{error}");
    assert!(error.contains("--python"), "{error}");
    drop(c);

    // An interpreter without the package (no site-packages, PYTHONPATH ignored).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("bare-python");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} -I -S \"$@\"\n", venv_python().display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = cluster(1, &wrapper, None);
    let v = py(&c, "job = r.submit([{'func': 0, 'args': (1,)}], [abs])\nprint(json.dumps(r.gather(job)))");
    let error = error_of(&v[0]);
    assert!(error.contains("exited with code 1 before it was ready"), "{error}");
    assert!(error.contains("No module named 'actord'"), "{error}");
}

#[test]
fn a_py_result_over_max_result_or_a_function_that_cannot_be_unpickled_is_a_clear_task_error() {
    let c = cluster(1, venv_python(), Some("[worker]\nmax_result = \"4KiB\"\n"));
    let v = py(
        &c,
        r#"
def big(n): return b"x" * n
job = r.submit([{"func": 0, "args": (100,)}, {"func": 0, "args": (100_000,)}], [big])
print(json.dumps(r.gather(job), default=repr))
"#,
    );
    assert_eq!(v[0][0], "ok", "{v}");
    let error = error_of(&v[1]);
    assert!(error.contains("over the limit of 4.0 KiB (worker.max_result)"), "{error}");

    let v = py(
        &c,
        "job = r.submit([{'func': 0}, {'func': 0}], [b'not a pickle'])\nprint(json.dumps(r.gather(job)))",
    );
    for o in v.as_array().unwrap() {
        let error = error_of(o);
        assert!(
            error.starts_with("FunctionNotLoadable: the task's function cannot be unpickled here"),
            "{error}"
        );
    }
}

#[test]
fn a_canceled_py_task_stops_its_executor_and_the_next_task_gets_a_new_one() {
    let c = cluster(1, venv_python(), None);
    let v = py(
        &c,
        r#"
import uuid
def sleeper(d):
    with open(os.path.join(d, "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(d, "pid.tmp"), os.path.join(d, "pid"))
    time.sleep(60)
job = r.submit([{"func": 0, "args": (D,)}], [sleeper])
print(json.dumps({"job": job.hex(), "uuid": str(uuid.UUID(bytes=job))}))
"#,
    );
    let mark = c.path("pid");
    assert!(wait_until(Duration::from_secs(60), || mark.exists()), "the task never started");
    let pid: i32 = std::fs::read_to_string(&mark).unwrap().trim().parse().unwrap();
    let out = c.run(&["ctl", "cancel", v["uuid"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = v["job"].as_str().unwrap();
    let res = py(&c, &format!("print(json.dumps(r.gather(bytes.fromhex('{job}'))))"));
    assert!(error_of(&res[0]).contains("cancel"), "{res}");
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)), "the executor still runs");
    // Scratch files of executors of workers gone from this host are removed
    // when an executor starts (the pid is above any pid_max).
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let stale = c.path("actord-jobs/.executors").join(format!("{host}-4194305-0.err"));
    std::fs::write(&stale, "old").unwrap();
    let next = py(&c, "job = r.submit([{'func': 0, 'args': (2,)}], [lambda x: os.getpid()])\nprint(json.dumps(r.gather(job)))");
    assert_eq!(next[0][0], "ok", "{next}");
    assert_ne!(next[0][1], pid, "a new executor");
    assert!(!stale.exists(), "stale scratch file left behind");

    // An executor that dies between tasks is replaced without counting
    // against the next task (one kill would fail it here).
    let idle = next[0][1].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(idle), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(idle)), "the executor survived kill -9");
    let script =
        "job = r.submit([{'func': 0, 'args': (3,), 'max_worker_kills': 1}], [lambda x: os.getpid()])\n\
                  print(json.dumps(r.gather(job)))";
    let after = py(&c, script);
    assert_eq!(after[0][0], "ok", "{after}");
    assert_eq!(after[0][2], 1, "one attempt: {after}");
    assert_ne!(after[0][1], idle);
}

#[test]
fn a_restarted_scheduler_replays_the_function_table_and_the_py_job_completes_once() {
    let mut c = cluster(2, venv_python(), Some("[scheduler]\nreclaim_grace = \"1s\"\n"));
    let v = py(
        &c,
        r#"
def step(d, i):
    with open(os.path.join(d, "marks"), "a") as f:
        f.write(f"start {i}\n")
    time.sleep(0.1)
    with open(os.path.join(d, "marks"), "a") as f:
        f.write(f"end {i} {os.getpid()}\n")
    return i * i
job = r.submit([{"func": 0, "args": (D, i)} for i in range(40)], [step])
print(json.dumps({"job": job.hex()}))
"#,
    );
    let marks = c.path("marks");
    let ends = |s: &str| s.lines().filter(|l| l.starts_with("end ")).count();
    assert!(
        wait_until(Duration::from_secs(60), || ends(&std::fs::read_to_string(&marks).unwrap_or_default())
            >= 6),
        "tasks never finished"
    );
    c.kill_scheduler();
    c.restart_scheduler();
    // A new worker process knows no functions: the tasks it runs need the
    // function table the new scheduler replayed from its journal.
    let out = c.run(&["wait", "--workers", "2", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before: std::collections::HashSet<String> = pids_of(&std::fs::read_to_string(&marks).unwrap());
    let victim = c.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let job = v["job"].as_str().unwrap();
    let res = py(&c, &format!("print(json.dumps(r.gather(bytes.fromhex('{job}'))))"));
    let res = res.as_array().unwrap();
    assert_eq!(res.len(), 40);
    for (i, o) in res.iter().enumerate() {
        assert_eq!(o[0], "ok", "{o}");
        assert_eq!(o[1], (i * i) as i64);
    }
    let text = std::fs::read_to_string(&marks).unwrap();
    for i in 0..40 {
        let n = text.lines().filter(|l| l.starts_with(&format!("end {i} "))).count();
        assert_eq!(n, 1, "task {i} finished {n} times:\n{text}");
    }
    let after = pids_of(&text);
    assert!(after.len() > before.len(), "no task ran in the restarted worker:\n{text}");
}

/// The executor pids in the `end` marks.
fn pids_of(marks: &str) -> std::collections::HashSet<String> {
    marks
        .lines()
        .filter_map(|l| l.strip_prefix("end "))
        .filter_map(|l| l.split(' ').nth(1))
        .map(String::from)
        .collect()
}

#[test]
fn an_executor_that_lost_the_objects_it_held_is_sent_them_and_the_task_runs() {
    // A real executor whose object cache forgets everything: each task told
    // to use an object it holds answers that it has none.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("forgetful-python");
    let patch = "import sys, actord.executor as e; e._Objects.get = lambda self, p, s: None; \
                 sys.exit(e.main(sys.argv[1:]))";
    let script = format!("#!/bin/sh\nshift 2\nexec {} -c '{patch}' \"$@\"\n", venv_python().display());
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = cluster(1, &wrapper, None);
    let v = py(
        &c,
        r#"
def big(n): return b"x" * n
job = r.submit([{"func": 0, "args": (2 << 20,)}, {"func": 1, "args": (Dep(0),), "deps": [0]}], [big, len])
print(json.dumps(r.gather(job)))
"#,
    );
    assert_eq!(v[0][0], "stored", "{v}");
    assert_eq!(v[1][0], "ok", "{v}");
    assert_eq!(v[1][1], 2 << 20, "{v}");
    assert_eq!(v[1][2], 1, "one attempt: the input was sent, not the task run again: {v}");
    let log = c.nanny.as_ref().unwrap().log_text();
    assert!(log.contains("its executor lacks inputs it held: sending them"), "{log}");
}
