//! Helpers for tests that run real `actord` processes on 127.0.0.1 with
//! port 0 and temp dirs: every process is killed by pid when its guard drops,
//! also when the test fails.
#![allow(dead_code)]

pub mod browser;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn actord() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_actord"));
    c.env("ACTORD_LOG", "info").env_remove("ACTORD_SCHEDULER_FILE").env_remove("SCRATCH");
    // A status page on a port of its own (not the default 8787) unless a
    // test asks for another.
    if std::env::var_os("ACTORD_DASHBOARD").is_none() {
        c.env("ACTORD_DASHBOARD", "127.0.0.1:0");
    }
    c
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still counts until reaped, so look at its state too.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let name = name.to_string();
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for exit (bounded) and returns the status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scheduler and (optionally) a nanny with workers, as real processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    /// A config file every process of this cluster reads, if the test set one.
    pub config: Option<PathBuf>,
    pub scheduler: Proc,
    pub nanny: Option<Proc>,
    /// Schedulers started after the first (names their logs).
    pub restarts: u32,
    /// Extra flags every scheduler of this cluster gets (e.g. `--no-tls`).
    pub scheduler_flags: Vec<String>,
}

impl Cluster {
    pub fn scheduler_only() -> Cluster {
        Cluster::scheduler_with_config(None)
    }

    /// A scheduler whose processes all read `config` (TOML) on top of the defaults.
    pub fn scheduler_with_config(config: Option<&str>) -> Cluster {
        Cluster::scheduler_with(config, &[])
    }

    /// A scheduler started with `flags` too (again at each restart).
    pub fn scheduler_with(config: Option<&str>, flags: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scheduler.json");
        let config = config.map(|text| {
            let p = dir.path().join("actord.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut cmd = actord();
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"]).arg(&file);
        cmd.arg("--journal").arg(dir.path().join("journal"));
        cmd.args(flags);
        let scheduler = Proc::spawn("scheduler", cmd, dir.path());
        assert!(
            wait_until(Duration::from_secs(20), || file.exists()),
            "scheduler file never appeared:\n{}",
            scheduler.log_text()
        );
        let scheduler_flags = flags.iter().map(|f| f.to_string()).collect();
        Cluster { dir, file, config, scheduler, nanny: None, restarts: 0, scheduler_flags }
    }

    /// kill -9 of the scheduler (its file stays behind, as after a crash).
    pub fn kill_scheduler(&mut self) {
        self.scheduler.signal(nix::sys::signal::Signal::SIGKILL);
        self.scheduler.wait_exit(Duration::from_secs(10)).expect("scheduler dies");
    }

    /// Starts a new scheduler on the same journal and scheduler file (a new
    /// port) and waits until it has rewritten the file.
    pub fn restart_scheduler(&mut self) {
        let old = std::fs::read_to_string(&self.file).unwrap_or_default();
        self.restarts += 1;
        let mut cmd = actord();
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file"]).arg(&self.file);
        cmd.arg("--journal").arg(self.dir.path().join("journal"));
        cmd.args(&self.scheduler_flags);
        let name = format!("scheduler-{}", self.restarts);
        let fresh = Proc::spawn(&name, cmd, self.dir.path());
        let file = self.file.clone();
        assert!(
            wait_until(Duration::from_secs(20), || std::fs::read_to_string(&file).is_ok_and(|s| s != old)),
            "restarted scheduler never wrote its file:\n{}",
            fresh.log_text()
        );
        self.scheduler = fresh;
    }

    pub fn start(workers: u32, threads: u32) -> Cluster {
        let mut c = Cluster::scheduler_only();
        c.start_nanny(workers, threads);
        c
    }

    pub fn start_with_config(workers: u32, threads: u32, config: &str) -> Cluster {
        let mut c = Cluster::scheduler_with_config(Some(config));
        c.start_nanny(workers, threads);
        c
    }

    /// Starts a nanny (extra flags after the standard ones) without waiting for its workers.
    pub fn spawn_nanny(&mut self, workers: u32, threads: u32, extra: &[&str]) {
        let mut cmd = actord();
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["nanny", "--workers", &workers.to_string(), "--threads", &threads.to_string()])
            .arg("--scheduler-file")
            .arg(&self.file)
            .args(extra);
        self.nanny = Some(Proc::spawn("nanny", cmd, self.dir.path()));
    }

    pub fn start_nanny(&mut self, workers: u32, threads: u32) {
        self.spawn_nanny(workers, threads, &[]);
        let out = self.run(&["wait", "--workers", &workers.to_string(), "--timeout", "30s"]);
        assert!(out.status.success(), "workers never registered: {}", stderr(&out));
    }

    /// Runs a client command against this cluster (bounded by its own timeouts).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// A client command against this cluster, to run or spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = actord();
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg(args[0]).arg("--scheduler-file").arg(&self.file).args(&args[1..]);
        cmd
    }

    /// `ctl workers --json` as (id, pid, nanny slot).
    pub fn workers(&self) -> Vec<(String, i32, Option<u64>)> {
        let out = self.run(&["ctl", "workers", "--json"]);
        assert!(out.status.success(), "ctl workers: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    format!("w{}", w["id"]),
                    w["pid"].as_i64().unwrap() as i32,
                    w["nanny"].get("slot").and_then(|s| s.as_u64()),
                )
            })
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        let out = self.run(&["ctl", "workers", "--json"]);
        assert!(out.status.success(), "ctl workers: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap() as i32).collect()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A client connection to the scheduler named by `file` (handshake done).
pub async fn client_conn(file: &actord::schedfile::SchedulerFile) -> actord::protocol::Conn {
    use actord::protocol::{Conn, Role, DEFAULT_MAX_FRAME};
    let (conn, _) = Conn::connect(
        file.socket_addr(),
        Role::Client,
        &file.auth(),
        DEFAULT_MAX_FRAME,
        Duration::from_secs(5),
    )
    .await
    .expect("scheduler accepts clients");
    conn
}

/// After abuse, a well-behaved client still gets served.
pub async fn still_serving(file: &actord::schedfile::SchedulerFile) {
    use actord::protocol::{FromClient, ToClient};
    let mut conn = client_conn(file).await;
    conn.write(&FromClient::Workers).await.unwrap();
    assert!(matches!(conn.read::<ToClient>().await.unwrap(), ToClient::Workers { .. }));
}
