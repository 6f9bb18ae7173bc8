//! The Rust client: connect by scheduler file, submit jobs, map a function
//! over inputs, and gather results as they complete.
//!
//! ```no_run
//! # async fn demo() -> Result<(), actord::client::ClientError> {
//! use actord::client::Client;
//! let mut client = Client::connect_default(None).await?;
//! let job = client.map("inc", (0..10i64).collect::<Vec<_>>()).await?;
//! let results: Vec<i64> = client.gather(&job).await?.values()?;
//! # Ok(()) }
//! ```

use crate::ids::JobId;
use crate::protocol::{
    Conn, ConnError, Dep, FromClient, Outcome, Role, TaskKind, TaskOutcome, TaskSpec, ToClient, WorkerInfo,
    DEFAULT_MAX_FRAME,
};

mod stored;
use crate::schedfile::{resolve_path, wait_for_file, SchedulerFile};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
pub use stored::decode_outcome;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Connect(String),
    #[error("scheduler connection: {0}")]
    Conn(#[from] crate::protocol::ConnError),
    #[error("scheduler refused: {0}")]
    Scheduler(String),
    #[error("cannot encode arguments: {0}")]
    Encode(String),
    #[error("{0}")]
    Usage(String),
    #[error("task {idx} failed: {error}")]
    TaskFailed { idx: u32, error: String },
    #[error("unexpected reply from the scheduler: {0}")]
    Protocol(String),
    /// A stored result could not be read (missing, corrupt, refused).
    #[error("task {idx}: {error}")]
    Stored { idx: u32, error: crate::results_store::ReadError },
}

/// A submitted job: what futures in Dask would carry, the job id and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobHandle {
    pub id: JobId,
    pub tasks: u32,
}

/// One task of a job, as `submit` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFuture {
    pub job: JobId,
    pub idx: u32,
}

/// All outcomes of a job, in task order.
#[derive(Debug)]
pub struct Gathered {
    pub job: JobId,
    pub outcomes: Vec<TaskOutcome>,
}

impl Gathered {
    pub fn failed(&self) -> impl Iterator<Item = (u32, &str)> {
        self.outcomes.iter().filter_map(|o| match &o.outcome {
            Outcome::Err { error, .. } => Some((o.idx, error.as_str())),
            _ => None,
        })
    }

    /// Decodes every result as `T`; the first failed task is the error.
    pub fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>, ClientError> {
        self.outcomes.iter().map(|o| decode_outcome(o)).collect()
    }
}

pub struct Client {
    conn: Conn,
    pub file: SchedulerFile,
    pub path: PathBuf,
    /// How long to keep trying to reach a (restarted) scheduler.
    pub timeout: Duration,
}

/// How long a scheduler file naming a dead scheduler of this host may stay
/// before a client says so: time for a scheduler being started to replace it.
const DEAD_WRITER_GRACE: Duration = Duration::from_secs(3);

/// A lost connection (as opposed to an answer we did not like): worth a reconnect.
fn is_transport(e: &ClientError) -> bool {
    use crate::protocol::ConnError::*;
    matches!(e, ClientError::Conn(Closed | Io(_) | Timeout(_)))
}

impl Client {
    /// Finds the scheduler the default way (flag, `$ACTORD_SCHEDULER_FILE`,
    /// `$SCRATCH/actord/scheduler.json`, `./actord-scheduler.json`) and
    /// waits up to 60 s for it.
    pub async fn connect_default(flag: Option<&str>) -> Result<Client, ClientError> {
        let path = resolve_path(flag).map_err(ClientError::Usage)?;
        Client::connect(&path, Duration::from_secs(60)).await
    }

    /// Waits (bounded) for the scheduler file and for the scheduler to
    /// answer. A file whose writer ran on this host and is gone is reported
    /// within `DEAD_WRITER_GRACE`, unless a starting scheduler replaces it
    /// meanwhile.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_with(path, timeout, Some(DEAD_WRITER_GRACE)).await
    }

    /// `connect` for a scheduler that may still be starting (`actord
    /// wait`): a dead writer's file is waited on for the whole timeout.
    pub async fn connect_startup(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_with(path, timeout, None).await
    }

    /// `connect`; `grace`: how long a file left by a scheduler that is gone
    /// may stay before that is the error (`None`: wait the whole timeout).
    async fn connect_with(
        path: &Path,
        timeout: Duration,
        grace: Option<Duration>,
    ) -> Result<Client, ClientError> {
        let start = Instant::now();
        let mut said = false;
        // Since when the file in place has named a dead scheduler.
        let mut dead: Option<(uuid::Uuid, Instant)> = None;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let file = wait_for_file(path, left).await.map_err(ClientError::Connect)?;
            if let Some(why) = &file.stopped {
                return Err(ClientError::Connect(format!(
                    "the scheduler named by {} ({}) has stopped: {why}; start it again with `actord scheduler`",
                    path.display(),
                    file.describe()
                )));
            }
            dead = match (file.writer_is_gone(), dead) {
                (false, _) => None,
                (true, Some((instance, since))) if instance == file.instance => Some((instance, since)),
                (true, _) => Some((file.instance, Instant::now())),
            };
            if let (Some(grace), Some((_, since))) = (grace, dead) {
                if since.elapsed() >= grace.min(timeout) {
                    return Err(ClientError::Connect(file.gone(path)));
                }
            }
            let attempt = Conn::connect_epoch(
                file.socket_addr(),
                Role::Client,
                &file.auth(),
                file.epoch,
                DEFAULT_MAX_FRAME,
                Duration::from_secs(5),
            )
            .await;
            match attempt {
                Ok((conn, _)) => return Ok(Client { conn, file, path: path.to_path_buf(), timeout }),
                Err(crate::protocol::ConnError::Rejected(e)) => return Err(ClientError::Scheduler(e)),
                Err(crate::protocol::ConnError::Tls(e)) => {
                    return Err(ClientError::Connect(format!(
                        "refusing the scheduler at {} named by {}: {e}; someone else may be listening there, \
                         or the file is stale",
                        file.address,
                        path.display()
                    )))
                }
                Err(_) if start.elapsed() >= timeout && dead.is_some() => {
                    return Err(ClientError::Connect(file.gone(path)))
                }
                Err(e) if start.elapsed() >= timeout => {
                    return Err(ClientError::Connect(format!(
                        "cannot reach the scheduler at {} named by {} ({}): {e}; is that scheduler still running?",
                        file.address,
                        path.display(),
                        file.describe()
                    )))
                }
                Err(_) => {}
            }
            if !said {
                tracing::info!(address = %file.address, "waiting for the scheduler to answer");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects again, re-reading the scheduler file (the scheduler may have
    /// restarted elsewhere), within `self.timeout`.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        tracing::warn!(scheduler = %self.file.address, "lost the scheduler; reconnecting");
        // A restarted scheduler may not have rewritten the file yet: wait for it.
        let fresh = Client::connect_with(&self.path, self.timeout, None).await?;
        self.conn = fresh.conn;
        self.file = fresh.file;
        tracing::info!(scheduler = %self.file.address, epoch = self.file.epoch, "reconnected");
        Ok(())
    }

    async fn expect_reply(&mut self) -> Result<ToClient, ClientError> {
        match self.conn.read::<ToClient>().await? {
            ToClient::Error { message, .. } => Err(ClientError::Scheduler(message)),
            other => Ok(other),
        }
    }

    /// Submits a job with a chosen id; returns once the scheduler has made it
    /// durable. Submitting the same id again is harmless.
    pub async fn submit_job(
        &mut self,
        job: JobId,
        name: &str,
        tasks: Vec<TaskSpec>,
    ) -> Result<JobHandle, ClientError> {
        let msg = FromClient::Submit { job, name: name.into(), tasks, functions: Vec::new() };
        loop {
            // Resubmitting the same job id after a lost reply is harmless.
            let attempt = async {
                self.conn.write(&msg).await?;
                self.expect_reply().await
            };
            match attempt.await {
                Ok(ToClient::Submitted { job: j, tasks }) if j == job => {
                    return Ok(JobHandle { id: job, tasks })
                }
                Ok(other) => return Err(ClientError::Protocol(format!("{other:?}"))),
                Err(e) if is_transport(&e) => self.reconnect().await?,
                Err(ClientError::Conn(ConnError::Encode(why))) => {
                    let why = format!("job {name:?} does not fit in one message: {why}");
                    return Err(ClientError::Usage(format!("{why}; submit it as several jobs")));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits one `fn` task as a job of its own.
    pub async fn submit<A: Serialize>(&mut self, func: &str, args: &A) -> Result<TaskFuture, ClientError> {
        let spec = fn_task(func, args)?;
        let job = self.submit_job(JobId::new(), func, vec![spec]).await?;
        Ok(TaskFuture { job: job.id, idx: 0 })
    }

    /// `client.map(func, inputs)`: one task per input, one job.
    pub async fn map<A: Serialize>(&mut self, func: &str, inputs: Vec<A>) -> Result<JobHandle, ClientError> {
        let tasks = inputs.iter().map(|a| fn_task(func, a)).collect::<Result<Vec<_>, _>>()?;
        self.submit_job(JobId::new(), func, tasks).await
    }

    /// Outcomes in completion order; call `next` until it returns `None`.
    pub async fn as_completed(&mut self, job: JobId) -> Result<AsCompleted<'_>, ClientError> {
        self.conn.write(&FromClient::Watch { job }).await?;
        Ok(AsCompleted {
            client: self,
            job,
            buffer: Vec::new(),
            done: false,
            seen: HashSet::new(),
            tasks: None,
        })
    }

    /// Waits for every task of the job and returns the outcomes in task order.
    pub async fn gather(&mut self, job: &JobHandle) -> Result<Gathered, ClientError> {
        self.gather_with(job.id, |_, _| {}).await
    }

    /// `gather` with a progress callback `(done, total)` per finished task.
    pub async fn gather_with(
        &mut self,
        job: JobId,
        mut progress: impl FnMut(usize, u32),
    ) -> Result<Gathered, ClientError> {
        let mut outcomes = Vec::new();
        let mut stream = self.as_completed(job).await?;
        while let Some(o) = stream.next().await? {
            outcomes.push(o);
            progress(outcomes.len(), stream.tasks.unwrap_or(0));
        }
        outcomes.sort_by_key(|o| o.idx);
        for o in &mut outcomes {
            self.materialize(job, o).await?;
        }
        Ok(Gathered { job, outcomes })
    }

    pub async fn workers(&mut self) -> Result<Vec<WorkerInfo>, ClientError> {
        self.ask(FromClient::Workers, |r| match r {
            ToClient::Workers { workers } => Ok(workers),
            other => Err(Box::new(other)),
        })
        .await
    }

    pub async fn nannies(&mut self) -> Result<Vec<crate::protocol::NannyInfo>, ClientError> {
        self.ask(FromClient::Nannies, |r| match r {
            ToClient::Nannies { nannies } => Ok(nannies),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Submits a task graph as one job.
    pub async fn submit_graph(&mut self, name: &str, graph: Graph) -> Result<JobHandle, ClientError> {
        self.submit_job(JobId::new(), name, graph.tasks).await
    }

    /// `submit(func, args)` taking the results of earlier tasks, as Dask's
    /// futures passed as arguments: the function gets `[args, r1, r2, …]`,
    /// or with nil args the one result itself, or the array of them.
    pub async fn submit_after<A: Serialize>(
        &mut self,
        func: &str,
        args: &A,
        deps: &[&TaskFuture],
    ) -> Result<TaskFuture, ClientError> {
        let mut spec = fn_task(func, args)?;
        spec.deps = deps.iter().map(|f| Dep { job: Some(f.job), key: f.idx.to_string() }).collect();
        let job = self.submit_job(JobId::new(), func, vec![spec]).await?;
        Ok(TaskFuture { job: job.id, idx: 0 })
    }

    /// Why a task is in its state, in words.
    pub async fn explain(&mut self, job: JobId, key: &str) -> Result<String, ClientError> {
        self.admin(FromClient::Explain { job, key: key.into() }).await
    }

    /// Sends an admin request answered with `Done`; returns its message.
    pub async fn admin(&mut self, request: FromClient) -> Result<String, ClientError> {
        self.ask(request, |r| match r {
            ToClient::Done { message } => Ok(message),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Sends one request and takes its answer apart with `pick`; any other
    /// answer is a protocol error (an `Error` answer is the scheduler's).
    async fn ask<T>(
        &mut self,
        request: FromClient,
        pick: impl FnOnce(ToClient) -> Result<T, Box<ToClient>>,
    ) -> Result<T, ClientError> {
        self.conn.write(&request).await?;
        pick(self.expect_reply().await?).map_err(|other| ClientError::Protocol(format!("{other:?}")))
    }

    /// One job's progress by state and its timing.
    pub async fn job(&mut self, job: JobId) -> Result<crate::protocol::JobDetail, ClientError> {
        self.ask(FromClient::Job { job }, |r| match r {
            ToClient::Job { job } => Ok(job),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// The journal: path, size, records, last flush.
    pub async fn journal(&mut self) -> Result<crate::protocol::JournalInfo, ClientError> {
        self.ask(FromClient::Journal, |r| match r {
            ToClient::Journal { journal } => Ok(journal),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Stops the scheduler (its journal keeps everything for the next one).
    pub async fn shutdown(&mut self) -> Result<String, ClientError> {
        self.shutdown_with(FromClient::Shutdown).await
    }

    /// `Shutdown`, or `StopKeepingWorkers { drain: false }`: one request the
    /// scheduler may not outlive long enough to answer.
    pub async fn shutdown_with(&mut self, request: FromClient) -> Result<String, ClientError> {
        self.conn.write(&request).await?;
        match self.expect_reply().await {
            Ok(ToClient::Done { message }) => Ok(message),
            // It may close the connection before the answer gets out.
            Err(ClientError::Conn(crate::protocol::ConnError::Closed)) => Ok("the scheduler stopped".into()),
            Ok(other) => Err(ClientError::Protocol(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Every job with its progress, in submission order.
    pub async fn jobs(&mut self) -> Result<Vec<crate::protocol::JobInfo>, ClientError> {
        self.ask(FromClient::Jobs, |r| match r {
            ToClient::Jobs { jobs } => Ok(jobs),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// The scheduler at a glance.
    pub async fn status(&mut self) -> Result<crate::protocol::StatusInfo, ClientError> {
        self.ask(FromClient::Status, |r| match r {
            ToClient::Status { status } => Ok(status),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Every task of a job with its state.
    pub async fn tasks(&mut self, job: JobId) -> Result<Vec<crate::protocol::TaskInfo>, ClientError> {
        self.ask(FromClient::Tasks { job }, |r| match r {
            ToClient::Tasks { tasks, .. } => Ok(tasks),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// The index of the task named `key` in `job`.
    pub async fn resolve(&mut self, job: JobId, key: &str) -> Result<u32, ClientError> {
        self.ask(FromClient::Resolve { job, key: key.into() }, |r| match r {
            ToClient::Resolved { idx, .. } => Ok(idx),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Waits for one task and returns its outcome (a stored result read).
    pub async fn outcome(&mut self, task: &TaskFuture) -> Result<TaskOutcome, ClientError> {
        let mut o = self.outcome_unread(task).await?;
        self.materialize(task.job, &mut o).await?;
        Ok(o)
    }

    /// Waits for one task and returns its outcome as the scheduler sent it.
    pub(crate) async fn outcome_unread(&mut self, task: &TaskFuture) -> Result<TaskOutcome, ClientError> {
        let mut stream = self.as_completed(task.job).await?;
        let mut found = None;
        while let Some(o) = stream.next().await? {
            if o.idx == task.idx {
                found = Some(o);
                break;
            }
        }
        let done = stream.done;
        let Some(o) = found else {
            return Err(ClientError::Protocol(format!(
                "job {} finished without task {}",
                task.job, task.idx
            )));
        };
        if !done {
            // Stop the stream and skip what is already on its way.
            self.conn.write(&FromClient::Unwatch { job: task.job }).await?;
            loop {
                match self.expect_reply().await? {
                    ToClient::Unwatched { job } if job == task.job => break,
                    ToClient::Outcomes { job, .. } | ToClient::JobDone { job, .. } if job == task.job => {}
                    other => return Err(ClientError::Protocol(format!("{other:?}"))),
                }
            }
        }
        Ok(o)
    }

    /// Waits for one task and decodes its result.
    pub async fn result<T: DeserializeOwned>(&mut self, task: &TaskFuture) -> Result<T, ClientError> {
        decode_outcome(&self.outcome(task).await?)
    }

    /// Cancels the job's unfinished tasks named by `keys` (all if empty).
    pub async fn cancel(&mut self, job: JobId, keys: Vec<String>) -> Result<String, ClientError> {
        self.admin(FromClient::Cancel { job, keys }).await
    }

    /// Drops a finished job and its results from the scheduler and journal.
    pub async fn forget(&mut self, job: JobId) -> Result<String, ClientError> {
        self.admin(FromClient::Forget { job }).await
    }

    /// Asks the worker's nanny to restart it; returns what the scheduler did.
    pub async fn restart_worker(&mut self, worker: crate::ids::WorkerId) -> Result<String, ClientError> {
        self.admin(FromClient::RestartWorker { worker }).await
    }

    /// Blocks until at least `n` workers are registered, or `timeout`.
    pub async fn wait_for_workers(&mut self, n: usize, timeout: Duration) -> Result<usize, ClientError> {
        let start = Instant::now();
        loop {
            let have = self.workers().await?.len();
            if have >= n {
                return Ok(have);
            }
            if start.elapsed() >= timeout {
                return Err(ClientError::Connect(format!(
                    "only {have} of {n} workers registered within {:.1} s",
                    timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A stream of a job's outcomes as they finish.
pub struct AsCompleted<'a> {
    client: &'a mut Client,
    job: JobId,
    buffer: Vec<TaskOutcome>,
    done: bool,
    /// Tasks already returned: after a reconnect the scheduler sends them again.
    seen: HashSet<u32>,
    /// The job's size, once the scheduler has said it.
    pub tasks: Option<u32>,
}

impl AsCompleted<'_> {
    /// The next outcome; survives a scheduler restart (reconnects and
    /// watches the job again, skipping outcomes already returned).
    pub async fn next(&mut self) -> Result<Option<TaskOutcome>, ClientError> {
        loop {
            if let Some(o) = self.buffer.pop() {
                if self.seen.insert(o.idx) {
                    return Ok(Some(o));
                }
                continue;
            }
            if self.done {
                return Ok(None);
            }
            let reply = match self.client.expect_reply().await {
                Err(e) if is_transport(&e) => {
                    self.client.reconnect().await?;
                    self.client.conn.write(&FromClient::Watch { job: self.job }).await?;
                    continue;
                }
                other => other?,
            };
            match reply {
                ToClient::Outcomes { job, mut outcomes } if job == self.job => {
                    outcomes.reverse();
                    self.buffer = outcomes;
                }
                ToClient::JobDone { job, .. } if job == self.job => self.done = true,
                ToClient::Watching { job, tasks } if job == self.job => self.tasks = Some(tasks),
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            }
        }
    }
}

/// An `fn` task calling `func` with msgpack-encoded `args`.
pub fn fn_task<A: Serialize>(func: &str, args: &A) -> Result<TaskSpec, ClientError> {
    let args = rmp_serde::to_vec(args).map_err(|e| ClientError::Encode(e.to_string()))?;
    Ok(TaskSpec::new(TaskKind::Fn { name: func.into(), args }))
}

/// A `cmd` task running `argv`.
pub fn cmd_task(argv: Vec<String>) -> TaskSpec {
    TaskSpec::new(TaskKind::Cmd { argv, env: Vec::new(), discard_output: false, cwd: None })
}

/// A task graph to submit as one job: tasks named by key, each taking the
/// results of the tasks it depends on.
#[derive(Default, Debug, Clone)]
pub struct Graph {
    pub tasks: Vec<TaskSpec>,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    /// Adds `func(args, results of deps…)` under `key`; returns the task to
    /// set options on (priority, retries).
    pub fn add<A: Serialize>(
        &mut self,
        key: &str,
        func: &str,
        args: &A,
        deps: &[&str],
    ) -> Result<&mut TaskSpec, ClientError> {
        let mut spec = fn_task(func, args)?;
        spec.key = Some(key.into());
        spec.deps = deps.iter().map(|d| Dep::key(*d)).collect();
        self.tasks.push(spec);
        Ok(self.tasks.last_mut().expect("just pushed"))
    }

    /// Adds a command under `key`; its dependencies' results are JSON files
    /// named by `$ACTORD_INPUT_0`, `$ACTORD_INPUT_1`, ….
    pub fn add_cmd(&mut self, key: &str, argv: Vec<String>, deps: &[&str]) -> &mut TaskSpec {
        let mut spec = cmd_task(argv);
        spec.key = Some(key.into());
        spec.deps = deps.iter().map(|d| Dep::key(*d)).collect();
        self.tasks.push(spec);
        self.tasks.last_mut().expect("just pushed")
    }
}
