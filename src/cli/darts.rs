//! `actord darts`: the tutorial's job — map `darts` over drawn inputs,
//! gather, check the dart count, print π (and the run's figures as JSON).

use super::common::{connect, failed, usage};
use super::gather::{progress_bar, write_json};
use super::{CliError, Connect};
use crate::config::Config;
use std::process::ExitCode;
use std::time::Instant;

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

/// What one darts run gave: the figures written with `--out`.
struct Run {
    inputs: Vec<(u64, u64)>,
    results: Vec<(u64, u64)>,
    total: u64,
    wall: f64,
    workers: usize,
    threads: u32,
    job: crate::ids::JobId,
}

pub(super) async fn darts(
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
    if results.iter().map(|r| r.1).sum::<u64>() != total {
        return Err(failed("dart count mismatch between inputs and results"));
    }
    let threads = workers.iter().map(|w| w.slots).max().unwrap_or(0);
    let run = Run { inputs, results, total, wall, workers: workers.len(), threads, job: job.id };
    let (pi, doc) = report(&run, scale, input_seed);
    let (total, wall) = (run.total, run.wall);
    if let Some(p) = out {
        write_json(Some(p), &doc)?;
        eprintln!("pi ~= {pi:.6} from {total} darts in {wall:.2}s -> {p}");
    } else {
        eprintln!("pi ~= {pi:.6} from {total} darts in {wall:.2}s");
    }
    outln!("{pi}");
    Ok(ExitCode::SUCCESS)
}

/// π from the results, and the document `--out` writes.
fn report(r: &Run, scale: f64, input_seed: u64) -> (f64, serde_json::Value) {
    let in_circle: u64 = r.results.iter().map(|r| r.0).sum();
    let pi = 4.0 * in_circle as f64 / r.total as f64;
    let doc = serde_json::json!({
        "system": "actord",
        "workload": "darts",
        "n": r.inputs.len(),
        "tasks": r.inputs.len(),
        "scale": scale,
        "input_seed": input_seed,
        "rng": "private",
        "darts": r.total,
        "status": "ok",
        "workers": r.workers,
        "threads_per_worker": r.threads,
        "wall_s": (r.wall * 1000.0).round() / 1000.0,
        "tasks_per_s": r.inputs.len() as f64 / r.wall,
        "darts_per_s": (r.total as f64 / r.wall).round(),
        "pi": pi,
        "pi_abs_err": (pi - std::f64::consts::PI).abs(),
        "in_circle": in_circle,
        "job": r.job.to_string(),
        "inputs": r.inputs,
        "results": r.results,
    });
    (pi, doc)
}
