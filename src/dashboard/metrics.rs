//! `/metrics`: the snapshot in Prometheus's text format (version 0.0.4).

use crate::core::Snapshot;
use std::fmt::Write;

/// One metric: its help, type and samples (`labels`, value).
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = match labels.is_empty() {
            true => writeln!(out, "{name} {v}"),
            false => writeln!(out, "{name}{{{labels}}} {v}"),
        };
    }
}

pub fn render(s: &Snapshot, subscribers: usize) -> String {
    let t = &s.totals;
    let mut out = String::with_capacity(2048);
    let states = [
        ("state=\"waiting\"", t.waiting as f64),
        ("state=\"ready\"", t.ready as f64),
        ("state=\"running\"", t.running as f64),
        ("state=\"queued\"", t.queued as f64),
        ("state=\"finished\"", t.finished as f64),
        ("state=\"failed\"", t.failed as f64),
        ("state=\"canceled\"", t.canceled as f64),
    ];
    metric(&mut out, "actord_tasks", "gauge", "Tasks of the jobs the scheduler holds, by state.", &states);
    let help = "Task outcomes recorded since the scheduler started (journal replay included).";
    metric(&mut out, "actord_task_outcomes_total", "counter", help, &[("", t.outcomes_total as f64)]);
    let help = "Task outcomes per second over the last 5 seconds.";
    metric(&mut out, "actord_tasks_per_second", "gauge", help, &[("", t.rate)]);
    metric(&mut out, "actord_workers", "gauge", "Registered workers.", &[("", t.workers as f64)]);
    metric(
        &mut out,
        "actord_worker_slots",
        "gauge",
        "Task slots of the registered workers.",
        &[("", t.slots as f64)],
    );
    metric(&mut out, "actord_jobs", "gauge", "Jobs the scheduler holds.", &[("", t.jobs as f64)]);
    let sys = &s.system;
    let help = "Journal flushes and the time they took (seconds).";
    let _ = writeln!(
        out,
        "# HELP actord_journal_flush_seconds {help}\n# TYPE actord_journal_flush_seconds summary"
    );
    let _ = writeln!(out, "actord_journal_flush_seconds_sum {}", sys.flush_seconds_total);
    let _ = writeln!(out, "actord_journal_flush_seconds_count {}", sys.flushes);
    let last = sys.flush_latency_us.map_or(0.0, |us| us as f64 / 1e6);
    let help = "How long the last journal flush took (seconds).";
    metric(&mut out, "actord_journal_last_flush_seconds", "gauge", help, &[("", last)]);
    let help = "Bytes the journal takes on disk.";
    metric(&mut out, "actord_journal_bytes", "gauge", help, &[("", sys.journal_bytes as f64)]);
    let help = "Open connections to the scheduler (clients, workers, nannies).";
    metric(&mut out, "actord_connections", "gauge", help, &[("", sys.connections as f64)]);
    let help = "Status pages subscribed to the live stream.";
    metric(&mut out, "actord_dashboard_subscribers", "gauge", help, &[("", subscribers as f64)]);
    metric(&mut out, "actord_epoch", "gauge", "Restarts of the journal so far.", &[("", sys.epoch as f64)]);
    let help = "Seconds since the scheduler started.";
    metric(&mut out, "actord_uptime_seconds", "gauge", help, &[("", sys.uptime_ms as f64 / 1e3)]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_line_is_a_name_labels_and_a_number() {
        let mut s = crate::core::Snapshot::default();
        s.totals.finished = 7;
        s.system.flushes = 3;
        let text = super::render(&s, 1);
        assert!(text.contains("actord_tasks{state=\"finished\"} 7\n"), "{text}");
        assert!(text.contains("actord_journal_flush_seconds_count 3\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("actord_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
