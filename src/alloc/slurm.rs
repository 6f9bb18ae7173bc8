//! The Slurm commands the allocator runs: `sbatch` for an allocation that
//! runs `actord nanny`, `scancel`, and `squeue` for where its allocations are.
//! Their paths come from flags, so tests can put scripts in their place.

use super::{AllocError, AllocState};
use std::collections::HashMap;
use std::time::Duration;

/// How long one Slurm command may take before the allocator gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The Slurm commands (paths or names on `PATH`).
#[derive(Clone, Debug)]
pub struct SlurmCommands {
    pub sbatch: String,
    pub scancel: String,
    pub squeue: String,
}

/// What each allocation is.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Slurm job name of every allocation, also how `squeue` finds them.
    pub name: String,
    /// `--time` of each allocation.
    pub walltime: Option<Duration>,
    /// CPUs of its one task: its workers times their threads.
    pub cpus: u32,
    /// Extra `sbatch` arguments, in order, before the command.
    pub extra: Vec<String>,
    /// The command it runs: `actord nanny --scheduler-file F …`.
    pub nanny: Vec<String>,
}

/// Slurm's `--time` for a duration: `D-HH:MM:SS`, at least one minute.
pub fn slurm_time(d: Duration) -> String {
    let s = d.as_secs().max(60);
    let (days, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    format!("{days}-{h:02}:{m:02}:{s:02}")
}

/// One word for a POSIX shell: as it is when it is safe, else single-quoted.
pub fn shell_word(w: &str) -> String {
    let safe = !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if safe {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

pub fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" ")
}

/// The `sbatch` command line of one allocation.
pub fn sbatch_argv(cmds: &SlurmCommands, sub: &Submission) -> Vec<String> {
    let mut argv = vec![
        cmds.sbatch.clone(),
        "--parsable".into(),
        format!("--job-name={}", sub.name),
        "--ntasks=1".into(),
        format!("--cpus-per-task={}", sub.cpus.max(1)),
    ];
    if let Some(t) = sub.walltime {
        argv.push(format!("--time={}", slurm_time(t)));
    }
    argv.extend(sub.extra.iter().cloned());
    argv.push(format!("--wrap=exec {}", shell_line(&sub.nanny)));
    argv
}

/// Runs a command, bounded by `COMMAND_TIMEOUT`; its stdout when it exits 0.
async fn run(argv: &[String]) -> Result<String, AllocError> {
    let command = shell_line(argv);
    let fail = |error: String| AllocError::Command { command: command.clone(), error };
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
        Err(_) => return Err(fail(format!("no answer within {COMMAND_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("{}: {:?}", out.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Submits one allocation; Slurm's job id.
pub async fn submit(cmds: &SlurmCommands, sub: &Submission) -> Result<String, AllocError> {
    let argv = sbatch_argv(cmds, sub);
    let out = run(&argv).await?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        let command = shell_line(&argv);
        return Err(AllocError::Command {
            command,
            error: format!("printed {:?}, not a job id", out.trim()),
        });
    }
    Ok(id)
}

pub async fn cancel(cmds: &SlurmCommands, ids: &[String]) -> Result<(), AllocError> {
    let mut argv = vec![cmds.scancel.clone()];
    argv.extend(ids.iter().cloned());
    run(&argv).await.map(drop)
}

/// Where the allocations named `name` are, by job id; a job not listed has ended.
pub async fn queue(cmds: &SlurmCommands, name: &str) -> Result<HashMap<String, AllocState>, AllocError> {
    let argv = [cmds.squeue.clone(), "--noheader".into(), "--format=%i|%T".into(), format!("--name={name}")];
    Ok(parse_queue(&run(&argv).await?))
}

/// `squeue --format=%i|%T` lines: pending (or configuring) and the rest.
pub fn parse_queue(out: &str) -> HashMap<String, AllocState> {
    out.lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(id, state)| {
            let s = match state.trim() {
                "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" => AllocState::Pending,
                _ => AllocState::Running,
            };
            (id.trim().to_string(), s)
        })
        .collect()
}
