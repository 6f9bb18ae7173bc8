//! `actord gather` and what `local` prints of a job: waiting for its
//! outcomes (a progress bar on a terminal), the results document, exit codes.

use super::common::{connect, failed, usage};
use super::{CliError, Connect};
use crate::config::Config;
use crate::ids::JobId;
use crate::protocol::Outcome;
use crate::util::expand_path;
use std::process::ExitCode;

pub(super) fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
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

/// `gather JOB`: the whole job's document; exit 1 if a task failed.
pub(super) async fn gather(
    config: &Config,
    c: &Connect,
    job: JobId,
    out: Option<&str>,
) -> Result<ExitCode, CliError> {
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
            // (`gather_with` read every stored result already.)
            Outcome::Stored(s) => {
                results.push(serde_json::Value::Null);
                let error = format!("stored result {} was not read", s.path);
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

/// `gather JOB --key KEY`: one task's result (or its failure; exit 1).
pub(super) async fn gather_key(
    config: &Config,
    c: &Connect,
    job: JobId,
    key: &str,
    out: Option<&str>,
) -> Result<ExitCode, CliError> {
    let mut client = connect(config, c).await?;
    let idx = client.resolve(job, key).await?;
    let o = client.outcome(&crate::client::TaskFuture { job, idx }).await?;
    let (doc, code) = match &o.outcome {
        Outcome::Ok { result } => (crate::util::msgpack_to_json(result), 0),
        Outcome::Err { error, .. } => {
            eprintln!("task {key} failed: {error}");
            (serde_json::json!({"key": key, "attempts": o.attempts, "error": error}), 1)
        }
        Outcome::Stored(s) => return Err(failed(format!("stored result {} was not read", s.path))),
    };
    write_json(out, &doc)?;
    Ok(ExitCode::from(code))
}
