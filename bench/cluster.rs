//! Cluster benchmark: starts a real actord cluster (scheduler + nanny with
//! workers, as separate processes on 127.0.0.1), runs one workload from an
//! in-process client, tears the cluster down by pid, and prints one JSON
//! line with the same field names as the Dask harness in peers/dask.
//!
//!   cargo bench --bench cluster -- noop --n 10000 [--workers 2] [--threads 1]
//!         [--repeat 3] [--warmup 200] [--no-journal] [--tls | --no-tls | --insecure]
//!         [--no-dashboard | --dashboard-open]
//!
//! CPU figures cover the timed repetitions only (from /proc, 10 ms ticks).
//!
//! `noop` maps `inc` over range(n) (or chains / reduces it: `--variant`), as
//! the Dask harness's noop.py does; `cmd` runs n `/bin/true` commands;
//! `darts` is the tutorial's job (`--inputs 100 --scale 1.0`); `million` is one
//! job of 1,000,000 noop tasks; `respawn` and `restart` time recoveries.

use actord::client::{Client, Graph, TaskFuture};
use actord::ids::JobId;
use actord::protocol::{TaskKind, TaskSpec};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: cluster noop|cmd|darts|million|respawn|restart [--variant map|chain|tree] [--n N] \
     [--workers K] [--threads T] [--repeat R] [--warmup W] [--inputs I] [--scale S] [--no-journal] \
     [--tls|--no-tls|--insecure] [--no-dashboard|--dashboard-open]";

struct Opts {
    workload: String,
    n: u64,
    workers: u32,
    threads: u32,
    repeat: usize,
    warmup: u64,
    journal: bool,
    /// noop: map, chain or tree (as the Dask harness's noop.py).
    variant: String,
    /// darts: number of inputs (tasks) and dart-count scale (tutorial: 100, 1.0).
    inputs: usize,
    scale: f64,
    /// The scheduler's security flag: "" (TLS, the default), --no-tls or --insecure.
    security: &'static str,
    /// The status page: "off" (--no-dashboard), "idle" (served, nobody
    /// looking: the default) or "open" (--dashboard-open: a subscriber
    /// reads /api/stream throughout the run).
    dashboard: &'static str,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Opts {
        workload: String::new(),
        n: 10_000,
        workers: 2,
        threads: 1,
        repeat: 3,
        warmup: 200,
        journal: true,
        variant: "map".into(),
        inputs: 100,
        scale: 1.0,
        security: "",
        dashboard: "idle",
    };
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--n" | "-n" => o.n = val("--n")?.parse().map_err(|e| format!("--n: {e}"))?,
            "--workers" => o.workers = val("--workers")?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--threads" => o.threads = val("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--repeat" => o.repeat = val("--repeat")?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--warmup" => o.warmup = val("--warmup")?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--journal" => o.journal = true,
            "--no-journal" => o.journal = false,
            "--tls" => o.security = "",
            "--no-tls" => o.security = "--no-tls",
            "--insecure" => o.security = "--insecure",
            "--no-dashboard" => o.dashboard = "off",
            "--dashboard-open" => o.dashboard = "open",
            "--variant" => o.variant = val("--variant")?,
            "--inputs" => o.inputs = val("--inputs")?.parse().map_err(|e| format!("--inputs: {e}"))?,
            "--scale" => o.scale = val("--scale")?.parse().map_err(|e| format!("--scale: {e}"))?,
            w if !w.starts_with('-') && o.workload.is_empty() => o.workload = w.to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !["map", "chain", "tree"].contains(&o.variant.as_str()) {
        return Err(format!("--variant {:?}: expected map, chain or tree", o.variant));
    }
    if !["noop", "cmd", "darts", "million", "respawn", "restart"].contains(&o.workload.as_str()) {
        return Err(USAGE.into());
    }
    if o.workload == "million" {
        // One job of a million noop tasks, run once.
        o.n = if o.n == 10_000 { 1_000_000 } else { o.n };
        o.repeat = 1;
    }
    if o.n == 0 || o.repeat == 0 || o.inputs == 0 || !(o.scale.is_finite() && o.scale > 0.0) {
        return Err("--n, --repeat, --inputs and --scale must be positive".into());
    }
    Ok(o)
}

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
    spawn_logging(dir, name, args, "warn")
}

/// `spawn` with the log level `level` (`ACTORD_LOG`).
fn spawn_logging(dir: &Path, name: &str, args: &[&str], level: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    // `ACTORD_BIN` runs another build (e.g. a kept copy of an earlier one).
    let bin = std::env::var_os("ACTORD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_actord").into());
    let child = Command::new(bin)
        .args(args)
        .env("ACTORD_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start actord");
    Proc(child)
}

/// user+system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident set of a process in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn run_map(client: &mut Client, n: u64) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let job = client.map("inc", (0..n as i64).collect::<Vec<_>>()).await.map_err(|e| e.to_string())?;
    let submit = t0.elapsed().as_secs_f64();
    let g = client.gather(&job).await.map_err(|e| e.to_string())?;
    let wall = t0.elapsed().as_secs_f64();
    let values: Vec<i64> = g.values().map_err(|e| e.to_string())?;
    if values.iter().enumerate().any(|(i, v)| *v != i as i64 + 1) {
        return Err("wrong results".into());
    }
    Ok((wall, submit))
}

/// kill -9 of a worker → its replacement registered, as the client sees it
/// (polling the worker list every millisecond), `repeat` times.
async fn respawn(client: &mut Client, o: &Opts) {
    let mut times = Vec::new();
    for r in 0..o.repeat {
        let before = client.workers().await.expect("workers");
        let victim = &before[r % before.len()];
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        loop {
            let now = client.workers().await.expect("workers");
            let replaced = now.iter().any(|w| w.nanny == victim.nanny && w.id != victim.id);
            if replaced && now.len() == before.len() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                panic!("no replacement within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("respawn {}/{}: {:.1} ms", r + 1, o.repeat, dt * 1e3);
        times.push(dt);
        // Each kill is an isolated death (past the nanny's min_uptime), not a crash loop.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let rec = serde_json::json!({
        "system": "actord",
        "workload": "respawn",
        "workers": o.workers,
        "threads_per_worker": o.threads,
        "repeat": o.repeat,
        "kill_to_registered_s_median": (median(times.clone()) * 1e4).round() / 1e4,
        "kill_to_registered_s_all": times.iter().map(|t| (t * 1e4).round() / 1e4).collect::<Vec<_>>(),
    });
    println!("{rec}");
}

/// A field of the "journal replayed" line in a scheduler's log (`open_ms`:
/// the open and its checks; `ms`: replay into the core), if there is one.
fn replay_field(log: &Path, field: &str) -> Option<u64> {
    let line = replayed_line(log)?;
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn replayed_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find(|l| l.contains("journal replayed")).map(str::to_string)
}

/// Seconds from `since` to the time stamp of the "journal replayed" line:
/// the process's start, the open and the replay, as any build logs them.
fn replayed_after(log: &Path, since: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let line = replayed_line(log)?;
    let stamp = line.split_whitespace().next()?;
    let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some((at.with_timezone(&chrono::Utc) - since).num_microseconds()? as f64 / 1e6)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `n` command tasks running `/bin/true`, output discarded (as
/// HyperQueue's `/bin/true` array).
async fn run_true(client: &mut Client, n: u64) -> Result<f64, String> {
    let t0 = Instant::now();
    let tasks = (0..n)
        .map(|i| {
            let kind = TaskKind::Cmd {
                argv: vec!["/bin/true".into()],
                env: Vec::new(),
                discard_output: true,
                cwd: None,
            };
            TaskSpec { key: Some((i + 1).to_string()), ..TaskSpec::new(kind) }
        })
        .collect();
    let job = client.submit_job(JobId::new(), "true", tasks).await.map_err(|e| e.to_string())?;
    let g = client.gather(&job).await.map_err(|e| e.to_string())?;
    if let Some((idx, e)) = g.failed().next() {
        return Err(format!("task {idx} failed: {e}"));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The tutorial's job: `darts` mapped over its inputs, every dart counted.
async fn run_darts(client: &mut Client, inputs: &[(u64, u64)]) -> Result<(f64, f64), String> {
    let total: u64 = inputs.iter().map(|(d, _)| d).sum();
    let t0 = Instant::now();
    let job = client.map("darts", inputs.to_vec()).await.map_err(|e| e.to_string())?;
    let g = client.gather(&job).await.map_err(|e| e.to_string())?;
    let wall = t0.elapsed().as_secs_f64();
    let results: Vec<(u64, u64)> = g.values().map_err(|e| e.to_string())?;
    if results.iter().map(|r| r.1).sum::<u64>() != total {
        return Err("dart count mismatch".into());
    }
    let pi = 4.0 * results.iter().map(|r| r.0).sum::<u64>() as f64 / total as f64;
    Ok((wall, pi))
}

/// A chain of `n` inc tasks, each taking the previous one's result.
async fn run_chain(client: &mut Client, n: u64) -> Result<(u64, f64), String> {
    let t0 = Instant::now();
    let mut g = Graph::new();
    g.add("0", "inc", &0i64, &[]).map_err(|e| e.to_string())?;
    for i in 1..n {
        g.add(&i.to_string(), "inc", &(), &[&(i - 1).to_string()]).map_err(|e| e.to_string())?;
    }
    let job = client.submit_graph("chain", g).await.map_err(|e| e.to_string())?;
    let last = TaskFuture { job: job.id, idx: (n - 1) as u32 };
    let v: i64 = client.result(&last).await.map_err(|e| e.to_string())?;
    if v != n as i64 {
        return Err(format!("wrong chain result {v}"));
    }
    Ok((n, t0.elapsed().as_secs_f64()))
}

/// A binary reduction (add) over `n` inc leaves: 2n-1 tasks.
async fn run_tree(client: &mut Client, n: u64) -> Result<(u64, f64), String> {
    let t0 = Instant::now();
    let mut g = Graph::new();
    let mut level: Vec<String> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = format!("leaf-{i}");
        g.add(&k, "inc", &(i as i64), &[]).map_err(|e| e.to_string())?;
        level.push(k);
    }
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        for (j, pair) in level.chunks(2).enumerate() {
            if let [a, b] = pair {
                let k = format!("add-{depth}-{j}");
                g.add(&k, "add", &(), &[a.as_str(), b.as_str()]).map_err(|e| e.to_string())?;
                next.push(k);
            } else {
                next.push(pair[0].clone());
            }
        }
        level = next;
    }
    let tasks = g.tasks.len() as u64;
    let job = client.submit_graph("tree", g).await.map_err(|e| e.to_string())?;
    let root = client.resolve(job.id, &level[0]).await.map_err(|e| e.to_string())?;
    let v: i64 = client.result(&TaskFuture { job: job.id, idx: root }).await.map_err(|e| e.to_string())?;
    if v != (n * (n + 1) / 2) as i64 {
        return Err(format!("wrong tree result {v}"));
    }
    Ok((tasks, t0.elapsed().as_secs_f64()))
}

/// An open status page: a thread reading the scheduler's `/api/stream`
/// (loopback, no token) for as long as the process runs; counts snapshots.
fn watch_page(file: &Path) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::io::{Read, Write};
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("file")).expect("json");
    let url = f["dashboard"].as_str().expect("the scheduler serves a page").to_string();
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("the page answers");
        s.write_all(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            let events = buf[..n].windows(15).filter(|w| w == b"event: snapshot").count();
            count.fetch_add(events as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    seen
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("scheduler.json");
    let file_s = file.to_str().unwrap().to_string();
    let journal = dir.path().join("journal");
    let mut sargs = vec!["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", &file_s];
    if o.journal {
        sargs.extend(["--journal", journal.to_str().unwrap()]);
    } else {
        sargs.push("--no-journal");
    }
    if !o.security.is_empty() {
        sargs.push(o.security);
    }
    match o.dashboard {
        "off" => sargs.push("--no-dashboard"),
        _ => sargs.extend(["--dashboard", "127.0.0.1:0"]),
    }
    let scheduler = spawn(dir.path(), "scheduler", &sargs);
    let (w, t) = (o.workers.to_string(), o.threads.to_string());
    let nanny =
        spawn(dir.path(), "nanny", &["nanny", "--workers", &w, "--threads", &t, "--scheduler-file", &file_s]);
    let mut client = Client::connect(&file, Duration::from_secs(30)).await.expect("connect");
    client.wait_for_workers(o.workers as usize, Duration::from_secs(30)).await.expect("workers");
    if o.workload == "respawn" {
        respawn(&mut client, &o).await;
        return;
    }
    if o.workload == "restart" {
        run_map(&mut client, o.n).await.expect("fill the journal");
        drop(client);
        drop(scheduler); // kill -9 (Proc's drop) and reap
        if let Some(keep) = std::env::var_os("ACTORD_BENCH_KEEP_JOURNAL") {
            // A copy of the journal as the kill left it, to replay by hand (perf).
            let ok =
                Command::new("cp").arg("-a").arg(&journal).arg(&keep).status().is_ok_and(|s| s.success());
            assert!(ok, "copy the journal to {keep:?}");
        }
        let t0 = Instant::now();
        let started = chrono::Utc::now();
        // (At info: its "journal replayed" line says how long replay took.)
        let scheduler = spawn_logging(dir.path(), "scheduler-2", &sargs, "info");
        // (The killed scheduler's file stays until the new one replaces it.)
        let mut client = Client::connect_startup(&file, Duration::from_secs(120)).await.expect("reconnect");
        client.workers().await.expect("answers");
        let ready = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(scheduler.0.id());
        let rec = serde_json::json!({
            "system": "actord",
            "workload": "restart",
            "n": o.n,
            "finished_tasks_in_journal": o.n + o.warmup,
            "restart_to_ready_s": (ready * 1e4).round() / 1e4,
            "sched_cpu_until_ready_s": (cpu * 1e3).round() / 1e3,
            "open_ms": replay_field(&dir.path().join("scheduler-2.log"), "open_ms"),
            "replay_ms": replay_field(&dir.path().join("scheduler-2.log"), "ms"),
            "start_to_replayed_s": replayed_after(&dir.path().join("scheduler-2.log"), started)
                .map(|s| (s * 1e4).round() / 1e4),
            "journal_bytes": dir_size(&journal),
            "sched_peak_rss_kib": peak_rss_kib(scheduler.0.id()),
        });
        println!("{rec}");
        return;
    }
    let worker_pids: Vec<u32> = client.workers().await.expect("workers").iter().map(|w| w.pid).collect();
    let watcher = (o.dashboard == "open").then(|| watch_page(&file));
    if o.warmup > 0 {
        run_map(&mut client, o.warmup).await.expect("warmup");
    }
    let all_pids = || worker_pids.iter().copied().chain([nanny.0.id()]);
    let (s0, w0) = (cpu_seconds(scheduler.0.id()), all_pids().map(cpu_seconds).sum::<f64>());
    let mut runs = Vec::new();
    let mut n_tasks = o.n;
    let darts_inputs = actord::darts::make_inputs(o.inputs, o.scale, 1);
    let mut pi = 0.0;
    for r in 0..o.repeat {
        let (tasks, wall, submit) = match o.variant.as_str() {
            _ if o.workload == "cmd" => run_true(&mut client, o.n).await.map(|w| (o.n, w, 0.0)),
            _ if o.workload == "darts" => run_darts(&mut client, &darts_inputs).await.map(|(w, p)| {
                pi = p;
                (o.inputs as u64, w, 0.0)
            }),
            "chain" => run_chain(&mut client, o.n).await.map(|(t, w)| (t, w, 0.0)),
            "tree" => run_tree(&mut client, o.n).await.map(|(t, w)| (t, w, 0.0)),
            _ => run_map(&mut client, o.n).await.map(|(w, s)| (o.n, w, s)),
        }
        .expect("run");
        eprintln!(
            "{} n={} rep {}/{}: {tasks} tasks in {:.3}s = {:.0} tasks/s",
            o.variant,
            o.n,
            r + 1,
            o.repeat,
            wall,
            tasks as f64 / wall
        );
        n_tasks = tasks;
        runs.push((wall, submit));
    }
    let sched_cpu = cpu_seconds(scheduler.0.id()) - s0;
    let workers_cpu = all_pids().map(cpu_seconds).sum::<f64>() - w0;
    let wall = median(runs.iter().map(|r| r.0).collect());
    let variant = match o.workload.as_str() {
        "cmd" => "true-array",
        "darts" => "tutorial",
        _ => o.variant.as_str(),
    };
    let sched_rss = peak_rss_kib(scheduler.0.id());
    let snapshots = watcher.map(|w| w.load(std::sync::atomic::Ordering::Relaxed));
    let mut rec = serde_json::json!({
        "system": "actord",
        "workload": o.workload,
        "variant": variant,
        "n": if o.workload == "darts" { o.inputs as u64 } else { o.n },
        "tasks": n_tasks,
        "us_per_task": (wall / n_tasks as f64 * 1e7).round() / 10.0,
        "workers": o.workers,
        "threads_per_worker": o.threads,
        "journal": o.journal,
        "security": if o.security.is_empty() { "tls" } else { o.security.trim_start_matches('-') },
        "repeat": o.repeat,
        "warmup": o.warmup,
        "wall_s": (wall * 1e4).round() / 1e4,
        "wall_s_all": runs.iter().map(|r| (r.0 * 1e4).round() / 1e4).collect::<Vec<_>>(),
        "tasks_per_s": (n_tasks as f64 / wall * 10.0).round() / 10.0,
        "submit_s_median": (median(runs.iter().map(|r| r.1).collect()) * 1e4).round() / 1e4,
        "sched_cpu_s": (sched_cpu * 1e3).round() / 1e3,
        "workers_cpu_s": (workers_cpu * 1e3).round() / 1e3,
        "sched_cpu_us_per_task": (sched_cpu / (n_tasks as f64 * o.repeat as f64) * 1e7).round() / 10.0,
        "workers_cpu_us_per_task": (workers_cpu / (n_tasks as f64 * o.repeat as f64) * 1e7).round() / 10.0,
        "sched_peak_rss_kib": sched_rss,
        "sched_peak_rss_bytes_per_task": sched_rss * 1024 / n_tasks,
        "worker_peak_rss_kib": worker_pids.iter().map(|p| peak_rss_kib(*p)).max().unwrap_or(0),
        "dashboard": o.dashboard,
        "dashboard_snapshots_read": snapshots,
    });
    if o.workload == "darts" {
        let total: u64 = darts_inputs.iter().map(|(d, _)| d).sum();
        rec["scale"] = o.scale.into();
        rec["darts"] = total.into();
        rec["darts_per_s"] = ((total as f64 / wall).round() as u64).into();
        rec["pi"] = pi.into();
    }
    println!("{rec}");
    drop(client);
    drop(nanny);
    drop(scheduler);
}
