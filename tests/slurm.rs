//! A real one-node Slurm (`scripts/slurm.sh`: munged, slurmctld, slurmd on
//! this machine): `sbatch examples/slurm/batch.sh` computes π and ends its
//! cluster; `salloc … interactive.sh` does the same; `restart.sh` resumes its job in the
//! allocation it queued after its own is cancelled, and cancels that one when a step fails; `actord alloc` submits an allocation for a backlog, whose
//! nanny's workers join and run it, and cancels it once idle. Skipped, saying
//! why, only where this machine cannot run Slurm (not root, apt-get fails).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Slurm daemons of one test, stopped by pid (and their jobs cancelled)
/// when dropped, also when the test fails.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
}

impl Slurm {
    /// Starts Slurm in `dir`; `None` (after saying why) where it cannot run here.
    fn start(dir: &Path) -> Option<Slurm> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED tests/slurm.rs: running slurmctld and slurmd needs root");
            return None;
        }
        let out = Command::new(format!("{ROOT}/scripts/slurm.sh"))
            .arg("start")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/slurm.sh runs");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            eprintln!("SKIPPED tests/slurm.rs: {}", err.trim());
            return None;
        }
        // Stop whatever did start before failing.
        let slurm = Slurm { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") };
        assert!(out.status.success(), "scripts/slurm.sh start failed: {err}");
        Some(slurm)
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(name);
        c.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    /// The ids of the jobs Slurm has (pending, running, completing).
    fn jobs(&self, name: Option<&str>) -> Vec<String> {
        let mut c = self.command("squeue");
        c.args(["--noheader", "--format=%i"]);
        if let Some(n) = name {
            c.arg(format!("--name={n}"));
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "squeue: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/scripts/slurm.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// Submits the batch example and checks that it printed π and ended cleanly.
fn batch_example(slurm: &Slurm, dir: &Path) {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out_file = dir.join("batch.out");
    let out = slurm
        .command("sbatch")
        .arg("--parsable")
        .arg(format!("--output={}", out_file.display()))
        .arg(format!("{ROOT}/examples/slurm/batch.sh"))
        .env("ACTORD", env!("CARGO_BIN_EXE_actord"))
        .env("SCRATCH", &scratch)
        .env("ACTORD_HOST", "127.0.0.1")
        .env("DARTS_INPUTS", "8")
        .env("DARTS_SCALE", "0.01")
        .env_remove("ACTORD_SCHEDULER_FILE")
        .env("ACTORD_DASHBOARD", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(out.status.success(), "sbatch: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let text = || std::fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(120), || !slurm.jobs(None).contains(&id)),
        "the batch job {id} never ended:\n{}",
        text()
    );
    let output = text();
    let pi: f64 = output
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no π in the job's output:\n{output}"));
    assert!((pi - std::f64::consts::PI).abs() < 0.05, "π ≈ {pi}:\n{output}");
    assert!(output.contains("done: results in"), "the script ran to its end:\n{output}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(scratch.join(format!("actord/{id}/darts.json"))).unwrap())
            .unwrap();
    assert_eq!(results["results"].as_array().map(|r| r.len()), Some(8), "{results}");
}

/// An actord client command against the scheduler file `file`.
fn client(file: &Path, args: &[&str]) -> std::process::Output {
    let mut c = actord();
    c.arg(args[0]).arg("--scheduler-file").arg(file).args(&args[1..]).stdin(Stdio::null());
    c.output().unwrap()
}

/// `sbatch examples/slurm/restart.sh` with its state in `DIR/SCRATCH`, `tasks` 1-second tasks;
/// the allocation's id.
fn sbatch_restart(slurm: &Slurm, dir: &Path, scratch: &str, tasks: &str) -> String {
    let scratch = dir.join(scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let out = slurm
        .command("sbatch")
        .arg("--parsable")
        .arg(format!("{ROOT}/examples/slurm/restart.sh"))
        .current_dir(dir)
        // The successors' sbatch reads it too (sbatch passes the environment on).
        .env("SBATCH_OUTPUT", dir.join("restart-%j.out"))
        .env("ACTORD", env!("CARGO_BIN_EXE_actord"))
        .env("SCRATCH", &scratch)
        .env("ACTORD_HOST", "127.0.0.1")
        .env("TASKS", tasks)
        .env("TASK_SECONDS", "1")
        .env_remove("ACTORD_SCHEDULER_FILE")
        .env("ACTORD_DASHBOARD", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(out.status.success(), "sbatch: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The restart example whose step fails while its allocation runs (a job
/// of no tasks is refused): it cancels its successor instead of resubmitting.
fn restart_example_failing(slurm: &Slurm, dir: &Path) {
    let first = sbatch_restart(slurm, dir, "scratch-failing", "0");
    let output = || std::fs::read_to_string(dir.join(format!("restart-{first}.out"))).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || slurm.jobs(None).is_empty()),
        "the failed allocation left jobs queued: {:?}\n{}",
        slurm.jobs(None),
        output()
    );
    let text = output();
    assert!(text.contains("failed; not resubmitting"), "{text}");
    let second: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("allocation {first} (1); successor "))?.parse().ok())
        .unwrap_or_else(|| panic!("no successor named:\n{text}"));
    // Cancelled while it waited for this one: it never ran.
    assert!(!dir.join(format!("restart-{second}.out")).exists(), "the successor ran:\n{text}");
}

/// The restart example: its first allocation is cancelled mid-job; the
/// successor it queued resumes the job from the journal in $SCRATCH.
fn restart_example(slurm: &Slurm, dir: &Path) {
    let state = dir.join("scratch-restart").join("actord-restart");
    let first = sbatch_restart(slurm, dir, "scratch-restart", "6");
    let output =
        |id: &str| std::fs::read_to_string(dir.join(format!("restart-{id}.out"))).unwrap_or_default();
    // Every allocation's output, for a failure's message.
    let all = || {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
        names.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("restart-")));
        names.sort();
        names
            .iter()
            .map(|p| format!("== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default()))
            .collect::<String>()
    };
    let finished = || {
        let Ok(job) = std::fs::read_to_string(state.join("job")) else { return 0 };
        let out = client(&state.join("scheduler.json"), &["ctl", "job", job.trim(), "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["info"]["finished"].as_u64().unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(90), || finished() >= 2), "no progress:\n{}", output(&first));
    let done_before = finished();
    let out = slurm.command("scancel").arg(&first).output().unwrap();
    assert!(out.status.success(), "scancel: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(120), || slurm.jobs(None).is_empty()),
        "the successor never finished (or left its own successor queued): {:?}\n{}",
        slurm.jobs(None),
        all()
    );
    let second: String = output(&first)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("allocation {first} (1); successor ")))
        .unwrap_or_else(|| panic!("no successor named:\n{}", output(&first)))
        .to_string();
    let text = output(&second);
    assert!(text.contains("done: results in"), "the successor finished the job:\n{}", all());
    let resumed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("state")?.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `ctl job` state line:\n{text}"));
    assert!(
        resumed >= done_before,
        "it resumed with {resumed} tasks done, {done_before} were before:\n{text}"
    );
    let results: Value = serde_json::from_slice(&std::fs::read(state.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["results"].as_array().map(|r| r.len()), Some(6), "{results}");
    assert_eq!(results["failures"].as_array().map(|f| f.len()), Some(0), "{results}");
}

/// The interactive steps, run by `salloc` as a user would type them in one.
fn interactive_example(slurm: &Slurm, dir: &Path) {
    let work = dir.join("interactive");
    std::fs::create_dir_all(work.join("scratch")).unwrap();
    let out = slurm
        .command("salloc")
        .args(["-n", "2", "bash", &format!("{ROOT}/examples/slurm/interactive.sh")])
        .current_dir(&work)
        .env("ACTORD", env!("CARGO_BIN_EXE_actord"))
        .env("SCRATCH", work.join("scratch"))
        .env("ACTORD_HOST", "127.0.0.1")
        .env("DARTS_INPUTS", "4")
        .env("DARTS_SCALE", "0.01")
        .env_remove("ACTORD_SCHEDULER_FILE")
        .env("ACTORD_DASHBOARD", "127.0.0.1:0")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "salloc: {text}");
    assert!(text.contains("dask test completed"), "{text}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(work.join("darts_output.json")).unwrap()).unwrap();
    let pi = results["pi"].as_f64().unwrap_or_else(|| panic!("{results}"));
    assert!((pi - std::f64::consts::PI).abs() < 0.1, "π ≈ {pi}");
}

fn status(cluster: &Cluster) -> Value {
    let out = cluster.run(&["ctl", "status", "--json"]);
    assert!(out.status.success(), "ctl status: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `actord alloc` against the real Slurm: a backlog brings an allocation
/// whose workers run the job; idle, the allocation is cancelled.
fn allocator(slurm: &Slurm, dir: &Path) {
    let cluster = Cluster::scheduler_only();
    let job = {
        let out = cluster.run(&["submit", "--array", "1-4", "--", "sh", "-c", "sleep 0.3"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let state = dir.join("alloc-state.json");
    let mut cmd = cluster.command(&[
        "alloc",
        "--max-workers",
        "2",
        "--workers-per-alloc",
        "2",
        "--idle-timeout",
        "2s",
        "--interval",
        "300ms",
        "--walltime",
        "5m",
    ]);
    cmd.arg("--state").arg(&state).arg(format!("--sbatch-arg=--output={}/alloc-%j.out", dir.display()));
    cmd.env("SLURM_CONF", &slurm.conf);
    let alloc = Proc::spawn("alloc", cmd, dir);
    let log = || format!("{}\n{}", alloc.log_text(), std::fs::read_to_string(&state).unwrap_or_default());

    assert!(
        wait_until(Duration::from_secs(60), || status(&cluster)["workers"] == 2),
        "the allocation's workers never joined: {}",
        log()
    );
    let held = slurm.jobs(Some("actord-alloc"));
    assert_eq!(held.len(), 1, "one allocation: {held:?}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["allocs"][0]["id"], held[0].as_str(), "the state file holds it: {saved}");

    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "the job completes on the allocation: {}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(60), || slurm.jobs(Some("actord-alloc")).is_empty()),
        "idle, the allocation was never cancelled: {}",
        log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || status(&cluster)["workers"] == 0),
        "its workers left with it"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        saved["allocs"].as_array().is_some_and(|a| a.is_empty())
    }));
    assert!(alloc.log_text().contains("cancelled allocations"), "{}", log());
}

#[test]
fn batch_example_and_allocator_on_a_real_slurm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(slurm) = Slurm::start(&dir.path().join("slurm")) else { return };
    batch_example(&slurm, dir.path());
    interactive_example(&slurm, dir.path());
    allocator(&slurm, dir.path());
    restart_example_failing(&slurm, dir.path());
    restart_example(&slurm, dir.path());
}
