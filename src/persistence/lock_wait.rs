//! Opening a journal right after its last holder on this host was killed:
//! its lock goes with its last thread, which can outlive (in an fsync) the
//! moment the process shows as gone; the open waits a little for it.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long an open waits for the lock of a holder that is gone.
const GRACE: Duration = Duration::from_secs(10);

/// `open()`, again every 100 ms for up to `GRACE` while it fails for the
/// lock and the holder named in `DIR/holder.json` ran on this host and is
/// gone (or a zombie). A live holder, or another host's, is answered at once.
pub(super) fn open<T>(
    dir: &Path,
    mut open: impl FnMut() -> Result<sled::Result<T>, String>,
) -> Result<sled::Result<T>, String> {
    let start = Instant::now();
    loop {
        let r = open();
        let locked = matches!(&r, Ok(Err(sled::Error::Io(io)))
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock"));
        if !locked || start.elapsed() >= GRACE || !holder_gone(dir) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn holder_gone(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("holder.json")) else { return false };
    let Ok(h) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    let (Some(pid), Some(host)) = (h["pid"].as_u64(), h["host"].as_str()) else { return false };
    if host != crate::util::hostname() || pid == u64::from(std::process::id()) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie's threads may still be exiting: gone, for this purpose.
        Ok(stat) => stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(dir: &Path, pid: u32, host: &str) {
        let h = serde_json::json!({"pid": pid, "host": host, "started": "2026-12-01T00:00:00Z"});
        std::fs::write(dir.join("holder.json"), h.to_string()).unwrap();
    }

    fn locked() -> sled::Result<u32> {
        Err(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::WouldBlock, "could not acquire lock")))
    }

    #[test]
    fn the_lock_of_a_holder_that_is_gone_is_waited_for_a_live_ones_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::util::hostname();
        // A child that has exited and been reaped: its pid is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        holder(dir.path(), gone, &host);
        assert!(holder_gone(dir.path()));
        let mut tries = 0;
        let r = open(dir.path(), || {
            tries += 1;
            Ok(if tries < 3 { locked() } else { Ok(7) })
        });
        assert_eq!((r.unwrap().unwrap(), tries), (7, 3), "opened once the lock was free");
        // A live holder (this process), or one on another host: refused at once.
        for (pid, host) in [(std::process::id(), host.as_str()), (gone, "another-host")] {
            holder(dir.path(), pid, host);
            assert!(!holder_gone(dir.path()));
            let mut tries = 0;
            let r = open(dir.path(), || {
                tries += 1;
                Ok(locked())
            });
            assert!(matches!(r, Ok(Err(_))) && tries == 1);
        }
    }
}
