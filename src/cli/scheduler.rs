//! `actord scheduler`: the scheduler role, from its flags and configuration
//! to a bound listener and a scheduler run until a signal, an admin, or its
//! own failure stops it.

use super::common::{failed, shutdown_signal, usage};
use super::{CliError, SchedulerArgs};
use crate::actors::{bind, SchedulerOptions};
use crate::config::Config;
use crate::core::CoreConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the scheduler until SIGTERM/SIGINT or `ctl shutdown`; an error if it
/// stopped by itself (e.g. its journal failed).
pub async fn run(config: &Config, a: SchedulerArgs) -> Result<ExitCode, CliError> {
    let journal = match a.no_journal {
        true => None,
        false => Some(crate::persistence::resolve_dir(a.journal.as_deref()).map_err(usage)?),
    };
    let mut opts = scheduler_options(config, a.scheduler_file.as_deref(), journal)?;
    opts.journal_repair = a.journal_repair;
    opts.advertise = a.advertise;
    opts.security = a.security;
    opts.dashboard = dashboard_options(config, &a.dashboard);
    if let Some(d) = &a.results_dir {
        opts.results_dir = Some(crate::util::expand_path(d).map_err(usage)?);
    }
    let listener = bind(&listen_addr(config, a.host, a.port)).await.map_err(failed)?;
    crate::actors::run(listener, shutdown_signal(), opts).await.map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

/// The status page's address: the flag's, else the configuration's (a
/// value other than the default counts as asked for); `None`: none.
pub(super) fn dashboard_options(
    config: &Config,
    flags: &super::DashboardFlags,
) -> Option<crate::dashboard::page::DashboardOptions> {
    if flags.no_dashboard {
        return None;
    }
    let (addr, explicit) = match &flags.dashboard {
        Some(a) => (a.clone(), true),
        None => {
            let c = config.scheduler.dashboard.trim();
            (c.to_string(), c != crate::dashboard::page::DEFAULT_ADDR)
        }
    };
    let off = addr.is_empty() || addr.eq_ignore_ascii_case("none");
    (!off).then_some(crate::dashboard::page::DashboardOptions { addr, explicit })
}

/// `HOST:PORT` to listen on: the flags, else the configuration's.
pub(super) fn listen_addr(config: &Config, host: Option<String>, port: Option<u16>) -> String {
    let host = host.unwrap_or_else(|| config.scheduler.host.clone());
    format!("{host}:{}", port.unwrap_or(config.scheduler.port))
}

/// The scheduler's options: the flags given, the configuration for the rest.
pub(super) fn scheduler_options(
    config: &Config,
    file: Option<&str>,
    journal: Option<PathBuf>,
) -> Result<SchedulerOptions, CliError> {
    let c = &config.scheduler;
    Ok(SchedulerOptions {
        reclaim_grace: c.reclaim_grace,
        commit_interval: c.commit_interval,
        journal_repair: false,
        advertise: None,
        security: Default::default(),
        max_connections: c.max_connections,
        dashboard: None,
        scheduler_file: crate::schedfile::resolve_path(file).map_err(usage)?,
        journal,
        max_frame: c.max_frame,
        max_send_queue: usize::try_from(c.max_send_queue).unwrap_or(usize::MAX),
        flush_timeout: c.flush_timeout,
        results_dir: match c.results_dir.as_str() {
            "" => None,
            d => Some(crate::util::expand_path(d).map_err(usage)?),
        },
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
