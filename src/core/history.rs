//! What the status page shows of the recent past, kept as bounded
//! aggregates the handlers update in O(1): task-stream bars (per report
//! frame, tiny tasks merged), throughput samples, events, recently lost
//! workers; and the history records still to be journaled.

use super::task::Shape;
use super::Core;
use crate::ids::WorkerId;
use crate::journal_record::HistoryRecord;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// Events kept in memory (the page shows the last 200; the journal keeps 1000).
pub const MAX_EVENTS: usize = 1000;
/// Task-stream bars kept (the page gets at most 2000 of them).
pub const MAX_BARS: usize = 8192;
/// One throughput sample a second, five minutes of them.
pub const MAX_SAMPLES: usize = 301;
/// Lost workers still listed (as lost) on the page.
pub const MAX_LOST: usize = 64;
/// History records waiting for the scheduler to journal them, at most
/// (the scheduler takes them after every step; only a test core fills it).
const MAX_PENDING: usize = 10_000;
/// A worker's next report frame of the same function within this long
/// extends its last bar instead of starting a new one...
const MERGE_GAP_US: u64 = 250_000;
/// ...unless that bar is already this long.
const MAX_BAR_US: u64 = 2_000_000;

/// One thing that happened, for operators (µs since the Unix epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: u64,
    pub kind: String,
    pub text: String,
}

/// Tasks of one function that one worker finished close together.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub worker: WorkerId,
    pub slots: u32,
    pub func: String,
    pub n: u32,
    pub start: u64,
    pub end: u64,
}

/// A worker that was lost, as it was then.
#[derive(Clone, Debug)]
pub struct LostWorker {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub nanny: Option<crate::protocol::NannySlot>,
    pub slots: u32,
    pub rss_kib: u64,
    pub at: u64,
}

#[derive(Default)]
pub struct History {
    pub events: VecDeque<Event>,
    pub bars: VecDeque<Bar>,
    /// Index (counted since start) of `bars[0]`.
    bars_base: u64,
    /// Each worker's last bar, by that index: where its next frame may merge.
    open_bar: HashMap<WorkerId, u64>,
    /// (time, outcomes so far), at most one a second.
    pub samples: VecDeque<(u64, u64)>,
    pub lost: VecDeque<LostWorker>,
    pending: Vec<HistoryRecord>,
}

/// The functions of one report frame's tasks, with their count and run time.
#[derive(Default)]
pub struct FrameBars {
    groups: Vec<(*const Shape, String, u32, u64)>,
}

impl FrameBars {
    /// Counts one report of a task of `shape` that ran `micros`.
    pub fn add(&mut self, shape: &std::sync::Arc<Shape>, micros: u64) {
        let ptr = std::sync::Arc::as_ptr(shape);
        if let Some(g) = self.groups.iter_mut().rev().find(|g| g.0 == ptr) {
            g.2 = g.2.saturating_add(1);
            g.3 = g.3.saturating_add(micros);
            return;
        }
        if self.groups.len() >= 16 {
            // Many functions in one frame: the rest count with the last.
            if let Some(g) = self.groups.last_mut() {
                g.2 = g.2.saturating_add(1);
                g.3 = g.3.saturating_add(micros);
            }
            return;
        }
        self.groups.push((ptr, func_name(&shape.kind), 1, micros));
    }
}

/// What the task stream calls a task: its function, its command's
/// program, or its Python callable's index.
fn func_name(kind: &crate::protocol::TaskKind) -> String {
    match kind {
        crate::protocol::TaskKind::Fn { name, .. } => name.clone(),
        crate::protocol::TaskKind::Cmd { argv, .. } => {
            let prog = argv.first().map(String::as_str).unwrap_or("cmd");
            prog.rsplit('/').next().unwrap_or(prog).to_string()
        }
        crate::protocol::TaskKind::Py { func, .. } => format!("py#{func}"),
    }
}

impl History {
    /// Records an event (journaled unless replaying).
    pub fn event(&mut self, now: u64, replaying: bool, kind: &str, text: String) {
        if !replaying && self.pending.len() < MAX_PENDING {
            let r = HistoryRecord::Event { at: now, kind: kind.into(), text: text.clone() };
            self.pending.push(r);
        }
        self.push_event(Event { at: now, kind: kind.into(), text });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// A job's timing changed: journal it (unless replaying).
    pub fn job_times(&mut self, replaying: bool, r: HistoryRecord) {
        if !replaying && self.pending.len() < MAX_PENDING {
            self.pending.push(r);
        }
    }

    /// The history records to journal now.
    pub fn take_pending(&mut self) -> Vec<HistoryRecord> {
        std::mem::take(&mut self.pending)
    }

    /// One report frame of `worker`'s: a bar per function, or the worker's
    /// last bar extended when the frame follows it closely.
    pub fn note_frame(&mut self, now: u64, worker: WorkerId, slots: u32, frame: FrameBars) {
        for (_, func, n, busy) in frame.groups {
            let open = self.open_bar.get(&worker).and_then(|i| i.checked_sub(self.bars_base));
            if let Some(b) = open.and_then(|i| self.bars.get_mut(i as usize)) {
                if b.func == func
                    && now.saturating_sub(b.end) <= MERGE_GAP_US
                    && now.saturating_sub(b.start) <= MAX_BAR_US
                {
                    b.n = b.n.saturating_add(n);
                    b.end = now.max(b.end);
                    continue;
                }
            }
            let parallel = u64::from(n.min(slots).max(1));
            let start = now.saturating_sub(busy / parallel);
            if self.bars.len() >= MAX_BARS {
                self.bars.pop_front();
                self.bars_base += 1;
            }
            self.bars.push_back(Bar { worker, slots, func, n, start, end: now });
            self.open_bar.insert(worker, self.bars_base + self.bars.len() as u64 - 1);
        }
    }

    /// Samples the outcome count, at most once a second.
    pub fn sample(&mut self, now: u64, outcomes: u64) {
        if self.samples.back().is_some_and(|(t, _)| now / 1_000_000 == t / 1_000_000) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, outcomes));
    }

    /// Outcomes per second over the last `window_us` (0 without samples).
    pub fn rate(&self, now: u64, outcomes: u64, window_us: u64) -> f64 {
        let since = now.saturating_sub(window_us);
        match self.samples.iter().find(|(t, _)| *t >= since) {
            Some((t, n)) if now > *t => outcomes.saturating_sub(*n) as f64 * 1e6 / (now - t) as f64,
            _ => 0.0,
        }
    }

    pub fn worker_lost(&mut self, w: LostWorker) {
        self.open_bar.remove(&w.id);
        if self.lost.len() >= MAX_LOST {
            self.lost.pop_front();
        }
        self.lost.push_back(w);
    }

    /// A journaled event, at replay.
    pub fn replayed(&mut self, at: u64, kind: String, text: String) {
        self.push_event(Event { at, kind, text });
    }
}

impl Core {
    /// Records an event for the status page (journaled): for what the
    /// scheduler process itself sees (its start, its journal's replay).
    pub fn note_event(&mut self, now: u64, kind: &str, text: String) {
        self.history.event(now, self.replaying, kind, text);
    }

    /// The history records to journal with this step's.
    pub fn take_history(&mut self) -> Vec<HistoryRecord> {
        self.history.take_pending()
    }

    pub fn history(&self) -> &History {
        &self.history
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str) -> std::sync::Arc<Shape> {
        std::sync::Arc::new(Shape {
            kind: crate::protocol::TaskKind::Fn { name: name.into(), args: Default::default() },
            resources: Default::default(),
            time_limit_ms: None,
            time_request_ms: None,
            max_worker_kills: None,
            retries: 0,
        })
    }

    #[test]
    fn close_frames_of_one_function_merge_and_others_start_bars() {
        let mut h = History::default();
        let (inc, add) = (shape("inc"), shape("add"));
        let w = WorkerId(1);
        let frame = |shapes: &[&std::sync::Arc<Shape>]| {
            let mut f = FrameBars::default();
            for s in shapes {
                f.add(s, 1000);
            }
            f
        };
        h.note_frame(1_000_000, w, 2, frame(&[&inc, &inc, &inc, &inc]));
        assert_eq!(h.bars.len(), 1);
        assert_eq!((h.bars[0].n, h.bars[0].start), (4, 1_000_000 - 2000), "4 tasks of 1 ms on 2 slots");
        h.note_frame(1_100_000, w, 2, frame(&[&inc]));
        assert_eq!((h.bars.len(), h.bars[0].n, h.bars[0].end), (1, 5, 1_100_000), "merged");
        h.note_frame(1_200_000, w, 2, frame(&[&add]));
        h.note_frame(2_000_000, w, 2, frame(&[&add]));
        assert_eq!(h.bars.len(), 3, "another function, then a gap: new bars");
        h.note_frame(2_000_001, WorkerId(2), 1, frame(&[&add, &inc]));
        assert_eq!(h.bars.len(), 5, "one bar per function of a frame");
    }

    #[test]
    fn aggregates_stay_bounded() {
        let mut h = History::default();
        for i in 0..(MAX_BARS as u64 * 2) {
            let mut f = FrameBars::default();
            f.add(&shape("f"), 1);
            h.note_frame(i * 1_000_000, WorkerId(i % 7), 1, f);
            h.sample(i * 1_000_000, i);
            h.event(i, false, "k", "t".into());
        }
        assert_eq!(h.bars.len(), MAX_BARS);
        assert_eq!(h.samples.len(), MAX_SAMPLES);
        assert_eq!(h.events.len(), MAX_EVENTS);
        assert_eq!(h.take_pending().len(), MAX_PENDING);
        let now = MAX_BARS as u64 * 2 * 1_000_000;
        assert!((h.rate(now, MAX_BARS as u64 * 2, 10_000_000) - 1.0).abs() < 0.2);
    }
}
