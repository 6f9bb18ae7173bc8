//! Owner-only files: the process umask, private files and directories, and
//! the check that refuses a secret-bearing file others can read (as ssh does).

use super::SecurityError;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes everything this process (and its children) creates owner-only.
pub fn owner_only_umask() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file beside it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecurityError> {
    let err = |e: std::io::Error| SecurityError::File { path: path.to_path_buf(), message: e.to_string() };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), SecurityError> {
    let err = |e: std::io::Error| SecurityError::File { path: dir.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Makes `dir` 0700 and everything under it owner-only (0700 directories,
/// files without group and other bits): a journal written by an older
/// version may have been 0755 with 0644 files.
pub fn make_private_tree(dir: &Path) -> Result<(), SecurityError> {
    create_private_dir(dir)?;
    let err = |path: &Path, e: std::io::Error| SecurityError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| err(&d, e))? {
            let entry = entry.map_err(|e| err(&d, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| err(&path, e))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let m = meta.permissions().mode() & 0o7777;
            let want = if meta.is_dir() { 0o700 } else { m & 0o700 };
            if m != want {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
                    .map_err(|e| err(&path, e))?;
            }
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// Refuses a file that carries a secret when its group or others may read
/// or write it, naming the fix.
pub fn check_private_file(path: &Path, what: &str) -> Result<(), SecurityError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| SecurityError::File { path: path.to_path_buf(), message: e.to_string() })?;
    if !meta.is_file() {
        let message = format!("the {what} must be a regular file");
        return Err(SecurityError::File { path: path.to_path_buf(), message });
    }
    let m = meta.permissions().mode() & 0o7777;
    if m & 0o077 != 0 {
        return Err(SecurityError::Exposed { what: what.to_string(), path: path.to_path_buf(), mode: m });
    }
    Ok(())
}

/// Reads at most `max` bytes of a file actord was given (a secret, a
/// certificate, a scheduler file): a longer one is refused, not read whole.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SecurityError> {
    use std::io::Read;
    let err = |message: String| SecurityError::File { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| err(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(err(format!("is over {max} bytes: not the file actord expects here")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposed_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        write_private(&f, b"{}").unwrap();
        assert_eq!(mode(&f).unwrap(), 0o600);
        check_private_file(&f, "scheduler file").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private_file(&f, "scheduler file").unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644") && err.contains("s.json"), "{err}");
    }

    #[test]
    fn a_tree_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("j");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(root.join("db"), b"x").unwrap();
        std::fs::write(root.join("blobs/1"), b"x").unwrap();
        for (p, m) in [("", 0o755), ("blobs", 0o755), ("db", 0o644), ("blobs/1", 0o664)] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        make_private_tree(&root).unwrap();
        for (p, m) in [("", 0o700), ("blobs", 0o700), ("db", 0o600), ("blobs/1", 0o600)] {
            assert_eq!(mode(&root.join(p)).unwrap(), m, "{p}");
        }
    }

    #[test]
    fn an_oversized_file_or_a_directory_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        write_private(&f, &[b'a'; 5000]).unwrap();
        let err = read_bounded(&f, 4096).unwrap_err().to_string();
        assert!(err.contains("is over 4096 bytes"), "{err}");
        assert_eq!(read_bounded(&f, 5000).unwrap().len(), 5000);
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = check_private_file(&sub, "secret file").unwrap_err().to_string();
        assert!(err.contains("must be a regular file"), "{err}");
    }
}
