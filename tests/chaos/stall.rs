//! A stopped scheduler (SIGSTOP, then SIGCONT) does not blame its workers
//! for the silence it caused itself (issue 12, defect 10).

use crate::common::*;
use nix::sys::signal::Signal;
use std::time::Duration;

/// Heartbeats every 200 ms, lost after 2 s of silence.
/// How long the scheduler stays stopped: 2.5 heartbeat timeouts.
const STALL: Duration = Duration::from_secs(5);

const CONFIG: &str = "[scheduler]\nheartbeat_timeout = \"2s\"\n[worker]\nheartbeat = \"200ms\"\n";

#[test]
fn a_stopped_scheduler_does_not_declare_its_workers_lost() {
    let cluster = Cluster::start_with_config(2, 1, CONFIG);
    let before = cluster.workers();
    assert_eq!(before.len(), 2);

    // Stopped for well over the heartbeat timeout: the length of the stop
    // is what is under test, and a stopped process has nothing to wait on.
    cluster.scheduler.signal(Signal::SIGSTOP);
    std::thread::sleep(STALL);
    cluster.scheduler.signal(Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(10), || cluster
            .scheduler
            .log_text()
            .contains("heartbeat clocks restarted")),
        "the stall was not noticed:\n{}",
        cluster.scheduler.log_text()
    );

    // The workers keep working, as the same incarnations.
    let out = cluster.run(&["submit", "--fn", "inc", "--args", "41"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = stdout(&out);
    let out = cluster.run(&["gather", &job]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cluster.workers(), before, "same worker ids and pids");
    let log = cluster.scheduler.log_text();
    assert!(!log.contains("worker lost"), "{log}");
    assert_eq!(log.matches("worker registered").count(), 2, "no re-registration:\n{log}");
}
