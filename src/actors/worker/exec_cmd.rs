//! `cmd` tasks: an argv run as a child process (through the spawn helper),
//! its output in files under the job's directory, its GPUs lent from the
//! worker's pool.

use super::msg::CANCEL_GRACE;
use crate::ids::WorkerId;
use crate::protocol::{Assignment, Outcome, TaskKind};
use std::path::Path;
use std::time::Duration;

/// What a command needs from its slot.
pub(super) struct CmdCx<'a> {
    pub work_dir: &'a Path,
    pub worker: WorkerId,
    pub gpus: &'a GpuPool,
}

/// This worker's GPU ids not held by a running task: a channel the slots
/// take ids from and give them back to.
#[derive(Clone)]
pub(super) struct GpuPool {
    tx: crossbeam_channel::Sender<String>,
    rx: crossbeam_channel::Receiver<String>,
}

impl GpuPool {
    pub(super) fn new(ids: &[String]) -> GpuPool {
        let (tx, rx) = crossbeam_channel::unbounded();
        for id in ids {
            let _ = tx.send(id.clone());
        }
        GpuPool { tx, rx }
    }

    /// Up to `n` free GPUs, given back when the lease drops (the scheduler
    /// never hands out more than the worker has).
    fn take(&self, n: usize) -> GpuLease<'_> {
        let ids = std::iter::from_fn(|| self.rx.try_recv().ok()).take(n).collect();
        GpuLease { pool: self, ids }
    }
}

struct GpuLease<'a> {
    pool: &'a GpuPool,
    ids: Vec<String>,
}

impl Drop for GpuLease<'_> {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            let _ = self.pool.tx.send(id);
        }
    }
}

/// How much of a failed command's stderr goes into its error.
const STDERR_TAIL: usize = 2048;

/// Replaces `{task}`, `{attempt}`, `{job}` and `{entry}` in a command's
/// argv or environment value.
fn placeholders(s: &str, task: &str, attempt: u32, job: &str, entry: &str) -> String {
    if !s.contains('{') {
        return s.to_string();
    }
    s.replace("{task}", task)
        .replace("{attempt}", &attempt.to_string())
        .replace("{job}", job)
        .replace("{entry}", entry)
}

/// Runs a `cmd` task; `started` is told its pid (for cancels).
pub(super) fn run(cx: &CmdCx, a: &Assignment, started: &dyn Fn(u32)) -> Outcome {
    let TaskKind::Cmd { argv, env, discard_output, .. } = &a.kind else {
        return Outcome::err("not a cmd task");
    };
    let (discard_output, work_dir, worker) = (*discard_output, cx.work_dir, cx.worker);
    if argv.is_empty() {
        return Outcome::err("empty argv");
    }
    let (task, attempt) = (a.task, a.attempt);
    let task_name = a.key.clone().unwrap_or_else(|| task.idx.to_string());
    let job = task.job.to_string();
    let entry = env.iter().find(|(k, _)| k == "ACTORD_ENTRY").map(|(_, v)| v.as_str()).unwrap_or("");
    let sub = |s: &str| placeholders(s, &task_name, attempt, &job, entry);
    let argv: Vec<String> = argv.iter().map(|s| sub(s)).collect();
    // Absolute: the command runs in it (or in `cwd`), and its input and
    // output paths must hold from there.
    let dir = work_dir.join(&job);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Outcome::err(format!("cannot create {}: {e}", dir.display()));
    }
    let cwd = match &a.kind {
        TaskKind::Cmd { cwd: Some(c), .. } => std::path::PathBuf::from(sub(c)),
        _ => dir.clone(),
    };
    let out_path = dir.join(format!("{}.{attempt}.out", task.idx));
    let err_path = dir.join(format!("{}.{attempt}.err", task.idx));
    let (out, err) = match output_files(discard_output, &out_path, &err_path) {
        Ok(f) => f,
        Err(e) => return Outcome::err(format!("cannot create output files in {}: {e}", dir.display())),
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    for (k, v) in env {
        cmd.env(k, sub(v));
    }
    // Its own GPUs (the scheduler never hands out more than the worker has).
    let want = a.resources.get("gpus").copied().unwrap_or(0) as usize;
    let gpus = cx.gpus.take(want);
    if want > 0 {
        let ids = gpus.ids.join(",");
        cmd.env("CUDA_VISIBLE_DEVICES", &ids).env("ACTORD_GPUS", &ids);
    }
    if let Err(e) = write_inputs(&mut cmd, &dir, a) {
        return e;
    }
    cmd.args(&argv[1..])
        .current_dir(&cwd)
        .env("ACTORD_JOB", task.job.to_string())
        .env("ACTORD_TASK", &task_name)
        .env("ACTORD_ATTEMPT", attempt.to_string())
        .env("ACTORD_WORKER", worker.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    crate::process::supervised(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if !cwd.is_dir() => {
            return Outcome::err(format!("cannot run {:?} in {}: {e}", argv[0], cwd.display()))
        }
        Err(e) => return Outcome::err(format!("cannot run {:?}: {e}", argv[0])),
    };
    started(child.id());
    let waited = match a.time_limit_ms {
        None => child.wait().map(Some),
        Some(limit) => crate::process::wait_for(&mut child, Duration::from_millis(limit), CANCEL_GRACE),
    };
    if let Ok(None) = waited {
        return Outcome::err(format!("time limit exceeded ({} ms)", a.time_limit_ms.unwrap_or(0)));
    }
    let paths = (!discard_output).then_some((&out_path, &err_path));
    ended(waited.map(|s| s.expect("checked above")), &argv[0], paths, &err_path)
}

/// Where a command's stdout and stderr go.
fn output_files(
    discard: bool,
    out: &Path,
    err: &Path,
) -> std::io::Result<(std::process::Stdio, std::process::Stdio)> {
    if discard {
        return Ok((std::process::Stdio::null(), std::process::Stdio::null()));
    }
    Ok((std::fs::File::create(out)?.into(), std::fs::File::create(err)?.into()))
}

/// Dependencies' results, as JSON files named by $ACTORD_INPUT_0, _1, …
fn write_inputs(cmd: &mut std::process::Command, dir: &Path, a: &Assignment) -> Result<(), Outcome> {
    cmd.env("ACTORD_INPUTS", a.inputs.len().to_string());
    for (k, input) in a.inputs.iter().enumerate() {
        let path = dir.join(format!("{}.{}.input{k}.json", a.task.idx, a.attempt));
        let text = crate::util::msgpack_to_json(input).to_string();
        if let Err(e) = std::fs::write(&path, text) {
            return Err(Outcome::err(format!("cannot write {}: {e}", path.display())));
        }
        cmd.env(format!("ACTORD_INPUT_{k}"), &path);
    }
    Ok(())
}

/// What a command's exit means: its output files, or its failure with the
/// tail of its stderr.
fn ended(
    waited: std::io::Result<std::process::ExitStatus>,
    prog: &str,
    outputs: Option<(&std::path::PathBuf, &std::path::PathBuf)>,
    err_path: &Path,
) -> Outcome {
    let status = match waited {
        Ok(s) => s,
        Err(e) => return Outcome::err(format!("waiting for {prog:?} failed: {e}")),
    };
    if status.success() {
        let result = match outputs {
            None => serde_json::json!({ "exit": 0 }),
            Some((out, err)) => serde_json::json!({
                "exit": 0,
                "stdout": out.display().to_string(),
                "stderr": err.display().to_string(),
            }),
        };
        return match rmp_serde::to_vec_named(&result) {
            Ok(b) => Outcome::Ok { result: b.into() },
            Err(e) => Outcome::err(e.to_string()),
        };
    }
    let tail = std::fs::read(err_path)
        .map(|b| {
            let start = b.len().saturating_sub(STDERR_TAIL);
            String::from_utf8_lossy(&b[start..]).trim().to_string()
        })
        .unwrap_or_default();
    let how = match status.code() {
        Some(c) => format!("exit code {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    Outcome::err(format!("{prog:?} failed with {how}: {tail}"))
}
