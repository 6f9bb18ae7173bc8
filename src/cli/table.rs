//! How the `ctl` answers read on a terminal: each table or summary rendered
//! to text by a pure function, so the wording is tested without a scheduler.

use crate::protocol::{
    JobDetail, JobInfo, JournalInfo, NannyInfo, SlotState, StatusInfo, TaskInfo, WorkerInfo,
};
use crate::schedfile::SchedulerFile;
use crate::util::format_size;
use std::fmt::Write;

/// `12 ms ago`, `3.4 s ago`, `5 min ago`.
pub fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1000..=119_999 => format!("{:.1} s ago", ms as f64 / 1e3),
        _ => format!("{} min ago", ms / 60_000),
    }
}

/// Lines joined by newlines, without a trailing one (`outln!` adds it).
fn lines(out: String) -> String {
    out.trim_end_matches('\n').to_string()
}

pub fn workers(workers: &[WorkerInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:<20} {:>8} {:>6} {:>8} {:>7} {:>12} {:<12} {:>10}  {:<9} RESOURCES",
        "ID", "HOST", "PID", "SLOTS", "RUNNING", "QUEUED", "NANNY:SLOT", "HEARD", "RSS", "STATE"
    );
    for w in workers {
        let nanny = w.nanny.as_ref().map(|n| format!("{}:{}", n.pid, n.slot)).unwrap_or_else(|| "-".into());
        let rss = if w.rss_kib > 0 { format_size(w.rss_kib.saturating_mul(1024)) } else { "-".into() };
        let state = if w.draining { "draining" } else { "active" };
        let resources: Vec<String> = w.resources.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "{:<11} {:<20} {:>8} {:>6} {:>8} {:>7} {:>12} {:<12} {:>10}  {:<9} {}",
            w.id.to_string(),
            w.host,
            w.pid,
            w.slots,
            w.running,
            w.queued,
            nanny,
            ago(w.last_heard_ms),
            rss,
            state,
            if resources.is_empty() { "-".into() } else { resources.join(",") }
        );
    }
    lines(out)
}

pub fn nannies(nannies: &[NannyInfo]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "{:<6} {:<20} {:>8} {:>5} {:>9}  STATE", "NANNY", "HOST", "PID", "SLOT", "RESTARTS");
    for n in nannies {
        for s in &n.slots {
            let _ = writeln!(
                out,
                "{:<6} {:<20} {:>8} {:>5} {:>9}  {}",
                n.id,
                n.host,
                n.pid,
                s.slot,
                s.restarts,
                slot_state(&s.state)
            );
        }
    }
    lines(out)
}

fn slot_state(s: &SlotState) -> String {
    match s {
        SlotState::Running { pid } => format!("running (pid {pid})"),
        SlotState::Restarting { in_ms, last_exit } => format!("restarting in {in_ms} ms after: {last_exit}"),
        SlotState::Failed { reason } => format!("FAILED: {reason}"),
        SlotState::Retired => "retired".into(),
    }
}

/// `ctl status`: the scheduler file's side (address, pid, host) and the scheduler's.
pub fn status(f: &SchedulerFile, s: &StatusInfo) -> String {
    let mut out = String::new();
    let uptime = crate::util::format_duration(std::time::Duration::from_secs(s.uptime_s));
    let _ = writeln!(out, "scheduler  {} (pid {} on {}, up {uptime})", f.address, f.pid, f.host);
    let _ = writeln!(out, "epoch      {}", s.epoch);
    let _ = match &f.dashboard {
        Some(url) => {
            writeln!(out, "dashboard  {url} (`actord ctl dashboard` prints the link with its token)")
        }
        None => writeln!(out, "dashboard  none"),
    };
    let _ = writeln!(out, "security   {}", crate::security::describe(f.mode, f.tls_fingerprint.as_deref()));
    let _ = match &s.journal_path {
        Some(p) => writeln!(out, "journal    {p} ({})", format_size(s.journal_bytes)),
        None => writeln!(out, "journal    none (results in memory)"),
    };
    let _ = writeln!(out, "workers    {} ({} slots), {} nannies", s.workers, s.slots, s.nannies);
    let _ = writeln!(out, "jobs       {} ({} done)", s.jobs, s.jobs_done);
    let _ = writeln!(
        out,
        "tasks      {} finished, {} failed, {} running, {} queued on workers, {} waiting for one (of {})",
        s.tasks_finished, s.tasks_failed, s.tasks_running, s.tasks_prefetched, s.tasks_queued, s.tasks
    );
    let _ = writeln!(out, "throughput {:.1} tasks/s (last 10 s)", s.tasks_per_s);
    if s.draining {
        let _ = writeln!(out, "state      draining: no new tasks; stops when the running ones finish");
    }
    lines(out)
}

pub fn jobs(jobs: &[JobInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}  STATE",
        "JOB", "NAME", "TASKS", "DONE", "FAILED", "RUNNING", "QUEUED"
    );
    for j in jobs {
        let state = if j.done_at.is_some() { "done" } else { "active" };
        let _ = writeln!(
            out,
            "{:<36}  {:<16} {:>8} {:>8} {:>8} {:>8} {:>8}  {state}",
            j.id.to_string(),
            j.name,
            j.tasks,
            j.finished,
            j.failed,
            j.running,
            j.queued
        );
    }
    lines(out)
}

pub fn job(d: &JobDetail) -> String {
    let mut out = String::new();
    let i = &d.info;
    let submitted = i64::try_from(i.submitted_at)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let state = if i.done_at.is_some() { "done" } else { "active" };
    let _ = writeln!(out, "job        {} ({})", i.id, i.name);
    let _ = writeln!(
        out,
        "state      {state}: {} of {} tasks finished, {} failed",
        i.finished, i.tasks, i.failed
    );
    let states: Vec<String> = d.states.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "tasks      {}", states.join(", "));
    let _ = writeln!(out, "submitted  {submitted}");
    let took = if i.done_at.is_some() { "took" } else { "running" };
    let _ = writeln!(out, "{took:<10} {:.3} s, {:.1} tasks/s", d.elapsed_s, d.tasks_per_s);
    let _ = writeln!(out, "retries    {} attempts beyond the first", d.retried_attempts);
    lines(out)
}

pub fn tasks(tasks: &[TaskInfo]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "{:>6} {:<16} {:<14} {:>8} {:<6}  ERROR", "TASK", "KEY", "STATE", "ATTEMPTS", "WORKER");
    for t in tasks {
        let worker = t.worker.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
        let key = t.key.as_deref().unwrap_or("-");
        let error = t.error.as_deref().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>6} {:<16} {:<14} {:>8} {:<6}  {error}",
            t.idx, key, t.state, t.attempts, worker
        );
    }
    lines(out)
}

pub fn journal(j: &JournalInfo) -> String {
    let mut out = String::new();
    let _ = match &j.path {
        Some(p) => writeln!(out, "path       {p}"),
        None => writeln!(out, "path       none: results are kept in memory (--no-journal)"),
    };
    let _ = writeln!(out, "size       {}", format_size(j.bytes));
    let _ = writeln!(out, "records    {} ({} replayed at start-up)", j.records, j.records_replayed);
    let _ = writeln!(out, "epoch      {}", j.epoch);
    let last = j.last_flush_ms_ago.map(ago).unwrap_or_else(|| "none yet".into());
    let _ = writeln!(out, "flushes    {}, last {last}", j.flushes);
    if let Some(d) = &j.results_dir {
        let (n, size) = (j.results.files, format_size(j.results.bytes));
        let _ = writeln!(out, "results    {d}: {n} stored result{}, {size}", if n == 1 { "" } else { "s" });
    }
    lines(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;
    use crate::protocol::{NannySlot, SlotInfo};

    #[test]
    fn ages_read_in_the_unit_that_fits() {
        assert_eq!(ago(12), "12 ms ago");
        assert_eq!(ago(3_400), "3.4 s ago");
        assert_eq!(ago(300_000), "5 min ago");
    }

    #[test]
    fn a_worker_row_shows_its_nanny_memory_state_and_resources() {
        let w = WorkerInfo {
            id: WorkerId(3),
            host: "node7".into(),
            pid: 42,
            slots: 4,
            running: 2,
            queued: 1,
            nanny: Some(NannySlot { pid: 40, slot: 1 }),
            resources: [("gpus".to_string(), 2)].into(),
            last_heard_ms: 1_500,
            rss_kib: 2048,
            draining: true,
        };
        let text = workers(&[w]);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].starts_with("ID ") && rows[0].ends_with("RESOURCES"), "{text}");
        let cells: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(cells[..7], ["w3", "node7", "42", "4", "2", "1", "40:1"], "{text}");
        assert!(rows[1].contains("1.5 s ago") && rows[1].contains("draining"), "{text}");
        assert!(rows[1].ends_with("gpus=2"), "{text}");
    }

    #[test]
    fn every_nanny_slot_is_a_row_saying_what_it_does() {
        let slot = |slot, state| SlotInfo { slot, state, restarts: slot };
        let n = NannyInfo {
            id: 1,
            host: "h".into(),
            pid: 9,
            slots: vec![
                slot(0, SlotState::Running { pid: 10 }),
                slot(1, SlotState::Failed { reason: "crash loop".into() }),
            ],
        };
        let text = nannies(&[n]);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(rows[1].ends_with("running (pid 10)"), "{text}");
        assert!(rows[2].ends_with("FAILED: crash loop"), "{text}");
    }

    #[test]
    fn a_task_without_key_worker_or_error_shows_dashes() {
        let t = TaskInfo { idx: 5, key: None, state: "ready".into(), attempts: 0, worker: None, error: None };
        let text = tasks(&[t]);
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells, ["5", "-", "ready", "0", "-"], "{text}");
    }

    #[test]
    fn an_in_memory_journal_says_so() {
        let j = JournalInfo {
            path: None,
            bytes: 0,
            records: 3,
            records_replayed: 1,
            flushes: 0,
            last_flush_ms_ago: None,
            epoch: 0,
            results_dir: None,
            results: Default::default(),
        };
        let text = journal(&j);
        assert!(text.starts_with("path       none: results are kept in memory"), "{text}");
        assert!(text.contains("records    3 (1 replayed at start-up)"), "{text}");
        assert!(text.ends_with("flushes    0, last none yet"), "{text}");
    }
}
