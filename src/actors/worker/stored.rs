//! A worker's view of the results store: where it is (`--results-dir`, else
//! the scheduler's), moving large results into it, and filling a task's
//! stored inputs from it — or through the scheduler when this host cannot
//! see the file. The results it stored last stay in memory for a while
//! (`worker.result_cache`), so the tasks it runs next skip the read-back.

use crate::ids::TaskId;
use crate::protocol::{Assignment, Outcome, StoredResult};
use crate::results_store::{self, ReadError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a fetch through the scheduler may take to connect.
const FETCH_CONNECT: Duration = Duration::from_secs(30);

pub(super) struct StoreView {
    /// The store's directory, once known.
    dir: Mutex<Option<PathBuf>>,
    /// Given by `--results-dir`: what the scheduler says does not change it.
    fixed: bool,
    /// Results over this many bytes go to the store (0: none do).
    pub inline: u64,
    /// Largest result the store takes (0: no limit beyond the disk).
    pub max: u64,
    /// For fetches through the scheduler.
    scheduler_file: PathBuf,
    /// This worker's latest stored results, by path.
    recent: Mutex<Recent>,
    /// When results are fsynced (`worker.result_sync`).
    sync: results_store::SyncMode,
    /// The thread that fsyncs results stored `SyncMode::After`.
    syncer: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
}

/// The bytes of the results this worker stored last, oldest first, at most
/// `cap` bytes in all. They are the bytes the checksum was made of, so a
/// hit needs no check; a miss reads the store.
struct Recent {
    cap: u64,
    bytes: u64,
    items: VecDeque<(String, Bytes)>,
}

impl Recent {
    fn keep(&mut self, path: &str, data: &Bytes) {
        let n = data.len() as u64;
        if n > self.cap {
            return;
        }
        self.items.retain(|(p, _)| p != path);
        self.bytes = self.items.iter().map(|(_, d)| d.len() as u64).sum::<u64>() + n;
        self.items.push_back((path.to_string(), data.clone()));
        while self.bytes > self.cap {
            let Some((_, old)) = self.items.pop_front() else { break };
            self.bytes -= old.len() as u64;
        }
    }

    fn get(&self, r: &StoredResult) -> Option<Bytes> {
        self.items
            .iter()
            .rev()
            .find(|(p, d)| *p == r.path && d.len() as u64 == r.size)
            .map(|(_, d)| d.clone())
    }
}

/// Where a py task's executor writes a result over the inline limit
/// itself (as `results_store::write` would), instead of sending it here.
pub(super) struct StoreTarget {
    pub dir: String,
    /// `<job>/<task>-<attempt>.bin`, relative to `dir`.
    pub path: String,
    pub inline: u64,
    pub max: u64,
    /// Fsync before the rename (`SyncMode::Before`); else this worker's
    /// fsync thread does it once the result is reported.
    pub sync_first: bool,
}

/// Why a task's stored inputs could not be filled.
pub(super) enum FillError {
    /// These inputs' stored results are missing or corrupt.
    Lost(Vec<TaskId>, String),
    /// Anything else (a refused reference, no store known): the task fails.
    Failed(String),
}

impl StoreView {
    pub(super) fn new(
        dir: Option<PathBuf>,
        inline: u64,
        max: u64,
        cache: u64,
        sync: results_store::SyncMode,
        scheduler_file: PathBuf,
    ) -> StoreView {
        let recent = Mutex::new(Recent { cap: cache, bytes: 0, items: VecDeque::new() });
        let dir = dir.map(|d| absolute(&d));
        let (fixed, dir, syncer) = (dir.is_some(), Mutex::new(dir), Mutex::new(None));
        StoreView { fixed, dir, inline, max, scheduler_file, recent, sync, syncer }
    }

    /// Hands a stored file to the fsync thread (started at the first).
    fn sync_later(&self, path: PathBuf) {
        let mut syncer = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = syncer.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new().name("store-sync".into()).spawn(move || {
                for p in rx {
                    if let Err(e) = results_store::sync(&p) {
                        tracing::warn!(path = %p.display(), error = %e, "cannot fsync a stored result");
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the store's fsync thread; results are not fsynced");
            }
            tx
        });
        let _ = tx.send(path);
    }

    /// The scheduler's store, as its file says (unless `--results-dir`).
    pub(super) fn set_from_scheduler(&self, dir: Option<&str>) {
        if self.fixed {
            return;
        }
        let mut d = self.dir.lock().unwrap_or_else(|e| e.into_inner());
        *d = dir.map(|p| absolute(Path::new(p)));
    }

    pub(super) fn dir(&self) -> Option<PathBuf> {
        self.dir.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the executor of a py attempt stores a large result (`None`:
    /// no store, or one whose path is not UTF-8: it sends results here).
    pub(super) fn target(&self, task: TaskId, attempt: u32) -> Option<StoreTarget> {
        let dir = self.dir()?.to_str()?.to_string();
        (self.inline > 0).then(|| StoreTarget {
            dir,
            path: results_store::relative_path(task, attempt),
            inline: self.inline,
            max: self.max,
            sync_first: self.sync == results_store::SyncMode::Before,
        })
    }

    /// An attempt's outcome, with a result over `inline` moved to the store
    /// (a full store fails the task, saying so). Without a store, results
    /// stay inline. A result an executor stored itself is fsynced later if
    /// so configured.
    pub(super) fn keep(&self, task: TaskId, attempt: u32, outcome: Outcome) -> Outcome {
        // (The outcome first: most results are small, and the store's
        // directory is behind a lock.)
        let result = match &outcome {
            Outcome::Stored(s) if self.sync == results_store::SyncMode::After => {
                if let Some(dir) = self.dir() {
                    self.sync_later(dir.join(&s.path));
                }
                return outcome;
            }
            Outcome::Ok { result } if self.inline > 0 && result.len() as u64 > self.inline => result,
            _ => return outcome,
        };
        let Some(dir) = self.dir() else { return outcome };
        match results_store::write(&dir, task, attempt, result, self.max, self.sync) {
            Ok((s, later)) => {
                self.recent.lock().unwrap_or_else(|e| e.into_inner()).keep(&s.path, result);
                if let Some(path) = later {
                    self.sync_later(path);
                }
                Outcome::Stored(s)
            }
            Err(e) => {
                tracing::warn!(task = %task, error = %e, "cannot store a result");
                Outcome::err(e.to_string())
            }
        }
    }

    /// The assignment with its stored inputs read (checksums checked), but
    /// for those at the positions in `skip` (left as references).
    pub(super) fn fill(&self, a: &Assignment, skip: &[u32]) -> Result<Assignment, FillError> {
        let mut filled = a.clone();
        filled.stored_inputs.retain(|(pos, _)| skip.contains(pos));
        let mut lost = Vec::new();
        let mut why = Vec::new();
        for (pos, r) in a.stored_inputs.iter().filter(|(pos, _)| !skip.contains(pos)) {
            let Some(slot) = filled.inputs.get_mut(*pos as usize) else {
                return Err(FillError::Failed(format!(
                    "stored input at position {pos} of {} inputs",
                    a.inputs.len()
                )));
            };
            match self.read(r) {
                Ok(data) => *slot = data,
                Err(e) if e.is_lost() => match results_store::task_of(&r.path) {
                    Some(t) => {
                        lost.push(t);
                        why.push(e.to_string());
                    }
                    None => return Err(FillError::Failed(e.to_string())),
                },
                Err(e) => return Err(FillError::Failed(e.to_string())),
            }
        }
        if lost.is_empty() {
            Ok(filled)
        } else {
            Err(FillError::Lost(lost, why.join("; ")))
        }
    }

    /// One stored result: from memory if this worker stored it lately,
    /// else from the store where this host sees it, else streamed through
    /// the scheduler.
    fn read(&self, r: &StoredResult) -> Result<Bytes, ReadError> {
        if let Some(data) = self.recent.lock().unwrap_or_else(|e| e.into_inner()).get(r) {
            return Ok(data);
        }
        if let Some(dir) = self.dir() {
            match results_store::read(&dir, r) {
                Err(ReadError::Missing { .. }) => {}
                other => return other.map(Bytes::from),
            }
        }
        tracing::info!(path = ?r.path, size = r.size, "stored input not visible here: fetching it through the scheduler");
        self.fetch(r).map(Bytes::from)
    }

    fn fetch(&self, r: &StoredResult) -> Result<Vec<u8>, ReadError> {
        let missing = |why: String| ReadError::Missing { path: r.path.clone(), why };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| missing(format!("cannot start a runtime to fetch it: {e}")))?;
        rt.block_on(async {
            let mut c = crate::client::Client::connect(&self.scheduler_file, FETCH_CONNECT)
                .await
                .map_err(|e| missing(format!("cannot reach the scheduler to fetch it: {e}")))?;
            c.fetch_stored(r).await
        })
    }
}

/// `p` from the root: executors are told where the store is, and a task
/// may change their working directory.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(path: &str, size: usize) -> StoredResult {
        StoredResult { path: path.into(), size: size as u64, checksum: String::new() }
    }

    #[test]
    fn executors_are_told_the_store_from_the_root() {
        let sync = results_store::SyncMode::Before;
        let v = StoreView::new(Some("journal/results".into()), 1, 0, 0, sync, "sf.json".into());
        let t = v.target(TaskId { job: crate::ids::JobId::new(), idx: 1 }, 1).expect("a store");
        assert!(Path::new(&t.dir).is_absolute() && t.dir.ends_with("/journal/results"), "{}", t.dir);
        let v = StoreView::new(None, 1, 0, 0, sync, "sf.json".into());
        v.set_from_scheduler(Some("rel/store"));
        assert!(v.dir().unwrap().is_absolute());
    }

    #[test]
    fn the_latest_results_stay_in_memory_up_to_the_cap() {
        let mut r = Recent { cap: 10, bytes: 0, items: VecDeque::new() };
        r.keep("j/1.1.bin", &Bytes::from(vec![1u8; 4]));
        r.keep("j/2.1.bin", &Bytes::from(vec![2u8; 4]));
        assert_eq!(r.get(&stored("j/1.1.bin", 4)).as_deref(), Some(&[1u8; 4][..]));
        // A third goes over the cap: the oldest leaves.
        r.keep("j/3.1.bin", &Bytes::from(vec![3u8; 4]));
        assert_eq!(r.bytes, 8);
        assert!(r.get(&stored("j/1.1.bin", 4)).is_none());
        assert!(r.get(&stored("j/3.1.bin", 4)).is_some());
        // A reference of another size is not these bytes.
        assert!(r.get(&stored("j/3.1.bin", 5)).is_none());
        // Larger than the cap: not kept, nothing evicted; the same path again replaces.
        r.keep("j/4.1.bin", &Bytes::from(vec![4u8; 11]));
        assert_eq!(r.items.len(), 2);
        r.keep("j/3.1.bin", &Bytes::from(vec![5u8; 2]));
        assert_eq!((r.items.len(), r.bytes), (2, 6));
        assert_eq!(r.get(&stored("j/3.1.bin", 2)).as_deref(), Some(&[5u8; 2][..]));
        // 0: nothing kept.
        let mut off = Recent { cap: 0, bytes: 0, items: VecDeque::new() };
        off.keep("j/1.1.bin", &Bytes::from(vec![1u8; 1]));
        assert!(off.items.is_empty());
    }
}
