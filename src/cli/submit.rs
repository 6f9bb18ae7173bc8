//! What `submit` and `map` send: their tasks built from the command line
//! (checked before anything connects, so `local` can refuse them first).

use super::commands::{parse_job_id, usage};
use super::{CliError, CmdOptions, SubmitArgs};
use crate::ids::JobId;
use crate::protocol::{TaskKind, TaskSpec};
use crate::util::{expand_path, parse_duration};
use std::path::Path;

/// A job ready to submit.
pub struct Prepared {
    pub id: JobId,
    pub name: String,
    pub tasks: Vec<TaskSpec>,
}

impl Prepared {
    /// Whether any task is a command (its output lands in the work dir).
    pub fn has_commands(&self) -> bool {
        self.tasks.iter().any(|t| matches!(t.kind, TaskKind::Cmd { .. }))
    }
}

/// `map NAME --inputs FILE`: one task per line.
pub fn prepare_map(name: &str, inputs: &str, job_id: Option<&str>) -> Result<Prepared, CliError> {
    let id = parse_job_id(job_id)?;
    let tasks = read_jsonl_tasks(name, inputs)?;
    Ok(Prepared { id, name: name.to_string(), tasks })
}

/// `submit …`: a command, an array of them, one function, or a graph, with
/// the options every task gets.
pub fn prepare_submit(a: SubmitArgs) -> Result<Prepared, CliError> {
    let id = parse_job_id(a.job_id.as_deref())?;
    let (name, mut tasks) = match a.graph {
        Some(path) => {
            if !a.argv.is_empty() {
                return Err(usage("give either --graph FILE or a command after --, not both"));
            }
            if a.cmd != CmdOptions::default() {
                return Err(usage("--each-line, --output, --env and --cwd are for commands, not --graph"));
            }
            super::graph::read_graph(&path)?
        }
        None => submit_tasks(a.array.as_deref(), a.func, a.args.as_deref(), &a.cmd, a.argv)?,
    };
    let time_limit_ms = a
        .time_limit
        .as_deref()
        .map(|d| parse_duration(d).map(|d| d.as_millis() as u64))
        .transpose()
        .map_err(usage)?;
    let resources = a.resources.as_deref().map(crate::util::parse_resources).transpose().map_err(usage)?;
    if a.max_worker_kills == Some(0) {
        return Err(usage("--max-worker-kills must be at least 1"));
    }
    for t in &mut tasks {
        if let Some(r) = &resources {
            t.resources = r.clone();
        }
        if let Some(p) = a.priority {
            t.priority = p;
        }
        if time_limit_ms.is_some() {
            t.time_limit_ms = time_limit_ms;
        }
        if let Some(r) = a.retries {
            t.retries = r;
        }
        t.max_worker_kills = a.max_worker_kills;
    }
    Ok(Prepared { id, name, tasks })
}

/// A directory given on the command line, made absolute against where the
/// command runs (a worker elsewhere has another current directory).
pub fn absolute_dir(d: &str) -> Result<String, String> {
    let p = expand_path(d)?;
    let abs = std::path::absolute(&p).map_err(|e| format!("{d:?}: {e}"))?;
    Ok(abs.display().to_string())
}

/// Without `--cwd`, a program named by a relative path (`./simulate.sh`,
/// `bin/run`) is the one where you submit: the task runs in its job's
/// directory.
fn absolute_program(argv0: &str) -> String {
    if !argv0.contains('/') || argv0.starts_with('/') || argv0.contains('{') {
        return argv0.to_string();
    }
    match std::path::absolute(Path::new(argv0)) {
        Ok(p) => p.display().to_string(),
        Err(_) => argv0.to_string(),
    }
}

fn read_jsonl_tasks(name: &str, inputs: &str) -> Result<Vec<TaskSpec>, CliError> {
    let text = if inputs == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| usage(format!("cannot read stdin: {e}")))?
    } else {
        let path = expand_path(inputs).map_err(usage)?;
        std::fs::read_to_string(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
    };
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| usage(format!("{inputs}:{}: not JSON: {e}", i + 1)))?;
        tasks.push(crate::client::fn_task(name, &v)?);
    }
    if tasks.is_empty() {
        return Err(usage(format!("{inputs}: no inputs (one JSON value per line)")));
    }
    Ok(tasks)
}

/// Parses `--array 1-200` (or a single `7`) into the inclusive range.
fn parse_array(s: &str) -> Result<std::ops::RangeInclusive<u64>, CliError> {
    let bad = || usage(format!("--array {s:?}: expected a range like 1-200"));
    let (a, b): (u64, u64) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a > b {
        return Err(bad());
    }
    let n: u64 = (b - a).saturating_add(1);
    if n > MAX_ARRAY_TASKS {
        return Err(usage(format!(
            "--array {s:?} has {n} tasks; one submission takes at most {MAX_ARRAY_TASKS}: split it into several"
        )));
    }
    Ok(a..=b)
}

/// Most tasks one `--array` submission may create (a million `cmd` specs
/// are tens of MB in one frame).
const MAX_ARRAY_TASKS: u64 = 1_000_000;

fn submit_tasks(
    array: Option<&str>,
    func: Option<String>,
    args: Option<&str>,
    opts: &CmdOptions,
    argv: Vec<String>,
) -> Result<(String, Vec<TaskSpec>), CliError> {
    if let Some(f) = func {
        if !argv.is_empty() {
            return Err(usage("give either --fn NAME or a command after --, not both"));
        }
        if *opts != CmdOptions::default() {
            return Err(usage("--each-line, --output, --env and --cwd are for commands, not --fn"));
        }
        let v: serde_json::Value = match args {
            Some(a) => serde_json::from_str(a).map_err(|e| usage(format!("--args is not JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        return Ok((f.clone(), vec![crate::client::fn_task(&f, &v)?]));
    }
    if argv.is_empty() {
        return Err(usage(
            "nothing to run: give a command after -- (e.g. actord submit -- hostname) or --fn NAME",
        ));
    }
    let name = argv[0].clone();
    let cwd = opts.cwd.as_deref().map(absolute_dir).transpose().map_err(usage)?;
    let mut argv = argv;
    if cwd.is_none() {
        argv[0] = absolute_program(&argv[0]);
    }
    let discard_output = match opts.output.as_deref() {
        None | Some("files") => false,
        Some("none") => true,
        Some(other) => return Err(usage(format!("--output {other:?}: expected files or none"))),
    };
    let mut env = Vec::with_capacity(opts.env.len());
    for e in &opts.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => return Err(usage(format!("--env {e:?}: expected NAME=VALUE"))),
        }
    }
    let cmd = |key: Option<String>, entry: Option<&str>| {
        let mut env = env.clone();
        if let Some(line) = entry {
            env.push(("ACTORD_ENTRY".to_string(), line.to_string()));
        }
        let kind = TaskKind::Cmd { argv: argv.clone(), env, discard_output, cwd: cwd.clone() };
        TaskSpec { key, ..TaskSpec::new(kind) }
    };
    let tasks: Vec<TaskSpec> = match (array, &opts.each_line) {
        (Some(r), _) => parse_array(r)?.map(|i| cmd(Some(i.to_string()), None)).collect(),
        (None, Some(file)) => {
            let path = expand_path(file).map_err(usage)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return Err(usage(format!("{}: no lines", path.display())));
            }
            lines.iter().enumerate().map(|(n, line)| cmd(Some((n + 1).to_string()), Some(line))).collect()
        }
        (None, None) => vec![cmd(None, None)],
    };
    Ok((name, tasks))
}
