//! The results store: results over `worker.inline_result` as files on shared
//! storage, one per attempt (`<job>/<task>-<attempt>.bin`), written
//! atomically and durably, checked (size, SHA-256) by whoever reads them.

use crate::ids::{JobId, TaskId};
use crate::protocol::StoredResult;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest piece of a stored result sent in one frame when it is streamed
/// through the scheduler to a peer that cannot see the store.
pub const CHUNK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or a quota, or a file-size limit) refused the bytes.
    #[error("results store full: cannot write {what} ({size}) to {dir}: {source}")]
    Full { what: String, size: String, dir: String, source: std::io::Error },
    #[error(
        "the result is {size}, over the limit of {max} (worker.max_result): return less, or raise the limit"
    )]
    TooLarge { size: String, max: String },
    #[error("cannot write {what} to the results store {dir}: {source}")]
    Io { what: String, dir: String, source: std::io::Error },
}

/// Why a stored result could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stored result {path} is missing: {why}")]
    Missing { path: String, why: String },
    #[error("stored result {path} is corrupt: {why}")]
    Corrupt { path: String, why: String },
    /// The reference itself is refused (from a peer: never a path outside the store).
    #[error("refused a stored-result reference {0:?}: not of the form <job>/<task>-<attempt>.bin")]
    BadPath(String),
}

impl ReadError {
    /// Missing or corrupt (the producing task must run again), as opposed
    /// to a reference that is refused.
    pub fn is_lost(&self) -> bool {
        !matches!(self, ReadError::BadPath(_))
    }
}

/// The file of one attempt's result, relative to the store.
pub fn relative_path(task: TaskId, attempt: u32) -> String {
    format!("{}/{}-{}.bin", task.job, task.idx, attempt)
}

/// Where the writer `pid` puts an attempt's result before the rename (as the
/// Python executor names it too: `_store` in `actord/executor.py`).
pub fn temp_path(dir: &Path, task: TaskId, attempt: u32, pid: u32) -> PathBuf {
    dir.join(task.job.to_string()).join(format!(".{}-{attempt}.{pid}.tmp", task.idx))
}

/// A reference's path, checked: exactly `<job uuid>/<digits>-<digits>.bin`,
/// so that nothing a peer sends names a file outside the store.
pub fn check_path(rel: &str) -> Result<PathBuf, ReadError> {
    let bad = || ReadError::BadPath(rel.chars().take(200).collect());
    let (job, file) = rel.split_once('/').ok_or_else(bad)?;
    job.parse::<uuid::Uuid>().map_err(|_| bad())?;
    let stem = file.strip_suffix(".bin").ok_or_else(bad)?;
    let (task, attempt) = stem.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(task) || !digits(attempt) || job.len() != 36 {
        return Err(bad());
    }
    Ok(PathBuf::from(rel))
}

/// The task (and attempt) whose result a checked reference names.
pub fn task_of(rel: &str) -> Option<TaskId> {
    check_path(rel).ok()?;
    let (job, file) = rel.split_once('/')?;
    let idx = file.split_once('-')?.0.parse().ok()?;
    Some(TaskId { job: JobId(job.parse().ok()?), idx })
}

/// SHA-256 of `data`, lowercase hex. (Not crc32c: Python's standard library
/// has SHA-256, so a Python client checks the store without extra packages,
/// and it also catches a file swapped on purpose.)
pub fn checksum(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG))
}

/// When a stored result is fsynced (`worker.result_sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Before it is renamed and reported: durable through a crash of the
    /// machine once reported.
    Before,
    /// After: written, renamed and reported at once, fsynced (file and
    /// directory) by a background thread. A process killed loses nothing
    /// (the kernel has the bytes); a machine that crashes before the fsync
    /// may lose the file, which its next reader finds missing or corrupt,
    /// and its task runs again.
    After,
    /// Never by actord: written, renamed and reported; the kernel writes it
    /// back in its own time (Dask's spilled data and Ray's spilled objects
    /// are never fsynced either). A killed process loses nothing; a machine
    /// that crashes may lose what was not yet written back, found by its
    /// next reader as above.
    Never,
}

/// Writes one attempt's result: to a temporary name, fsynced, renamed,
/// the directory fsynced (`SyncMode::After`: renamed first, and the
/// file's path returned for a later `sync`); `max` (0: none) caps its size.
pub fn write(
    dir: &Path,
    task: TaskId,
    attempt: u32,
    data: &[u8],
    max: u64,
    mode: SyncMode,
) -> Result<(StoredResult, Option<PathBuf>), StoreError> {
    let size = data.len() as u64;
    if max > 0 && size > max {
        return Err(StoreError::TooLarge {
            size: crate::util::format_size(size),
            max: crate::util::format_size(max),
        });
    }
    let rel = relative_path(task, attempt);
    let what = format!("the result of {task} (attempt {attempt})");
    let err = |source: std::io::Error| {
        let d = dir.display().to_string();
        if is_full(&source) {
            StoreError::Full { what: what.clone(), size: crate::util::format_size(size), dir: d, source }
        } else {
            StoreError::Io { what: what.clone(), dir: d, source }
        }
    };
    let job_dir = dir.join(task.job.to_string());
    let fresh = !job_dir.is_dir();
    std::fs::create_dir_all(&job_dir).map_err(err)?;
    let final_path = dir.join(&rel);
    let tmp = temp_path(dir, task, attempt, std::process::id());
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if mode == SyncMode::Before {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &final_path)?;
        if mode == SyncMode::Before {
            std::fs::File::open(&job_dir)?.sync_all()?;
            if fresh {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    let later = (mode == SyncMode::After).then_some(final_path);
    Ok((StoredResult { path: rel, size, checksum: checksum(data) }, later))
}

/// The deferred fsync of a file `write` stored with `SyncMode::After`, and
/// of its directory and the store's (a file already gone is no error).
pub fn sync(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    for d in path.ancestors().skip(1).take(2) {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Reads a stored result back in full, checking its size and checksum.
pub fn read(dir: &Path, r: &StoredResult) -> Result<Vec<u8>, ReadError> {
    let rel = check_path(&r.path)?;
    let path = dir.join(rel);
    let lost = |why: String| ReadError::Missing { path: r.path.clone(), why };
    let corrupt = |why: String| ReadError::Corrupt { path: r.path.clone(), why };
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return Err(lost(format!("{}: {e}", path.display()))),
    };
    let len = f.metadata().map_err(|e| lost(e.to_string()))?.len();
    if len != r.size {
        return Err(corrupt(format!("{len} bytes where {} were written", r.size)));
    }
    let n = usize::try_from(len).map_err(|_| corrupt("too large for this machine".into()))?;
    let mut data = Vec::with_capacity(n);
    f.read_to_end(&mut data).map_err(|e| corrupt(e.to_string()))?;
    verify(r, &data)?;
    Ok(data)
}

/// Checks a stored file against its reference without holding it: read in
/// pieces of `CHUNK`, hashed as it goes.
pub fn verify_file(dir: &Path, r: &StoredResult) -> Result<(), ReadError> {
    let path = dir.join(check_path(&r.path)?);
    let lost = |why: String| ReadError::Missing { path: r.path.clone(), why };
    let corrupt = |why: String| ReadError::Corrupt { path: r.path.clone(), why };
    let mut f = std::fs::File::open(&path).map_err(|e| lost(format!("{}: {e}", path.display())))?;
    let len = f.metadata().map_err(|e| lost(e.to_string()))?.len();
    if len != r.size {
        return Err(corrupt(format!("{len} bytes where {} were written", r.size)));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut seen = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| corrupt(e.to_string()))?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        ctx.update(&buf[..n]);
    }
    if seen != r.size || hex(ctx.finish().as_ref()) != r.checksum.to_ascii_lowercase() {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(())
}

/// Checks bytes (read or streamed) against their reference.
pub fn verify(r: &StoredResult, data: &[u8]) -> Result<(), ReadError> {
    let corrupt = |why: String| ReadError::Corrupt { path: r.path.clone(), why };
    if data.len() as u64 != r.size {
        return Err(corrupt(format!("{} bytes where {} were written", data.len(), r.size)));
    }
    if checksum(data) != r.checksum.to_ascii_lowercase() {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(())
}

/// One piece of a stored file, at most `CHUNK` bytes from `offset`, and
/// the file's size: what the scheduler streams to a peer without the store.
pub fn read_chunk(dir: &Path, rel: &str, offset: u64) -> Result<(Vec<u8>, u64), ReadError> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(check_path(rel)?);
    let lost = |why: String| ReadError::Missing { path: rel.to_string(), why };
    let f = std::fs::File::open(&path).map_err(|e| lost(e.to_string()))?;
    let total = f.metadata().map_err(|e| lost(e.to_string()))?.len();
    let n = total.saturating_sub(offset).min(CHUNK) as usize;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(lost(e.to_string())),
        }
    }
    buf.truncate(got);
    Ok((buf, total))
}

/// Removes a job's stored results (after `forget` or retention).
pub fn remove_job(dir: &Path, job: JobId) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir.join(job.to_string())) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_result_reads_back_and_damage_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let task = TaskId { job: JobId::new(), idx: 4 };
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (r, later) = write(dir.path(), task, 2, &data, 0, SyncMode::Before).unwrap();
        assert!(later.is_none());
        assert_eq!(r.path, format!("{}/4-2.bin", task.job));
        assert_eq!(r.size, data.len() as u64);
        assert_eq!(read(dir.path(), &r).unwrap(), data);
        let (chunk, total) = read_chunk(dir.path(), &r.path, CHUNK * 2).unwrap();
        assert_eq!((chunk.as_slice(), total), (&data[2 << 20..], data.len() as u64));
        // A flipped byte, a truncated file, a deleted one.
        let file = dir.path().join(&r.path);
        let mut bad = data.clone();
        bad[12345] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        assert!(matches!(read(dir.path(), &r), Err(ReadError::Corrupt { .. })));
        std::fs::write(&file, &data[..100]).unwrap();
        let e = read(dir.path(), &r).unwrap_err();
        assert!(matches!(e, ReadError::Corrupt { .. }) && e.to_string().contains("100 bytes"), "{e}");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(read(dir.path(), &r), Err(ReadError::Missing { .. })));
        assert!(matches!(
            write(dir.path(), task, 3, &data, 1000, SyncMode::Before),
            Err(StoreError::TooLarge { .. })
        ));
        // Never synced by actord: at its name, the same bytes, nothing for later.
        let (r, later) = write(dir.path(), task, 6, &data, 0, SyncMode::Never).unwrap();
        assert!(later.is_none());
        assert_eq!(read(dir.path(), &r).unwrap(), data);
        // Synced after: at its name at once, the same bytes; synced later.
        let (r, later) = write(dir.path(), task, 5, &data, 0, SyncMode::After).unwrap();
        assert_eq!(later.as_deref(), Some(dir.path().join(&r.path).as_path()));
        assert_eq!(read(dir.path(), &r).unwrap(), data);
        sync(&later.unwrap()).unwrap();
        assert!(verify_file(dir.path(), &r).is_ok());
        let file = dir.path().join(&r.path);
        let mut bad = data.clone();
        bad[CHUNK as usize + 7] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        assert!(matches!(verify_file(dir.path(), &r), Err(ReadError::Corrupt { .. })));
        std::fs::write(&file, &data[..10]).unwrap();
        assert!(matches!(verify_file(dir.path(), &r), Err(ReadError::Corrupt { .. })));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(verify_file(dir.path(), &r), Err(ReadError::Missing { .. })));
        sync(&dir.path().join(task.job.to_string()).join("9-9.bin")).unwrap();
        remove_job(dir.path(), task.job).unwrap();
        assert!(!dir.path().join(task.job.to_string()).exists());
    }

    #[test]
    fn references_outside_the_store_are_refused() {
        let job = JobId::new();
        assert!(check_path(&format!("{job}/1-2.bin")).is_ok());
        for bad in [
            "../x".to_string(),
            "/etc/passwd".into(),
            format!("{job}/../../etc/passwd"),
            format!("{job}/1-2.bin/.."),
            format!("/{job}/1-2.bin"),
            format!("{job}/a-2.bin"),
            format!("{job}/1-2"),
            "x".repeat(5000),
        ] {
            assert!(matches!(check_path(&bad), Err(ReadError::BadPath(_))), "{bad}");
        }
    }
}
