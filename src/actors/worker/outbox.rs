//! What a worker has to tell the scheduler about finished attempts: the
//! reports not yet sent, and the numbered report frames sent and not yet
//! acknowledged as durable (sent again after a reconnect); the caps on
//! what one attempt may report.

use crate::ids::TaskId;
use crate::protocol::conn::encode;
use crate::protocol::{FromWorker, Outcome, TaskReport};
use bytes::Bytes;
use std::collections::VecDeque;

/// Most reports sent in one frame.
const MAX_REPORTS_PER_FRAME: usize = 8192;

#[derive(Default)]
pub(super) struct Outbox {
    /// Report frames sent on this connection and not yet acknowledged, by
    /// batch number: sent again after a reconnect.
    unacked: VecDeque<(u64, Vec<TaskReport>)>,
    /// Reports not yet sent on the current connection.
    unsent: Vec<TaskReport>,
    /// Number of the next report frame on this connection.
    next_batch: u64,
    /// Largest frame the scheduler accepts: report frames stay well below it.
    max_frame: usize,
}

impl Outbox {
    pub(super) fn new(max_frame: usize) -> Outbox {
        Outbox { max_frame, next_batch: 1, ..Outbox::default() }
    }

    pub(super) fn push(&mut self, r: TaskReport) {
        self.unsent.push(r);
    }

    /// A new connection: every unacknowledged report is sent again.
    pub(super) fn reconnected(&mut self) {
        let mut again: Vec<TaskReport> = self.unacked.drain(..).flat_map(|(_, r)| r).collect();
        again.append(&mut self.unsent);
        self.unsent = again;
        self.next_batch = 1;
    }

    /// The scheduler made every batch up to `batch` durable: the tasks
    /// whose reports that covers.
    pub(super) fn acked(&mut self, batch: u64) -> Vec<TaskId> {
        let mut tasks = Vec::new();
        while self.unacked.front().is_some_and(|(b, _)| *b <= batch) {
            if let Some((_, reports)) = self.unacked.pop_front() {
                tasks.extend(reports.iter().map(|r| r.task));
            }
        }
        tasks
    }

    pub(super) fn pending(&self) -> usize {
        self.unacked.iter().map(|(_, r)| r.len()).sum::<usize>() + self.unsent.len()
    }

    /// The unsent reports as numbered frames, each kept until acknowledged,
    /// each well below the frame limit (half of it).
    pub(super) fn frames(&mut self) -> Vec<Bytes> {
        let budget = (self.max_frame / 2).max(1);
        let mut frames = Vec::new();
        while !self.unsent.is_empty() {
            let (mut n, mut bytes) = (0, 0usize);
            while n < self.unsent.len() && n < MAX_REPORTS_PER_FRAME {
                let size = report_size(&self.unsent[n]);
                if n > 0 && bytes.saturating_add(size) > budget {
                    break;
                }
                bytes = bytes.saturating_add(size);
                n += 1;
            }
            let mut reports: Vec<TaskReport> = self.unsent.drain(..n).collect();
            if n == 1 && bytes > budget {
                // Only a misconfiguration (max_result near max_frame) gets
                // here: a report that cannot be sent must not become a
                // reconnect loop, so it becomes an error that fits.
                let r = &mut reports[0];
                r.outcome = Outcome::err(format!(
                    "the report of this task is {}, too large for a frame of at most {} (scheduler.max_frame): lower worker.max_result",
                    crate::util::format_size(bytes as u64),
                    crate::util::format_size(self.max_frame as u64)
                ));
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            let msg = FromWorker::Reports { batch, reports };
            match encode(&msg) {
                Ok(f) => frames.push(f),
                Err(e) => tracing::error!(batch, error = %e, "cannot encode a report frame"),
            }
            let FromWorker::Reports { reports, .. } = msg else { unreachable!("built above") };
            self.unacked.push_back((batch, reports));
        }
        frames
    }
}

/// About how many bytes a report takes in a frame.
fn report_size(r: &TaskReport) -> usize {
    let payload = match &r.outcome {
        Outcome::Ok { result } => result.len(),
        Outcome::Err { error, exception } => error.len() + exception.as_ref().map_or(0, |e| e.len()),
        Outcome::Stored(s) => s.path.len() + s.checksum.len(),
    };
    payload.saturating_add(64)
}

/// Caps what one attempt reports: a result over `max_result` becomes a task
/// error saying so, and an error over `max_error` is cut short with a note.
/// (0: no limit.)
pub fn cap_outcome(outcome: Outcome, max_result: u64, max_error: u64) -> Outcome {
    match outcome {
        Outcome::Ok { result } if max_result > 0 && result.len() as u64 > max_result => {
            too_large(result.len() as u64, max_result)
        }
        Outcome::Err { error, exception } => Outcome::Err {
            error: cap_error(error, max_error),
            // A pickled exception that large is dropped; its text stays.
            exception: exception.filter(|e| max_error == 0 || e.len() as u64 <= max_error),
        },
        ok => ok,
    }
}

/// The error of a result over `worker.max_result`.
pub(crate) fn too_large(size: u64, max: u64) -> Outcome {
    Outcome::err(format!(
        "the result is {}, over the limit of {} (worker.max_result): return less, or write it to a file",
        crate::util::format_size(size),
        crate::util::format_size(max)
    ))
}

fn cap_error(mut error: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if max == 0 || error.len() <= max {
        return error;
    }
    let note = format!(
        "\n[error cut short: {} in all, over the limit of {} (worker.max_error)]",
        crate::util::format_size(error.len() as u64),
        crate::util::format_size(max as u64)
    );
    let mut cut = max.saturating_sub(note.len());
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    error.truncate(cut);
    error.push_str(&note);
    error
}
