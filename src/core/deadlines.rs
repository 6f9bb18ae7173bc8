//! The core's one queue of timers, ordered by due time: retries, the end of
//! the reclaim grace period, retention of finished jobs, heartbeat timeouts.
//! An entry is checked against the state when it comes due (it may have
//! moved on), so nothing is rescanned on every tick.

use crate::ids::{JobId, TaskId, WorkerId};
use std::collections::BTreeSet;

/// What is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// The reclaim grace period after a restart is over. (First variant:
    /// the least `Due`, a lower bound of ranges.)
    GraceOver,
    /// A failed task's retry backoff is over.
    Retry(TaskId),
    /// A finished job's retention period may be over (its `done_at` says).
    Retention(JobId),
    /// A worker may have been silent for the heartbeat timeout (its
    /// `last_seen` says).
    Heartbeat(WorkerId),
}

/// When an entry is looked at: as soon as it is due (the actor arms a timer
/// for the earliest, `Core::next_deadline`), or on the next periodic tick,
/// which first checks that the scheduler itself was not stopped meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    Wake,
    Tick,
}

impl Due {
    fn lane(&self) -> Lane {
        match self {
            Due::GraceOver | Due::Retry(_) => Lane::Wake,
            Due::Retention(_) | Due::Heartbeat(_) => Lane::Tick,
        }
    }
}

#[derive(Default)]
pub struct Deadlines {
    queue: BTreeSet<(Lane, u64, Due)>,
}

impl Deadlines {
    /// `due` comes due at `at` (µs); the same entry twice is kept once.
    pub fn add(&mut self, at: u64, due: Due) {
        self.queue.insert((due.lane(), at, due));
    }

    /// Removes and returns, earliest first, the entries of `lane` due at `now`.
    pub fn take_due(&mut self, lane: Lane, now: u64) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(&(l, at, due)) = self.queue.range((lane, 0, Due::GraceOver)..).next() {
            if l != lane || at > now {
                break;
            }
            self.queue.remove(&(l, at, due));
            out.push(due);
        }
        out
    }

    /// When the earliest entry of `lane` is due.
    pub fn next(&self, lane: Lane) -> Option<u64> {
        self.queue
            .range((lane, 0, Due::GraceOver)..)
            .next()
            .filter(|(l, _, _)| *l == lane)
            .map(|(_, at, _)| *at)
    }

    /// Tasks waiting out a retry backoff, with when it is over.
    pub fn retries(&self) -> impl Iterator<Item = (u64, TaskId)> + '_ {
        self.queue.iter().filter_map(|(_, at, due)| match due {
            Due::Retry(t) => Some((*at, *t)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_in_time_order_per_lane() {
        let mut d = Deadlines::default();
        let t = |i| TaskId { job: JobId(uuid::Uuid::nil()), idx: i };
        d.add(30, Due::Retry(t(1)));
        d.add(10, Due::Heartbeat(WorkerId(1)));
        d.add(20, Due::Retry(t(2)));
        d.add(20, Due::Retry(t(2)));
        d.add(5, Due::GraceOver);
        assert_eq!(d.next(Lane::Wake), Some(5));
        assert_eq!(d.next(Lane::Tick), Some(10));
        assert_eq!(d.take_due(Lane::Wake, 4), vec![]);
        assert_eq!(d.take_due(Lane::Wake, 25), vec![Due::GraceOver, Due::Retry(t(2))]);
        assert_eq!(d.retries().collect::<Vec<_>>(), vec![(30, t(1))]);
        assert_eq!(d.take_due(Lane::Tick, 9), vec![]);
        assert_eq!(d.take_due(Lane::Tick, u64::MAX), vec![Due::Heartbeat(WorkerId(1))]);
        assert_eq!(d.next(Lane::Tick), None);
        assert_eq!(d.take_due(Lane::Wake, u64::MAX), vec![Due::Retry(t(1))]);
        assert_eq!(d.next(Lane::Wake), None);
    }
}
