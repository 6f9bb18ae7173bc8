//! Which role or client command each `actord` subcommand runs.

use super::client_command::client_command;
use super::common::{connect, usage};
use super::{Cli, CliError, Command};
use crate::config::Config;
use crate::functions::Registry;
use crate::util::expand_path;
use std::process::ExitCode;

pub async fn run(cli: Cli, registry: Registry) -> Result<ExitCode, CliError> {
    let config_path = cli.config.as_deref().map(expand_path).transpose().map_err(usage)?;
    let config = Config::load(config_path.as_deref()).map_err(usage)?;
    match cli.command {
        Command::Scheduler(a) => super::scheduler::run(&config, a).await,
        Command::Worker(a) => super::worker::run(&config, &a, registry).await,
        Command::Nanny(a) => super::nanny::run(&config, config_path.as_deref(), &a).await,
        Command::Journal(c) => super::journal::run(c),
        Command::Alloc(a) => super::alloc::run(&config, config_path.as_deref(), a).await,
        Command::Local(a) => super::local::local(&config, config_path.as_deref(), a).await,
        Command::Client(c) => client_command(&config, c).await,
        Command::Console(c) => {
            let client = connect(&config, &c).await?;
            super::console::run(client).await
        }
    }
}
