//! `py` tasks: one persistent Python executor (`python -m actord.executor`)
//! per worker slot, started on its first py task, kept for the next ones,
//! started again after it dies (through the spawn helper).

use super::msg::CANCEL_GRACE;
use super::outbox::too_large;
use crate::protocol::{Assignment, Outcome};
use bytes::Bytes;
use rustc_hash::FxHashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new executor may take to import its package and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
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
}

/// How reading an executor's answer can end early.
enum ReadEnd {
    Eof,
    TimedOut,
    TooLarge(usize),
    Io(std::io::Error),
}

impl PySlot {
    pub fn new(opts: PyOptions, slot: u32) -> PySlot {
        PySlot { opts, slot, exec: None }
    }

    /// Runs one py task (`function`: its key and pickle, if the scheduler
    /// sent it); `started` is told the executor's pid (for cancels). The
    /// flag says its executor died under it.
    pub fn run(
        &mut self,
        a: &Assignment,
        (func, function): (u32, Option<&(u64, Bytes)>),
        args: &Bytes,
        worker: crate::ids::WorkerId,
        started: &dyn Fn(u32),
    ) -> (Outcome, bool) {
        let tid = a.task;
        let Some((key, pickle)) = function.cloned() else {
            return (
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
                    Err(error) => return (Outcome::err(format!("task {tid}: {error}")), false),
                }
            }
            let frame = match self.request(a, key, &pickle, args, worker) {
                Ok(f) => f,
                Err(e) => return (Outcome::err(format!("task {tid}: cannot encode it: {e}")), false),
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
        self.ended(a, answer)
    }

    /// The request frame for one task; the function's pickle goes along
    /// the first time this executor runs it.
    fn request(
        &mut self,
        a: &Assignment,
        key: u64,
        pickle: &Bytes,
        args: &Bytes,
        worker: crate::ids::WorkerId,
    ) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let exec = self.exec.as_mut().expect("started by the caller");
        let clear = exec.loaded.len() >= MAX_LOADED && !exec.loaded.contains(&key);
        if clear {
            exec.loaded.clear();
        }
        let send_pickle = exec.loaded.insert(key);
        let (out, err) = output_paths(&self.opts.work_dir, a);
        let task_name = a.key.clone().unwrap_or_else(|| a.task.idx.to_string());
        // The task's environment, as for cmd tasks: ACTORD_JOB, _TASK, _ATTEMPT, _WORKER.
        let env = (a.task.job.to_string(), task_name, a.attempt, worker.to_string());
        let req = (
            key,
            send_pickle.then_some(pickle),
            args,
            &a.inputs,
            out.to_string_lossy(),
            err.to_string_lossy(),
            clear,
            env,
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
    fn ended(&mut self, a: &Assignment, answer: Result<Vec<u8>, ReadEnd>) -> (Outcome, bool) {
        let tid = a.task;
        match answer {
            Ok(body) => match result_in_place(body)
                .map_or_else(|body| self.answer(&body), |result| Ok(Outcome::Ok { result }))
            {
                Ok(outcome) => (outcome, false),
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
        }
    }

    /// Largest answer frame read from an executor: a result at the limit
    /// plus room for the envelope; errors are capped by the executor.
    fn frame_limit(&self) -> usize {
        match self.opts.max_result {
            0 => 1 << 30,
            m => (m as usize).saturating_add(1 << 20),
        }
    }

    fn answer(&self, body: &[u8]) -> Result<Outcome, &'static str> {
        use rmpv::Value;
        let Ok(Value::Array(items)) = rmpv::decode::read_value(&mut &body[..]) else {
            return Err("not an array");
        };
        Ok(match items.as_slice() {
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
            _ => return Err("unexpected shape"),
        })
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
                Ok(Executor { child, stdin, stdout, loaded: FxHashSet::default(), scratch })
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

/// `<work_dir>/<job>/<idx>.<attempt>.out|.err`, as for cmd tasks.
fn output_paths(work_dir: &Path, a: &Assignment) -> (PathBuf, PathBuf) {
    let dir = work_dir.join(a.task.job.to_string());
    let stem = format!("{}.{}", a.task.idx, a.attempt);
    (dir.join(format!("{stem}.out")), dir.join(format!("{stem}.err")))
}

/// `b` as one msgpack `bin` value.
fn msgpack_bin(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len() + 5);
    match b.len() {
        n if n <= u8::MAX as usize => out.extend_from_slice(&[0xc4, n as u8]),
        n if n <= u16::MAX as usize => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xc6);
            out.extend_from_slice(&u32::try_from(n).ok()?.to_be_bytes());
        }
    }
    out.extend_from_slice(b);
    Some(out)
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

/// `[0, bin]`, a result, as the executor sends it: the `bin` (header and
/// pickle) is the result's msgpack bytes as they are, so it is kept without
/// a copy. `None`: another answer (decoded in full).
fn result_in_place(body: Vec<u8>) -> Result<Bytes, Vec<u8>> {
    let len = match body.get(..3) {
        Some([0x92, 0x00, 0xc4]) => body.get(3).map(|&n| (2, n as usize)),
        Some([0x92, 0x00, 0xc5]) => body.get(3..5).map(|b| (3, u16::from_be_bytes([b[0], b[1]]) as usize)),
        Some([0x92, 0x00, 0xc6]) => {
            body.get(3..7).map(|b| (5, u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize))
        }
        _ => None,
    };
    match len {
        Some((head, n)) if 2 + head + n == body.len() => Ok(Bytes::from(body).slice(2..)),
        _ => Err(body),
    }
}

/// How often a slot waiting for a long task checks that its executor still
/// lives (a process it forked may hold the pipe open after it died).
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Reads one length-prefixed frame from the executor, waiting at most until
/// `deadline`; its death ends the wait even if the pipe stays open.
/// Thread-pool sizes of OpenMP, OpenBLAS and MKL, set to 1 for executors.
const ONE_THREAD: [&str; 3] = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"];

/// Large inputs and results cross these pipes: 1 MiB (the usual
/// `pipe-max-size`) instead of 64 KiB makes a 64 MiB result 64 wake-ups
/// instead of 1,024. Best effort: a smaller pipe only costs time.
fn widen_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a pipe this process owns; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
}

fn read_frame(
    r: &mut ChildStdout,
    child: &mut Child,
    deadline: Option<Instant>,
    limit: usize,
) -> Result<Vec<u8>, ReadEnd> {
    let mut head = [0u8; 4];
    read_exact(r, child, &mut head, deadline)?;
    let n = u32::from_be_bytes(head) as usize;
    if n > limit {
        return Err(ReadEnd::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    read_exact(r, child, &mut body, deadline)?;
    Ok(body)
}

fn read_exact(
    r: &mut ChildStdout,
    child: &mut Child,
    mut buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(), ReadEnd> {
    while !buf.is_empty() {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(ALIVE_CHECK),
            None => ALIVE_CHECK,
        };
        let mut fds = [libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait.as_millis() as i32) };
        if ready == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ReadEnd::TimedOut);
            }
            if !matches!(child.try_wait(), Ok(None)) {
                return Err(ReadEnd::Eof);
            }
            continue;
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadEnd::Io(e));
        }
        match r.read(buf) {
            Ok(0) => return Err(ReadEnd::Eof),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadEnd::Io(e)),
        }
    }
    Ok(())
}

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
    fn a_result_answer_is_kept_in_place_as_its_msgpack_bytes() {
        for n in [0usize, 1, 255, 256, 65_535, 65_536, 1 << 20] {
            let pickle: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let body = rmp_serde::to_vec(&(0u8, serde_bytes::Bytes::new(&pickle))).unwrap();
            let kept = result_in_place(body).unwrap_or_else(|_| panic!("{n} bytes: not in place"));
            assert_eq!(&kept[..], &msgpack_bin(&pickle).unwrap()[..], "{n} bytes");
        }
        // Anything else is decoded in full: an error, a truncated or padded bin.
        let error = rmp_serde::to_vec(&(1u8, "ValueError: x", ())).unwrap();
        assert!(result_in_place(error).is_err());
        let mut short = rmp_serde::to_vec(&(0u8, serde_bytes::Bytes::new(&[7; 300]))).unwrap();
        short.pop();
        assert!(result_in_place(short.clone()).is_err());
        short.extend_from_slice(&[7, 7]);
        assert!(result_in_place(short).is_err());
    }
}
