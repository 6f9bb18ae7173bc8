//! How one journal record is framed in a sled value: a checksum over the
//! key and the rest, then the record's sequence number, then its payload.

/// Bytes before the payload: crc32 (4, BE) and sequence number (8, BE).
pub const HEADER: usize = 12;

/// Why a stored value is not a sound record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("too short for a record ({0} bytes)")]
    Short(usize),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
}

fn checksum(key: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(rest);
    h.finalize()
}

/// The value stored under `key` for the record `lsn` with `payload`.
pub fn frame(key: &[u8], lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&lsn.to_be_bytes());
    v.extend_from_slice(payload);
    let crc = checksum(key, &v[4..]);
    v[..4].copy_from_slice(&crc.to_be_bytes());
    v
}

/// The sequence number and payload of a value read under `key`, once its
/// checksum (which covers the key too: a value under the wrong key fails) holds.
pub fn unframe<'a>(key: &[u8], value: &'a [u8]) -> Result<(u64, &'a [u8]), FrameError> {
    if value.len() < HEADER {
        return Err(FrameError::Short(value.len()));
    }
    let stored = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    let computed = checksum(key, &value[4..]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&value[4..HEADER]);
    Ok((u64::from_be_bytes(lsn), &value[HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_record_round_trips() {
        let v = frame(b"key", 42, b"payload");
        assert_eq!(v.len(), HEADER + 7);
        assert_eq!(unframe(b"key", &v), Ok((42, &b"payload"[..])));
        assert_eq!(unframe(b"k", &frame(b"k", 0, b"")), Ok((0, &b""[..])));
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_caught() {
        let v = frame(b"job-key", 7, b"some record bytes");
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut bad = v.clone();
                bad[i] ^= 1 << bit;
                assert!(unframe(b"job-key", &bad).is_err(), "flip of bit {bit} of byte {i} unnoticed");
            }
        }
        for len in 0..v.len() {
            assert!(unframe(b"job-key", &v[..len]).is_err(), "truncation to {len} unnoticed");
        }
        assert!(matches!(unframe(b"job-kez", &v), Err(FrameError::Checksum { .. })), "moved to another key");
        assert_eq!(unframe(b"k", &[1, 2]), Err(FrameError::Short(2)));
    }
}
