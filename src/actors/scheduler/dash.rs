//! The scheduler actor's answers to the status page: the core's read-only
//! views with the process's own figures (journal, flushes, connections).

use super::SchedulerState;
use crate::actors::msgs::{DashAnswer, DashQuery};
use crate::core;

/// A view for the status page, with the process's own figures.
pub(super) fn answer(st: &SchedulerState, now: u64, query: DashQuery) -> DashAnswer {
    match query {
        DashQuery::Job(job) => DashAnswer::Job(core::dashboard_job(&st.core, job).map(Box::new)),
        DashQuery::Snapshot => {
            let location = st.journal.location();
            let system = core::SystemRow {
                epoch: st.epoch,
                uptime_ms: st.started.elapsed().as_millis() as u64,
                started_at_ms: (now / 1000).saturating_sub(st.started.elapsed().as_millis() as u64),
                journal_path: location.as_ref().map(|(p, _)| p.display().to_string()),
                journal_bytes: location.map(|(_, b)| b).unwrap_or(0),
                journal_records: st.records_replayed + st.records_appended,
                last_flush_ms: st.last_flush_done.map(|t| t.elapsed().as_millis() as u64),
                flush_latency_us: st.flush_latency.map(|d| d.as_micros() as u64),
                flushes: st.flushes,
                flush_seconds_total: st.flush_seconds_total,
                connections: st.sessions.len() as u64,
                draining: st.core.is_stopping(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            };
            DashAnswer::Snapshot(Box::new(core::dashboard_snapshot(&st.core, now, system)))
        }
    }
}
