//! The helpers every subcommand shares: its errors, connecting to the
//! scheduler, the shutdown signal, job ids and directories from flags.

use super::{CliError, Connect};
use crate::client::Client;
use crate::config::Config;
use crate::ids::JobId;
use crate::util::expand_path;

pub(super) fn usage(e: impl ToString) -> CliError {
    CliError::Usage(e.to_string())
}

pub(super) fn failed(e: impl ToString) -> CliError {
    CliError::Failed(e.to_string())
}

/// Connects to the scheduler the scheduler file names.
pub(super) async fn connect(config: &Config, c: &Connect) -> Result<Client, CliError> {
    let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
    Ok(Client::connect(&path, config.client.timeout).await?)
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A job id from the command line, or a new one.
pub(super) fn parse_job_id(s: Option<&str>) -> Result<JobId, CliError> {
    match s {
        None => Ok(JobId::new()),
        Some(s) => s.parse().map_err(|e| usage(format!("{s:?} is not a job id: {e}"))),
    }
}

/// A directory given on the command line, made absolute against where the
/// command runs (a worker elsewhere has another current directory).
pub fn absolute_dir(d: &str) -> Result<String, String> {
    let p = expand_path(d)?;
    let abs = std::path::absolute(&p).map_err(|e| format!("{d:?}: {e}"))?;
    Ok(abs.display().to_string())
}
