//! actord across several hosts, each a network namespace of its own (as
//! root; skipped otherwise): the scheduler on one, nannies on two others,
//! the client on a fourth, the scheduler file on a directory they all share
//! (as `$SCRATCH` is), TLS on. The tutorial job completes, also through a
//! worker node's failure and a scheduler restarted on another host.

mod common;

use common::netns::Net;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Which namespace plays which part.
const SCHED: usize = 0;
const NODE_A: usize = 1;
const NODE_B: usize = 2;
const CLIENT: usize = 3;
/// Where the scheduler is restarted.
const SCHED2: usize = 4;

/// Lost workers are noticed within seconds (their node is cut off: no FIN
/// ever arrives), and a restarted scheduler waits little for reclaims.
const CONFIG: &str = "[scheduler]\nheartbeat_timeout = \"3s\"\nreclaim_grace = \"2s\"\n";

/// The darts job's size: long enough to be hit mid-way, short enough to check.
const INPUTS: usize = 100;
const SCALE: &str = "0.1";

/// A cluster spread over namespaces. `procs` drop (and die) before `net`.
struct Site {
    procs: Vec<Proc>,
    net: Net,
    dir: tempfile::TempDir,
    file: PathBuf,
    config: PathBuf,
}

impl Site {
    fn new() -> Option<Site> {
        let net = Net::new(5)?;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scheduler.json");
        let config = dir.path().join("actord.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Some(Site { procs: Vec::new(), net, dir, file, config })
    }

    /// `actord ARGS…` inside host `host`, reading this site's config.
    fn actord(&self, host: usize, args: &[&str]) -> Command {
        let mut c = self.net.command(host, env!("CARGO_BIN_EXE_actord"));
        c.env("ACTORD_LOG", "info").env_remove("ACTORD_SCHEDULER_FILE").env_remove("SCRATCH");
        c.arg("--config").arg(&self.config).arg(args[0]).arg("--scheduler-file").arg(&self.file);
        c.args(&args[1..]);
        c
    }

    fn spawn(&mut self, name: &str, cmd: Command) -> usize {
        self.procs.push(Proc::spawn(name, cmd, self.dir.path()));
        self.procs.len() - 1
    }

    /// A scheduler listening on host `host`'s address only; returns once it
    /// has (re)written the scheduler file.
    fn scheduler(&mut self, host: usize, name: &str) -> usize {
        let before = std::fs::read_to_string(&self.file).unwrap_or_default();
        let journal = self.dir.path().join("journal");
        let addr = self.net.hosts[host].addr.clone();
        let mut cmd = self.actord(host, &["scheduler", "--host", &addr, "--port", "0", "--journal"]);
        cmd.arg(&journal);
        let i = self.spawn(name, cmd);
        let file = self.file.clone();
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(&file)
                .is_ok_and(|s| s != before && s.contains(&addr))),
            "the scheduler on {addr} never wrote its file:\n{}",
            self.procs[i].log_text()
        );
        i
    }

    fn nanny(&mut self, host: usize, name: &str) -> usize {
        let cmd = self.actord(host, &["nanny", "--workers", "1", "--threads", "1"]);
        self.spawn(name, cmd)
    }

    /// A client command on the client host, bounded by its own timeouts.
    fn client(&self, args: &[&str]) -> Output {
        self.actord(CLIENT, args).stdin(Stdio::null()).output().unwrap()
    }

    fn wait_workers(&self, n: usize) {
        let out = self.client(&["wait", "--workers", &n.to_string(), "--timeout", "60s"]);
        assert!(out.status.success(), "workers never registered: {}", stderr(&out));
    }

    /// The darts job, started from the client host; `out` is where it writes.
    fn start_darts(&mut self) -> (usize, PathBuf) {
        let out = self.dir.path().join("darts.json");
        let n = INPUTS.to_string();
        let mut cmd = self.actord(CLIENT, &["darts", "--inputs", &n, "--scale", SCALE, "--out"]);
        cmd.arg(&out);
        (self.spawn("darts", cmd), out)
    }

    /// Tasks of the only job finished so far (0 while none is known).
    fn finished(&self) -> u64 {
        let out = self.client(&["ctl", "jobs", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return 0 };
        v.as_array().and_then(|a| a.first()).and_then(|j| j["finished"].as_u64()).unwrap_or(0)
    }

    /// Waits until the job is under way but not done: the moment for a fault.
    fn wait_mid_job(&self) {
        assert!(
            wait_until(Duration::from_secs(60), || self.finished() >= 10),
            "the darts job never got going"
        );
        let done = self.finished();
        assert!(done < INPUTS as u64, "the job finished before the fault ({done} tasks): make it larger");
    }

    /// The darts client's exit, and every result checked against its inputs.
    fn check_darts(&mut self, i: usize, out: &PathBuf) {
        let status = self.procs[i].wait_exit(Duration::from_secs(180));
        let log = self.procs[i].log_text();
        assert!(status.is_some_and(|s| s.success()), "darts did not complete: {status:?}\n{log}");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        let inputs = doc["inputs"].as_array().unwrap();
        let results = doc["results"].as_array().unwrap();
        assert_eq!(results.len(), INPUTS, "a result for every task");
        for (k, (input, result)) in inputs.iter().zip(results).enumerate() {
            let (darts, seed) = (input[0].as_u64().unwrap(), input[1].as_u64().unwrap());
            let want = actord::darts::throw_darts(darts, u128::from(seed));
            assert_eq!(result[0].as_u64(), Some(want), "task {k}: wrong count");
            assert_eq!(result[1].as_u64(), Some(darts), "task {k}: wrong dart count");
        }
    }

    fn address_in_file(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.file).unwrap()).unwrap();
        assert_eq!(v["mode"], "tls", "TLS is on by default");
        v["address"].as_str().unwrap().to_string()
    }

    /// A standard site: scheduler, a nanny with one worker on each of two
    /// nodes, both registered.
    fn standard() -> Option<Site> {
        let mut s = Site::new()?;
        s.scheduler(SCHED, "scheduler");
        s.nanny(NODE_A, "nanny-a");
        s.nanny(NODE_B, "nanny-b");
        s.wait_workers(2);
        Some(s)
    }

    /// Workers registered now, by host address.
    fn worker_count(&self) -> usize {
        let out = self.client(&["ctl", "workers", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

#[test]
fn the_tutorial_job_runs_across_hosts() {
    let Some(mut s) = Site::standard() else { return };
    let addr = s.address_in_file();
    assert!(addr.starts_with(&format!("tcp://{}:", s.net.hosts[SCHED].addr)), "{addr}");
    let (i, out) = s.start_darts();
    s.check_darts(i, &out);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["workers"], 2);
    // Nobody can reach the scheduler from this machine's own namespace.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let here = std::net::TcpStream::connect_timeout(
        &format!("{}:{port}", s.net.hosts[SCHED].addr).parse().unwrap(),
        Duration::from_millis(500),
    );
    assert!(here.is_err(), "the scheduler is reachable from outside the namespaces");
}

#[test]
fn a_worker_node_that_fails_loses_nothing() {
    let Some(mut s) = Site::standard() else { return };
    let (i, out) = s.start_darts();
    s.wait_mid_job();
    // The node fails: its link goes first (no FIN reaches anyone), then every process on it.
    s.net.cut(NODE_A);
    let killed = s.net.kill_all(NODE_A);
    assert!(killed.len() >= 2, "a nanny and its worker ran on node A: {killed:?}");
    assert!(
        wait_until(Duration::from_secs(10), || killed.iter().all(|p| !pid_alive(*p))),
        "node A's processes died"
    );
    s.check_darts(i, &out);
    assert_eq!(s.worker_count(), 1, "only node B's worker is left");
}

#[test]
fn a_scheduler_restarted_on_another_host_resumes_the_job() {
    let Some(mut s) = Site::standard() else { return };
    let first = s.address_in_file();
    let (i, out) = s.start_darts();
    s.wait_mid_job();
    let killed = s.net.kill_all(SCHED);
    assert_eq!(killed.len(), 1, "the scheduler alone ran on its host: {killed:?}");
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(killed[0])), "the scheduler died");
    s.scheduler(SCHED2, "scheduler-2");
    let second = s.address_in_file();
    assert!(second.starts_with(&format!("tcp://{}:", s.net.hosts[SCHED2].addr)), "{second}");
    assert_ne!(first, second);
    s.check_darts(i, &out);
    assert!(
        wait_until(Duration::from_secs(20), || s.worker_count() == 2),
        "both workers found the new scheduler"
    );
    let log = s.procs[i].log_text();
    assert!(log.contains("reconnect"), "the client reconnected:\n{log}");
}
