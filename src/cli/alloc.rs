//! `actord alloc`: every `--interval`, asks the scheduler for its backlog and
//! Slurm where its allocations are, then submits or cancels allocations that
//! run `actord nanny` as `alloc::decide` says, keeping them in a state file.

use super::common::{failed, shutdown_signal, usage};
use super::CliError;
use crate::alloc::slurm::{self, SlurmCommands, Submission};
use crate::alloc::{decide, Alloc, AllocFile, AllocState, Backlog, Policy};
use crate::client::Client;
use crate::config::Config;
use crate::util::parse_duration;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct AllocArgs {
    /// Scheduler file [default: $ACTORD_SCHEDULER_FILE, else
    /// $SCRATCH/actord/scheduler.json, else ./actord-scheduler.json].
    #[arg(long, value_name = "FILE")]
    pub scheduler_file: Option<String>,
    /// Workers kept even when there is no work.
    #[arg(long, default_value_t = 0)]
    pub min_workers: u32,
    /// Workers never exceeded (over all allocations).
    #[arg(long)]
    pub max_workers: u32,
    /// Workers the nanny of each allocation runs.
    #[arg(long, default_value_t = 1)]
    pub workers_per_alloc: u32,
    /// Task slots of each worker.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Cancel allocations beyond --min-workers once the scheduler has had
    /// nothing to run for this long, e.g. 5m.
    #[arg(long, default_value = "5m")]
    pub idle_timeout: String,
    /// Time limit of each allocation (sbatch --time), e.g. 30m or 2h.
    #[arg(long)]
    pub walltime: Option<String>,
    /// An extra sbatch argument, e.g. --sbatch-arg=--qos=debug (repeatable).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Print the sbatch and scancel lines one round would run, and run none.
    #[arg(long)]
    pub dry_run: bool,
    /// How often to look, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub interval: String,
    /// The allocator's state file [default: actord-alloc.json beside the scheduler file].
    #[arg(long, value_name = "FILE")]
    pub state: Option<String>,
    /// Slurm job name of the allocations (how squeue finds them).
    #[arg(long, default_value = "actord-alloc")]
    pub name: String,
    /// The actord binary the allocations run [default: this one].
    #[arg(long, value_name = "PATH")]
    pub actord: Option<String>,
    #[arg(long, default_value = "sbatch", value_name = "PATH")]
    pub sbatch: String,
    #[arg(long, default_value = "scancel", value_name = "PATH")]
    pub scancel: String,
    #[arg(long, default_value = "squeue", value_name = "PATH")]
    pub squeue: String,
}

/// Everything a round needs, checked once.
struct Setup {
    policy: Policy,
    cmds: SlurmCommands,
    sub: Submission,
    scheduler_file: PathBuf,
    state_path: PathBuf,
    interval: Duration,
    dry_run: bool,
    timeout: Duration,
}

fn setup(config: &Config, config_path: Option<&Path>, a: AllocArgs) -> Result<Setup, CliError> {
    let dur = |flag: &str, v: &str| parse_duration(v).map_err(|e| usage(format!("{flag} {v:?}: {e}")));
    if a.workers_per_alloc == 0 || a.threads == 0 {
        return Err(usage("--workers-per-alloc and --threads must be at least 1"));
    }
    if a.min_workers > a.max_workers {
        return Err(usage(format!(
            "--min-workers {} is above --max-workers {}",
            a.min_workers, a.max_workers
        )));
    }
    if a.workers_per_alloc > a.max_workers {
        return Err(usage(format!(
            "--workers-per-alloc {} is above --max-workers {}: no allocation would fit",
            a.workers_per_alloc, a.max_workers
        )));
    }
    let cpus =
        a.workers_per_alloc.checked_mul(a.threads).ok_or_else(|| usage("too many CPUs per allocation"))?;
    let idle_timeout = dur("--idle-timeout", &a.idle_timeout)?;
    let interval = dur("--interval", &a.interval)?.max(Duration::from_millis(100));
    let walltime = a.walltime.as_deref().map(|w| dur("--walltime", w)).transpose()?;
    let file = crate::schedfile::resolve_path(a.scheduler_file.as_deref()).map_err(usage)?;
    let scheduler_file = std::path::absolute(&file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let state_path = match &a.state {
        Some(s) => crate::util::expand_path(s).map_err(usage)?,
        None => scheduler_file.with_file_name("actord-alloc.json"),
    };
    let exe = match a.actord {
        Some(p) => crate::util::expand_path(&p).map_err(usage)?,
        None => std::env::current_exe().map_err(|e| failed(format!("cannot find the actord binary: {e}")))?,
    };
    let mut nanny = vec![exe.display().to_string()];
    if let Some(c) = config_path {
        nanny.extend([
            "--config".into(),
            std::path::absolute(c).unwrap_or(c.to_path_buf()).display().to_string(),
        ]);
    }
    nanny.extend(["nanny".into(), "--scheduler-file".into(), scheduler_file.display().to_string()]);
    nanny.extend([
        "--workers".into(),
        a.workers_per_alloc.to_string(),
        "--threads".into(),
        a.threads.to_string(),
    ]);
    Ok(Setup {
        policy: Policy {
            min_workers: a.min_workers,
            max_workers: a.max_workers,
            workers_per_alloc: a.workers_per_alloc,
            threads: a.threads,
            idle_timeout_ms: idle_timeout.as_millis().min(u64::MAX as u128) as u64,
        },
        cmds: SlurmCommands { sbatch: a.sbatch, scancel: a.scancel, squeue: a.squeue },
        sub: Submission { name: a.name, walltime, cpus, extra: a.sbatch_args, nanny },
        scheduler_file,
        state_path,
        interval,
        dry_run: a.dry_run,
        timeout: config.client.timeout,
    })
}

/// Runs rounds until SIGTERM or SIGINT (one round with `--dry-run`). The
/// allocations stay when it stops: the state file hands them to the next run.
pub async fn run(config: &Config, config_path: Option<&Path>, a: AllocArgs) -> Result<ExitCode, CliError> {
    let s = setup(config, config_path, a)?;
    let mut state = AllocFile::load(&s.state_path).map_err(failed)?;
    let mut client = None;
    if s.dry_run {
        round(&s, &mut client, &mut state).await?;
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(state = %s.state_path.display(), allocations = state.allocs.len(), "allocator started");
    loop {
        if let Err(e) = round(&s, &mut client, &mut state).await {
            tracing::warn!(error = %e, "allocator round failed; trying again next round");
        }
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = tokio::time::sleep(s.interval) => {}
        }
    }
    tracing::info!(
        allocations = state.allocs.len(),
        "allocator stopped; its allocations stay in its state file"
    );
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One look at the scheduler and Slurm, and what follows from it.
async fn round(s: &Setup, client: &mut Option<Client>, state: &mut AllocFile) -> Result<(), CliError> {
    if !s.dry_run {
        refresh(s, state).await?;
    }
    let backlog = match backlog(s, client).await {
        Ok(b) => b,
        Err(e) => {
            *client = None;
            return Err(e);
        }
    };
    let now = now_ms();
    state.idle_since_ms = if backlog.idle() { Some(state.idle_since_ms.unwrap_or(now)) } else { None };
    let d = decide(&s.policy, backlog, &state.allocs, state.idle_since_ms, now);
    tracing::debug!(
        waiting = backlog.waiting,
        busy = backlog.busy,
        held = state.allocs.len(),
        submit = d.submit,
        cancel = d.cancel.len(),
        "allocator round"
    );
    if s.dry_run {
        for _ in 0..d.submit {
            outln!("{}", slurm::shell_line(&slurm::sbatch_argv(&s.cmds, &s.sub)));
        }
        if !d.cancel.is_empty() {
            outln!("{} {}", slurm::shell_word(&s.cmds.scancel), d.cancel.join(" "));
        }
        return Ok(());
    }
    for _ in 0..d.submit {
        let id = slurm::submit(&s.cmds, &s.sub).await.map_err(failed)?;
        tracing::info!(job = %id, waiting = backlog.waiting, "submitted an allocation");
        state.allocs.push(Alloc { id, state: AllocState::Pending, submitted_ms: now });
        state.save(&s.state_path).map_err(failed)?;
    }
    if !d.cancel.is_empty() {
        slurm::cancel(&s.cmds, &d.cancel).await.map_err(failed)?;
        tracing::info!(jobs = ?d.cancel, "cancelled allocations: the scheduler was idle");
        state.allocs.retain(|a| !d.cancel.contains(&a.id));
    }
    state.save(&s.state_path).map_err(failed)
}

/// Updates the allocations from squeue: ones it no longer lists have ended.
async fn refresh(s: &Setup, state: &mut AllocFile) -> Result<(), CliError> {
    let queue = slurm::queue(&s.cmds, &s.sub.name).await.map_err(failed)?;
    let before = state.allocs.clone();
    state.allocs.retain_mut(|a| match queue.get(&a.id) {
        Some(q) => {
            a.state = *q;
            true
        }
        None => {
            tracing::info!(job = %a.id, "allocation ended");
            false
        }
    });
    if state.allocs != before {
        state.save(&s.state_path).map_err(failed)?;
    }
    Ok(())
}

/// The scheduler's backlog, over one connection kept between rounds.
async fn backlog(s: &Setup, client: &mut Option<Client>) -> Result<Backlog, CliError> {
    if client.is_none() {
        *client = Some(Client::connect(&s.scheduler_file, s.timeout).await?);
    }
    let c = client.as_mut().expect("connected above");
    let st = c.status().await?;
    Ok(Backlog { waiting: st.tasks_queued, busy: st.tasks_running.saturating_add(st.tasks_prefetched) })
}
