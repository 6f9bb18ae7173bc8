//! The high-water mark: a small file beside sled (`journal/hwm`) saying
//! what the journal held at its last flush, so that loss inside sled shows.

use crate::ids::JobId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE: &str = "hwm";

/// Longest job name kept in the mark (it only serves damage reports).
const NAME_MAX: usize = 120;

/// What one live job had in the journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobMark {
    /// Live records of the job (its parts, outcome batches and retries).
    pub records: u64,
    pub name: String,
}

impl JobMark {
    pub fn set_name(&mut self, name: &str) {
        self.name = name.chars().take(NAME_MAX).collect();
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HighWater {
    pub version: u32,
    /// The journal's epoch when this was written.
    pub epoch: u64,
    /// Highest sequence number written before the flush this mark follows.
    pub last_lsn: u64,
    /// Every live job with its records up to `last_lsn`.
    pub jobs: BTreeMap<JobId, JobMark>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// `HighWater` by reference: the same encoding, without copying the jobs.
#[derive(Serialize)]
struct View<'a> {
    version: u32,
    epoch: u64,
    last_lsn: u64,
    jobs: &'a BTreeMap<JobId, JobMark>,
}

/// crc32 (BE) of the body, then the body (msgpack).
pub fn encode(version: u32, epoch: u64, last_lsn: u64, jobs: &BTreeMap<JobId, JobMark>) -> Vec<u8> {
    let body = rmp_serde::to_vec(&View { version, epoch, last_lsn, jobs }).unwrap_or_default();
    let mut out = crc32fast::hash(&body).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

impl HighWater {
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        encode(self.version, self.epoch, self.last_lsn, &self.jobs)
    }

    pub fn decode(bytes: &[u8]) -> Result<HighWater, String> {
        let (crc, body) = bytes.split_at_checked(4).ok_or("it is shorter than its checksum")?;
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err("its checksum does not match".into());
        }
        rmp_serde::from_slice(body).map_err(|e| format!("it does not decode: {e}"))
    }

    /// `Ok(None)` when there is no mark yet; `Err` when one is there but unsound.
    pub fn read(dir: &Path) -> Result<Option<HighWater>, String> {
        match std::fs::read(path(dir)) {
            Ok(b) => HighWater::decode(&b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot be read: {e}")),
        }
    }
}

/// Replaces the mark atomically: a temporary file, fsync, rename. A crash
/// before the rename leaves the previous mark, which only lags: safe.
pub fn write_atomic(dir: &Path, bytes: &[u8], sync_dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(dir))?;
    if sync_dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_through_its_file_and_damage_to_it_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HighWater::read(dir.path()), Ok(None));
        let mut mark = JobMark { records: 3, ..Default::default() };
        mark.set_name(&"n".repeat(500));
        assert_eq!(mark.name.len(), NAME_MAX);
        let h = HighWater { version: 2, epoch: 4, last_lsn: 99, jobs: [(JobId::new(), mark)].into() };
        write_atomic(dir.path(), &h.encode(), true).unwrap();
        assert_eq!(HighWater::read(dir.path()), Ok(Some(h.clone())));
        let mut bytes = h.encode();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        assert!(HighWater::decode(&bytes).unwrap_err().contains("checksum"));
        assert!(HighWater::decode(&bytes[..2]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
