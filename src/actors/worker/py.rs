//! `py` tasks: one persistent Python executor (`python -m actord.executor`)
//! per worker slot, started on its first py task, kept for the next ones,
//! started again after it dies (through the spawn helper).

use super::msg::CANCEL_GRACE;
use super::outbox::too_large;
use super::py_objects::Held;
use super::py_pipe::{msgpack_bin, read_frame, result_in_place, widen_pipe, ReadEnd};
use super::stored::StoreTarget;
use crate::protocol::{Assignment, Outcome, StoredResult};
use crate::results_store;
use bytes::Bytes;
use rustc_hash::FxHashSet;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new executor may take to import its package and say it is ready.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Functions an executor keeps loaded; past that it drops them all and
/// loads again the ones it needs (a long-lived worker sees many jobs).
const MAX_LOADED: usize = 1024;
/// How much of an executor's stderr goes into the error when it dies.
const STDERR_TAIL: usize = 2048;

#[derive(Clone, Debug)]
pub struct PyOptions {
    /// The interpreter (`worker.python`, `--python`).
    pub python: String,
    /// Task output files (`<work_dir>/<job>/<task>.<attempt>.out|.err`) and
    /// the executors' scratch files (`<work_dir>/.executors/`).
    pub work_dir: PathBuf,
    /// Largest result, in bytes (0: no limit).
    pub max_result: u64,
    /// Modules each executor imports first (`worker.preload`).
    pub preload: Vec<String>,
    /// Bytes (stored size) of stored results each executor keeps as
    /// objects for the tasks it runs next (`worker.result_cache`; 0: none).
    pub objects: u64,
}

/// One py task as its slot runs it.
pub struct PyTask<'a> {
    /// The attempt, with its inputs filled but for the `held` ones.
    pub a: &'a Assignment,
    /// The function's index in its job, and its key and pickle if the
    /// scheduler sent it.
    pub func: u32,
    pub function: Option<&'a (u64, Bytes)>,
    pub args: &'a Bytes,
    pub worker: crate::ids::WorkerId,
    /// The inputs that are stored results: position, reference, and
    /// whether the executor is to use the object it holds.
    pub refs: Vec<(u32, &'a StoredResult, bool)>,
    /// Where a result over the inline limit goes (the executor writes it).
    pub store: Option<StoreTarget>,
}

/// How a py task ended.
pub enum PyEnd {
    /// Its outcome; the flag says its executor died under it.
    Done(Outcome, bool),
    /// The executor no longer holds these inputs: the task did not run.
    Missed,
}

/// One slot's executor, started when a py task first needs it.
pub struct PySlot {
    opts: PyOptions,
    slot: u32,
    exec: Option<Executor>,
}

struct Executor {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Function keys it has loaded.
    loaded: FxHashSet<u64>,
    /// Its scratch files, `<scratch>.out|.err`: the running task's output.
    scratch: PathBuf,
    /// The stored results it holds as objects.
    held: Held,
}

impl PySlot {
    pub fn new(opts: PyOptions, slot: u32) -> PySlot {
        PySlot { opts, slot, exec: None }
    }

    /// The positions of `a`'s stored inputs whose objects this slot's
    /// executor holds (it takes those itself).
    pub fn held_inputs(&self, a: &Assignment) -> Vec<u32> {
        let Some(e) = self.exec.as_ref() else { return Vec::new() };
        a.stored_inputs.iter().filter(|(_, r)| e.held.has(r)).map(|(pos, _)| *pos).collect()
    }

    /// Runs one py task; `started` is told the executor's pid (for cancels).
    pub fn run(&mut self, t: &PyTask, started: &dyn Fn(u32)) -> PyEnd {
        let (a, tid) = (t.a, t.a.task);
        let Some((key, pickle)) = t.function.cloned() else {
            let func = t.func;
            return PyEnd::Done(
                Outcome::err(format!("task {tid}: function {func} of its job was never sent here")),
                false,
            );
        };
        // An executor that died between tasks, or could not take this one,
        // is replaced: the task had not started.
        let mut answer = Err(ReadEnd::Eof);
        for first_try in [true, false] {
            if let Some(e) = self.exec.as_mut() {
                if !matches!(e.child.try_wait(), Ok(None)) {
                    self.discard("it died between tasks");
                }
            }
            if self.exec.is_none() {
                match self.start() {
                    Ok(e) => self.exec = Some(e),
                    Err(error) => return PyEnd::Done(Outcome::err(format!("task {tid}: {error}")), false),
                }
            }
            let frame = match self.request(t, key, &pickle) {
                Ok(f) => f,
                Err(e) => {
                    return PyEnd::Done(Outcome::err(format!("task {tid}: cannot encode it: {e}")), false)
                }
            };
            let limit = self.frame_limit();
            let exec = self.exec.as_mut().expect("started above");
            started(exec.child.id());
            let deadline = a.time_limit_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            match exec.stdin.write_all(&frame).and_then(|_| exec.stdin.flush()) {
                Ok(()) => answer = read_frame(&mut exec.stdout, &mut exec.child, deadline, limit),
                Err(e) if first_try => {
                    self.discard(&format!("it could not take a task ({e})"));
                    continue;
                }
                Err(_) => {}
            }
            break;
        }
        self.ended(t, answer)
    }

    /// The request frame for one task; the function's pickle goes along
    /// the first time this executor runs it.
    fn request(&mut self, t: &PyTask, key: u64, pickle: &Bytes) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let (a, args) = (t.a, t.args);
        let exec = self.exec.as_mut().expect("started by the caller");
        let clear = exec.loaded.len() >= MAX_LOADED && !exec.loaded.contains(&key);
        if clear {
            exec.loaded.clear();
        }
        let send_pickle = exec.loaded.insert(key);
        let (out, err) = output_paths(&self.opts.work_dir, a);
        let task_name = a.key.clone().unwrap_or_else(|| a.task.idx.to_string());
        // The task's environment, as for cmd tasks: ACTORD_JOB, _TASK, _ATTEMPT, _WORKER.
        let env = (a.task.job.to_string(), task_name, a.attempt, t.worker.to_string());
        // Inputs it is sent that are stored results, it keeps as objects.
        for (_, r, held) in &t.refs {
            if !held {
                exec.held.keep(&r.path, r.size);
            }
        }
        let refs: Vec<_> = t.refs.iter().map(|(pos, r, held)| (pos, &r.path, r.size, held)).collect();
        let store = t.store.as_ref().map(|s| (&s.dir, &s.path, s.inline, s.max, s.sync_first));
        let req = (
            key,
            send_pickle.then_some(pickle),
            args,
            &a.inputs,
            out.to_string_lossy(),
            err.to_string_lossy(),
            clear,
            env,
            refs,
            store,
        );
        // Framed in place, sized for the inputs: a 64 MiB input is copied once.
        let inputs: usize = a.inputs.iter().map(|i| i.len() + 5).sum();
        let mut frame = Vec::with_capacity(4 + inputs + args.len() + pickle.len() + 1024);
        frame.extend_from_slice(&[0; 4]);
        rmp_serde::encode::write(&mut frame, &req)?;
        let n = u32::try_from(frame.len() - 4)
            .map_err(|_| rmp_serde::encode::Error::Syntax("a request over 4 GiB".into()))?;
        frame[..4].copy_from_slice(&n.to_be_bytes());
        Ok(frame)
    }

    /// Ends an executor that runs no task (its scratch output is dropped).
    fn discard(&mut self, why: &str) {
        if let Some(mut exec) = self.exec.take() {
            drop(exec.stdin);
            let status = terminate(&mut exec.child);
            tracing::warn!(slot = self.slot, pid = exec.child.id(), %status, reason = why, "Python executor replaced");
        }
    }

    /// What the attempt's answer (or its absence) means; a stopped or dead
    /// executor is replaced at the next task.
    fn ended(&mut self, t: &PyTask, answer: Result<Vec<u8>, ReadEnd>) -> PyEnd {
        let (a, tid) = (t.a, t.a.task);
        let pid = self.exec.as_ref().map(|e| e.child.id());
        let (outcome, died) = match answer {
            Ok(body) => match result_in_place(body).map_or_else(
                |body| self.answer(t, &body),
                |result| Ok(PyEnd::Done(Outcome::Ok { result }, false)),
            ) {
                Ok(end) => return end,
                Err(why) => {
                    self.stop(a);
                    (
                        Outcome::err(format!(
                            "task {tid}: unreadable answer from its Python executor: {why}"
                        )),
                        false,
                    )
                }
            },
            Err(ReadEnd::TimedOut) => {
                self.stop(a);
                let limit = a.time_limit_ms.unwrap_or(0);
                (Outcome::err(format!("time limit exceeded ({limit} ms)")), false)
            }
            Err(ReadEnd::TooLarge(n)) => {
                self.stop(a);
                let error =
                    format!("task {tid}: its Python executor sent an answer of {n} bytes, over the limit");
                (Outcome::err(error), false)
            }
            Err(end) => {
                if let ReadEnd::Io(e) = end {
                    tracing::warn!(task = %tid, error = %e, "reading from the Python executor failed");
                }
                let how = self.stop(a);
                (Outcome::err(format!("task {tid}: its Python executor {how}")), true)
            }
        };
        if let (None, Some(pid), Some(store)) = (&self.exec, pid, &t.store) {
            remove_partial(&results_store::temp_path(Path::new(&store.dir), a.task, a.attempt, pid));
        }
        PyEnd::Done(outcome, died)
    }

    /// Largest answer frame read from an executor: a result at the limit
    /// plus room for the envelope; errors are capped by the executor.
    fn frame_limit(&self) -> usize {
        match self.opts.max_result {
            0 => 1 << 30,
            m => (m as usize).saturating_add(1 << 20),
        }
    }

    fn answer(&mut self, t: &PyTask, body: &[u8]) -> Result<PyEnd, &'static str> {
        use rmpv::Value;
        let Ok(Value::Array(items)) = rmpv::decode::read_value(&mut &body[..]) else {
            return Err("not an array");
        };
        let held = &mut self.exec.as_mut().ok_or("no executor")?.held;
        let outcome = match items.as_slice() {
            [Value::Integer(k), Value::Binary(pickled)] if k.as_u64() == Some(0) => {
                let result = msgpack_bin(pickled).ok_or("a result over 4 GiB")?;
                Outcome::Ok { result: result.into() }
            }
            [Value::Integer(k), Value::String(error), exc] if k.as_u64() == Some(1) => Outcome::Err {
                error: error.as_str().unwrap_or("(an error that is not UTF-8)").to_string(),
                exception: match exc {
                    Value::Binary(b) => Some(Bytes::from(b.clone())),
                    _ => None,
                },
            },
            [Value::Integer(k), Value::Integer(size)] if k.as_u64() == Some(2) => {
                too_large(size.as_u64().unwrap_or(u64::MAX), self.opts.max_result)
            }
            [Value::Integer(k), Value::Array(missing)] if k.as_u64() == Some(3) => {
                for pos in missing {
                    let pos = pos.as_u64().ok_or("a position that is not a number")?;
                    let (_, r, _) =
                        t.refs.iter().find(|(p, ..)| u64::from(*p) == pos).ok_or("an unknown position")?;
                    held.forget(&r.path);
                }
                return Ok(PyEnd::Missed);
            }
            [Value::Integer(k), Value::String(path), Value::Integer(size), Value::String(sum), Value::Boolean(kept)]
                if k.as_u64() == Some(4) =>
            {
                // Only where it was asked to write, and a checksum's shape.
                let asked = t.store.as_ref().map(|s| s.path.as_str());
                let (path, sum) = (path.as_str(), sum.as_str().unwrap_or(""));
                if path.is_none() || path != asked {
                    return Err("a stored result at a path it was not given");
                }
                if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("a stored result without a SHA-256");
                }
                let size = size.as_u64().ok_or("a negative size")?;
                let path = asked.unwrap_or_default().to_string();
                if *kept {
                    held.keep(&path, size);
                }
                Outcome::Stored(StoredResult { path, size, checksum: sum.to_ascii_lowercase() })
            }
            _ => return Err("unexpected shape"),
        };
        Ok(PyEnd::Done(outcome, false))
    }

    /// With modules to preload, the executor starts before the first task
    /// (a failure to start is logged; the first task tries again).
    pub fn warm_up(&mut self) {
        if self.opts.preload.is_empty() || self.exec.is_some() {
            return;
        }
        match self.start() {
            Ok(e) => self.exec = Some(e),
            Err(error) => {
                tracing::warn!(slot = self.slot, %error, "cannot start a Python executor ahead of its tasks")
            }
        }
    }

    fn start(&mut self) -> Result<Executor, String> {
        let python = interpreter(&self.opts.python);
        let dir = self.opts.work_dir.join(".executors");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let host = crate::util::hostname();
        remove_stale_scratch(&dir, &host);
        let scratch = dir.join(format!("{host}-{}-{}", std::process::id(), self.slot));
        let err_path = with_ext(&scratch, "err");
        let err = std::fs::File::create(&err_path)
            .map_err(|e| format!("cannot create {}: {e}", err_path.display()))?;
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "actord.executor", "--scratch"])
            .arg(&scratch)
            .arg("--max-result")
            .arg(self.opts.max_result.to_string())
            .arg("--objects")
            .arg(self.opts.objects.to_string())
            .args(if self.opts.preload.is_empty() { None } else { Some("--preload") })
            .args((!self.opts.preload.is_empty()).then(|| self.opts.preload.join(",")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        // One task at a time per executor, one slot each: numerical
        // libraries' own thread pools would only fight over the slots' CPUs
        // (as Dask's nanny does; a variable set for the worker wins).
        for name in ONE_THREAD {
            if std::env::var_os(name).is_none() {
                cmd.env(name, "1");
            }
        }
        if let Some(p) = package_path() {
            let mut path = std::ffi::OsString::from(p);
            if let Some(old) = std::env::var_os("PYTHONPATH").filter(|o| !o.is_empty()) {
                path.push(":");
                path.push(old);
            }
            cmd.env("PYTHONPATH", path);
        }
        crate::process::supervised(&mut cmd);
        let what = format!("the Python executor ({} -m actord.executor)", python.display());
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot start {what}: {e}; set worker.python or --python to a Python 3 interpreter")
        })?;
        let (stdin, mut stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        widen_pipe(stdin.as_raw_fd());
        widen_pipe(stdout.as_raw_fd());
        match read_frame(&mut stdout, &mut child, Some(Instant::now() + START_TIMEOUT), 1 << 16) {
            Ok(ready) => {
                tracing::info!(slot = self.slot, pid = child.id(), python = %python.display(), "Python executor started");
                for failed in preload_failures(&ready) {
                    tracing::warn!(slot = self.slot, pid = child.id(), error = ?failed, "Python executor: a preload failed");
                }
                let held = Held::new(self.opts.objects);
                Ok(Executor { child, stdin, stdout, loaded: FxHashSet::default(), scratch, held })
            }
            Err(end) => {
                drop(stdin);
                let status = terminate(&mut child);
                let tail = stderr_tail(&err_path);
                let why = match end {
                    ReadEnd::TimedOut => format!("was not ready after {}s", START_TIMEOUT.as_secs()),
                    _ => format!("{status} before it was ready"),
                };
                Err(format!("{what} {why} (can it import actord, msgpack and cloudpickle?): {tail}"))
            }
        }
    }

    /// Stops the executor (if it still runs) and moves its scratch output to
    /// the task's files; says how it ended, with the tail of its stderr.
    fn stop(&mut self, a: &Assignment) -> String {
        let Some(mut exec) = self.exec.take() else { return "is gone".into() };
        drop(exec.stdin);
        let status = terminate(&mut exec.child);
        tracing::warn!(task = %a.task, slot = self.slot, pid = exec.child.id(), %status, "Python executor stopped");
        let (out, err) = output_paths(&self.opts.work_dir, a);
        let mut tail = String::new();
        for (ext, dest) in [("out", out), ("err", err)] {
            let src = with_ext(&exec.scratch, ext);
            if std::fs::metadata(&src).is_ok_and(|m| m.len() > 0) {
                if ext == "err" {
                    tail = stderr_tail(&src);
                }
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::rename(&src, &dest);
            }
        }
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        }
    }
}

/// Removes the scratch files left by executors of workers of this host that
/// are gone (`<host>-<pid>-<slot>.out|.err`; other hosts may share the dir).
fn remove_stale_scratch(dir: &Path, host: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{host}-");
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the temporary file of a result an executor was writing to the
/// store when it was stopped (canceled, over its time limit, killed).
fn remove_partial(tmp: &Path) {
    match std::fs::remove_file(tmp) {
        Ok(()) => {
            tracing::info!(path = %tmp.display(), "removed the partial result of a stopped Python executor")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a partial stored result"),
    }
}

/// `<work_dir>/<job>/<idx>.<attempt>.out|.err`, as for cmd tasks.
fn output_paths(work_dir: &Path, a: &Assignment) -> (PathBuf, PathBuf) {
    let dir = work_dir.join(a.task.job.to_string());
    let stem = format!("{}.{}", a.task.idx, a.attempt);
    (dir.join(format!("{stem}.out")), dir.join(format!("{stem}.err")))
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// What `["ready", version, [failed preloads]]` says failed (at most 16).
fn preload_failures(ready: &[u8]) -> Vec<String> {
    let Ok(rmpv::Value::Array(items)) = rmpv::decode::read_value(&mut &ready[..]) else { return Vec::new() };
    let Some(rmpv::Value::Array(failed)) = items.get(2) else { return Vec::new() };
    failed.iter().take(16).filter_map(|f| f.as_str().map(|s| s.chars().take(500).collect())).collect()
}

/// Thread-pool sizes of OpenMP, OpenBLAS and MKL, set to 1 for executors.
const ONE_THREAD: [&str; 3] = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"];

/// Ends an executor (the spawn helper's escalation); says how it ended.
fn terminate(child: &mut Child) -> String {
    match crate::process::stop(child, CANCEL_GRACE) {
        Ok(s) => describe_exit(s),
        Err(e) => format!("could not be waited for ({e})"),
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
            format!("was killed by signal {sig} ({name})")
        }
        _ => "ended".into(),
    }
}

fn stderr_tail(path: &Path) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    let start = b.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&b[start..]).trim().to_string()
}

/// The interpreter to run: the configured one; for the default `python3`,
/// the one beside the actord binary if there is one (a virtualenv's bin/).
fn interpreter(configured: &str) -> PathBuf {
    if configured == "python3" {
        let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("python3")));
        if let Some(p) = beside.filter(|p| p.is_file()) {
            return p;
        }
    }
    PathBuf::from(configured)
}

/// The package's directory in the source tree this binary was built from,
/// if it is still there (a checkout); an installed wheel needs none.
fn package_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    p.join("actord").join("executor.py").is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_result_of_a_stopped_executor_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let task = crate::ids::TaskId { job: crate::ids::JobId::new(), idx: 7 };
        std::fs::create_dir(dir.path().join(task.job.to_string())).unwrap();
        // As the executor names it (`_store` in actord/executor.py).
        let tmp = dir.path().join(task.job.to_string()).join(".7-2.4242.tmp");
        let other = dir.path().join(task.job.to_string()).join(".7-2.4243.tmp");
        assert_eq!(results_store::temp_path(dir.path(), task, 2, 4242), tmp);
        std::fs::write(&tmp, b"partial").unwrap();
        std::fs::write(&other, b"another executor's").unwrap();
        remove_partial(&results_store::temp_path(dir.path(), task, 2, 4242));
        assert!(!tmp.exists());
        assert!(other.exists(), "only the stopped executor's file");
        remove_partial(&tmp); // gone already: nothing to do
    }
}
