//! The one way actord starts and stops child processes (worker processes,
//! `cmd` tasks, Python executors): each dies with its parent thread
//! (`PR_SET_PDEATHSIG`), leads its own process group, and is stopped by one
//! escalation — SIGTERM to the group, then SIGKILL after a grace.

use nix::sys::signal::Signal;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Makes `cmd` start its process as a supervised child: SIGKILL when the
/// thread that spawns it exits (so spawn from a thread that lives as long as
/// the child should: a slot thread or a runtime thread, never a pooled
/// blocking thread), and in a process group of its own, so that stopping it
/// also stops what it started.
pub fn supervised(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl and setpgid are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setpgid(0, 0);
            Ok(())
        })
    }
}

/// Sends `sig` to the process group `pid` leads (and to `pid` itself, in
/// case it left the group).
pub fn signal(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), sig);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
}

/// The first step of the escalation: asks the group to stop.
pub fn terminate(pid: u32) {
    signal(pid, Signal::SIGTERM);
}

/// The last step: kills the group.
pub fn kill(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

/// Stops a child on this thread: SIGTERM, then SIGKILL if it is still there
/// after `grace`; waits for it and returns how it ended.
pub fn stop(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(s) = child.try_wait()? {
        return Ok(s);
    }
    terminate(child.id());
    let deadline = Instant::now() + grace;
    let mut poll = Duration::from_millis(1);
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        std::thread::sleep(poll.min(deadline.saturating_duration_since(Instant::now())));
        poll = (poll * 2).min(Duration::from_millis(20));
    }
    kill(child.id());
    child.wait()
}

/// Waits for a child at most `limit`; past it, stops it (`stop`) and returns
/// `Ok(None)`.
pub fn wait_for(child: &mut Child, limit: Duration, grace: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(Duration::from_millis(50));
    }
    stop(child, grace).map(|_| None)
}

/// Stops a child from async code: SIGTERM, then SIGKILL if `exited` has not
/// resolved within `grace`. `false`: it had to be killed.
pub async fn stop_async(pid: u32, grace: Duration, exited: impl std::future::Future<Output = ()>) -> bool {
    terminate(pid);
    tokio::pin!(exited);
    if tokio::time::timeout(grace, &mut exited).await.is_ok() {
        return true;
    }
    kill(pid);
    exited.await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_escalates_to_sigkill_and_reaches_the_group() {
        // The shell ignores SIGTERM; its child (same group) must die too.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        let mut child = supervised(&mut cmd).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let t0 = Instant::now();
        let status = stop(&mut child, Duration::from_millis(200)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(200), "it ignored SIGTERM: killed after the grace");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
        });
        assert!(gone, "the group's other process survived");
    }

    #[test]
    fn wait_for_returns_the_status_of_a_quick_child() {
        let mut child = supervised(&mut Command::new("true")).spawn().unwrap();
        let s = wait_for(&mut child, Duration::from_secs(10), Duration::from_secs(1)).unwrap();
        assert!(s.is_some_and(|s| s.success()));
        let mut child = supervised(Command::new("sleep").arg("30")).spawn().unwrap();
        let s = wait_for(&mut child, Duration::from_millis(50), Duration::from_secs(1)).unwrap();
        assert!(s.is_none(), "stopped for its limit");
    }
}
