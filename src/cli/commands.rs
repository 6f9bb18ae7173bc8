//! Which role or client command each `actord` subcommand runs, and the
//! helpers they share (errors, connecting, signals, job ids).

use super::gather::{gather, gather_key};
use super::submit::Prepared;
use super::{Cli, CliError, ClientCommand, Command, Connect};
use crate::client::Client;
use crate::config::Config;
use crate::functions::Registry;
use crate::ids::JobId;
use crate::util::{expand_path, parse_duration};
use std::process::ExitCode;
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
        Command::Scheduler(a) => super::scheduler::run(&config, a).await,
        Command::Worker(a) => super::worker::run(&config, &a, registry).await,
        Command::Nanny(a) => super::nanny::run(&config, config_path.as_deref(), &a).await,
        Command::Journal(c) => super::journal::run(c),
        Command::Local(a) => super::local::local(&config, config_path.as_deref(), a).await,
        Command::Client(c) => client_command(&config, c).await,
        Command::Console(c) => {
            let client = connect(&config, &c).await?;
            super::console::run(client).await
        }
    }
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

pub(super) async fn connect(config: &Config, c: &Connect) -> Result<Client, CliError> {
    let path = crate::schedfile::resolve_path(c.scheduler_file.as_deref()).map_err(usage)?;
    Ok(Client::connect(&path, config.client.timeout).await?)
}

pub(super) async fn client_command(config: &Config, cmd: ClientCommand) -> Result<ExitCode, CliError> {
    match cmd {
        ClientCommand::Wait { connect: c, workers, timeout } => wait(&c, workers, &timeout).await,
        ClientCommand::Darts { connect: c, inputs, scale, input_seed, out } => {
            super::darts::darts(config, &c, inputs, scale, input_seed, out.as_deref()).await
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
            gather_key(config, &c, parse_job_id(Some(&job))?, &key, out.as_deref()).await
        }
        ClientCommand::Ctl { connect: c, command, json } => {
            let mut client = connect(config, &c).await?;
            super::ctl::run_ctl(&mut client, command, json).await
        }
    }
}

/// `wait --workers N --timeout T`: until the scheduler answers and N workers registered.
async fn wait(c: &Connect, workers: usize, timeout_flag: &str) -> Result<ExitCode, CliError> {
    let timeout = parse_duration(timeout_flag).map_err(usage)?;
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
