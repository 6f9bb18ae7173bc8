//! The `actord` command line. `main_with(registry)` lets library users build
//! their own worker binary with their own functions registered.

/// `println!` that exits quietly (status 0) once stdout is closed, as in
/// `actord ctl tasks JOB | head -3`, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

mod alloc;
mod client_command;
mod commands;
mod common;
mod console;
mod ctl;
mod darts;
mod gather;
mod graph;
mod journal;
mod local;
mod nanny;
mod scheduler;
mod submit;
mod table;
mod worker;

use crate::functions::Registry;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "actord", version, about = "A fault-tolerant, Dask-style distributed task system")]
pub struct Cli {
    /// Configuration file read on top of the built-in defaults (config/actord.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the scheduler; writes the scheduler file once it listens.
    Scheduler(SchedulerArgs),
    /// Start N worker processes and supervise them.
    Nanny(NannyArgs),
    /// Run one worker process (normally started by a nanny, or by srun).
    Worker(WorkerArgs),
    /// Run a whole cluster here for one client command, then tear it down.
    ///
    /// A scheduler, a nanny and its workers; `submit` and `map` wait for
    /// their job, as if `gather` followed, and exit with its status.
    Local(LocalArgs),
    /// Interactive admin console: the `ctl` commands with history, tab
    /// completion, and reconnection when the scheduler restarts.
    Console(Connect),
    /// Offline journal tools.
    #[command(subcommand)]
    Journal(journal::JournalCommand),
    /// Submit and cancel Slurm allocations that run `actord nanny`, as the
    /// scheduler's backlog asks (min/max workers, idle timeout, walltime).
    Alloc(alloc::AllocArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Where to write the scheduler file [default: $ACTORD_SCHEDULER_FILE,
    /// else $SCRATCH/actord/scheduler.json, else ./actord-scheduler.json].
    #[arg(long, value_name = "FILE")]
    pub scheduler_file: Option<String>,
    /// Address to listen on [config: scheduler.host].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [config: scheduler.port].
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to write in the scheduler file for peers to dial, HOST or
    /// HOST:PORT [default: the one listened on; with --host 0.0.0.0, an
    /// address of this host's network interfaces].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Journal directory (sled), replayed at start if it holds a journal
    /// [default: $SCRATCH/actord/journal, else $XDG_STATE_HOME/actord/journal,
    /// else ~/.local/state/actord/journal].
    #[arg(long, value_name = "DIR")]
    pub journal: Option<String>,
    /// Keep everything in memory only: a restarted scheduler starts empty.
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
    /// Start even if the journal is damaged: keep what is intact, log (warn)
    /// every job lost or that lost task outcomes, and make the journal
    /// consistent again.
    #[arg(long, conflicts_with = "no_journal")]
    pub journal_repair: bool,
    /// The results store: where workers put results over
    /// worker.inline_result [config: scheduler.results_dir; default:
    /// results/ in the journal directory].
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<String>,
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,
    #[command(flatten)]
    pub dashboard: DashboardFlags,
}

/// The status page's flags (`actord scheduler`, `actord local`).
#[derive(Args, Debug, Clone, Default)]
pub struct DashboardFlags {
    /// Serve the status page on HOST:PORT (port 0 picks one); a busy
    /// address given here is an error [env: ACTORD_DASHBOARD; config:
    /// scheduler.dashboard, default 127.0.0.1:8787, where a busy port only
    /// warns].
    #[arg(long, value_name = "ADDR", env = "ACTORD_DASHBOARD", hide_env = true)]
    pub dashboard: Option<String>,
    /// Serve no status page (wins over --dashboard).
    #[arg(long)]
    pub no_dashboard: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Task slots (threads) in each worker [default: config worker.threads
    /// if set, else $SLURM_CPUS_PER_TASK, else $SLURM_CPUS_ON_NODE, else
    /// this machine's CPU count; a nanny shares that out among its
    /// --workers]. The log says which it took.
    #[arg(long, alias = "nthreads")]
    pub threads: Option<u32>,
    /// Scheduler file to find the scheduler by [default:
    /// $ACTORD_SCHEDULER_FILE, else $SCRATCH/actord/scheduler.json, else
    /// ./actord-scheduler.json].
    #[arg(long, value_name = "FILE")]
    pub scheduler_file: Option<String>,
    /// How long to keep trying to reach a lost scheduler, e.g. 60s [config: worker.death_timeout].
    #[arg(long, value_name = "DURATION")]
    pub death_timeout: Option<String>,
    /// Interpreter of the Python executors that run `py` tasks [config: worker.python].
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
    /// A module every Python executor imports first, e.g. dask.array
    /// (repeatable, or comma-separated); executors then start with the
    /// worker [config: worker.preload].
    #[arg(long, value_name = "MODULE", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Directory for `cmd` and `py` task output [default: beside the scheduler file, in actord-jobs/].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<String>,
    /// What this worker has beyond its slots, e.g. gpus=2,mem=64GiB.
    #[arg(long, value_name = "LIST")]
    pub resources: Option<String>,
    /// GPU ids this worker owns (e.g. 0,1): declares gpus=N and gives each
    /// task asking for GPUs its own through CUDA_VISIBLE_DEVICES.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// When the allocation ends, in seconds since the Unix epoch [default:
    /// $SLURM_JOB_END_TIME, else what squeue says of $SLURM_JOB_ID, else
    /// none]. Tasks that would outlast it are not placed here; the worker
    /// drains and leaves before it.
    #[arg(long, value_name = "EPOCH_SECONDS", conflicts_with = "lifetime")]
    pub walltime_end: Option<String>,
    /// The allocation ends this long after the start, e.g. 2h (as
    /// --walltime-end, for machines without Slurm).
    #[arg(long, value_name = "DURATION")]
    pub lifetime: Option<String>,
    /// Drain this long before the allocation ends [default: config
    /// worker.walltime_margin (30s), at most a tenth of the time left at start].
    #[arg(long, value_name = "DURATION")]
    pub walltime_margin: Option<String>,
    /// Where this host sees the results store, if not where the scheduler
    /// file says (another mount point) [default: the scheduler's].
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct NannyArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Restart a worker whose memory (with its child processes) exceeds
    /// this, e.g. 4GiB, 500MB.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Journal directory for the embedded scheduler [default: a temporary
    /// one, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub journal: Option<String>,
    /// No journal: keep everything in memory.
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
    #[command(flatten)]
    pub dashboard: DashboardFlags,
    /// Interpreter of the workers' Python executors [config: worker.python].
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
    /// Where command tasks keep their output (<work-dir>/<job>/, also
    /// where they run) [default: ./actord-jobs].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<String>,
    #[command(subcommand)]
    pub job: ClientCommand,
}

/// Where a client command finds the scheduler, and how long it waits.
#[derive(Args, Debug, Clone, Default)]
pub struct Connect {
    /// Scheduler file [default: $ACTORD_SCHEDULER_FILE, else
    /// $SCRATCH/actord/scheduler.json, else ./actord-scheduler.json].
    #[arg(long, value_name = "FILE", global = true)]
    pub scheduler_file: Option<String>,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Wait until the scheduler answers and N workers are registered.
    Wait {
        #[command(flatten)]
        connect: Connect,
        /// How many workers must have registered.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Give up after this long, e.g. 60, 30s, 2m.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// The tutorial's job: map throw_darts over the inputs, gather, print π.
    Darts {
        #[command(flatten)]
        connect: Connect,
        /// Number of tasks (the tutorial's 100).
        #[arg(long, default_value_t = 100)]
        inputs: usize,
        /// Multiplies the dart counts (1.0 = the tutorial's size).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Seed for drawing the inputs (same flags, same inputs).
        #[arg(long, default_value_t = 1)]
        input_seed: u64,
        /// Write inputs, results and π here as JSON.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Map a function over JSON inputs (one args value per line); prints the job id.
    Map {
        #[command(flatten)]
        connect: Connect,
        /// Function name, e.g. inc, darts.
        name: String,
        /// JSON lines file, one args value per line; - reads stdin.
        #[arg(long, value_name = "FILE.jsonl")]
        inputs: String,
        /// Use this job id (a uuid) instead of a new one: submitting again
        /// with the same id is harmless, e.g. after a lost reply.
        #[arg(long, value_name = "UUID")]
        job_id: Option<String>,
    },
    /// Submit a command (after --) or one function task; prints the job id.
    Submit(SubmitArgs),
    /// Wait for a job and write its results; exit 1 if any task failed.
    Gather {
        #[command(flatten)]
        connect: Connect,
        /// Job id (a uuid), as submit or map printed it.
        #[arg(value_name = "JOB")]
        job: String,
        /// Write {"results": [...], "failures": [...]} here as JSON (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
        /// Only this task (by key or index): waits for it and writes its result.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Admin commands: see and steer a running scheduler.
    Ctl {
        #[command(flatten)]
        connect: Connect,
        /// Print JSON instead of a table or a sentence.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

impl ClientCommand {
    /// Where this command finds the scheduler (`local` points it at its own).
    pub fn connect_mut(&mut self) -> &mut Connect {
        match self {
            ClientCommand::Wait { connect, .. }
            | ClientCommand::Darts { connect, .. }
            | ClientCommand::Map { connect, .. }
            | ClientCommand::Submit(SubmitArgs { connect, .. })
            | ClientCommand::Gather { connect, .. }
            | ClientCommand::Ctl { connect, .. } => connect,
        }
    }
}

/// `actord submit`: what to run and the options of every task.
#[derive(Args, Debug, Clone)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Run the command once per index, e.g. 1-200 ($ACTORD_TASK is the index).
    #[arg(long, value_name = "RANGE")]
    pub array: Option<String>,
    /// Submit one function task instead of a command.
    #[arg(long = "fn", value_name = "NAME", conflicts_with = "array")]
    pub func: Option<String>,
    /// JSON arguments of the function task.
    #[arg(long, value_name = "JSON", requires = "func")]
    pub args: Option<String>,
    /// Fail a task once this many workers died while running it
    /// [config: scheduler.max_worker_kills].
    #[arg(long, value_name = "K")]
    pub max_worker_kills: Option<u32>,
    /// Use this job id (a uuid) instead of a new one: submitting again
    /// with the same id is harmless.
    #[arg(long, value_name = "UUID")]
    pub job_id: Option<String>,
    /// Submit a task graph from a JSON file (see the README: tasks with
    /// key, fn + args or cmd, deps, priority, retries).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["func", "array"])]
    pub graph: Option<String>,
    /// Priority of the task(s): higher runs first.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Retry a failed task this many times (with backoff) before it fails.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Stop an attempt that runs longer than this (e.g. 30s, 2m); it
    /// fails with "time limit exceeded".
    #[arg(long, value_name = "DURATION")]
    pub time_limit: Option<String>,
    /// How long each task is expected to run (e.g. 30s, 2m): it goes only
    /// to a worker whose allocation (walltime) lasts that long; nothing is
    /// stopped for outlasting it [default: its --time-limit, if any].
    #[arg(long, value_name = "DURATION")]
    pub time_request: Option<String>,
    /// What each task needs of its worker, e.g. gpus=1 (a task never runs
    /// where that is not free).
    #[arg(long, value_name = "LIST")]
    pub resources: Option<String>,
    #[command(flatten)]
    pub cmd: CmdOptions,
    /// The command and its arguments.
    #[arg(last = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

/// Options of command tasks.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CmdOptions {
    /// One task per line of FILE: `$ACTORD_ENTRY` (and `{entry}` in the
    /// command) is the line, `$ACTORD_TASK` its number from 1.
    #[arg(long, value_name = "FILE", conflicts_with = "array")]
    pub each_line: Option<String>,
    /// `files` (default): stdout and stderr to files in the job's directory;
    /// `none`: discard them.
    #[arg(long, value_name = "files|none")]
    pub output: Option<String>,
    /// Extra environment for the command, `NAME=VALUE` (placeholders
    /// `{task}`, `{attempt}`, `{job}`, `{entry}` allowed); repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Directory the command runs in [default: its job's directory,
    /// <work-dir>/<job>/]; relative to where you submit.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// The scheduler at a glance: address, epoch, uptime, journal, workers,
    /// jobs, tasks by state, throughput.
    Status,
    /// The registered workers: host, nanny, slots, running tasks, resources,
    /// last heartbeat, memory.
    Workers,
    /// The nannies and what each of their worker slots is doing.
    Nannies,
    /// Every job with its progress.
    Jobs,
    /// One job: tasks by state, timing, throughput.
    Job {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
    },
    /// The tasks of a job: state (waiting, ready, unschedulable, retrying,
    /// running, finished, failed, canceled), attempts, worker, error.
    Tasks {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
        /// Only tasks in this state: waiting, ready, unschedulable,
        /// retrying, running, finished, failed or canceled.
        #[arg(long)]
        state: Option<String>,
    },
    /// Why a task is where it is: what it waits for, what it needs, how it ended.
    Explain {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
        /// The task's key, or its index in the job.
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Cancel a job, or some of its tasks by key: running commands get
    /// SIGTERM (then SIGKILL), running functions are abandoned.
    Cancel {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
        /// Task keys (or indices); all unfinished tasks when none.
        keys: Vec<String>,
    },
    /// Run a job's failed and canceled tasks again (and their dependents).
    Retry {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
    },
    /// Ask a worker's nanny to restart it (its running tasks go to other workers).
    RestartWorker {
        /// Worker id as `actord ctl workers` shows it, e.g. w3.
        worker: String,
    },
    /// Drain a worker: no new tasks, queued ones go to others, running ones
    /// finish, then it stops (its nanny leaves the slot empty).
    RetireWorker {
        /// Worker id as `actord ctl workers` shows it, e.g. w3.
        worker: String,
    },
    /// Drop a finished job and its results, here and in the journal.
    Forget {
        /// Job id (a uuid), as submit, map or `actord ctl jobs` print it.
        #[arg(value_name = "JOB")]
        job: String,
    },
    /// The journal: path, size on disk, records, flushes, last flush.
    Journal,
    /// The status page's link, with its token (it lets whoever has it
    /// retry and cancel jobs: share it as you would the scheduler file).
    Dashboard,
    /// Stop the scheduler for good: its nannies and workers exit too (its
    /// journal keeps everything for a scheduler started again on it).
    Shutdown {
        /// First stop handing out tasks and wait until the running ones have
        /// finished and are journaled.
        #[arg(long)]
        drain: bool,
        /// Stop only the scheduler: nannies and workers keep running and
        /// wait for the next one (e.g. to move the scheduler elsewhere).
        #[arg(long)]
        keep_workers: bool,
    },
    /// Change the scheduler's log filter: a level (error, warn, info, debug,
    /// trace) or directives such as `actord=debug,sled=warn`.
    LogLevel {
        /// A level (off, error, warn, info, debug, trace) or comma-separated
        /// TARGET=LEVEL directives.
        #[arg(value_name = "LEVEL")]
        level: String,
    },
    /// Change the number of worker processes the nannies run to N: new ones
    /// start on the nannies with the fewest, or the least busy drain and stop.
    Scale {
        /// How many workers the nannies should run in all.
        #[arg(value_name = "N")]
        workers: u32,
    },
}

/// Runs `actord` with the built-in functions.
pub fn main() -> ExitCode {
    main_with(Registry::builtin())
}

/// Runs `actord` with `registry` as the worker's functions.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    // `local` speaks for its cluster (its workers inherit this): only
    // warnings, unless the user asked for more. Still one thread here.
    let quiet = std::env::var_os("ACTORD_LOG").is_none() && std::env::var_os("RUST_LOG").is_none();
    if quiet && matches!(cli.command, Command::Local(_)) {
        std::env::set_var("ACTORD_LOG", "warn");
    }
    init_logging();
    // A worker funnels everything through one connection loop (its tasks run
    // on slot threads): one runtime thread avoids cross-thread wake-ups.
    let single = matches!(cli.command, Command::Worker(_) | Command::Scheduler(_));
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("actord: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(commands::run(cli, registry));
    // A blocking call that cannot return (a journal flush on a failed disk)
    // must not keep the process from exiting: wait a little, then go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("actord: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ACTORD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        crate::util::set_log_reloader(Box::new(move |directives| {
            let f =
                EnvFilter::try_new(directives).map_err(|e| format!("bad log level {directives:?}: {e}"))?;
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
}

/// A command's failure: a usage error (exit 2) or a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl From<crate::client::ClientError> for CliError {
    fn from(e: crate::client::ClientError) -> Self {
        match e {
            crate::client::ClientError::Usage(m) => CliError::Usage(m),
            other => CliError::Failed(other.to_string()),
        }
    }
}

/// Writes one line to stdout: a closed pipe ends the process quietly, any
/// other failure (e.g. a full disk behind a redirect) says so and exits 1.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("actord: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}
