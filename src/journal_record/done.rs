//! The outcomes of a `TasksDone` record: decoded (as the core makes them)
//! or the stored batch's bytes as read back, each outcome then read in
//! place at replay (a result by value borrowed, never copied out first).

use super::msgpack::Reader;
use super::{DoneTask, Outcome};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// The finished tasks of one record, in order.
#[derive(Clone, Debug)]
pub enum DoneList {
    Tasks(Vec<DoneTask>),
    /// A stored batch (an array of `DoneTask`), checked when read, decoded at replay.
    Stored(Bytes),
}

/// One finished task, its result by value borrowed.
#[derive(Debug, PartialEq)]
pub struct DoneView<'a> {
    pub idx: u32,
    pub attempt: u32,
    pub outcome: OutcomeView<'a>,
    pub canceled: bool,
}

#[derive(Debug, PartialEq)]
pub enum OutcomeView<'a> {
    /// A result by value (msgpack bytes).
    Ok(&'a [u8]),
    /// Any other outcome, decoded.
    Other(Outcome),
}

/// One finished task on the fast path: a result by value,
/// `[idx, attempt, {"Ok": [bin]}, canceled]`.
fn done_fast<'a>(r: &mut Reader<'a>) -> Option<DoneView<'a>> {
    let n = r.array_len().ok()?;
    if !(3..=4).contains(&n) {
        return None;
    }
    let idx = r.int().ok()?;
    let attempt = r.int().ok()?;
    if r.map_len().ok()? != 1 || r.key().ok()? != b"Ok" || r.array_len().ok()? != 1 {
        return None;
    }
    let result = r.bin().ok()?;
    let canceled = if n == 4 { r.bool().ok()? } else { false };
    Some(DoneView { idx, attempt, outcome: OutcomeView::Ok(result), canceled })
}

/// Each finished task of a stored batch in turn; `None`: the bytes are not
/// an array (another kind of `done` value), else how many there were.
pub fn each_done<'a>(bytes: &'a [u8], mut f: impl FnMut(DoneView<'a>)) -> Option<Result<usize, String>> {
    let mut r = Reader::new(bytes);
    let n = r.array_len().ok()?;
    for _ in 0..n {
        let start = r.clone();
        if let Some(d) = done_fast(&mut r) {
            f(d);
            continue;
        }
        // Whatever the fast path does not read, decoded as it always was.
        r = start;
        let d = r
            .value()
            .map_err(|m| m.to_string())
            .and_then(|b| rmp_serde::from_slice::<DoneTask>(b).map_err(|e| format!("task outcome: {e}")));
        match d {
            Ok(d) => f(DoneView {
                idx: d.idx,
                attempt: d.attempt,
                outcome: OutcomeView::Other(d.outcome),
                canceled: d.canceled,
            }),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(n as usize))
}

impl DoneView<'_> {
    pub fn to_owned(&self) -> DoneTask {
        let outcome = match &self.outcome {
            OutcomeView::Ok(r) => Outcome::Ok { result: Bytes::copy_from_slice(r) },
            OutcomeView::Other(o) => o.clone(),
        };
        DoneTask { idx: self.idx, attempt: self.attempt, outcome, canceled: self.canceled }
    }
}

impl DoneList {
    /// Each finished task in turn, as a view.
    pub fn for_each_view(&self, mut f: impl FnMut(DoneView<'_>)) -> Result<(), String> {
        match self {
            DoneList::Tasks(v) => {
                for d in v {
                    let outcome = match &d.outcome {
                        Outcome::Ok { result } => OutcomeView::Ok(result),
                        o => OutcomeView::Other(o.clone()),
                    };
                    f(DoneView { idx: d.idx, attempt: d.attempt, outcome, canceled: d.canceled });
                }
                Ok(())
            }
            DoneList::Stored(b) => each_done(b, f).unwrap_or_else(|| Err("not a batch".into())).map(|_| ()),
        }
    }

    /// The finished tasks, decoded (for tests and small lists).
    pub fn tasks(&self) -> Cow<'_, [DoneTask]> {
        match self {
            DoneList::Tasks(v) => Cow::Borrowed(v),
            DoneList::Stored(_) => {
                let mut out = Vec::new();
                let _ = self.for_each_view(|d| out.push(d.to_owned()));
                Cow::Owned(out)
            }
        }
    }

    /// The batch's bytes in the journal (as read back: the same bytes).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        match self {
            DoneList::Tasks(v) => rmp_serde::to_vec(v).map_err(|e| e.to_string()),
            DoneList::Stored(b) => Ok(b.to_vec()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DoneList::Tasks(v) => v.len(),
            DoneList::Stored(b) => Reader::new(b).array_len().map_or(0, |n| n as usize),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<DoneTask>> for DoneList {
    fn from(v: Vec<DoneTask>) -> DoneList {
        DoneList::Tasks(v)
    }
}

impl PartialEq for DoneList {
    fn eq(&self, other: &DoneList) -> bool {
        self.tasks() == other.tasks()
    }
}

impl Serialize for DoneList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tasks().serialize(s)
    }
}

impl<'de> Deserialize<'de> for DoneList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<DoneTask>::deserialize(d).map(DoneList::Tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_batches_read_as_the_general_decoder_reads_them() {
        let outcome = |i: u32| match i % 4 {
            0 | 1 => Outcome::Ok { result: Bytes::from(vec![i as u8; (i % 3) as usize]) },
            2 => Outcome::Err {
                error: format!("e{i}"),
                exception: (i % 8 == 2).then(|| Bytes::from_static(b"x")),
            },
            _ => Outcome::Stored { path: format!("p/{i}"), size: u64::from(i), checksum: "ab".into() },
        };
        let done: Vec<DoneTask> = (0..50)
            .map(|i| DoneTask { idx: i * 3, attempt: i % 3 + 1, outcome: outcome(i), canceled: i % 6 == 2 })
            .collect();
        let bytes = Bytes::from(rmp_serde::to_vec(&done).unwrap());
        let general: Vec<DoneTask> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(general, done);
        let stored = DoneList::Stored(bytes.clone());
        assert_eq!(stored.tasks().as_ref(), &done[..]);
        assert_eq!(stored.len(), 50);
        assert_eq!(stored, DoneList::from(done.clone()));
        let mut borrowed = 0;
        stored
            .for_each_view(|d| {
                borrowed +=
                    usize::from(matches!(d.outcome, OutcomeView::Ok(r) if r.len() == d.idx as usize / 3 % 3))
            })
            .unwrap();
        assert_eq!(borrowed, 26, "results by value read in place");
        for len in 1..bytes.len() {
            assert!(!matches!(each_done(&bytes[..len], |_| {}), Some(Ok(_))), "truncation to {len}");
        }
        let retried = rmp_serde::to_vec(&std::collections::BTreeMap::from([("Retried", vec![1])])).unwrap();
        assert!(each_done(&retried, |_| {}).is_none(), "not a batch");
    }
}
