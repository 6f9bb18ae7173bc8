//! The Rust client's side of the results store: stored results read from
//! the store where this host sees it, else streamed through the scheduler;
//! checked either way.

use super::{Client, ClientError};
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

impl Client {
    /// Replaces a stored result in an outcome by the result itself (see
    /// `load_stored`); other outcomes are left as they are.
    pub async fn materialize(&mut self, o: &mut TaskOutcome) -> Result<(), ClientError> {
        if let Outcome::Stored(r) = &o.outcome {
            let data =
                self.load_stored(r).await.map_err(|error| ClientError::Stored { idx: o.idx, error })?;
            o.outcome = Outcome::Ok { result: data.into() };
        }
        Ok(())
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
