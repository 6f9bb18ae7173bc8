//! A job's compact records built one task spec at a time, as a submission
//! is decoded or the journal read: what tasks share stored once (`Shape`),
//! arguments in one arena, keys out of line; no list of specs is ever held.

use super::compact::{ArgsRef, Holders, RareVec, Stored, TaskKeys};
use super::{Shape, Task, TaskState};
use crate::journal_record::view::{KindView, SpecView};
use crate::journal_record::{self as rec, EncodedTasks};
use crate::protocol::TaskKind;
use rustc_hash::{FxHashMap as HashMap, FxHasher};
use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::Arc;

/// Most bytes of arguments one job's tasks may have in all (their arena
/// is indexed by `u32`; a submission is one frame, far smaller anyway).
pub const MAX_JOB_ARGS: u64 = u32::MAX as u64;

/// Most distinct shapes looked through for one the job has already: an
/// array or a map has one; a job mixing many kinds stores some twice.
const RECENT_SHAPES: usize = 8;

/// A job being built, task by task, in submission order.
pub struct JobBuilder {
    pub(super) tasks: Vec<Task>,
    pub(super) args: Vec<u8>,
    pub(super) keys: HashMap<String, u32>,
    pub(super) key_of: TaskKeys,
    shapes: Vec<Arc<Shape>>,
    /// The dependencies (by key) of the tasks that have any: resolved when
    /// the job is inserted, once every key is known.
    pub(super) pending: Vec<(u32, Vec<rec::Dep>)>,
    /// The first task whose key an earlier task has too.
    pub(super) first_dup_key: Option<u32>,
    /// Bytes of arguments in all; past `MAX_JOB_ARGS` the arena stops
    /// growing (the job is refused).
    args_total: u64,
    /// The specs as the journal writes them (not kept when replaying).
    journal: Option<EncodedTasks>,
    /// The digest of the specs so far (`None`: not wanted).
    hasher: Option<FxHasher>,
    replaying: bool,
}

/// How a builder is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// A submission: keep the journal's bytes and the digest.
    Submit,
    /// Replay of a journaled job; `digest`: compute its digest too.
    Replay { digest: bool },
}

/// The msgpack header of an array of `n` in the writes rmp makes for it
/// (the marker, then the length).
fn array_header(n: usize, tap: &mut impl FnMut(&[u8])) {
    match n {
        0..=15 => tap(&[0x90 | n as u8]),
        16..=0xffff => {
            tap(&[0xdc]);
            tap(&(n as u16).to_be_bytes());
        }
        _ => {
            tap(&[0xdd]);
            tap(&(n as u32).to_be_bytes());
        }
    }
}

/// Feeds a hasher through `io::Write`, one `write` per call.
struct HashWriter<'a>(&'a mut FxHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl JobBuilder {
    /// A builder for a job of `n` tasks (the digest covers that count),
    /// with room for `room` of them at first (`n` comes from a peer: at
    /// most what its frame can hold).
    pub fn new(n: usize, how: Build, room: usize) -> JobBuilder {
        let replaying = matches!(how, Build::Replay { .. });
        let hasher = matches!(how, Build::Submit | Build::Replay { digest: true }).then(|| {
            let mut h = FxHasher::default();
            // `submission_digest` hashes `(tasks, functions)`: a pair, then the list.
            array_header(2, &mut |b| h.write(b));
            array_header(n, &mut |b| h.write(b));
            h
        });
        let tasks = Vec::with_capacity(n.min(room));
        super::compact::populate(&tasks);
        JobBuilder {
            tasks,
            args: Vec::new(),
            keys: HashMap::default(),
            key_of: TaskKeys::default(),
            shapes: Vec::new(),
            pending: Vec::new(),
            first_dup_key: None,
            args_total: 0,
            journal: (how == Build::Submit).then(EncodedTasks::default),
            hasher,
            replaying,
        }
    }

    /// A builder holding `specs` (a submission made in-process).
    pub fn from_specs(specs: Vec<crate::protocol::TaskSpec>) -> JobBuilder {
        let mut b = JobBuilder::new(specs.len(), Build::Submit, specs.len());
        for s in specs {
            b.push(s.into());
        }
        b
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Adds the next task.
    pub fn push(&mut self, s: rec::TaskSpec) {
        match (&mut self.journal, &mut self.hasher) {
            (Some(j), Some(h)) => j.push(&s, &mut |b| h.write(b)),
            (Some(j), None) => j.push(&s, &mut |_| {}),
            (None, Some(h)) => {
                let _ = rmp_serde::encode::write_named(&mut HashWriter(h), &s);
            }
            (None, None) => {}
        }
        self.add(&mut SpecView::of(s));
    }

    /// Adds the next task from a view of its spec (replay of a journal that
    /// kept its digest: no journal bytes to keep, no digest to compute).
    /// (What it keeps is taken out of the view.)
    pub fn push_view(&mut self, s: &mut SpecView<'_>) {
        debug_assert!(
            self.journal.is_none() && self.hasher.is_none(),
            "a view is neither journaled nor hashed"
        );
        self.add(s);
    }

    fn add(&mut self, s: &mut SpecView<'_>) {
        let idx = self.tasks.len() as u32;
        if let Some(k) = s.key.take() {
            let k = k.into_owned();
            if self.keys.insert(k.clone(), idx).is_some() && self.first_dup_key.is_none() {
                self.first_dup_key = Some(idx);
            }
            self.key_of.push(idx, k);
        }
        if !s.deps.is_empty() {
            self.pending.push((idx, std::mem::take(&mut s.deps)));
        }
        let own: &[u8] = match &s.kind {
            KindView::Fn { args, .. } | KindView::Py { args, .. } => args,
            KindView::Cmd(_) => &[],
        };
        self.args_total = self.args_total.saturating_add(own.len() as u64);
        // (A refused job's arguments need not be kept: validation sees the lengths.)
        let at = ArgsRef { start: self.args.len() as u32, len: own.len().min(u32::MAX as usize) as u32 };
        if self.args_total <= MAX_JOB_ARGS {
            self.args.extend_from_slice(own);
        }
        let shape = self.shape_of(s);
        self.tasks.push(Task {
            shape,
            args: at,
            state: TaskState::Ready,
            attempts: 0,
            held_attempt: 0,
            assigned_seq: 0,
            killed: RareVec::new(),
            outcome: Stored::None,
            deps: Box::default(),
            dependents: RareVec::new(),
            waiting: 0,
            priority: s.priority,
            failures: 0,
            local_inputs: RareVec::new(),
            // Replayed: an attempt may still run on a worker of the last run.
            holders: if self.replaying { Holders::one(super::ANY_PROCESS) } else { Holders::default() },
            void_attempts: 0,
            repeat_here: false,
        });
    }

    /// The shape of a task, shared with an earlier task of the job if one of
    /// the last few shapes is the same.
    /// (A new shape takes the view's kind and resources.)
    fn shape_of(&mut self, s: &mut SpecView<'_>) -> Arc<Shape> {
        let same = |sh: &Shape| {
            same_kind(&sh.kind, &s.kind)
                && sh.resources == s.resources
                && sh.time_limit_ms == s.time_limit_ms
                && sh.time_request_ms == s.time_request_ms
                && sh.max_worker_kills == s.max_worker_kills
                && sh.retries == s.retries
        };
        if let Some(sh) = self.shapes.iter().rev().find(|sh| same(sh)) {
            return sh.clone();
        }
        let taken = std::mem::replace(&mut s.kind, KindView::Py { func: 0, args: Cow::Borrowed(&[]) });
        let kind = match taken {
            KindView::Fn { name, .. } => TaskKind::Fn { name: name.into_owned(), args: Vec::new() },
            KindView::Py { func, .. } => TaskKind::Py { func, args: bytes::Bytes::new() },
            KindView::Cmd(cmd) => cmd.into(),
        };
        let sh = Arc::new(Shape {
            kind,
            resources: std::mem::take(&mut s.resources),
            time_limit_ms: s.time_limit_ms,
            time_request_ms: s.time_request_ms,
            max_worker_kills: s.max_worker_kills,
            retries: s.retries,
        });
        if self.shapes.len() >= RECENT_SHAPES {
            self.shapes.remove(0);
        }
        self.shapes.push(sh.clone());
        sh
    }

    /// The submission's digest (`submission_digest` of the same specs and
    /// `functions`); 0 if the builder was not asked for one.
    pub fn digest(&self, functions: &[bytes::Bytes]) -> u64 {
        let Some(h) = &self.hasher else { return 0 };
        let mut h = h.clone();
        let _ = rmp_serde::encode::write_named(&mut HashWriter(&mut h), functions);
        h.finish()
    }

    /// The specs as the journal writes them (empty when replaying).
    pub(super) fn take_journal(&mut self) -> EncodedTasks {
        self.journal.take().unwrap_or_default()
    }
}

/// Whether a shape's kind is that of `kind`, but for its own arguments.
fn same_kind(shape: &TaskKind, kind: &KindView) -> bool {
    match (shape, kind) {
        (TaskKind::Fn { name: a, .. }, KindView::Fn { name: b, .. }) => a == b,
        (TaskKind::Py { func: a, .. }, KindView::Py { func: b, .. }) => a == b,
        (
            TaskKind::Cmd { argv, env, discard_output, cwd },
            KindView::Cmd(rec::TaskKind::Cmd { argv: a, env: e, discard_output: d, cwd: c }),
        ) => argv == a && env == e && discard_output == d && cwd == c,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::submission_digest;
    use crate::protocol::{Dep, TaskSpec};

    fn specs(n: usize) -> Vec<TaskSpec> {
        (0..n)
            .map(|i| match i % 3 {
                0 => TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![i as u8] }),
                1 => TaskSpec {
                    key: Some(format!("k{i}")),
                    deps: vec![Dep::key("0")],
                    resources: [("gpus".to_string(), 1)].into(),
                    ..TaskSpec::new(TaskKind::Py { func: 0, args: bytes::Bytes::from(vec![1, 2]) })
                },
                _ => TaskSpec::new(TaskKind::Cmd {
                    argv: vec!["echo".into()],
                    env: vec![],
                    discard_output: true,
                    cwd: None,
                }),
            })
            .collect()
    }

    #[test]
    fn the_digest_built_task_by_task_is_the_digest_of_the_whole_list() {
        let functions = vec![bytes::Bytes::from_static(b"f")];
        for n in [1, 3, 15, 16, 20, 70_000] {
            let s = specs(n);
            let want = submission_digest(&s, &functions);
            let b = JobBuilder::from_specs(s.clone());
            assert_eq!(b.digest(&functions), want, "n = {n}");
            let mut r = JobBuilder::new(n, Build::Replay { digest: true }, n);
            s.into_iter().for_each(|t| r.push(t.into()));
            assert_eq!(r.digest(&functions), want, "n = {n}, replayed");
        }
    }

    #[test]
    fn tasks_share_shapes_and_keep_their_own_arguments_keys_and_deps() {
        let s = specs(7);
        let mut b = JobBuilder::from_specs(s.clone());
        assert_eq!(b.len(), 7);
        assert!(Arc::ptr_eq(&b.tasks[0].shape, &b.tasks[3].shape));
        assert!(Arc::ptr_eq(&b.tasks[1].shape, &b.tasks[4].shape));
        assert_eq!(&b.args[b.tasks[3].args.range()], &[3]);
        assert_eq!(&b.args[b.tasks[4].args.range()], &[1, 2]);
        assert_eq!(b.keys.get("k4"), Some(&4));
        assert_eq!(b.key_of.get(4), Some("k4"));
        assert_eq!(b.pending.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(b.first_dup_key, None);
        let journal = b.take_journal();
        let back = crate::journal_record::TaskList::Encoded(journal).to_specs();
        assert_eq!(back, s.into_iter().map(rec::TaskSpec::from).collect::<Vec<_>>());
    }
}
