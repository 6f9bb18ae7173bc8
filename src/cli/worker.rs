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
    let opts = worker_options(config, a)?;
    crate::actors::worker::run_worker(opts, registry).await.map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

/// The worker's options; `--work-dir` defaults to `actord-jobs/` beside the
/// scheduler file.
pub(super) fn worker_options(
    config: &Config,
    a: &WorkerArgs,
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
        results_dir: a.results_dir.as_deref().map(expand_path).transpose().map_err(usage)?,
        max_error: config.worker.max_error,
        max_frame: config.scheduler.max_frame,
        work_dir,
        nanny: nanny_slot_from_env(),
        python: a.python.clone().unwrap_or_else(|| config.worker.python.clone()),
    })
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
}
