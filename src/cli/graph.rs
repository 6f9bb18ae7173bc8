//! `actord submit --graph FILE`: reads a task graph file into task specs,
//! naming the task (index and key) and the field at fault when it is wrong.

use super::CliError;
use crate::protocol::{Dep, TaskKind, TaskSpec};
use crate::util::{expand_path, parse_duration};
use serde_json::Value;

/// One task of a graph file. Keys and dependencies are read apart (they
/// may be strings or integers), so this holds only the plain fields.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphTask {
    #[serde(rename = "key")]
    _key: Option<Value>,
    #[serde(rename = "fn")]
    func: Option<String>,
    args: Option<Value>,
    cmd: Option<Vec<String>>,
    /// Working directory of a `cmd` task (default: its job's directory).
    cwd: Option<String>,
    #[serde(rename = "deps")]
    _deps: Option<Value>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    retries: u32,
    max_worker_kills: Option<u32>,
    /// e.g. "30s", "2m".
    time_limit: Option<String>,
    /// How long it is expected to run, e.g. "30s": it goes only to a
    /// worker whose allocation lasts that long.
    time_request: Option<String>,
    #[serde(default)]
    resources: crate::protocol::Resources,
}

/// A key as the file spells it: a string, or an integer (a task's index).
fn key_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// serde's "unknown field `arg`, expected one of `key`, …" with plain quotes.
fn tidy(e: serde_json::Error) -> String {
    e.to_string().replace('`', "\"")
}

/// Reads a `--graph` file: `{"name": …, "tasks": [...]}` or just the array.
pub fn read_graph(path: &str) -> Result<(String, Vec<TaskSpec>), CliError> {
    let p = expand_path(path).map_err(CliError::Usage)?;
    let shown = p.display().to_string();
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read it: {e}"));
    text.and_then(|t| graph_from_json(&t)).map_err(|m| CliError::Usage(format!("{shown}: {m}")))
}

/// A graph document's name (default `graph`) and its tasks.
pub fn graph_from_json(text: &str) -> Result<(String, Vec<TaskSpec>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let (name, tasks) = match doc {
        Value::Array(tasks) => (None, tasks),
        Value::Object(mut o) => {
            if let Some(k) = o.keys().find(|k| *k != "name" && *k != "tasks") {
                return Err(format!("unknown field {k:?} (expected name, tasks)"));
            }
            let name = match o.remove("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err("\"name\" must be a string".into()),
            };
            match o.remove("tasks") {
                Some(Value::Array(tasks)) => (name, tasks),
                Some(_) => return Err("\"tasks\" must be an array of tasks".into()),
                None => return Err("no \"tasks\": expected {\"tasks\": [...]} or an array".into()),
            }
        }
        _ => return Err("expected {\"name\": …, \"tasks\": [...]} or an array of tasks".into()),
    };
    if tasks.is_empty() {
        return Err("the graph has no tasks".into());
    }
    let specs = tasks.into_iter().enumerate().map(|(i, t)| read_task(i, t)).collect::<Result<_, _>>()?;
    Ok((name.unwrap_or_else(|| "graph".into()), specs))
}

/// Task `i` of the file; the error names it as `task 3 ("d"): …`.
fn read_task(i: usize, v: Value) -> Result<TaskSpec, String> {
    let key = match v.get("key") {
        None | Some(Value::Null) => None,
        Some(k) => {
            Some(key_of(k).ok_or_else(|| format!("task {i}: \"key\" must be a string or an integer"))?)
        }
    };
    let at = match &key {
        Some(k) => format!("task {i} ({k:?})"),
        None => format!("task {i}"),
    };
    if !v.is_object() {
        return Err(format!("{at}: expected an object with \"fn\" or \"cmd\""));
    }
    let deps = read_deps(v.get("deps")).map_err(|m| format!("{at}: {m}"))?;
    let t: GraphTask = serde_json::from_value(v).map_err(|e| format!("{at}: {}", tidy(e)))?;
    let kind = match (t.func, t.cmd) {
        (Some(f), None) if t.cwd.is_none() => {
            let args = t.args.unwrap_or(Value::Null);
            crate::client::fn_task(&f, &args).map_err(|e| format!("{at}: {e}"))?.kind
        }
        (None, Some(argv)) if !argv.is_empty() && t.args.is_none() => {
            let cwd = t.cwd.as_deref().map(super::common::absolute_dir).transpose()?;
            TaskKind::Cmd { argv, env: Vec::new(), discard_output: false, cwd }
        }
        (Some(_), None) => return Err(format!("{at}: \"cwd\" is for \"cmd\" tasks, not \"fn\"")),
        _ => {
            return Err(format!("{at}: needs either \"fn\" (with optional \"args\") or a non-empty \"cmd\""))
        }
    };
    let time_limit_ms = t
        .time_limit
        .as_deref()
        .map(|d| parse_duration(d).map(|d| d.as_millis() as u64))
        .transpose()
        .map_err(|e| format!("{at}: \"time_limit\": {e}"))?;
    let time_request_ms = t
        .time_request
        .as_deref()
        .map(|d| parse_duration(d).map(|d| d.as_millis() as u64))
        .transpose()
        .map_err(|e| format!("{at}: \"time_request\": {e}"))?;
    Ok(TaskSpec {
        key,
        kind,
        max_worker_kills: t.max_worker_kills,
        deps,
        priority: t.priority,
        retries: t.retries,
        resources: t.resources,
        time_limit_ms,
        time_request_ms,
    })
}

/// `"deps"`: keys of this job (strings or integers), or `{"job": UUID, "key": K}`.
fn read_deps(v: Option<&Value>) -> Result<Vec<Dep>, String> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("\"deps\" must be an array of keys".into()),
    };
    let mut deps = Vec::with_capacity(list.len());
    for (n, d) in list.iter().enumerate() {
        let bad = || {
            format!(
                "dependency {n} ({d}): expected a key (string or integer) or {{\"job\": UUID, \"key\": K}}"
            )
        };
        let dep = match d {
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| *k != "job" && *k != "key") {
                    return Err(format!("dependency {n}: unknown field {k:?} (expected job, key)"));
                }
                let key = o.get("key").and_then(key_of).ok_or_else(bad)?;
                let job = match o.get("job") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(j)) => {
                        Some(j.parse().map_err(|e| format!("dependency {n}: {j:?} is not a job id: {e}"))?)
                    }
                    Some(_) => return Err(bad()),
                };
                Dep { job, key }
            }
            other => Dep::key(key_of(other).ok_or_else(bad)?),
        };
        deps.push(dep);
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<TaskSpec>, String> {
        graph_from_json(text).map(|(_, t)| t)
    }

    #[test]
    fn a_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.json");
        std::fs::write(&p, r#"{"name": "n", "tasks": [{"fn": "inc", "args": 1}]}"#).unwrap();
        let (name, tasks) = read_graph(p.to_str().unwrap()).unwrap();
        assert_eq!((name.as_str(), tasks.len()), ("n", 1));
        let missing = dir.path().join("none.json");
        let e = read_graph(missing.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot read it", missing.display())), "{e}");
    }

    #[test]
    fn a_graph_sets_every_field_of_its_tasks() {
        let (name, t) = graph_from_json(
            r#"[{"key": "a", "cmd": ["true"], "cwd": "/tmp", "priority": -2, "retries": 3,
                "max_worker_kills": 1, "time_limit": "2s", "time_request": "1m", "resources": {"gpus": 1}}]"#,
        )
        .unwrap();
        assert_eq!(name, "graph");
        let kind = TaskKind::Cmd {
            argv: vec!["true".into()],
            env: vec![],
            discard_output: false,
            cwd: Some("/tmp".into()),
        };
        let want = TaskSpec {
            key: Some("a".into()),
            kind,
            max_worker_kills: Some(1),
            deps: vec![],
            priority: -2,
            retries: 3,
            time_limit_ms: Some(2000),
            resources: [("gpus".to_string(), 1)].into(),
            time_request_ms: Some(60_000),
        };
        assert_eq!(t, vec![want]);
        assert_eq!(graph_from_json("[]").unwrap_err(), "the graph has no tasks");
        let e = graph_from_json(r#"[{"fn": "inc", "cmd": ["x"]}]"#).unwrap_err();
        assert!(e.starts_with("task 0: needs either"), "{e}");
    }

    #[test]
    fn integer_keys_work_wherever_string_keys_do() {
        let job = crate::ids::JobId::new();
        let text = format!(
            r#"[{{"key": 7, "fn": "inc", "args": 1}}, {{"fn": "inc", "deps": [0, "7", {{"job": "{job}", "key": 3}}]}}]"#
        );
        let t = read(&text).unwrap();
        assert_eq!(t[0].key.as_deref(), Some("7"));
        assert_eq!(t[1].deps, vec![Dep::key("0"), Dep::key("7"), Dep { job: Some(job), key: "3".into() }]);
    }

    #[test]
    fn a_typo_names_the_task_its_key_and_the_field() {
        let e = read(r#"{"tasks": [{"key": "a", "fn": "inc"}, {"key": "d", "fn": "add", "arg": 1}]}"#)
            .unwrap_err();
        assert!(e.contains("task 1 (\"d\"): unknown field \"arg\", expected one of \"key\""), "{e}");
        let e = read(r#"[{"fn": "inc", "deps": [1.5]}]"#).unwrap_err();
        assert!(e.contains("task 0: dependency 0 (1.5): expected a key"), "{e}");
        let e = read(r#"{"name": "x", "task": []}"#).unwrap_err();
        assert!(e.contains("unknown field \"task\""), "{e}");
        let e = read(r#"[{"key": "z", "fn": "inc", "priority": "high"}]"#).unwrap_err();
        assert!(e.contains("task 0 (\"z\"): invalid type: string \"high\""), "{e}");
    }
}
