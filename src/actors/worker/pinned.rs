//! The pins of one worker: tasks the scheduler placed here ahead of inputs
//! this worker computes itself, and the local results they wait for. The
//! one table the `Worker` shares with its slots: the slot that finishes an
//! input starts the pinned task it completes at once, without a round trip.

use crate::ids::TaskId;
use crate::protocol::{Assignment, Outcome, StoredResult};
use rustc_hash::FxHashMap;

/// A result produced here, as a pinned task takes it: the bytes, or where
/// they are in the results store (read when the task runs).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Local {
    Inline(bytes::Bytes),
    Stored(StoredResult),
}

impl Local {
    /// A successful outcome's result; `None` for a failure.
    pub(super) fn of(o: &Outcome) -> Option<Local> {
        match o {
            Outcome::Ok { result } => Some(Local::Inline(result.clone())),
            Outcome::Stored(s) => Some(Local::Stored(s.clone())),
            Outcome::Err { .. } => None,
        }
    }

    /// Puts it at input `pos` of `a`.
    fn fill(&self, a: &mut Assignment, pos: u32) {
        match self {
            Local::Inline(b) => {
                if let Some(slot) = a.inputs.get_mut(pos as usize) {
                    *slot = b.clone();
                }
            }
            Local::Stored(s) => a.stored_inputs.push((pos, s.clone())),
        }
    }
}

/// Tasks pinned to this worker ahead of inputs it produces itself (see
/// `Assignment::pending_inputs`): a task finished here hands its result to
/// the pinned tasks waiting for it, which start without a round trip
/// through the scheduler or the `Worker`.
#[derive(Default)]
pub(super) struct Pinned {
    /// Pinned tasks waiting for inputs: the assignment and how many are missing.
    pub(super) waiting: FxHashMap<TaskId, (Assignment, usize)>,
    /// The pinned tasks (and input positions) waiting for a task's result.
    pub(super) waiters: FxHashMap<TaskId, Vec<(TaskId, u32)>>,
    /// Results of tasks run here whose reports are not yet acknowledged
    /// (`None`: failed): a pin can arrive after its input is done.
    pub(super) results: FxHashMap<TaskId, Option<Local>>,
    /// Pinned tasks a slot started, with their attempt, until they finish.
    pub(super) started: FxHashMap<TaskId, u32>,
}

/// The pins, shared by the `Worker` and its slots (held only for a lookup).
pub(super) type Pins = std::sync::Arc<std::sync::Mutex<Pinned>>;

pub(super) fn lock(p: &Pins) -> std::sync::MutexGuard<'_, Pinned> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pinned {
    /// A pinned assignment arrived: returned if its inputs are all here
    /// already (to run now); kept waiting otherwise; dropped if one of them
    /// failed here (the scheduler decides what becomes of it).
    pub(super) fn add(&mut self, mut a: Assignment) -> Option<Assignment> {
        let mut missing = Vec::new();
        for (pos, dep) in std::mem::take(&mut a.pending_inputs) {
            match self.results.get(&dep) {
                Some(Some(r)) => r.clone().fill(&mut a, pos),
                Some(None) => return None,
                None => missing.push((pos, dep)),
            }
        }
        if missing.is_empty() {
            return Some(a);
        }
        for (pos, dep) in &missing {
            self.waiters.entry(*dep).or_default().push((a.task, *pos));
        }
        self.waiting.insert(a.task, (a, missing.len()));
        None
    }

    /// A task finished here (`result`: its result, `None` if it failed): the
    /// pinned tasks it completes, ready to run (the first is marked started,
    /// for the caller to run). A failure drops those waiting for it, transitively.
    pub(super) fn finished(&mut self, task: TaskId, result: Option<Local>, keep: bool) -> Vec<Assignment> {
        self.started.remove(&task);
        if keep {
            self.results.insert(task, result.clone());
        }
        let mut ready = Vec::new();
        let Some(waiters) = self.waiters.remove(&task) else { return ready };
        let Some(result) = result else {
            let mut stack: Vec<TaskId> = waiters.into_iter().map(|(t, _)| t).collect();
            while let Some(t) = stack.pop() {
                if self.waiting.remove(&t).is_some() {
                    stack.extend(self.waiters.remove(&t).unwrap_or_default().into_iter().map(|(t, _)| t));
                }
            }
            return ready;
        };
        for (t, pos) in waiters {
            let Some((a, missing)) = self.waiting.get_mut(&t) else { continue };
            result.fill(a, pos);
            *missing -= 1;
            if *missing == 0 {
                ready.extend(self.waiting.remove(&t).map(|(a, _)| a));
            }
        }
        if let Some(first) = ready.first() {
            self.started.insert(first.task, first.attempt);
        }
        ready
    }

    /// Drops these pinned tasks if they are waiting; returns those dropped.
    pub(super) fn cancel(&mut self, tasks: &[TaskId]) -> Vec<TaskId> {
        let dropped: Vec<TaskId> =
            tasks.iter().copied().filter(|t| self.waiting.remove(t).is_some()).collect();
        if !dropped.is_empty() {
            for w in self.waiters.values_mut() {
                w.retain(|(t, _)| !dropped.contains(t));
            }
        }
        dropped
    }

    /// Every waiting pinned task, taken out (a new scheduler, or a drain).
    pub(super) fn take_waiting(&mut self) -> Vec<TaskId> {
        self.waiters.clear();
        self.waiting.drain().map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;
    use crate::protocol::TaskKind;

    fn assignment(kind: TaskKind) -> Assignment {
        Assignment {
            task: TaskId { job: JobId::new(), idx: 3 },
            key: None,
            attempt: 2,
            kind,
            inputs: vec![],
            time_limit_ms: None,
            resources: Default::default(),
            pending_inputs: vec![],
            has_dependents: false,
            stored_inputs: vec![],
        }
    }

    #[test]
    fn pinned_tasks_run_when_their_local_inputs_finish_and_drop_when_one_fails() {
        let job = JobId::new();
        let t = |idx| TaskId { job, idx };
        let pin = |idx, deps: Vec<(u32, u32)>| Assignment {
            task: t(idx),
            inputs: vec![bytes::Bytes::new(); deps.len()],
            pending_inputs: deps.into_iter().map(|(pos, d)| (pos, t(d))).collect(),
            ..assignment(TaskKind::Fn { name: "inc".into(), args: vec![] })
        };
        let stored = StoredResult { path: format!("{job}/1-2.bin"), size: 9, checksum: "c".into() };
        let mut p = Pinned::default();
        // 1 ← 0, 2 ← (0, 1); 0 finishes before 3 ← 0 arrives.
        assert!(p.add(pin(1, vec![(0, 0)])).is_none());
        assert!(p.add(pin(2, vec![(0, 0), (1, 1)])).is_none());
        let ready = p.finished(t(0), Some(Local::Inline(bytes::Bytes::from_static(b"a"))), true);
        assert_eq!(ready.iter().map(|a| a.task).collect::<Vec<_>>(), vec![t(1)]);
        assert_eq!(ready[0].inputs, vec![bytes::Bytes::from_static(b"a")]);
        assert!(p.started.contains_key(&t(1)), "the first one is run by the caller");
        let late = p.add(pin(3, vec![(0, 0)])).expect("its input is here already");
        assert_eq!(late.inputs, vec![bytes::Bytes::from_static(b"a")]);
        let ready = p.finished(t(1), Some(Local::Stored(stored.clone())), true);
        // A stored result goes in as its reference, read when the task runs.
        assert_eq!(ready[0].inputs, vec![bytes::Bytes::from_static(b"a"), bytes::Bytes::new()]);
        assert_eq!(ready[0].stored_inputs, vec![(1, stored)]);
        assert_eq!(ready.iter().map(|a| a.task).collect::<Vec<_>>(), vec![t(2)]);
        assert!(p.started.contains_key(&t(2)) && !p.started.contains_key(&t(1)));

        // A failure drops what waits for it, transitively; a cancel drops one.
        let mut p = Pinned::default();
        assert!(p.add(pin(1, vec![(0, 0)])).is_none());
        assert!(p.add(pin(2, vec![(0, 1)])).is_none());
        assert!(p.add(pin(4, vec![(0, 3)])).is_none());
        assert!(p.finished(t(0), None, true).is_empty());
        assert_eq!(p.waiting.keys().copied().collect::<Vec<_>>(), vec![t(4)]);
        assert!(p.add(pin(5, vec![(0, 0)])).is_none(), "its input failed here: dropped");
        assert!(!p.waiting.contains_key(&t(5)));
        assert_eq!(p.cancel(&[t(4), t(9)]), vec![t(4)]);
        assert!(p.waiting.is_empty() && p.waiters.values().all(|w| w.is_empty()));
    }
}
