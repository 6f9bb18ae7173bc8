//! The pipes between a worker slot and its Python executor: frames read
//! with a deadline (and a watch on the executor's life), and answers kept
//! in place where they are results.

use bytes::Bytes;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout};
use std::time::{Duration, Instant};

/// How reading an executor's answer can end early.
pub(super) enum ReadEnd {
    Eof,
    TimedOut,
    TooLarge(usize),
    Io(std::io::Error),
}

/// `b` as one msgpack `bin` value.
pub(super) fn msgpack_bin(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len() + 5);
    match b.len() {
        n if n <= u8::MAX as usize => out.extend_from_slice(&[0xc4, n as u8]),
        n if n <= u16::MAX as usize => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xc6);
            out.extend_from_slice(&u32::try_from(n).ok()?.to_be_bytes());
        }
    }
    out.extend_from_slice(b);
    Some(out)
}

/// `[0, bin]`, a result, as the executor sends it: the `bin` (header and
/// pickle) is the result's msgpack bytes as they are, so it is kept without
/// a copy. `None`: another answer (decoded in full).
pub(super) fn result_in_place(body: Vec<u8>) -> Result<Bytes, Vec<u8>> {
    let len = match body.get(..3) {
        Some([0x92, 0x00, 0xc4]) => body.get(3).map(|&n| (2, n as usize)),
        Some([0x92, 0x00, 0xc5]) => body.get(3..5).map(|b| (3, u16::from_be_bytes([b[0], b[1]]) as usize)),
        Some([0x92, 0x00, 0xc6]) => {
            body.get(3..7).map(|b| (5, u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize))
        }
        _ => None,
    };
    match len {
        Some((head, n)) if 2 + head + n == body.len() => Ok(Bytes::from(body).slice(2..)),
        _ => Err(body),
    }
}

/// How often a slot waiting for a long task checks that its executor still
/// lives (a process it forked may hold the pipe open after it died).
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Large inputs and results cross these pipes: 1 MiB (the usual
/// `pipe-max-size`) instead of 64 KiB makes a 64 MiB result 64 wake-ups
/// instead of 1,024. Best effort: a smaller pipe only costs time.
pub(super) fn widen_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a pipe this process owns; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
}

/// Reads one length-prefixed frame from the executor, waiting at most until
/// `deadline`; its death ends the wait even if the pipe stays open.
pub(super) fn read_frame(
    r: &mut ChildStdout,
    child: &mut Child,
    deadline: Option<Instant>,
    limit: usize,
) -> Result<Vec<u8>, ReadEnd> {
    let mut head = [0u8; 4];
    read_exact(r, child, &mut head, deadline)?;
    let n = u32::from_be_bytes(head) as usize;
    if n > limit {
        return Err(ReadEnd::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    read_exact(r, child, &mut body, deadline)?;
    Ok(body)
}

fn read_exact(
    r: &mut ChildStdout,
    child: &mut Child,
    mut buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(), ReadEnd> {
    while !buf.is_empty() {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(ALIVE_CHECK),
            None => ALIVE_CHECK,
        };
        let mut fds = [libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait.as_millis() as i32) };
        if ready == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ReadEnd::TimedOut);
            }
            if !matches!(child.try_wait(), Ok(None)) {
                return Err(ReadEnd::Eof);
            }
            continue;
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadEnd::Io(e));
        }
        match r.read(buf) {
            Ok(0) => return Err(ReadEnd::Eof),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadEnd::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_answer_is_kept_in_place_as_its_msgpack_bytes() {
        for n in [0usize, 1, 255, 256, 65_535, 65_536, 1 << 20] {
            let pickle: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let body = rmp_serde::to_vec(&(0u8, serde_bytes::Bytes::new(&pickle))).unwrap();
            let kept = result_in_place(body).unwrap_or_else(|_| panic!("{n} bytes: not in place"));
            assert_eq!(&kept[..], &msgpack_bin(&pickle).unwrap()[..], "{n} bytes");
        }
        // Anything else is decoded in full: an error, a truncated or padded bin.
        let error = rmp_serde::to_vec(&(1u8, "ValueError: x", ())).unwrap();
        assert!(result_in_place(error).is_err());
        let mut short = rmp_serde::to_vec(&(0u8, serde_bytes::Bytes::new(&[7; 300]))).unwrap();
        short.pop();
        assert!(result_in_place(short.clone()).is_err());
        short.extend_from_slice(&[7, 7]);
        assert!(result_in_place(short).is_err());
    }
}
