//! `actord local`: a whole cluster for one client command (scheduler and
//! nanny here, workers as child processes), then teardown. `submit` and
//! `map` wait for their job, as if `gather` followed.

use super::client_command::client_command;
use super::common::{absolute_dir, connect, failed, shutdown_signal, usage};
use super::gather::{gather_doc, report_failures, write_json};
use super::nanny::{start_nanny, stop_nanny};
use super::scheduler::scheduler_options;
use super::submit::{prepare_map, prepare_submit, Prepared};
use super::{CliError, ClientCommand, Connect, LocalArgs, NannyArgs, WorkerArgs};
use crate::actors::bind;
use crate::client::Client;
use crate::config::Config;
use crate::util::expand_path;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The cluster's temporary directory, removed however `local` ends.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir, CliError> {
        let base = std::env::temp_dir().join(format!(
            "actord-local-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&base)
            .map_err(|e| failed(format!("cannot create {}: {e}", base.display())))?;
        Ok(TempDir(base))
    }
}

impl Drop for TempDir {
    /// A journal flush still finishing as the scheduler stops may write its
    /// high-water mark while the tree is removed: try again (bounded) until
    /// nothing is left.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::fs::remove_dir_all(&self.0).is_err()
            && self.0.exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// What the client command will submit, built (and so checked) before
/// anything starts; `None` for the commands that submit nothing of theirs.
fn prepare(job: &ClientCommand) -> Result<Option<Prepared>, CliError> {
    match job {
        ClientCommand::Map { name, inputs, job_id, .. } => {
            Ok(Some(prepare_map(name, inputs, job_id.as_deref())?))
        }
        ClientCommand::Submit(a) => Ok(Some(prepare_submit(a.clone())?)),
        ClientCommand::Darts { inputs, scale, .. } => {
            super::darts::check_darts(*inputs, *scale)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

pub async fn local(config: &Config, config_path: Option<&Path>, a: LocalArgs) -> Result<ExitCode, CliError> {
    if a.workers == 0 {
        return Err(usage("--workers must be at least 1"));
    }
    if a.threads == 0 {
        return Err(usage("--threads must be at least 1"));
    }
    let prepared = prepare(&a.job)?;
    let journal = a.journal.as_deref().map(expand_path).transpose().map_err(usage)?;
    let work_dir = absolute_dir(a.work_dir.as_deref().unwrap_or("actord-jobs")).map_err(usage)?;
    let dir = TempDir::create()?;
    let file = dir.0.join("scheduler.json");
    let file_str = file.display().to_string();
    let journal = match (journal, a.no_journal) {
        (_, true) => None,
        (Some(j), false) => Some(j),
        (None, false) => Some(dir.0.join("journal")),
    };
    let mut opts = scheduler_options(config, Some(&file_str), journal)?;
    opts.dashboard = super::scheduler::dashboard_options(config, &a.dashboard);
    let listener = bind("127.0.0.1:0").await.map_err(failed)?;
    let scheduler = crate::actors::start(listener, opts).await.map_err(failed)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = scheduler.serve(async {
        let _ = stopped.await;
    });
    tokio::pin!(serving);
    let nanny = match start_nanny(config, config_path, &nanny_args(&a, &file_str, &work_dir)).await {
        Ok(n) => n,
        Err(e) => {
            let _ = stop.send(());
            let _ = serving.await;
            return Err(e);
        }
    };
    let connect_to = Connect { scheduler_file: Some(file_str) };
    let mut job = a.job;
    *job.connect_mut() = connect_to.clone();
    let terminal = std::io::stderr().is_terminal();
    // Time the job on the whole cluster, as the Dask harness does.
    let ready = async {
        let mut c = Client::connect(&file, config.client.timeout).await?;
        c.wait_for_workers(a.workers as usize, config.client.timeout).await
    };
    let job_run = async {
        ready.await?;
        if terminal {
            eprintln!("local cluster: {} workers × {} threads", a.workers, a.threads);
        }
        match prepared {
            Some(p) => run_job(config, &connect_to, p, &work_dir).await,
            None => client_command(config, job).await,
        }
    };
    tokio::pin!(job_run);
    // The scheduler stopping as asked (`local ctl shutdown`) lets the
    // command finish; failing ends it.
    let mut served = false;
    let result = loop {
        tokio::select! {
            r = &mut job_run => break r,
            _ = shutdown_signal() => break Err(failed("interrupted")),
            r = &mut serving, if !served => {
                served = true;
                if let Err(reason) = r {
                    break Err(failed(format!("the scheduler stopped: {reason}")));
                }
            }
        }
    };
    stop_nanny(nanny).await;
    if !served {
        let _ = stop.send(());
        let _ = serving.await;
    }
    drop(dir);
    result
}

/// The nanny of the local cluster: its workers find the scheduler by `file`.
fn nanny_args(a: &LocalArgs, file: &str, work_dir: &str) -> NannyArgs {
    NannyArgs {
        workers: a.workers,
        memory_limit: None,
        worker: WorkerArgs {
            threads: Some(a.threads),
            scheduler_file: Some(file.to_string()),
            death_timeout: None,
            work_dir: Some(work_dir.to_string()),
            resources: None,
            gpus: None,
            python: a.python.clone(),
            preload: Vec::new(),
            walltime_end: None,
            lifetime: None,
            walltime_margin: None,
            results_dir: None,
        },
    }
}

/// Submits, waits, and prints the results (functions) or a summary
/// (commands, whose output stays in the work dir); exit 1 if a task failed.
async fn run_job(config: &Config, c: &Connect, job: Prepared, work_dir: &str) -> Result<ExitCode, CliError> {
    let commands = job.has_commands();
    let mut client = connect(config, c).await?;
    let submitted = client.submit_job(job.id, &job.name, job.tasks).await?;
    drop(client);
    if std::io::stderr().is_terminal() {
        eprintln!("job {} submitted: {} tasks", submitted.id, submitted.tasks);
    }
    let doc = gather_doc(config, c, submitted.id).await?;
    if commands {
        let dir = Path::new(work_dir).join(submitted.id.to_string());
        outln!(
            "job {}: {} of {} tasks finished, {} failed; output in {}",
            submitted.id,
            doc["finished"],
            doc["tasks"],
            doc["failed"],
            dir.display()
        );
    } else {
        write_json(None, &doc)?;
    }
    Ok(report_failures(&doc))
}
