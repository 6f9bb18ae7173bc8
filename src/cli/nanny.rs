//! `actord nanny`: the nanny role — the arguments its workers get, their
//! GPU shares, and the nanny actor started, awaited and stopped.

use super::common::{failed, shutdown_signal, usage};
use super::worker::worker_options;
use super::{CliError, NannyArgs};
use crate::actors::nanny::{Nanny, NannyMsg, NannyOptions, SlotExtra};
use crate::config::Config;
use ractor::Actor;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Runs the nanny until a signal (it stops its workers) or until the
/// scheduler dismisses it for good.
pub async fn run(config: &Config, config_path: Option<&Path>, a: &NannyArgs) -> Result<ExitCode, CliError> {
    let mut nanny = start_nanny(config, config_path, a).await?;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("signal received; stopping workers"),
        dismissed = nanny.1.stopped() => {
            if !dismissed {
                return Err(failed("the nanny stopped unexpectedly"));
            }
            tracing::info!("the scheduler shut down for good, or the allocation ends; the nanny exits");
            return Ok(ExitCode::SUCCESS);
        }
    }
    stop_nanny(nanny).await;
    Ok(ExitCode::SUCCESS)
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

fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub(super) async fn start_nanny(
    config: &Config,
    config_path: Option<&Path>,
    a: &NannyArgs,
) -> Result<NannyHandle, CliError> {
    if a.workers == 0 {
        return Err(usage("--workers must be at least 1"));
    }
    let w = worker_options(config, &a.worker, a.workers)?;
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find the actord binary: {e}")))?;
    let mut worker_args = vec![
        "--scheduler-file".to_string(),
        absolute(&w.scheduler_file).display().to_string(),
        "--threads".into(),
        w.threads.to_string(),
        "--death-timeout".into(),
        format!("{}ms", w.death_timeout.as_millis()),
        "--work-dir".into(),
        absolute(&w.work_dir).display().to_string(),
    ];
    if let Some(c) = config_path {
        worker_args.extend(["--config".into(), absolute(c).display().to_string()]);
    }
    if let Some(d) = &w.results_dir {
        worker_args.extend(["--results-dir".into(), absolute(d).display().to_string()]);
    }
    if let Some(r) = &a.worker.resources {
        worker_args.extend(["--resources".into(), r.clone()]);
    }
    if let Some(p) = &a.worker.python {
        worker_args.extend(["--python".into(), p.clone()]);
    }
    if !a.worker.preload.is_empty() {
        worker_args.extend(["--preload".into(), a.worker.preload.join(",")]);
    }
    // The end as the nanny learnt it, once: a respawned worker keeps it.
    let drain_at = w.walltime_end.map(|end| {
        let ms = crate::slurm::epoch_ms(end);
        worker_args.extend(["--walltime-end".into(), format!("{}.{:03}", ms / 1000, ms % 1000)]);
        worker_args.extend(["--walltime-margin".into(), format!("{}ms", w.walltime_margin.as_millis())]);
        end.checked_sub(w.walltime_margin).unwrap_or(end)
    });
    let per_slot = gpu_shares(&w.gpus, a.workers)?;
    let memory_limit = a.memory_limit.as_deref().map(crate::util::parse_size).transpose().map_err(usage)?;
    let n = &config.nanny;
    let opts = NannyOptions {
        exe,
        worker_args,
        per_slot,
        workers: a.workers,
        scheduler_file: absolute(&w.scheduler_file),
        max_restarts: n.max_restarts,
        restart_window: n.restart_window,
        backoff_base: n.backoff_base,
        backoff_max: n.backoff_max,
        memory_limit,
        memory_poll: n.memory_poll,
        stop_grace: n.stop_grace,
        min_uptime: n.min_uptime,
        drain_at,
        dismissed: Default::default(),
    };
    let dismissed = opts.dismissed.clone();
    let (nanny, join) = Actor::spawn(None, Nanny, opts).await.map_err(failed)?;
    Ok((nanny, NannyJoin(join, dismissed)))
}

/// `--gpus`: each worker gets its own share, as `--gpus` and `CUDA_VISIBLE_DEVICES`
/// (none without `--gpus`).
fn gpu_shares(gpus: &[String], workers: u32) -> Result<Vec<SlotExtra>, CliError> {
    if gpus.is_empty() {
        return Ok(Vec::new());
    }
    let workers = workers as usize;
    if gpus.len() < workers {
        return Err(usage(format!(
            "--gpus lists {} GPUs for {workers} workers: give each worker at least one",
            gpus.len()
        )));
    }
    let per = gpus.len() / workers;
    let share = |i: usize| gpus[i * per..(i + 1) * per].join(",");
    Ok((0..workers)
        .map(|i| (vec!["--gpus".into(), share(i)], vec![("CUDA_VISIBLE_DEVICES".into(), share(i))]))
        .collect())
}

pub(super) async fn stop_nanny((nanny, join): NannyHandle) {
    let _ = nanny.cast(NannyMsg::Shutdown);
    let _ = join.0.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_shared_evenly_and_never_short() {
        let gpus: Vec<String> = ["0", "1", "2", "3", "4"].map(String::from).into();
        let shares = gpu_shares(&gpus, 2).unwrap();
        assert_eq!(
            shares[0],
            (vec!["--gpus".into(), "0,1".into()], vec![("CUDA_VISIBLE_DEVICES".into(), "0,1".into())])
        );
        assert_eq!(shares[1].0[1], "2,3");
        assert!(gpu_shares(&[], 3).unwrap().is_empty());
        let e = gpu_shares(&gpus[..1], 2).unwrap_err().to_string();
        assert!(e.starts_with("--gpus lists 1 GPUs for 2 workers"), "{e}");
    }
}
