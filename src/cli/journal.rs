//! `actord journal check DIR`: the journal's verification, offline, as a
//! report; exit 0 when intact, 1 when damaged.

use super::CliError;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum JournalCommand {
    /// Verify a journal (stopped scheduler): every record's checksum, and
    /// what it holds against its high-water mark and the scheduler file.
    Check {
        /// The journal directory.
        dir: String,
        /// Also check against the epoch this scheduler file says the
        /// journal reached.
        #[arg(long, value_name = "FILE")]
        scheduler_file: Option<String>,
    },
}

pub fn run(c: JournalCommand) -> Result<ExitCode, CliError> {
    let JournalCommand::Check { dir, scheduler_file } = c;
    let dir = crate::util::expand_path(&dir).map_err(CliError::Usage)?;
    let file =
        scheduler_file.as_deref().map(crate::util::expand_path).transpose().map_err(CliError::Usage)?;
    let expected = file.and_then(|f| crate::actors::expected_epoch(&f, &dir));
    let report =
        crate::persistence::verify(&dir, expected.as_ref()).map_err(|e| CliError::Failed(e.to_string()))?;
    outln!("journal   {}", report.dir.display());
    outln!("epoch     {}", report.epoch.map_or("none (no database)".into(), |e| e.to_string()));
    outln!("records   {} intact, in {} jobs", report.records, report.jobs);
    if !report.is_damaged() {
        outln!("status    OK");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("status    DAMAGED");
    for p in &report.problems {
        outln!("damage    {p}");
    }
    for j in report.jobs_affected() {
        outln!("affected  {j}");
    }
    eprintln!("actord: {}", report.message());
    Ok(ExitCode::from(1))
}
