//! Large results in the results store, with real processes: written by
//! workers, read by consumers and clients (from the store, or streamed
//! through the scheduler), surviving kill -9 of workers and the scheduler;
//! damage detected and recomputed; a full store a clear task error.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// 3 MiB: over the default `worker.inline_result` (1 MiB).
const BIG: usize = 3 << 20;
const CONFIG: &str = "[scheduler]\nreclaim_grace = \"1s\"\n";

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

fn submit_graph(cluster: &Cluster, name: &str, graph: &Value) -> String {
    let path = cluster.path(name);
    std::fs::write(&path, graph.to_string()).unwrap();
    let out = cluster.run(&["submit", "--graph", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn gather(cluster: &Cluster, job: &str) -> Value {
    let out = cluster.run(&["gather", job]);
    assert!(out.status.success(), "gather {job}: {}", stderr(&out));
    json_out(&out)
}

/// `[sha256 hex, size]` of `blob [BIG, seed]`, as `digest` answers.
fn digest_of_blob(seed: u64) -> Value {
    let data = actord::functions::blob_bytes(BIG, seed);
    json!([actord::results_store::checksum(&data), BIG])
}

/// (key, attempts) of every task of a job.
fn attempts(cluster: &Cluster, job: &str) -> Vec<(String, u64)> {
    let out = cluster.run(&["ctl", "tasks", job, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_out(&out);
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["key"].as_str().unwrap_or_default().to_string(), t["attempts"].as_u64().unwrap()))
        .collect()
}

fn store_file(cluster: &Cluster, job: &str, idx: u32, attempt: u32) -> std::path::PathBuf {
    cluster.path("journal").join("results").join(job).join(format!("{idx}-{attempt}.bin"))
}

/// kill -9 of both workers; returns once the nanny has replaced them.
fn kill_workers(cluster: &Cluster) {
    let pids = cluster.worker_pids();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || {
        let now = cluster.worker_pids();
        now.len() == 2 && now.iter().all(|p| !pids.contains(p))
    }));
}

fn producers(n: u64) -> Value {
    Value::Array((0..n).map(|i| json!({"key": format!("p{i}"), "fn": "blob", "args": [BIG, i]})).collect())
}

fn readers(of: &str, keys: &[&str]) -> Value {
    Value::Array(
        keys.iter()
            .map(|k| json!({"key": format!("r{}", &k[1..]), "fn": "digest", "deps": [{"job": of, "key": k}]}))
            .collect(),
    )
}

#[test]
fn stored_results_survive_kills_and_damage_is_recomputed() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let a = submit_graph(&cluster, "a.json", &producers(4));
    let done = gather(&cluster, &a);
    assert_eq!(done["finished"], 4, "{done}");
    // The bytes came back through the store, intact.
    let first: Vec<u8> =
        done["results"][0].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
    assert_eq!(first, actord::functions::blob_bytes(BIG, 0));
    for i in 0..4 {
        // (The result as msgpack: a `bin` header, then the bytes.)
        let f = store_file(&cluster, &a, i, 1);
        assert_eq!(std::fs::metadata(&f).map(|m| m.len()).ok(), Some(BIG as u64 + 5), "{}", f.display());
    }
    let journal = stdout(&cluster.run(&["ctl", "journal"]));
    assert!(journal.contains("4 stored results, 12.0 MiB"), "{journal}");

    // kill -9 of the workers that produced them: the consumers read the store.
    kill_workers(&cluster);
    let b = submit_graph(&cluster, "b.json", &readers(&a, &["p0", "p1", "p2", "p3"]));
    let got = gather(&cluster, &b);
    assert_eq!(got["results"], json!((0..4).map(digest_of_blob).collect::<Vec<_>>()));
    assert!(attempts(&cluster, &a).iter().all(|(_, n)| *n == 1), "{:?}", attempts(&cluster, &a));

    // A flipped byte, a deleted file: detected by the reader, recomputed.
    let f1 = store_file(&cluster, &a, 1, 1);
    let mut bytes = std::fs::read(&f1).unwrap();
    bytes[BIG / 2] ^= 0x40;
    std::fs::write(&f1, &bytes).unwrap();
    std::fs::remove_file(store_file(&cluster, &a, 2, 1)).unwrap();
    let c = submit_graph(&cluster, "c.json", &readers(&a, &["p1", "p2"]));
    let got = gather(&cluster, &c);
    assert_eq!(got["results"], json!([digest_of_blob(1), digest_of_blob(2)]));
    let tries = attempts(&cluster, &a);
    assert_eq!(tries.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![1, 2, 2, 1], "{tries:?}");
    let log = cluster.scheduler.log_text();
    assert!(log.contains(&format!("stored result of {}@1 is corrupt/missing: re-running", &a[..8])), "{log}");
    assert!(log.contains(&format!("stored result of {}@2 is corrupt/missing: re-running", &a[..8])), "{log}");

    // kill -9 of the scheduler: the references are journaled, nothing runs again.
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let again = gather(&cluster, &b);
    assert_eq!(again["results"], got_b_digests());
    assert_eq!(attempts(&cluster, &a).iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![1, 2, 2, 1]);

    // Forget removes the job's files.
    let out = cluster.run(&["ctl", "forget", &a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = cluster.path("journal").join("results").join(&a);
    assert!(wait_until(Duration::from_secs(10), || !dir.exists()), "{} still there", dir.display());
}

#[test]
fn a_client_that_finds_a_stored_result_damaged_has_it_recomputed() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let a = submit_graph(&cluster, "a.json", &producers(2));
    assert_eq!(gather(&cluster, &a)["finished"], 2);
    // A flipped byte in one, the other deleted: `gather` (the Rust client)
    // finds both, the scheduler reads them too and runs their tasks again.
    let f0 = store_file(&cluster, &a, 0, 1);
    let mut bytes = std::fs::read(&f0).unwrap();
    bytes[BIG / 3] ^= 0x01;
    std::fs::write(&f0, &bytes).unwrap();
    std::fs::remove_file(store_file(&cluster, &a, 1, 1)).unwrap();
    let got = gather(&cluster, &a);
    for i in 0..2 {
        let data: Vec<u8> =
            got["results"][i].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert!(data == actord::functions::blob_bytes(BIG, i as u64), "result {i} is not the blob");
    }
    assert_eq!(attempts(&cluster, &a).iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![2, 2]);
    let log = cluster.scheduler.log_text();
    for i in 0..2 {
        let line = format!("stored result of {}@{i} is corrupt/missing: re-running", &a[..8]);
        assert!(log.lines().any(|l| l.contains(&line) && l.contains("a client")), "{log}");
    }
    // Intact files now: read as they are, nothing runs again.
    assert_eq!(gather(&cluster, &a)["finished"], 2);
    assert_eq!(attempts(&cluster, &a).iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![2, 2]);
}

#[test]
fn results_synced_after_they_are_reported_survive_kill_9_of_their_workers() {
    let config = format!("{CONFIG}[worker]\nresult_sync = \"after\"\n");
    let cluster = Cluster::start_with_config(2, 1, &config);
    let a = submit_graph(&cluster, "a.json", &producers(3));
    assert_eq!(gather(&cluster, &a)["finished"], 3);
    kill_workers(&cluster);
    let b = submit_graph(&cluster, "b.json", &readers(&a, &["p0", "p1", "p2"]));
    assert_eq!(gather(&cluster, &b)["results"], json!((0..3).map(digest_of_blob).collect::<Vec<_>>()));
    assert!(attempts(&cluster, &a).iter().all(|(_, n)| *n == 1), "{:?}", attempts(&cluster, &a));
    // Nothing left under a temporary name.
    let dir = cluster.path("journal").join("results").join(&a);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert!(names.iter().all(|n| n.ends_with("-1.bin")) && names.len() == 3, "{names:?}");

    // A value it does not know is refused at start, saying so.
    std::fs::write(cluster.path("bad.toml"), "[worker]\nresult_sync = \"sometimes\"\n").unwrap();
    let out = cluster.run(&["worker", "--config", cluster.path("bad.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("worker.result_sync = \"sometimes\""), "{}", stderr(&out));
}

fn got_b_digests() -> Value {
    json!((0..4).map(digest_of_blob).collect::<Vec<_>>())
}

#[test]
fn a_scheduler_killed_mid_job_recomputes_nothing() {
    let mut cluster = Cluster::start_with_config(2, 1, CONFIG);
    let graph = json!([
        {"key": "p0", "fn": "blob", "args": [BIG, 0]},
        {"key": "gate", "fn": "sleep", "args": 3000},
        {"key": "r", "fn": "digest", "deps": ["p0", "gate"]},
    ]);
    let job = submit_graph(&cluster, "j.json", &graph);
    assert!(wait_until(Duration::from_secs(20), || store_file(&cluster, &job, 0, 1).exists()));
    assert!(wait_until(Duration::from_secs(20), || {
        let out = cluster.run(&["ctl", "tasks", &job, "--json"]);
        json_out(&out)[0]["state"] == "finished"
    }));
    cluster.kill_scheduler();
    cluster.restart_scheduler();
    let got = gather(&cluster, &job);
    assert_eq!(got["results"][2], digest_of_blob(0), "{}", got["failures"]);
    assert_eq!(attempts(&cluster, &job).iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![1, 1, 1]);
}

#[test]
fn a_host_without_the_store_streams_through_the_scheduler() {
    let cluster = Cluster::scheduler_with_config(Some(CONFIG));
    let mut w1 = actord();
    w1.args(["worker", "--threads", "1", "--scheduler-file"]).arg(&cluster.file);
    let mut w1 = Proc::spawn("worker-1", w1, cluster.dir.path());
    let a = submit_graph(&cluster, "a.json", &producers(1));
    assert_eq!(gather(&cluster, &a)["finished"], 1);
    w1.signal(nix::sys::signal::Signal::SIGKILL);
    w1.wait_exit(Duration::from_secs(10)).expect("worker dies");

    // A worker that sees another (empty) directory as its store.
    let elsewhere = cluster.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut w2 = actord();
    w2.args(["worker", "--threads", "1", "--results-dir"])
        .arg(&elsewhere)
        .arg("--scheduler-file")
        .arg(&cluster.file);
    let w2 = Proc::spawn("worker-2", w2, cluster.dir.path());
    let b = submit_graph(&cluster, "b.json", &readers(&a, &["p0"]));
    assert_eq!(gather(&cluster, &b)["results"], json!([digest_of_blob(0)]), "{}", w2.log_text());
    assert!(w2.log_text().contains("fetching it through the scheduler"), "{}", w2.log_text());

    // A client that cannot see it either.
    let out = cluster
        .command(&["gather", &a, "--key", "p0"])
        .env("ACTORD_RESULTS_DIR", &elsewhere)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Vec<u8> = json_out(&out).as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
    assert!(got == actord::functions::blob_bytes(BIG, 0), "streamed bytes differ");
}

#[test]
fn a_full_store_fails_the_task_saying_so() {
    use std::os::unix::process::CommandExt;
    let cluster = Cluster::scheduler_with_config(Some(CONFIG));
    let mut w = actord();
    w.args(["worker", "--threads", "1", "--scheduler-file"]).arg(&cluster.file);
    // A file-size limit of 2 MiB stands for a full disk (EFBIG as ENOSPC).
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        w.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 2 << 20, rlim_max: 2 << 20 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let w = Proc::spawn("worker", w, cluster.dir.path());
    let a = submit_graph(&cluster, "a.json", &producers(1));
    let out = cluster.run(&["gather", &a]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = json_out(&out);
    let error = doc["failures"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.starts_with("results store full: cannot write the result of"), "{error}\n{}", w.log_text());
    // The worker lives on, and no temporary file is left behind.
    assert!(pid_alive(w.pid()));
    let dir = cluster.path("journal").join("results").join(&a);
    let left: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
