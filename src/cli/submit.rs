//! What `submit` and `map` send: their tasks built from the command line
//! (checked before anything connects, so `local` can refuse them first).

use super::common::{absolute_dir, parse_job_id, usage};
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
    let tasks = tasks_from_jsonl(name, &read_inputs(inputs)?, inputs)?;
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
    let time_request_ms = a
        .time_request
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
        if time_request_ms.is_some() {
            t.time_request_ms = time_request_ms;
        }
        if let Some(r) = a.retries {
            t.retries = r;
        }
        t.max_worker_kills = a.max_worker_kills;
    }
    Ok(Prepared { id, name, tasks })
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

/// The text of `--inputs`: a file, or stdin for `-`.
fn read_inputs(inputs: &str) -> Result<String, CliError> {
    if inputs == "-" {
        return std::io::read_to_string(std::io::stdin())
            .map_err(|e| usage(format!("cannot read stdin: {e}")));
    }
    let path = expand_path(inputs).map_err(usage)?;
    std::fs::read_to_string(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

/// One `fn` task per non-blank JSON line of `text`; errors name `source:line`.
pub fn tasks_from_jsonl(name: &str, text: &str, source: &str) -> Result<Vec<TaskSpec>, CliError> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| usage(format!("{source}:{}: not JSON: {e}", i + 1)))?;
        tasks.push(crate::client::fn_task(name, &v)?);
    }
    if tasks.is_empty() {
        return Err(usage(format!("{source}: no inputs (one JSON value per line)")));
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
        return Ok((f.clone(), vec![fn_task_from_flags(&f, args)?]));
    }
    let template = CmdTemplate::new(opts, argv)?;
    let name = template.argv[0].clone();
    let tasks = match (array, &opts.each_line) {
        (Some(r), _) => template.array(parse_array(r)?),
        (None, Some(file)) => {
            let path = expand_path(file).map_err(usage)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            template.each_line(&text).ok_or_else(|| usage(format!("{}: no lines", path.display())))?
        }
        (None, None) => vec![template.task(None, None)],
    };
    Ok((name, tasks))
}

/// `--fn NAME --args JSON`: one function task (`null` arguments without `--args`).
pub fn fn_task_from_flags(func: &str, args: Option<&str>) -> Result<TaskSpec, CliError> {
    let v: serde_json::Value = match args {
        Some(a) => serde_json::from_str(a).map_err(|e| usage(format!("--args is not JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    Ok(crate::client::fn_task(func, &v)?)
}

/// A command as `submit` was given it, checked: what every task of it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdTemplate {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub discard_output: bool,
    pub cwd: Option<String>,
}

impl CmdTemplate {
    /// Checks `--output` and `--env`; a relative program is made absolute
    /// unless `--cwd` is given.
    pub fn new(opts: &CmdOptions, mut argv: Vec<String>) -> Result<CmdTemplate, CliError> {
        if argv.is_empty() {
            return Err(usage(
                "nothing to run: give a command after -- (e.g. actord submit -- hostname) or --fn NAME",
            ));
        }
        let cwd = opts.cwd.as_deref().map(absolute_dir).transpose().map_err(usage)?;
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
        Ok(CmdTemplate { argv, env, discard_output, cwd })
    }

    /// One task, with its key and (for `--each-line`) its line as `ACTORD_ENTRY`.
    pub fn task(&self, key: Option<String>, entry: Option<&str>) -> TaskSpec {
        let mut env = self.env.clone();
        if let Some(line) = entry {
            env.push(("ACTORD_ENTRY".to_string(), line.to_string()));
        }
        let kind = TaskKind::Cmd {
            argv: self.argv.clone(),
            env,
            discard_output: self.discard_output,
            cwd: self.cwd.clone(),
        };
        TaskSpec { key, ..TaskSpec::new(kind) }
    }

    /// `--array A-B`: one task per index, keyed by it.
    pub fn array(&self, range: std::ops::RangeInclusive<u64>) -> Vec<TaskSpec> {
        range.map(|i| self.task(Some(i.to_string()), None)).collect()
    }

    /// `--each-line`: one task per line, keyed from 1; `None` if there is no line.
    pub fn each_line(&self, text: &str) -> Option<Vec<TaskSpec>> {
        let tasks: Vec<TaskSpec> = text
            .lines()
            .enumerate()
            .map(|(n, line)| self.task(Some((n + 1).to_string()), Some(line)))
            .collect();
        (!tasks.is_empty()).then_some(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn jsonl_skips_blank_lines_and_names_the_bad_one() {
        let t = tasks_from_jsonl("inc", "1\n\n  \n[2, 3]\n", "in.jsonl").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1], crate::client::fn_task("inc", &serde_json::json!([2, 3])).unwrap());
        let e = tasks_from_jsonl("inc", "1\n{oops\n", "in.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("in.jsonl:2: not JSON"), "{e}");
        let e = tasks_from_jsonl("inc", "\n \n", "-").unwrap_err().to_string();
        assert_eq!(e, "-: no inputs (one JSON value per line)");
    }

    #[test]
    fn arrays_are_inclusive_ranges_within_the_limit() {
        assert_eq!(parse_array("1-200").unwrap(), 1..=200);
        assert_eq!(parse_array(" 7 ").unwrap(), 7..=7);
        for bad in ["5-1", "a-3", "", "1-"] {
            let e = parse_array(bad).unwrap_err().to_string();
            assert!(e.contains("expected a range like 1-200"), "{bad}: {e}");
        }
        let e = parse_array("0-1000000").unwrap_err().to_string();
        assert!(e.contains("has 1000001 tasks"), "{e}");
        assert!(parse_array("0-18446744073709551615").is_err(), "no overflow at u64::MAX");
    }

    #[test]
    fn a_command_template_makes_keyed_tasks_per_index_or_line() {
        let opts =
            CmdOptions { env: vec!["A={task}".into()], output: Some("none".into()), ..Default::default() };
        let t = CmdTemplate::new(&opts, argv(&["echo", "{entry}"])).unwrap();
        let tasks = t.array(3..=4);
        assert_eq!(tasks.iter().map(|t| t.key.clone().unwrap()).collect::<Vec<_>>(), ["3", "4"]);
        let lines = t.each_line("x\ny z").unwrap();
        assert_eq!(lines[1].key.as_deref(), Some("2"));
        let TaskKind::Cmd { argv, env, discard_output, cwd } = &lines[1].kind else { panic!("{lines:?}") };
        assert_eq!(argv, &["echo", "{entry}"]);
        assert_eq!(env, &[("A".to_string(), "{task}".to_string()), ("ACTORD_ENTRY".into(), "y z".into())]);
        assert!(*discard_output && cwd.is_none());
        assert!(t.each_line("").is_none());
    }

    #[test]
    fn bad_command_options_are_refused_with_the_flag() {
        let bad_env = CmdOptions { env: vec!["=x".into()], ..Default::default() };
        let e = CmdTemplate::new(&bad_env, argv(&["true"])).unwrap_err().to_string();
        assert_eq!(e, "--env \"=x\": expected NAME=VALUE");
        let bad_out = CmdOptions { output: Some("tty".into()), ..Default::default() };
        let e = CmdTemplate::new(&bad_out, argv(&["true"])).unwrap_err().to_string();
        assert!(e.starts_with("--output \"tty\""), "{e}");
        let e = CmdTemplate::new(&CmdOptions::default(), vec![]).unwrap_err().to_string();
        assert!(e.starts_with("nothing to run"), "{e}");
    }

    #[test]
    fn a_relative_program_is_made_absolute_unless_a_cwd_is_given() {
        let t = CmdTemplate::new(&CmdOptions::default(), argv(&["./run.sh"])).unwrap();
        assert!(t.argv[0].starts_with('/') && t.argv[0].ends_with("/run.sh"), "{:?}", t.argv);
        let t = CmdTemplate::new(&CmdOptions::default(), argv(&["hostname"])).unwrap();
        assert_eq!(t.argv[0], "hostname");
        let opts = CmdOptions { cwd: Some("/tmp".into()), ..Default::default() };
        let t = CmdTemplate::new(&opts, argv(&["./run.sh"])).unwrap();
        assert_eq!((t.argv[0].as_str(), t.cwd.as_deref()), ("./run.sh", Some("/tmp")));
    }

    #[test]
    fn fn_flags_make_one_task_with_null_arguments_by_default() {
        let t = fn_task_from_flags("inc", None).unwrap();
        assert_eq!(t, crate::client::fn_task("inc", &serde_json::Value::Null).unwrap());
        let e = fn_task_from_flags("inc", Some("{")).unwrap_err().to_string();
        assert!(e.starts_with("--args is not JSON"), "{e}");
    }
}
