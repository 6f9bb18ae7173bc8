//! The scheduler file: how clients and workers find the scheduler (address,
//! secret, certificate fingerprint, who wrote it). Written atomically with
//! mode 0600; read only when no one else can read it.

use crate::security::{perms, Credentials, Mode};
use crate::util::expand_path;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerFile {
    /// `tcp://IP:PORT`
    pub address: String,
    /// Uuid of this scheduler run.
    pub instance: uuid::Uuid,
    /// Restarts of this scheduler's journal so far.
    pub epoch: u64,
    pub pid: u32,
    pub host: String,
    pub journal: Option<String>,
    pub dashboard: Option<String>,
    /// RFC 3339.
    pub started: String,
    pub version: String,
    /// The secret both ends of every connection prove they know (never
    /// sent); empty for a scheduler that runs `--insecure`.
    pub secret: String,
    /// `tls` (the default), `no-tls` or `insecure`.
    #[serde(default)]
    pub mode: Mode,
    /// Hex SHA-256 of the scheduler's TLS certificate, which peers pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Set by a scheduler that stopped itself (e.g. its journal's disk is
    /// full): why, and when. Clients report it instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The results store (absolute), where workers put results over
    /// `worker.inline_result` and peers that see it read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_dir: Option<String>,
}

/// Everything but the secret, which debug output must never show.
impl std::fmt::Debug for SchedulerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerFile")
            .field("address", &self.address)
            .field("instance", &self.instance)
            .field("epoch", &self.epoch)
            .field("pid", &self.pid)
            .field("host", &self.host)
            .field("journal", &self.journal)
            .field("dashboard", &self.dashboard)
            .field("started", &self.started)
            .field("version", &self.version)
            .field("secret", &if self.secret.is_empty() { "" } else { "<redacted>" })
            .field("mode", &self.mode)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl SchedulerFile {
    /// `host:port` for `TcpStream::connect`.
    pub fn socket_addr(&self) -> &str {
        self.address.strip_prefix("tcp://").unwrap_or(&self.address)
    }

    /// What a peer needs from this file to connect.
    pub fn auth(&self) -> Credentials {
        Credentials {
            mode: self.mode,
            secret: self.secret.clone(),
            fingerprint: self.tls_fingerprint.clone(),
        }
    }

    pub fn describe(&self) -> String {
        format!("written by pid {} on {} at {}", self.pid, self.host, self.started)
    }

    /// Whether this file was written on this host by a process that no
    /// longer exists (a pid reused since is taken for the writer: then the
    /// usual bounded wait tells).
    pub fn writer_is_gone(&self) -> bool {
        use nix::errno::Errno;
        if self.host != crate::util::hostname() || self.pid == 0 {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else { return false };
        matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(Errno::ESRCH))
    }

    /// What a client says about this file, found at `path`, once its
    /// scheduler is gone.
    pub fn gone(&self, path: &Path) -> String {
        format!(
            "the scheduler that wrote {} (pid {}, started {}) is gone; start it again with `actord scheduler`",
            path.display(),
            self.pid,
            self.started
        )
    }

    /// Writes to a temporary file beside `path`, then renames it into place.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads and parses the file, refusing one that others may read or write.
    pub fn read(path: &Path) -> Result<SchedulerFile, String> {
        perms::check_private_file(path, "scheduler file").map_err(|e| e.to_string())?;
        // A scheduler file is a few hundred bytes: a huge one is not read whole.
        let bytes = perms::read_bounded(path, 1 << 16).map_err(|e| format!("scheduler file {e}"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("scheduler file {} is not valid: {e}", path.display()))
    }
}

/// The scheduler file to use: the flag, else `$ACTORD_SCHEDULER_FILE`, else
/// `$SCRATCH/actord/scheduler.json`, else `./actord-scheduler.json`.
pub fn resolve_path(flag: Option<&str>) -> Result<PathBuf, String> {
    if let Some(f) = flag {
        return expand_path(f);
    }
    if let Ok(f) = std::env::var("ACTORD_SCHEDULER_FILE") {
        if !f.is_empty() {
            return expand_path(&f);
        }
    }
    if let Ok(s) = std::env::var("SCRATCH") {
        if !s.is_empty() {
            return Ok(PathBuf::from(s).join("actord").join("scheduler.json"));
        }
    }
    Ok(PathBuf::from("actord-scheduler.json"))
}

/// Waits (bounded) until the scheduler file exists and parses; says what it
/// waits for once, so a batch log shows it.
pub async fn wait_for_file(path: &Path, timeout: Duration) -> Result<SchedulerFile, String> {
    let start = Instant::now();
    let mut said = false;
    loop {
        if path.exists() {
            if let Err(e @ crate::security::SecurityError::Exposed { .. }) =
                perms::check_private_file(path, "scheduler file")
            {
                return Err(e.to_string());
            }
            match SchedulerFile::read(path) {
                Ok(f) => return Ok(f),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => {}
            }
        } else if start.elapsed() >= timeout {
            return Err(format!(
                "scheduler file {} did not appear within {:.0?}: is `actord scheduler --scheduler-file {}` running?",
                path.display(),
                timeout,
                path.display()
            ));
        }
        if !said {
            tracing::info!(path = %path.display(), "waiting for the scheduler file");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/s.json");
        let f = SchedulerFile {
            address: "tcp://127.0.0.1:5".into(),
            instance: uuid::Uuid::new_v4(),
            epoch: 0,
            pid: 1,
            host: "h".into(),
            journal: None,
            dashboard: None,
            started: "2026-01-01T00:00:00Z".into(),
            version: "0".into(),
            secret: "0123456789abcdef-secret".into(),
            mode: Mode::Tls,
            tls_fingerprint: Some("cd".into()),
            stopped: None,
            results_dir: None,
        };
        f.write_atomic(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SchedulerFile::read(&path).unwrap(), f);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temp left");
        let shown = format!("{f:?}");
        assert!(!shown.contains(&f.secret) && shown.contains("<redacted>"), "{shown}");
    }
}
