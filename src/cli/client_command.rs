//! The client subcommands (`wait`, `submit`, `map`, `darts`, `gather`,
//! `ctl`): which function runs each.

use super::common::{connect, failed, parse_job_id, usage};
use super::gather::{gather, gather_key};
use super::submit::Prepared;
use super::{CliError, ClientCommand, Connect};
use crate::client::Client;
use crate::config::Config;
use crate::util::parse_duration;
use std::process::ExitCode;
use std::time::Instant;

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
