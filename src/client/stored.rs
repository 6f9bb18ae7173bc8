//! The Rust client's side of the results store: stored results read from
//! the store where this host sees it, else streamed through the scheduler;
//! checked either way.

use super::{Client, ClientError, TaskFuture};
use crate::ids::JobId;
use crate::protocol::{FromClient, Outcome, StoredResult, TaskOutcome, ToClient};
use crate::results_store::ReadError;
use serde::de::DeserializeOwned;
use std::path::PathBuf;

/// Decodes a result as `T`: a failed task is the error, and so is a
/// stored result not read yet (`Client::materialize`).
pub fn decode_outcome<T: DeserializeOwned>(o: &TaskOutcome) -> Result<T, ClientError> {
    match &o.outcome {
        Outcome::Ok { result } => rmp_serde::from_slice(result)
            .map_err(|e| ClientError::Protocol(format!("result of task {}: {e}", o.idx))),
        Outcome::Err { error, .. } => Err(ClientError::TaskFailed { idx: o.idx, error: error.clone() }),
        Outcome::Stored(s) => Err(ClientError::Protocol(format!(
            "result of task {} is in the results store ({}): read it with Client::materialize",
            o.idx, s.path
        ))),
    }
}

/// How many times a client has a lost stored result computed again before
/// it gives up on it.
const MAX_RERUNS: u32 = 3;

impl Client {
    /// Replaces a stored result in an outcome of `job` by the result itself
    /// (see `load_stored`); other outcomes are left as they are. A result
    /// found missing or corrupt (here and through the scheduler) is computed
    /// again: the scheduler checks the file itself, runs the task again, and
    /// this waits for its new outcome.
    pub async fn materialize(&mut self, job: JobId, o: &mut TaskOutcome) -> Result<(), ClientError> {
        let mut reruns = 0;
        while let Outcome::Stored(r) = &o.outcome {
            let r = r.clone();
            let mut read = self.load_stored(&r).await;
            if matches!(&read, Err(e) if e.is_lost()) && self.sees_store() {
                // This host's copy is bad: the scheduler's may be good.
                read = self.fetch_stored(&r).await;
            }
            match read {
                Ok(data) => o.outcome = Outcome::Ok { result: data.into() },
                Err(error) if error.is_lost() && reruns < MAX_RERUNS => {
                    reruns += 1;
                    tracing::warn!(job = %job, task = o.idx, %error, "stored result lost: the scheduler runs its task again");
                    let ask = FromClient::StoredLost { job, idx: o.idx, path: r.path.clone() };
                    self.ask(ask, |a| match a {
                        ToClient::StoredRerun { .. } => Ok(()),
                        other => Err(Box::new(other)),
                    })
                    .await?;
                    *o = self.outcome_unread(&TaskFuture { job, idx: o.idx }).await?;
                }
                Err(error) => return Err(ClientError::Stored { idx: o.idx, error }),
            }
        }
        Ok(())
    }

    /// Whether stored results are read from a directory on this host.
    fn sees_store(&self) -> bool {
        std::env::var_os("ACTORD_RESULTS_DIR").is_some() || self.file.results_dir.is_some()
    }

    /// The bytes of a stored result, checked against its size and checksum:
    /// read from the store where this host sees it (`$ACTORD_RESULTS_DIR`,
    /// else the scheduler file's `results_dir`), else streamed through the
    /// scheduler in pieces of 1 MiB.
    pub async fn load_stored(&mut self, r: &StoredResult) -> Result<Vec<u8>, ReadError> {
        let dir = std::env::var_os("ACTORD_RESULTS_DIR")
            .map(PathBuf::from)
            .or_else(|| self.file.results_dir.as_ref().map(PathBuf::from));
        if let Some(dir) = dir {
            let r2 = r.clone();
            let read = tokio::task::spawn_blocking(move || crate::results_store::read(&dir, &r2)).await;
            match read {
                Ok(Err(ReadError::Missing { .. })) | Err(_) => {}
                Ok(other) => return other,
            }
        }
        self.fetch_stored(r).await
    }

    /// A stored result streamed through the scheduler, checked.
    pub async fn fetch_stored(&mut self, r: &StoredResult) -> Result<Vec<u8>, ReadError> {
        crate::results_store::check_path(&r.path)?;
        let missing = |why: String| ReadError::Missing { path: r.path.clone(), why };
        let corrupt = |why: String| ReadError::Corrupt { path: r.path.clone(), why };
        let mut data: Vec<u8> = Vec::new();
        loop {
            let offset = data.len() as u64;
            let ask = FromClient::ReadStored { path: r.path.clone(), offset };
            self.conn.write(&ask).await.map_err(|e| missing(e.to_string()))?;
            let (total, chunk) = match self.expect_reply().await {
                Ok(ToClient::StoredChunk { path, offset: at, total, data })
                    if path == r.path && at == offset =>
                {
                    (total, data)
                }
                Ok(other) => return Err(missing(format!("unexpected answer {other:?}"))),
                Err(ClientError::Scheduler(why)) => return Err(missing(why)),
                Err(e) => return Err(missing(e.to_string())),
            };
            if total != r.size {
                return Err(corrupt(format!("{total} bytes where {} were written", r.size)));
            }
            let end = offset.saturating_add(chunk.len() as u64);
            if end > total || (chunk.is_empty() && offset < total) {
                return Err(corrupt(format!("the scheduler sent a piece ending at {end} of {total} bytes")));
            }
            if data.is_empty() {
                // (Grown as pieces come: a size a peer claims is not trusted with memory.)
                let want = usize::try_from(total).map_err(|_| corrupt("too large".into()))?;
                data.reserve_exact(want.min(64 << 20));
            }
            data.extend_from_slice(&chunk);
            if end == total {
                break;
            }
        }
        crate::results_store::verify(r, &data)?;
        Ok(data)
    }
}
