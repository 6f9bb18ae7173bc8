//! What each `actord` subcommand does.

use super::{Cli, CliError, ClientCommand, Command, Connect, CtlCommand, LocalArgs, NannyArgs, WorkerArgs};
use crate::actors::nanny::{Nanny, NannyMsg, NannyOptions};
use crate::actors::{start_scheduler, SchedulerOptions};
use crate::client::Client;
use crate::config::Config;
use crate::core::CoreConfig;
use crate::functions::Registry;
use crate::ids::JobId;
use crate::protocol::{Outcome, TaskSpec};
use crate::util::{expand_path, parse_duration};
use ractor::Actor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

fn usage(e: impl ToString) -> CliError {
    CliError::Usage(e.to_string())
}

fn failed(e: impl ToString) -> CliError {
    CliError::Failed(e.to_string())
}

pub async fn run(cli: Cli, registry: Registry) -> Result<ExitCode, CliError> {
    let config_path = cli.config.as_deref().map(expand_path).transpose().map_err(usage)?;
    let config = Config::load(config_path.as_deref()).map_err(usage)?;
    match cli.command {
        Command::Scheduler(a) => {
            let journal = match a.no_journal {
                true => None,
                false => Some(crate::persistence::resolve_dir(a.journal.as_deref()).map_err(usage)?),
            };
            let mut opts = scheduler_options(&config, a.scheduler_file.as_deref(), a.host, a.port, journal)?;
            opts.journal_repair = a.journal_repair;
            let mut handle = start_scheduler(opts).await.map_err(failed)?;
            let asked = handle.shutdown_requested();
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; stopping"),
                _ = asked => tracing::info!("stopping as an admin asked"),
                _ = handle.stopped() => {
                    let reason = handle.fail().await;
                    return Err(failed(format!("the scheduler stopped: {reason}")));
                }
            }
            handle.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(a) => {
            let opts = worker_options(&config, &a)?;
            crate::worker::run_worker(opts, registry).await.map_err(failed)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nanny(a) => {
            let mut nanny = start_nanny(&config, config_path.as_deref(), &a).await?;
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; stopping workers"),
                _ = nanny.1.stopped() => return Err(failed("the nanny stopped unexpectedly")),
            }
            stop_nanny(nanny).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal(c) => super::journal::run(c),
        Command::Local(a) => local(&config, config_path.as_deref(), a).await,
        Command::Client(c) => client_command(&config, c).await,
        Command::Console(c) => {
            let client = connect(&config, &c).await?;
            super::console::run(client).await
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn scheduler_options(
    config: &Config,
    file: Option<&str>,
    host: Option<String>,
    port: Option<u16>,
    journal: Option<PathBuf>,
) -> Result<SchedulerOptions, CliError> {
    let c = &config.scheduler;
    Ok(SchedulerOptions {
        reclaim_grace: c.reclaim_grace,
        commit_interval: c.commit_interval,
        journal_repair: false,
        host: host.unwrap_or_else(|| c.host.clone()),
        port: port.unwrap_or(c.port),
        scheduler_file: crate::schedfile::resolve_path(file).map_err(usage)?,
        journal,
        max_frame: c.max_frame,
        max_send_queue: usize::try_from(c.max_send_queue).unwrap_or(usize::MAX),
        flush_timeout: c.flush_timeout,
        core: CoreConfig {
            prefetch_target_us: c.prefetch_target_us,
            max_prefetch_per_slot: c.max_prefetch_per_slot,
            max_worker_kills: c.max_worker_kills,
            heartbeat_timeout_us: c.heartbeat_timeout.as_micros() as u64,
            retry_backoff_us: c.retry_backoff.as_micros() as u64,
            retention_us: c.retention.map(|r| r.as_micros() as u64),
        },
    })
}

fn worker_options(config: &Config, a: &WorkerArgs) -> Result<crate::worker::WorkerOptions, CliError> {
    let scheduler_file = crate::schedfile::resolve_path(a.scheduler_file.as_deref()).map_err(usage)?;
    let work_dir = match &a.work_dir {
        Some(d) => expand_path(d).map_err(usage)?,
        None => scheduler_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("actord-jobs"),
    };
    let death_timeout = match &a.death_timeout {
        Some(d) => parse_duration(d).map_err(usage)?,
        None => config.worker.death_timeout,
    };
    let threads = a.threads.unwrap_or(config.worker.threads);
    if threads == 0 {
        return Err(usage("--threads must be at least 1"));
    }
    let mut resources = a
        .resources
        .as_deref()
        .map(crate::util::parse_resources)
        .transpose()
        .map_err(usage)?
        .unwrap_or_default();
    let gpus: Vec<String> = match &a.gpus {
        Some(list) => list.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
        None => Vec::new(),
    };
    if !gpus.is_empty() {
        resources.insert("gpus".into(), gpus.len() as u64);
    }
    Ok(crate::worker::WorkerOptions {
        resources,
        gpus,
        scheduler_file,
        threads,
        death_timeout,
        heartbeat: config.worker.heartbeat,
        drain_timeout: config.worker.drain_timeout,
        max_result: config.worker.max_result,
        max_error: config.worker.max_error,
        max_frame: config.scheduler.max_frame,
        work_dir,
        nanny: nanny_slot_from_env(),
        python: a.python.clone().unwrap_or_else(|| config.worker.python.clone()),
    })
}

/// A worker started by a nanny learns its slot from the environment.
fn nanny_slot_from_env() -> Option<crate::protocol::NannySlot> {
    let pid = std::env::var(crate::actors::nanny::ENV_NANNY_PID).ok()?.parse().ok()?;
    let slot = std::env::var(crate::actors::nanny::ENV_NANNY_SLOT).ok()?.parse().ok()?;
    Some(crate::protocol::NannySlot { pid, slot })
}

type NannyHandle = (ractor::ActorRef<NannyMsg>, NannyJoin);

struct NannyJoin(tokio::task::JoinHandle<()>);

impl NannyJoin {
    async fn stopped(&mut self) {
        let _ = (&mut self.0).await;
    }
}

async fn start_nanny(
    config: &Config,
    config_path: Option<&Path>,
    a: &NannyArgs,
) -> Result<NannyHandle, CliError> {
    if a.workers == 0 {
        return Err(usage("--workers must be at least 1"));
    }
    let w = worker_options(config, &a.worker)?;
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find the actord binary: {e}")))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut worker_args = vec![
        "--scheduler-file".to_string(),
        abs(&w.scheduler_file).display().to_string(),
        "--threads".into(),
        w.threads.to_string(),
        "--death-timeout".into(),
        format!("{}ms", w.death_timeout.as_millis()),
        "--work-dir".into(),
        abs(&w.work_dir).display().to_string(),
    ];
    if let Some(c) = config_path {
        worker_args.extend(["--config".into(), abs(c).display().to_string()]);
    }
    if let Some(r) = &a.worker.resources {
        worker_args.extend(["--resources".into(), r.clone()]);
    }
    if let Some(p) = &a.worker.python {
        worker_args.extend(["--python".into(), p.clone()]);
    }
    // --gpus: each worker gets its own share, as --gpus and CUDA_VISIBLE_DEVICES.
    let per_slot: Vec<crate::actors::nanny::SlotExtra> = if w.gpus.is_empty() {
        Vec::new()
    } else {
        if w.gpus.len() < a.workers as usize {
            return Err(usage(format!(
                "--gpus lists {} GPUs for {} workers: give each worker at least one",
                w.gpus.len(),
                a.workers
            )));
        }
        let per = w.gpus.len() / a.workers as usize;
        (0..a.workers as usize)
            .map(|i| {
                let share = w.gpus[i * per..(i + 1) * per].join(",");
                (vec!["--gpus".into(), share.clone()], vec![("CUDA_VISIBLE_DEVICES".into(), share)])
            })
            .collect()
    };
    let memory_limit = a.memory_limit.as_deref().map(crate::util::parse_size).transpose().map_err(usage)?;
    let n = &config.nanny;
    let opts = NannyOptions {
        exe,
        worker_args,
        per_slot,
        workers: a.workers,
        scheduler_file: abs(&w.scheduler_file),
        max_restarts: n.max_restarts,
        restart_window: n.restart_window,
        backoff_base: n.backoff_base,
        backoff_max: n.backoff_max,
        memory_limit,
        memory_poll: n.memory_poll,
        stop_grace: n.stop_grace,
        min_uptime: n.min_uptime,
    };
    let (nanny, join) = Actor::spawn(None, Nanny, opts).await.map_err(failed)?;
    Ok((nanny, NannyJoin(join)))
}

async fn stop_nanny((nanny, join): NannyHandle) {
    let _ = nanny.cast(NannyMsg::Shutdown);
    let _ = join.0.await;
}

/// A whole cluster in this process: scheduler and nanny actors here, the
/// workers as child processes; the job runs against it, then all stops.
async fn local(config: &Config, config_path: Option<&Path>, a: LocalArgs) -> Result<ExitCode, CliError> {
    let dir = tempfile_dir()?;
    let file = dir.join("scheduler.json");
    let file_str = file.display().to_string();
    let journal = match (&a.journal, a.no_journal) {
        (_, true) => None,
        (Some(j), false) => Some(expand_path(j).map_err(usage)?),
        (None, false) => Some(dir.join("journal")),
    };
    let opts = scheduler_options(config, Some(&file_str), Some("127.0.0.1".into()), Some(0), journal)?;
    let scheduler = start_scheduler(opts).await.map_err(failed)?;
    let nanny_args = NannyArgs {
        workers: a.workers,
        memory_limit: None,
        worker: WorkerArgs {
            threads: Some(a.threads),
            scheduler_file: Some(file_str.clone()),
            death_timeout: None,
            work_dir: Some(dir.join("jobs").display().to_string()),
            resources: None,
            gpus: None,
            python: a.python.clone(),
        },
    };
    let nanny = match start_nanny(config, config_path, &nanny_args).await {
        Ok(n) => n,
        Err(e) => {
            scheduler.stop().await;
            return Err(e);
        }
    };
    let connect = Connect { scheduler_file: Some(file_str) };
    let mut job = a.job;
    *job.connect_mut() = connect;
    // Time the job on the whole cluster, as the Dask harness does.
    let ready = async {
        let mut c = Client::connect(&file, config.client.timeout).await?;
        c.wait_for_workers(a.workers as usize, config.client.timeout).await
    };
    let result = tokio::select! {
        r = async {
            ready.await?;
            client_command(config, job).await
        } => r,
        _ = shutdown_signal() => Err(failed("interrupted")),
    };
    stop_nanny(nanny).await;
    scheduler.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<PathBuf, CliError> {
    let base = std::env::temp_dir().join(format!(
        "actord-local-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&base).map_err(|e| failed(format!("cannot create {}: {e}", base.display())))?;
    Ok(base)
}

async fn connect(config: &Config, c: &Connect) -> Result<Client, CliError> {
    let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
    Ok(Client::connect(&path, config.client.timeout).await?)
}

async fn client_command(config: &Config, cmd: ClientCommand) -> Result<ExitCode, CliError> {
    match cmd {
        ClientCommand::Wait { connect: c, workers, timeout } => {
            let timeout = parse_duration(&timeout).map_err(usage)?;
            let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
            let start = Instant::now();
            let mut client = Client::connect(&path, timeout).await?;
            let have = client.wait_for_workers(workers, timeout.saturating_sub(start.elapsed())).await?;
            eprintln!("scheduler {} ready with {have} workers", client.file.address);
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Darts { connect: c, inputs, scale, input_seed, out } => {
            darts(config, &c, inputs, scale, input_seed, out.as_deref()).await
        }
        ClientCommand::Map { connect: c, name, inputs, job_id } => {
            let id = parse_job_id(job_id.as_deref())?;
            let tasks = read_jsonl_tasks(&name, &inputs)?;
            let mut client = connect(config, &c).await?;
            let job = client.submit_job(id, &name, tasks).await?;
            outln!("{}", job.id);
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Submit {
            connect: c,
            array,
            func,
            args,
            max_worker_kills,
            job_id,
            graph,
            priority,
            retries,
            time_limit,
            resources,
            cmd,
            argv,
        } => {
            let id = parse_job_id(job_id.as_deref())?;
            let (name, mut tasks) = match graph {
                Some(path) => {
                    if !argv.is_empty() {
                        return Err(usage("give either --graph FILE or a command after --, not both"));
                    }
                    read_graph(&path)?
                }
                None => submit_tasks(array.as_deref(), func, args.as_deref(), &cmd, argv)?,
            };
            let time_limit_ms = time_limit
                .as_deref()
                .map(|d| parse_duration(d).map(|d| d.as_millis() as u64))
                .transpose()
                .map_err(usage)?;
            let resources =
                resources.as_deref().map(crate::util::parse_resources).transpose().map_err(usage)?;
            for t in &mut tasks {
                if let Some(r) = &resources {
                    t.resources = r.clone();
                }
                if let Some(p) = priority {
                    t.priority = p;
                }
                if time_limit_ms.is_some() {
                    t.time_limit_ms = time_limit_ms;
                }
                if let Some(r) = retries {
                    t.retries = r;
                }
            }
            if max_worker_kills == Some(0) {
                return Err(usage("--max-worker-kills must be at least 1"));
            }
            for t in &mut tasks {
                t.max_worker_kills = max_worker_kills;
            }
            let mut client = connect(config, &c).await?;
            let job = client.submit_job(id, &name, tasks).await?;
            outln!("{}", job.id);
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Gather { connect: c, job, out, key: None } => {
            gather(config, &c, parse_job_id(Some(&job))?, out.as_deref()).await
        }
        ClientCommand::Gather { connect: c, job, out, key: Some(key) } => {
            let job = parse_job_id(Some(&job))?;
            let mut client = connect(config, &c).await?;
            let idx = client.resolve(job, &key).await?;
            let o = client.outcome(&crate::client::TaskFuture { job, idx }).await?;
            let (doc, code) = match &o.outcome {
                Outcome::Ok { result } => (crate::util::msgpack_to_json(result), 0),
                Outcome::Err { error, .. } => {
                    eprintln!("task {key} failed: {error}");
                    (serde_json::json!({"key": key, "attempts": o.attempts, "error": error}), 1)
                }
            };
            write_json(out.as_deref(), &doc)?;
            Ok(ExitCode::from(code))
        }
        ClientCommand::Ctl { connect: c, command, json } => {
            let mut client = connect(config, &c).await?;
            run_ctl(&mut client, command, json).await
        }
    }
}

/// `--json` output of the ctl commands.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    outln!("{}", serde_json::to_string_pretty(value).map_err(failed)?);
    Ok(())
}

/// A `Done` answer: the sentence (on stderr: it confirms an action), or
/// `{"ok": true, "message": …}` on stdout.
fn print_done(message: &str, json: bool) -> Result<ExitCode, CliError> {
    if json {
        print_json(&serde_json::json!({ "ok": true, "message": message }))?;
    } else {
        eprintln!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1000..=119_999 => format!("{:.1} s ago", ms as f64 / 1e3),
        _ => format!("{} min ago", ms / 60_000),
    }
}

/// `--json`: the value as JSON; otherwise what `table` prints of it.
fn show<T: serde::Serialize>(value: T, json: bool, table: impl FnOnce(T)) -> Result<ExitCode, CliError> {
    if json {
        print_json(&value)?;
    } else {
        table(value);
    }
    Ok(ExitCode::SUCCESS)
}

/// One admin command over an open connection (`actord ctl …` and the console).
pub async fn run_ctl(client: &mut Client, command: CtlCommand, json: bool) -> Result<ExitCode, CliError> {
    use crate::util::format_size;
    match command {
        CtlCommand::Workers => {
            let workers = client.workers().await?;
            show(workers, json, |workers| {
                outln!(
                    "{:<6} {:<20} {:>8} {:>6} {:>8} {:>12} {:<12} {:>10}  {:<9} RESOURCES",
                    "ID",
                    "HOST",
                    "PID",
                    "SLOTS",
                    "RUNNING",
                    "NANNY:SLOT",
                    "HEARD",
                    "RSS",
                    "STATE"
                );
                for w in workers {
                    let nanny =
                        w.nanny.map(|n| format!("{}:{}", n.pid, n.slot)).unwrap_or_else(|| "-".into());
                    let rss = if w.rss_kib > 0 { format_size(w.rss_kib * 1024) } else { "-".into() };
                    let state = if w.draining { "draining" } else { "active" };
                    let resources: Vec<String> =
                        w.resources.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    outln!(
                        "{:<6} {:<20} {:>8} {:>6} {:>8} {:>12} {:<12} {:>10}  {:<9} {}",
                        w.id.to_string(),
                        w.host,
                        w.pid,
                        w.slots,
                        w.running,
                        nanny,
                        ago(w.last_heard_ms),
                        rss,
                        state,
                        if resources.is_empty() { "-".into() } else { resources.join(",") }
                    );
                }
            })
        }
        CtlCommand::Nannies => {
            let nannies = client.nannies().await?;
            show(nannies, json, |nannies| {
                outln!("{:<6} {:<20} {:>8} {:>5} {:>9}  STATE", "NANNY", "HOST", "PID", "SLOT", "RESTARTS");
                for n in nannies {
                    for s in &n.slots {
                        outln!(
                            "{:<6} {:<20} {:>8} {:>5} {:>9}  {}",
                            n.id,
                            n.host,
                            n.pid,
                            s.slot,
                            s.restarts,
                            describe_slot(&s.state)
                        );
                    }
                }
            })
        }
        CtlCommand::Status => {
            let s = client.status().await?;
            let f = &client.file;
            if json {
                let mut v = serde_json::to_value(&s).map_err(failed)?;
                v["address"] = f.address.clone().into();
                v["pid"] = f.pid.into();
                v["host"] = f.host.clone().into();
                v["started"] = f.started.clone().into();
                print_json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            let uptime = crate::util::format_duration(std::time::Duration::from_secs(s.uptime_s));
            outln!("scheduler  {} (pid {} on {}, up {uptime})", f.address, f.pid, f.host);
            outln!("epoch      {}", s.epoch);
            match &s.journal_path {
                Some(p) => outln!("journal    {p} ({})", format_size(s.journal_bytes)),
                None => outln!("journal    none (results in memory)"),
            }
            outln!("workers    {} ({} slots), {} nannies", s.workers, s.slots, s.nannies);
            outln!("jobs       {} ({} done)", s.jobs, s.jobs_done);
            outln!(
                "tasks      {} finished, {} failed, {} running, {} queued (of {})",
                s.tasks_finished,
                s.tasks_failed,
                s.tasks_running,
                s.tasks_queued,
                s.tasks
            );
            outln!("throughput {:.1} tasks/s (last 10 s)", s.tasks_per_s);
            if s.draining {
                outln!("state      draining: no new tasks; stops when the running ones finish");
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCommand::Explain { job, key } => {
            let id = parse_job_id(Some(&job))?;
            let message = client.explain(id, &key).await?;
            if !json {
                outln!("{message}");
                return Ok(ExitCode::SUCCESS);
            }
            print_done(&message, json)
        }
        CtlCommand::Shutdown { drain: false } => print_done(&client.shutdown().await?, json),
        CtlCommand::Shutdown { drain: true } => {
            let message = client.admin(crate::protocol::FromClient::DrainAndShutdown).await?;
            eprintln!("{message}");
            // Until the scheduler goes away: say what is still running.
            let mut last = None;
            while let Ok(s) = client.status().await {
                if last != Some(s.tasks_running) {
                    eprintln!("{} tasks still running", s.tasks_running);
                    last = Some(s.tasks_running);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            print_done("drained; the scheduler stopped", json)
        }
        CtlCommand::Jobs => {
            let jobs = client.jobs().await?;
            show(jobs, json, |jobs| {
                outln!(
                    "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8}  STATE",
                    "JOB",
                    "NAME",
                    "TASKS",
                    "DONE",
                    "FAILED",
                    "RUNNING"
                );
                for j in jobs {
                    let state = if j.done_at.is_some() { "done" } else { "active" };
                    outln!(
                        "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8}  {state}",
                        j.id.to_string(),
                        j.name,
                        j.tasks,
                        j.finished,
                        j.failed,
                        j.running
                    );
                }
            })
        }
        CtlCommand::Job { job } => {
            let id = parse_job_id(Some(&job))?;
            let d = client.job(id).await?;
            show(d, json, |d| {
                let i = &d.info;
                let submitted = chrono::DateTime::from_timestamp_micros(i.submitted_at as i64)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                let state = if i.done_at.is_some() { "done" } else { "active" };
                outln!("job        {} ({})", i.id, i.name);
                outln!(
                    "state      {state}: {} of {} tasks finished, {} failed",
                    i.finished,
                    i.tasks,
                    i.failed
                );
                let states: Vec<String> = d.states.iter().map(|(k, n)| format!("{k} {n}")).collect();
                outln!("tasks      {}", states.join(", "));
                outln!("submitted  {submitted}");
                let took = if i.done_at.is_some() { "took" } else { "running" };
                outln!("{took:<10} {:.3} s, {:.1} tasks/s", d.elapsed_s, d.tasks_per_s);
                outln!("retries    {} attempts beyond the first", d.retried_attempts);
            })
        }
        CtlCommand::Tasks { job, state } => {
            let id = parse_job_id(Some(&job))?;
            let mut tasks = client.tasks(id).await?;
            if let Some(s) = &state {
                tasks.retain(|t| &t.state == s);
            }
            show(tasks, json, |tasks| {
                outln!(
                    "{:>6} {:<16} {:<14} {:>8} {:<6}  ERROR",
                    "TASK",
                    "KEY",
                    "STATE",
                    "ATTEMPTS",
                    "WORKER"
                );
                for t in tasks {
                    let worker = t.worker.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
                    let key = t.key.unwrap_or_else(|| "-".into());
                    let error = t.error.unwrap_or_default();
                    outln!(
                        "{:>6} {:<16} {:<14} {:>8} {:<6}  {error}",
                        t.idx,
                        key,
                        t.state,
                        t.attempts,
                        worker
                    );
                }
            })
        }
        CtlCommand::Cancel { job, keys } => {
            let id = parse_job_id(Some(&job))?;
            print_done(&client.cancel(id, keys).await?, json)
        }
        CtlCommand::Retry { job } => {
            let job = parse_job_id(Some(&job))?;
            print_done(&client.admin(crate::protocol::FromClient::Retry { job }).await?, json)
        }
        CtlCommand::Forget { job } => {
            let id = parse_job_id(Some(&job))?;
            print_done(&client.forget(id).await?, json)
        }
        CtlCommand::RestartWorker { worker } => {
            let id = parse_worker_id(&worker)?;
            print_done(&client.restart_worker(id).await?, json)
        }
        CtlCommand::RetireWorker { worker } => {
            let worker = parse_worker_id(&worker)?;
            print_done(&client.admin(crate::protocol::FromClient::RetireWorker { worker }).await?, json)
        }
        CtlCommand::Journal => {
            let j = client.journal().await?;
            show(j, json, |j| {
                match &j.path {
                    Some(p) => outln!("path       {p}"),
                    None => outln!("path       none: results are kept in memory (--no-journal)"),
                }
                outln!("size       {}", format_size(j.bytes));
                outln!("records    {} ({} replayed at start-up)", j.records, j.records_replayed);
                outln!("epoch      {}", j.epoch);
                let last = j.last_flush_ms_ago.map(ago).unwrap_or_else(|| "none yet".into());
                outln!("flushes    {}, last {last}", j.flushes);
            })
        }
        CtlCommand::LogLevel { level } => {
            print_done(&client.admin(crate::protocol::FromClient::LogLevel { level }).await?, json)
        }
    }
}

fn describe_slot(s: &crate::protocol::SlotState) -> String {
    use crate::protocol::SlotState::*;
    match s {
        Running { pid } => format!("running (pid {pid})"),
        Restarting { in_ms, last_exit } => format!("restarting in {in_ms} ms after: {last_exit}"),
        Failed { reason } => format!("FAILED: {reason}"),
        Retired => "retired".into(),
    }
}

/// A job id from the command line, or a new one.
fn parse_job_id(s: Option<&str>) -> Result<JobId, CliError> {
    match s {
        None => Ok(JobId::new()),
        Some(s) => s.parse().map_err(|e| usage(format!("{s:?} is not a job id: {e}"))),
    }
}

/// `w3` or `3`.
fn parse_worker_id(s: &str) -> Result<crate::ids::WorkerId, CliError> {
    s.trim()
        .trim_start_matches('w')
        .parse()
        .map(crate::ids::WorkerId)
        .map_err(|_| usage(format!("{s:?} is not a worker id (e.g. w3, see `actord ctl workers`)")))
}

fn read_jsonl_tasks(name: &str, inputs: &str) -> Result<Vec<TaskSpec>, CliError> {
    let text = if inputs == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| usage(format!("cannot read stdin: {e}")))?
    } else {
        let path = expand_path(inputs).map_err(usage)?;
        std::fs::read_to_string(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
    };
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| usage(format!("{inputs}:{}: not JSON: {e}", i + 1)))?;
        tasks.push(crate::client::fn_task(name, &v)?);
    }
    if tasks.is_empty() {
        return Err(usage(format!("{inputs}: no inputs (one JSON value per line)")));
    }
    Ok(tasks)
}

/// One task of a `--graph` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphTask {
    key: Option<String>,
    #[serde(rename = "fn")]
    func: Option<String>,
    args: Option<serde_json::Value>,
    cmd: Option<Vec<String>>,
    #[serde(default)]
    deps: Vec<GraphDep>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    retries: u32,
    max_worker_kills: Option<u32>,
    /// e.g. "30s", "2m".
    time_limit: Option<String>,
    #[serde(default)]
    resources: crate::protocol::Resources,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum GraphDep {
    Key(String),
    Index(u64),
    Other { job: String, key: String },
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum GraphFile {
    Tasks(Vec<GraphTask>),
    Job { name: Option<String>, tasks: Vec<GraphTask> },
}

/// Reads a `--graph` file: `{"name": …, "tasks": [...]}` or just the array.
fn read_graph(path: &str) -> Result<(String, Vec<TaskSpec>), CliError> {
    let p = expand_path(path).map_err(usage)?;
    let text = std::fs::read_to_string(&p).map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?;
    let file: GraphFile =
        serde_json::from_str(&text).map_err(|e| usage(format!("{}: not a task graph: {e}", p.display())))?;
    let (name, tasks) = match file {
        GraphFile::Tasks(t) => (None, t),
        GraphFile::Job { name, tasks } => (name, tasks),
    };
    let mut specs = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let kind = match (t.func, t.cmd) {
            (Some(f), None) => {
                let args = t.args.unwrap_or(serde_json::Value::Null);
                crate::client::fn_task(&f, &args)?.kind
            }
            (None, Some(argv)) if !argv.is_empty() && t.args.is_none() => {
                crate::protocol::TaskKind::Cmd { argv, env: Vec::new(), discard_output: false }
            }
            _ => {
                return Err(usage(format!(
                    "{}: task {i} needs either \"fn\" (with optional \"args\") or a non-empty \"cmd\"",
                    p.display()
                )))
            }
        };
        let mut deps = Vec::with_capacity(t.deps.len());
        for d in t.deps {
            deps.push(match d {
                GraphDep::Key(k) => crate::protocol::Dep::key(k),
                GraphDep::Index(i) => crate::protocol::Dep::key(i.to_string()),
                GraphDep::Other { job, key } => {
                    crate::protocol::Dep { job: Some(parse_job_id(Some(&job))?), key }
                }
            });
        }
        specs.push(TaskSpec {
            key: t.key,
            kind,
            max_worker_kills: t.max_worker_kills,
            deps,
            priority: t.priority,
            retries: t.retries,
            resources: t.resources,
            time_limit_ms: t
                .time_limit
                .as_deref()
                .map(|d| parse_duration(d).map(|d| d.as_millis() as u64))
                .transpose()
                .map_err(|e| usage(format!("{}: task {i}: {e}", p.display())))?,
        });
    }
    if specs.is_empty() {
        return Err(usage(format!("{}: the graph has no tasks", p.display())));
    }
    Ok((name.unwrap_or_else(|| "graph".into()), specs))
}

/// Parses `--array 1-200` (or a single `7`) into the inclusive range.
fn parse_array(s: &str) -> Result<std::ops::RangeInclusive<u64>, CliError> {
    let bad = || usage(format!("--array {s:?}: expected a range like 1-200"));
    let (a, b): (u64, u64) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a > b {
        return Err(bad());
    }
    let n: u64 = (b - a).saturating_add(1);
    if n > MAX_ARRAY_TASKS {
        return Err(usage(format!(
            "--array {s:?} has {n} tasks; one submission takes at most {MAX_ARRAY_TASKS}: split it into several"
        )));
    }
    Ok(a..=b)
}

/// Most tasks one `--array` submission may create (a million `cmd` specs
/// are tens of MB in one frame).
const MAX_ARRAY_TASKS: u64 = 1_000_000;

fn submit_tasks(
    array: Option<&str>,
    func: Option<String>,
    args: Option<&str>,
    opts: &super::CmdOptions,
    argv: Vec<String>,
) -> Result<(String, Vec<TaskSpec>), CliError> {
    if let Some(f) = func {
        if !argv.is_empty() {
            return Err(usage("give either --fn NAME or a command after --, not both"));
        }
        if opts.each_line.is_some() || opts.output.is_some() || !opts.env.is_empty() {
            return Err(usage("--each-line, --output and --env are for commands, not --fn"));
        }
        let v: serde_json::Value = match args {
            Some(a) => serde_json::from_str(a).map_err(|e| usage(format!("--args is not JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        return Ok((f.clone(), vec![crate::client::fn_task(&f, &v)?]));
    }
    if argv.is_empty() {
        return Err(usage(
            "nothing to run: give a command after -- (e.g. actord submit -- hostname) or --fn NAME",
        ));
    }
    let name = argv[0].clone();
    let discard_output = match opts.output.as_deref() {
        None | Some("files") => false,
        Some("none") => true,
        Some(other) => return Err(usage(format!("--output {other:?}: expected files or none"))),
    };
    let mut env = Vec::with_capacity(opts.env.len());
    for e in &opts.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => return Err(usage(format!("--env {e:?}: expected NAME=VALUE"))),
        }
    }
    let cmd = |key: Option<String>, entry: Option<&str>| {
        let mut env = env.clone();
        if let Some(line) = entry {
            env.push(("ACTORD_ENTRY".to_string(), line.to_string()));
        }
        let kind = crate::protocol::TaskKind::Cmd { argv: argv.clone(), env, discard_output };
        TaskSpec { key, ..TaskSpec::new(kind) }
    };
    let tasks: Vec<TaskSpec> = match (array, &opts.each_line) {
        (Some(r), _) => parse_array(r)?.map(|i| cmd(Some(i.to_string()), None)).collect(),
        (None, Some(file)) => {
            let path = expand_path(file).map_err(usage)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return Err(usage(format!("{}: no lines", path.display())));
            }
            lines.iter().enumerate().map(|(n, line)| cmd(Some((n + 1).to_string()), Some(line))).collect()
        }
        (None, None) => vec![cmd(None, None)],
    };
    Ok((name, tasks))
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(pb)
}

async fn gather(config: &Config, c: &Connect, job: JobId, out: Option<&str>) -> Result<ExitCode, CliError> {
    let mut client = connect(config, c).await?;
    let pb = progress_bar(0);
    let gathered = client
        .gather_with(job, |done, total| {
            if let Some(pb) = &pb {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            }
        })
        .await?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut results = Vec::with_capacity(gathered.outcomes.len());
    let mut failures = Vec::new();
    for o in &gathered.outcomes {
        match &o.outcome {
            Outcome::Ok { result } => results.push(crate::util::msgpack_to_json(result)),
            Outcome::Err { error, .. } => {
                results.push(serde_json::Value::Null);
                failures.push(serde_json::json!({"task": o.idx, "attempts": o.attempts, "error": error}));
            }
        }
    }
    let doc = serde_json::json!({
        "job": job.to_string(),
        "tasks": gathered.outcomes.len(),
        "finished": gathered.outcomes.len() - failures.len(),
        "failed": failures.len(),
        "results": results,
        "failures": failures,
    });
    write_json(out, &doc)?;
    for f in &failures {
        eprintln!("task {} failed: {}", f["task"], f["error"].as_str().unwrap_or_default());
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn write_json(out: Option<&str>, doc: &serde_json::Value) -> Result<(), CliError> {
    match out {
        None => outln!("{doc}"),
        Some(p) => {
            let path = expand_path(p).map_err(usage)?;
            let text = serde_json::to_string(doc).map_err(failed)?;
            std::fs::write(&path, text)
                .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

async fn darts(
    config: &Config,
    c: &Connect,
    n_inputs: usize,
    scale: f64,
    input_seed: u64,
    out: Option<&str>,
) -> Result<ExitCode, CliError> {
    if n_inputs == 0 {
        return Err(usage("--inputs must be at least 1"));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(usage("--scale must be a positive number"));
    }
    let inputs = crate::darts::make_inputs(n_inputs, scale, input_seed);
    let total: u64 = inputs.iter().map(|(d, _)| d).sum();
    eprintln!("{} inputs, {total} darts total", inputs.len());
    let mut client = connect(config, c).await?;
    let workers = client.workers().await?;
    let t0 = Instant::now();
    let job = client.map("darts", inputs.clone()).await?;
    let pb = progress_bar(job.tasks as u64);
    let gathered = client
        .gather_with(job.id, |done, _| {
            if let Some(pb) = &pb {
                pb.set_position(done as u64);
            }
        })
        .await?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let wall = t0.elapsed().as_secs_f64();
    if let Some((idx, error)) = gathered.failed().next() {
        return Err(failed(format!("darts task {idx} failed: {error}")));
    }
    let results: Vec<(u64, u64)> = gathered.values()?;
    let in_circle: u64 = results.iter().map(|r| r.0).sum();
    if results.iter().map(|r| r.1).sum::<u64>() != total {
        return Err(failed("dart count mismatch between inputs and results"));
    }
    let pi = 4.0 * in_circle as f64 / total as f64;
    let threads = workers.iter().map(|w| w.slots).max().unwrap_or(0);
    let doc = serde_json::json!({
        "system": "actord",
        "workload": "darts",
        "n": inputs.len(),
        "tasks": inputs.len(),
        "scale": scale,
        "input_seed": input_seed,
        "rng": "private",
        "darts": total,
        "status": "ok",
        "workers": workers.len(),
        "threads_per_worker": threads,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "tasks_per_s": inputs.len() as f64 / wall,
        "darts_per_s": (total as f64 / wall).round(),
        "pi": pi,
        "pi_abs_err": (pi - std::f64::consts::PI).abs(),
        "in_circle": in_circle,
        "job": job.id.to_string(),
        "inputs": inputs,
        "results": results,
    });
    if let Some(p) = out {
        write_json(Some(p), &doc)?;
        eprintln!("pi ~= {pi:.6} from {total} darts in {wall:.2}s -> {p}");
    } else {
        eprintln!("pi ~= {pi:.6} from {total} darts in {wall:.2}s");
    }
    outln!("{pi}");
    Ok(ExitCode::SUCCESS)
}
