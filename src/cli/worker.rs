//! `actord worker`: the worker role, its options from flags, configuration
//! and (when a nanny started it) the environment.

use super::common::{failed, usage};
use super::{CliError, WorkerArgs};
use crate::config::Config;
use crate::functions::Registry;
use crate::util::{expand_path, parse_duration};
use std::path::Path;
use std::process::ExitCode;

/// Runs one worker process with `registry`'s functions until it is told to stop.
pub async fn run(config: &Config, a: &WorkerArgs, registry: Registry) -> Result<ExitCode, CliError> {
    let opts = worker_options(config, a, 1)?;
    crate::actors::worker::run_worker(opts, registry).await.map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

/// The worker's options; `--work-dir` defaults to `actord-jobs/` beside the
/// scheduler file, and the threads to the CPUs given, shared among `share`
/// workers (a nanny's).
pub(super) fn worker_options(
    config: &Config,
    a: &WorkerArgs,
    share: u32,
) -> Result<crate::actors::worker::WorkerOptions, CliError> {
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
    let threads = threads(config, a.threads, share)?;
    let (walltime_end, walltime_margin) = walltime(config, a)?;
    let mut resources = a
        .resources
        .as_deref()
        .map(crate::util::parse_resources)
        .transpose()
        .map_err(usage)?
        .unwrap_or_default();
    let gpus = parse_gpus(a.gpus.as_deref());
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
        inline_result: config.worker.inline_result,
        result_cache: config.worker.result_cache,
        result_sync: match config.worker.result_sync.as_str() {
            "before" => crate::results_store::SyncMode::Before,
            "after" => crate::results_store::SyncMode::After,
            "never" => crate::results_store::SyncMode::Never,
            other => {
                return Err(usage(format!(
                    "worker.result_sync = {other:?}: expected \"before\", \"after\" or \"never\""
                )))
            }
        },
        results_dir: a.results_dir.as_deref().map(expand_path).transpose().map_err(usage)?,
        max_error: config.worker.max_error,
        max_frame: config.scheduler.max_frame,
        work_dir,
        nanny: nanny_slot_from_env(),
        python: a.python.clone().unwrap_or_else(|| config.worker.python.clone()),
        preload: preload(if a.preload.is_empty() { &config.worker.preload } else { &a.preload })?,
        walltime_end,
        walltime_margin,
    })
}

/// Module names to preload, checked: dotted identifiers only (they become
/// an executor's argument).
fn preload(names: &[String]) -> Result<Vec<String>, CliError> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            let ok = n.len() <= 200
                && n.split('.').all(|p| {
                    p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if ok {
                Ok(n.to_string())
            } else {
                Err(usage(format!("--preload {n:?}: not a module name (like numpy or dask.array)")))
            }
        })
        .collect()
}

/// `--threads`, else the configuration's, else the CPUs Slurm (or this
/// machine) gives, shared among `share` workers; logged with its source.
fn threads(config: &Config, flag: Option<u32>, share: u32) -> Result<u32, CliError> {
    let (threads, from) = match (flag, config.worker.threads) {
        (Some(0), _) => return Err(usage("--threads must be at least 1")),
        (Some(n), _) => (n, "--threads".to_string()),
        (None, n) if n > 0 => (n, "config worker.threads".to_string()),
        (None, _) => {
            let (cpus, from) = crate::slurm::cpus(|k| std::env::var(k).ok());
            let per = (cpus / share.max(1)).max(1);
            let from =
                if share > 1 { format!("{from} ({cpus}) shared by {share} workers") } else { from.into() };
            (per, from)
        }
    };
    tracing::info!(threads, from = %from, "threads per worker");
    Ok(threads)
}

/// When the allocation ends, if it does, and how long before that to drain.
fn walltime(
    config: &Config,
    a: &WorkerArgs,
) -> Result<(Option<std::time::SystemTime>, std::time::Duration), CliError> {
    let now = std::time::SystemTime::now();
    let flag = match (&a.walltime_end, &a.lifetime) {
        (Some(e), _) => {
            Some(crate::slurm::parse_epoch(e).map_err(|m| usage(format!("--walltime-end: {m}")))?)
        }
        (None, Some(l)) => Some(now + parse_duration(l).map_err(|m| usage(format!("--lifetime: {m}")))?),
        (None, None) => None,
    };
    let explicit = a
        .walltime_margin
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| usage(format!("--walltime-margin: {m}")))?;
    let Some((end, from)) = crate::slurm::allocation_end(flag, |k| std::env::var(k).ok()) else {
        return Ok((None, std::time::Duration::ZERO));
    };
    let margin = crate::slurm::drain_margin(end, now, explicit, config.worker.walltime_margin);
    let left_s = end.duration_since(now).unwrap_or_default().as_secs();
    tracing::info!(from = %from, ends_in_s = left_s, drain_margin_ms = margin.as_millis() as u64, "the allocation ends");
    Ok((Some(end), margin))
}

/// `--gpus 0,1`: the ids, blanks dropped.
fn parse_gpus(list: Option<&str>) -> Vec<String> {
    match list {
        Some(list) => list.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
        None => Vec::new(),
    }
}

/// A worker started by a nanny learns its slot from the environment.
fn nanny_slot_from_env() -> Option<crate::protocol::NannySlot> {
    let pid = std::env::var(crate::actors::nanny::ENV_NANNY_PID).ok()?.parse().ok()?;
    let slot = std::env::var(crate::actors::nanny::ENV_NANNY_SLOT).ok()?.parse().ok()?;
    Some(crate::protocol::NannySlot { pid, slot })
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_lists_drop_blanks() {
        assert_eq!(super::parse_gpus(Some(" 0, ,1,")), ["0", "1"]);
        assert!(super::parse_gpus(None).is_empty());
    }

    #[test]
    fn preloads_are_module_names_only() {
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(super::preload(&names(&[" numpy", "dask.array", ""])).unwrap(), ["numpy", "dask.array"]);
        for bad in ["os;rm -rf /", "../x", "a..b", "1abc", ".x", "x.", "--help", &"a".repeat(201)] {
            let e = super::preload(&names(&[bad])).unwrap_err().to_string();
            assert!(e.contains("not a module name"), "{bad}: {e}");
        }
    }
}
