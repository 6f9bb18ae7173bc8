//! What each `actord` subcommand does.

use super::submit::Prepared;
use super::{Cli, CliError, ClientCommand, Command, Connect, NannyArgs, WorkerArgs};
use crate::actors::nanny::{Nanny, NannyMsg, NannyOptions};
use crate::actors::{start_scheduler, SchedulerOptions};
use crate::client::Client;
use crate::config::Config;
use crate::core::CoreConfig;
use crate::functions::Registry;
use crate::ids::JobId;
use crate::protocol::Outcome;
use crate::util::{expand_path, parse_duration};
use ractor::Actor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub(super) fn usage(e: impl ToString) -> CliError {
    CliError::Usage(e.to_string())
}

pub(super) fn failed(e: impl ToString) -> CliError {
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
            opts.advertise = a.advertise;
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
            crate::actors::worker::run_worker(opts, registry).await.map_err(failed)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nanny(a) => {
            let mut nanny = start_nanny(&config, config_path.as_deref(), &a).await?;
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; stopping workers"),
                dismissed = nanny.1.stopped() => {
                    if !dismissed {
                        return Err(failed("the nanny stopped unexpectedly"));
                    }
                    tracing::info!("the scheduler shut down for good; the nanny exits");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            stop_nanny(nanny).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal(c) => super::journal::run(c),
        Command::Local(a) => super::local::local(&config, config_path.as_deref(), a).await,
        Command::Client(c) => client_command(&config, c).await,
        Command::Console(c) => {
            let client = connect(&config, &c).await?;
            super::console::run(client).await
        }
    }
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub(super) fn scheduler_options(
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
        advertise: None,
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

fn worker_options(config: &Config, a: &WorkerArgs) -> Result<crate::actors::worker::WorkerOptions, CliError> {
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
    Ok(crate::actors::worker::WorkerOptions {
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

pub(super) type NannyHandle = (ractor::ActorRef<NannyMsg>, NannyJoin);

/// The nanny actor's task, and whether the scheduler dismissed it.
pub(super) struct NannyJoin(tokio::task::JoinHandle<()>, Arc<AtomicBool>);

impl NannyJoin {
    /// Resolves when the nanny stops: `true` if the scheduler shut down
    /// for good and told it to, `false` if it stopped by itself.
    async fn stopped(&mut self) -> bool {
        let _ = (&mut self.0).await;
        self.1.load(Ordering::SeqCst)
    }
}

pub(super) async fn start_nanny(
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
        dismissed: Default::default(),
    };
    let dismissed = opts.dismissed.clone();
    let (nanny, join) = Actor::spawn(None, Nanny, opts).await.map_err(failed)?;
    Ok((nanny, NannyJoin(join, dismissed)))
}

pub(super) async fn stop_nanny((nanny, join): NannyHandle) {
    let _ = nanny.cast(NannyMsg::Shutdown);
    let _ = join.0.await;
}

pub(super) async fn connect(config: &Config, c: &Connect) -> Result<Client, CliError> {
    let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
    Ok(Client::connect(&path, config.client.timeout).await?)
}

pub(super) async fn client_command(config: &Config, cmd: ClientCommand) -> Result<ExitCode, CliError> {
    match cmd {
        ClientCommand::Wait { connect: c, workers, timeout } => {
            let timeout_flag = timeout;
            let timeout = parse_duration(&timeout_flag).map_err(usage)?;
            let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
            let start = Instant::now();
            let mut client = Client::connect_startup(&path, timeout).await?;
            let have = match client.wait_for_workers(workers, timeout.saturating_sub(start.elapsed())).await {
                Ok(have) => have,
                // Say the --timeout as given, not what was left of it.
                Err(crate::client::ClientError::Connect(_)) => {
                    let have = client.workers().await.map(|w| w.len()).unwrap_or(0);
                    return Err(failed(format!(
                        "only {have} of {workers} workers registered within --timeout {timeout_flag}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            eprintln!("scheduler {} ready with {have} workers", client.file.address);
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Darts { connect: c, inputs, scale, input_seed, out } => {
            darts(config, &c, inputs, scale, input_seed, out.as_deref()).await
        }
        ClientCommand::Map { connect: c, name, inputs, job_id } => {
            let job = super::submit::prepare_map(&name, &inputs, job_id.as_deref())?;
            submit(config, &c, job).await
        }
        ClientCommand::Submit(a) => {
            let c = a.connect.clone();
            submit(config, &c, super::submit::prepare_submit(a)?).await
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
            super::ctl::run_ctl(&mut client, command, json).await
        }
    }
}

/// Submits the job and prints its id once it is durable.
async fn submit(config: &Config, c: &Connect, job: Prepared) -> Result<ExitCode, CliError> {
    let mut client = connect(config, c).await?;
    let job = client.submit_job(job.id, &job.name, job.tasks).await?;
    outln!("{}", job.id);
    Ok(ExitCode::SUCCESS)
}

/// A job id from the command line, or a new one.
pub(super) fn parse_job_id(s: Option<&str>) -> Result<JobId, CliError> {
    match s {
        None => Ok(JobId::new()),
        Some(s) => s.parse().map_err(|e| usage(format!("{s:?} is not a job id: {e}"))),
    }
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
    let doc = gather_doc(config, c, job).await?;
    write_json(out, &doc)?;
    Ok(report_failures(&doc))
}

/// Waits for the job (a progress bar on a terminal) and returns what
/// `gather` writes: `results` in task order, `failures`, counts.
pub(super) async fn gather_doc(
    config: &Config,
    c: &Connect,
    job: JobId,
) -> Result<serde_json::Value, CliError> {
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
    Ok(doc)
}

/// Says on stderr which tasks failed; the exit code of a gathered job.
pub(super) fn report_failures(doc: &serde_json::Value) -> ExitCode {
    let failures = doc["failures"].as_array().map(Vec::as_slice).unwrap_or_default();
    for f in failures {
        eprintln!("task {} failed: {}", f["task"], f["error"].as_str().unwrap_or_default());
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) fn write_json(out: Option<&str>, doc: &serde_json::Value) -> Result<(), CliError> {
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

/// `darts`' own flags, checked before anything connects.
pub(super) fn check_darts(n_inputs: usize, scale: f64) -> Result<(), CliError> {
    if n_inputs == 0 {
        return Err(usage("--inputs must be at least 1"));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(usage("--scale must be a positive number"));
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
    check_darts(n_inputs, scale)?;
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
