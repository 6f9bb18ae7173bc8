//! `decide`, the state file and the Slurm command lines, without Slurm.

use super::slurm::{parse_queue, sbatch_argv, shell_word, slurm_time, SlurmCommands, Submission};
use super::*;
use std::time::Duration;

fn policy() -> Policy {
    Policy { min_workers: 0, max_workers: 8, workers_per_alloc: 2, threads: 1, idle_timeout_ms: 60_000 }
}

fn alloc(id: &str, state: AllocState, submitted_ms: u64) -> Alloc {
    Alloc { id: id.into(), state, submitted_ms }
}

fn backlog(waiting: u64, busy: u64) -> Backlog {
    Backlog { waiting, busy }
}

#[test]
fn a_backlog_asks_for_allocations_up_to_the_maximum() {
    let p = policy();
    assert_eq!(decide(&p, backlog(3, 0), &[], None, 0).submit, 2, "3 tasks, 2 slots each");
    assert_eq!(decide(&p, backlog(1000, 0), &[], None, 0).submit, 4, "8 workers at most");
    let held: Vec<Alloc> = (0..4).map(|i| alloc(&i.to_string(), AllocState::Running, i)).collect();
    assert_eq!(decide(&p, backlog(1000, 8), &held, None, 0), Decision::default(), "at the maximum already");
}

#[test]
fn pending_allocations_count_as_workers_coming() {
    let p = policy();
    let pending = [alloc("7", AllocState::Pending, 0)];
    assert_eq!(decide(&p, backlog(2, 0), &pending, None, 0).submit, 0, "the pending one covers 2 tasks");
    assert_eq!(decide(&p, backlog(5, 0), &pending, None, 0).submit, 2, "3 more tasks: 2 more allocations");
    let running = [alloc("7", AllocState::Running, 0)];
    assert_eq!(decide(&p, backlog(2, 2), &running, None, 0).submit, 1, "its workers are busy already");
}

#[test]
fn the_minimum_is_kept_even_without_work() {
    let p = Policy { min_workers: 3, ..policy() };
    assert_eq!(decide(&p, backlog(0, 0), &[], None, 0).submit, 2, "3 workers need 2 allocations of 2");
    let held = [alloc("1", AllocState::Running, 0), alloc("2", AllocState::Running, 1)];
    let d = decide(&p, backlog(0, 0), &held, Some(0), 10_000_000);
    assert_eq!(d, Decision::default(), "idle for long, but the minimum stays");
}

#[test]
fn idle_past_the_timeout_cancels_pending_first_then_the_newest() {
    let p = Policy { min_workers: 2, ..policy() };
    let held = [
        alloc("10", AllocState::Running, 100),
        alloc("11", AllocState::Running, 300),
        alloc("12", AllocState::Pending, 200),
    ];
    assert_eq!(
        decide(&p, backlog(0, 0), &held, Some(0), 59_999),
        Decision::default(),
        "not idle long enough"
    );
    assert_eq!(decide(&p, backlog(0, 0), &held, None, 1_000_000), Decision::default(), "idle since unknown");
    assert_eq!(
        decide(&p, backlog(0, 1), &held, Some(0), 1_000_000),
        Decision::default(),
        "a task still runs"
    );
    let d = decide(&p, backlog(0, 0), &held, Some(0), 60_000);
    assert_eq!(d, Decision { submit: 0, cancel: vec!["12".into(), "11".into()] });
}

#[test]
fn beyond_the_maximum_is_cancelled_at_once() {
    let p = Policy { max_workers: 2, ..policy() };
    let held = [alloc("1", AllocState::Running, 0), alloc("2", AllocState::Running, 5)];
    let d = decide(&p, backlog(100, 2), &held, None, 0);
    assert_eq!(d, Decision { submit: 0, cancel: vec!["2".into()] });
}

#[test]
fn a_maximum_below_one_allocation_submits_nothing() {
    let p = Policy { max_workers: 1, min_workers: 1, ..policy() };
    assert_eq!(decide(&p, backlog(10, 0), &[], None, 0), Decision::default());
}

#[test]
fn the_state_file_round_trips_and_a_damaged_one_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alloc.json");
    assert_eq!(AllocFile::load(&path).unwrap(), AllocFile::default(), "missing: empty");
    let state = AllocFile { allocs: vec![alloc("42", AllocState::Pending, 7)], idle_since_ms: Some(3) };
    state.save(&path).unwrap();
    assert_eq!(AllocFile::load(&path).unwrap(), state);
    std::fs::write(&path, "{\"allocs\": [{\"id\": 1}]").unwrap();
    let err = AllocFile::load(&path).unwrap_err().to_string();
    assert!(err.contains("damaged") && err.contains("alloc.json"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"allocs\": [{\"id\": 1}]");
}

#[test]
fn the_sbatch_line_runs_a_nanny_with_the_walltime_and_extra_arguments() {
    let cmds = SlurmCommands { sbatch: "sbatch".into(), scancel: "scancel".into(), squeue: "squeue".into() };
    let sub = Submission {
        name: "actord-alloc".into(),
        walltime: Some(Duration::from_secs(90 * 60)),
        cpus: 4,
        extra: vec!["--qos=debug".into(), "-C".into(), "knl".into()],
        nanny: ["/opt/actord", "nanny", "--scheduler-file", "/scratch/my dir/s.json"]
            .map(String::from)
            .to_vec(),
    };
    let argv = sbatch_argv(&cmds, &sub);
    assert_eq!(
        argv,
        [
            "sbatch",
            "--parsable",
            "--job-name=actord-alloc",
            "--ntasks=1",
            "--cpus-per-task=4",
            "--time=0-01:30:00",
            "--qos=debug",
            "-C",
            "knl",
            "--wrap=exec /opt/actord nanny --scheduler-file '/scratch/my dir/s.json'",
        ]
    );
    assert_eq!(slurm_time(Duration::from_secs(1)), "0-00:01:00", "at least a minute");
    assert_eq!(slurm_time(Duration::from_secs(2 * 86_400 + 61)), "2-00:01:01");
    assert_eq!(shell_word("it's"), r"'it'\''s'");
}

#[test]
fn squeue_lines_say_pending_or_running() {
    let q = parse_queue("12|PENDING\n13|RUNNING\n14|COMPLETING\ngarbage\n");
    assert_eq!(q.len(), 3);
    assert_eq!(q["12"], AllocState::Pending);
    assert_eq!(q["13"], AllocState::Running);
    assert_eq!(q["14"], AllocState::Running);
}
