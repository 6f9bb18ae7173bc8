//! The book of a worker's tasks: which attempts it holds, which wait in the
//! ready queue the slots take from, which are pinned, which run a child
//! process, which functions have a deadline, which were canceled running.

use super::msg::{Done, Run, Running};
use super::pinned::{lock, Pins};
use crate::ids::TaskId;
use crate::protocol::{Outcome, TaskReport};
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

pub(super) struct Book {
    /// Tasks received and not yet finished, with their attempt.
    pub held: FxHashMap<TaskId, u32>,
    /// The ready queue: the worker sends, the slots take.
    queue: crossbeam_channel::Sender<Run>,
    /// The queue's other end, to take back what no slot has started.
    queued: crossbeam_channel::Receiver<Run>,
    /// Shared with the slots: they start the pins their results complete.
    pub pins: Pins,
    /// Attempts running in a child process: its pid, and whether it is a
    /// command (canceled: reported `canceled` whatever its exit).
    children: FxHashMap<TaskId, (u32, bool)>,
    /// Tasks canceled while a slot ran them, until their report comes.
    canceling: FxHashSet<TaskId>,
    /// Functions running with a time limit: deadline, limit, attempt.
    deadlines: FxHashMap<TaskId, (Instant, u64, u32)>,
    /// Functions reported as over their time limit, still running: their
    /// late report is dropped.
    expired: FxHashSet<TaskId>,
}

impl Book {
    pub(super) fn new() -> (Book, crossbeam_channel::Receiver<Run>) {
        let (queue, queued) = crossbeam_channel::unbounded();
        let book = Book {
            held: FxHashMap::default(),
            queue,
            queued: queued.clone(),
            pins: Pins::default(),
            children: FxHashMap::default(),
            canceling: FxHashSet::default(),
            deadlines: FxHashMap::default(),
            expired: FxHashSet::default(),
        };
        (book, queued)
    }

    /// Holds an attempt and queues it for the slots.
    pub(super) fn enqueue(&mut self, run: Run) {
        self.held.insert(run.a.task, run.a.attempt);
        let _ = self.queue.send(run);
    }

    /// Takes these tasks out of the queue if no slot has started them; the
    /// rest keeps its order. Returns those taken out (no longer held).
    pub(super) fn give_back(&mut self, wanted: &[TaskId]) -> Vec<TaskId> {
        let wanted: FxHashSet<TaskId> = wanted.iter().copied().collect();
        let queued: Vec<Run> = std::iter::from_fn(|| self.queued.try_recv().ok()).collect();
        let mut given = Vec::new();
        for run in queued {
            if wanted.contains(&run.a.task) {
                self.held.remove(&run.a.task);
                given.push(run.a.task);
            } else {
                let _ = self.queue.send(run);
            }
        }
        given
    }

    /// Takes out every queued and waiting pinned task (a new scheduler, a
    /// drain): the scheduler places them again.
    pub(super) fn drop_queued(&mut self) -> Vec<TaskId> {
        let mut dropped: Vec<TaskId> =
            std::iter::from_fn(|| self.queued.try_recv().ok()).map(|r| r.a.task).collect();
        for t in &dropped {
            self.held.remove(t);
        }
        dropped.extend(lock(&self.pins).take_waiting());
        dropped
    }

    /// A new connection: queued tasks are dropped; pins were the old
    /// scheduler's plan, the new one makes its own.
    pub(super) fn reconnected(&mut self) {
        self.drop_queued();
        lock(&self.pins).results.clear();
    }

    /// The scheduler cancels these tasks: pinned ones not started are
    /// dropped, queued ones are reported canceled at once, running ones are
    /// marked (their child gets SIGTERM: the pids returned). Only tasks held
    /// here are marked: a mark for another would cancel it if it came back.
    pub(super) fn cancel(&mut self, tasks: Vec<TaskId>) -> (Vec<TaskReport>, Vec<(TaskId, u32)>) {
        let (dropped, started) = {
            let mut p = lock(&self.pins);
            (p.cancel(&tasks), p.started.clone())
        };
        let held: FxHashMap<TaskId, u32> = tasks
            .iter()
            .filter(|t| !dropped.contains(t))
            .filter_map(|t| self.held.get(t).or_else(|| started.get(t)).map(|a| (*t, *a)))
            .collect();
        let wanted: Vec<TaskId> = held.keys().copied().collect();
        let queued = self.give_back(&wanted);
        let reports = queued
            .iter()
            .map(|&task| TaskReport {
                task,
                attempt: held[&task],
                outcome: Outcome::err("canceled"),
                micros: 0,
                executor_died: false,
                lost_inputs: Vec::new(),
            })
            .collect();
        let mut kill = Vec::new();
        for t in wanted.into_iter().filter(|t| !queued.contains(t)) {
            self.held.remove(&t);
            self.canceling.insert(t);
            kill.extend(self.children.get(&t).map(|(pid, _)| (t, *pid)));
        }
        (reports, kill)
    }

    /// A slot says what an attempt runs as; a child of a task canceled
    /// meanwhile is returned to be stopped at once.
    pub(super) fn started(&mut self, r: Running, now: Instant) -> Option<(TaskId, u32)> {
        let task = match &r {
            Running::Child { task, .. } | Running::Deadline { task, .. } => *task,
        };
        // Late news of an attempt already settled (its slot panicked): dropped.
        let live = self.held.contains_key(&task) || self.canceling.contains(&task);
        if !live && !lock(&self.pins).started.contains_key(&task) {
            return None;
        }
        match r {
            Running::Child { task, pid, cmd } => {
                self.children.insert(task, (pid, cmd));
                self.canceling.contains(&task).then_some((task, pid))
            }
            Running::Deadline { task, attempt, limit_ms } => {
                let deadline = now + Duration::from_millis(limit_ms);
                self.deadlines.insert(task, (deadline, limit_ms, attempt));
                None
            }
        }
    }

    /// Whether this child still runs this task (for the SIGKILL after a grace).
    pub(super) fn runs_child(&self, task: TaskId, pid: u32) -> bool {
        self.children.get(&task).is_some_and(|(p, _)| *p == pid)
    }

    /// A slot finished an attempt: the report to send (`None`: it was
    /// reported already, past its time limit) and the pinned tasks it
    /// made ready.
    pub(super) fn finished(&mut self, done: Done) -> (Option<TaskReport>, Vec<crate::protocol::Assignment>) {
        let Done { mut report, keep, pins_done } = done;
        let task = report.task;
        self.held.remove(&task);
        self.deadlines.remove(&task);
        let child = self.children.remove(&task);
        if self.canceling.remove(&task) {
            if let Some((_, cmd)) = child {
                if cmd || !report.outcome.is_ok() {
                    report.outcome = Outcome::err("canceled");
                    report.executor_died = false;
                }
            }
        }
        let expired = self.expired.remove(&task);
        let result = if expired { None } else { super::pinned::Local::of(&report.outcome) };
        let ready = if pins_done { Vec::new() } else { lock(&self.pins).finished(task, result, keep) };
        ((!expired).then_some(report), ready)
    }

    /// Functions past their deadline: they are failed now (their slot stays
    /// busy until the function returns; its result is then dropped).
    pub(super) fn expire(&mut self, now: Instant) -> Vec<TaskReport> {
        let due: Vec<TaskId> =
            self.deadlines.iter().filter(|(_, (d, _, _))| *d <= now).map(|(t, _)| *t).collect();
        let mut out = Vec::new();
        for t in due {
            if let Some((_, limit, attempt)) = self.deadlines.remove(&t) {
                self.expired.insert(t);
                self.held.remove(&t);
                let error = format!("time limit exceeded ({limit} ms)");
                let outcome = Outcome::err(error);
                out.push(TaskReport {
                    task: t,
                    attempt,
                    outcome,
                    micros: limit * 1000,
                    executor_died: false,
                    lost_inputs: Vec::new(),
                });
            }
        }
        out
    }

    /// Whether an attempt is still to finish here.
    pub(super) fn busy(&self) -> bool {
        !self.held.is_empty() || !lock(&self.pins).started.is_empty()
    }

    /// The attempts running or queued here (for a registration).
    pub(super) fn running(&self) -> Vec<(TaskId, u32)> {
        let mut all = self.held.clone();
        all.extend(lock(&self.pins).started.iter().map(|(t, a)| (*t, *a)));
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, WorkerId};
    use crate::protocol::{Assignment, TaskKind};

    fn run(job: JobId, idx: u32) -> Run {
        let a = Assignment {
            task: TaskId { job, idx },
            key: None,
            attempt: idx + 1,
            kind: TaskKind::Cmd { argv: vec!["true".into()], env: vec![], discard_output: true, cwd: None },
            inputs: vec![],
            time_limit_ms: None,
            resources: Default::default(),
            pending_inputs: vec![],
            has_dependents: false,
            stored_inputs: vec![],
        };
        Run { a, worker: WorkerId(1), function: None }
    }

    fn done(task: TaskId, attempt: u32, outcome: Outcome) -> Done {
        let report =
            TaskReport { task, attempt, outcome, micros: 1, executor_died: true, lost_inputs: vec![] };
        Done { report, keep: false, pins_done: false }
    }

    #[test]
    fn a_cancel_reports_queued_tasks_and_stops_running_children() {
        let job = JobId::new();
        let t = |idx| TaskId { job, idx };
        let (mut book, slots) = Book::new();
        for idx in 0..4 {
            book.enqueue(run(job, idx));
        }
        // A slot took 0 and 1; 0 runs a child already, 1 not yet.
        let (r0, r1) = (slots.try_recv().unwrap(), slots.try_recv().unwrap());
        assert_eq!((r0.a.task, r1.a.task), (t(0), t(1)));
        let now = Instant::now();
        assert_eq!(book.started(Running::Child { task: t(0), pid: 100, cmd: true }, now), None);
        let (reports, kill) = book.cancel(vec![t(0), t(1), t(2), t(9)]);
        assert_eq!(reports.iter().map(|r| (r.task, r.attempt)).collect::<Vec<_>>(), vec![(t(2), 3)]);
        assert_eq!(reports[0].outcome, Outcome::err("canceled"));
        assert_eq!(kill, vec![(t(0), 100)]);
        assert_eq!(slots.try_recv().map(|r| r.a.task).ok(), Some(t(3)), "the rest keeps its order");
        // 1's child starts after the cancel: stopped at once.
        assert_eq!(book.started(Running::Child { task: t(1), pid: 101, cmd: true }, now), Some((t(1), 101)));
        assert!(book.runs_child(t(1), 101) && !book.runs_child(t(1), 7));
        let ok = Outcome::Ok { result: bytes::Bytes::from_static(b"\xc0") };
        let (report, _) = book.finished(done(t(0), 1, ok));
        let report = report.unwrap();
        assert_eq!((report.outcome, report.executor_died), (Outcome::err("canceled"), false));
        assert!(!book.runs_child(t(0), 100));
        assert_eq!(book.held.keys().copied().collect::<Vec<_>>(), vec![t(3)]);
    }

    #[test]
    fn a_function_past_its_deadline_is_reported_once() {
        let job = JobId::new();
        let task = TaskId { job, idx: 0 };
        let (mut book, _slots) = Book::new();
        book.enqueue(run(job, 0));
        let t0 = Instant::now();
        book.started(Running::Deadline { task, attempt: 1, limit_ms: 50 }, t0);
        assert!(book.expire(t0 + Duration::from_millis(49)).is_empty());
        let late = book.expire(t0 + Duration::from_millis(50));
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].outcome, Outcome::err("time limit exceeded (50 ms)"));
        assert!(!book.busy(), "no longer held");
        let (report, _) = book.finished(done(task, 1, Outcome::err("late")));
        assert!(report.is_none(), "its late report is dropped");
        // News of a settled attempt changes nothing.
        book.started(Running::Deadline { task, attempt: 1, limit_ms: 1 }, t0);
        assert!(book.expire(t0 + Duration::from_secs(1)).is_empty());
    }
}
