//! A job's task list in a `JobSubmitted` record: decoded specs, the bytes
//! the journal writes them as (as submitted: encoded one by one, never held
//! as a list of specs), or the stored parts' bytes as read back.

use super::msgpack::Reader;
use super::view::{next_spec_owned, read_spec, SpecView};
use super::TaskSpec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most tasks per stored part of a job, so a huge job is written in pieces.
pub const TASKS_PER_PART: usize = 65_536;

/// The tasks of a submitted job (equal when they hold the same specs,
/// however they are held).
#[derive(Clone, Debug)]
pub enum TaskList {
    /// Decoded specs in parts of any size (their order is the tasks' order).
    Specs(Vec<Vec<TaskSpec>>),
    /// The specs encoded one after the other as the journal stores them.
    Encoded(EncodedTasks),
    /// The journal's stored parts as read (their order is the tasks' order),
    /// decoded only when replayed.
    Stored(Vec<StoredPart>),
}

/// The tasks of one stored part: `n` encoded specs, a slice of the value read.
#[derive(Clone, Debug)]
pub struct StoredPart {
    pub n: usize,
    pub bytes: bytes::Bytes,
}

/// Task specs as the journal stores them (msgpack with named fields,
/// defaults left out), concatenated, with where every part starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedTasks {
    bytes: Vec<u8>,
    /// Byte offset of every `TASKS_PER_PART`-th task.
    part_starts: Vec<usize>,
    len: usize,
}

/// One part's tasks, ready to be written.
pub enum PartTasks<'a> {
    Specs(Vec<&'a TaskSpec>),
    /// `n` encoded specs.
    Encoded {
        n: usize,
        bytes: &'a [u8],
    },
}

/// A writer that appends to a buffer and shows every write to `tap`.
struct Tee<'a, F: FnMut(&[u8])> {
    buf: &'a mut Vec<u8>,
    tap: &'a mut F,
}

impl<F: FnMut(&[u8])> std::io::Write for Tee<'_, F> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        (self.tap)(b);
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl EncodedTasks {
    /// Appends one spec; `tap` sees the bytes in the writes that produce
    /// them (for a digest that must not depend on how they are stored).
    pub fn push(&mut self, spec: &TaskSpec, tap: &mut impl FnMut(&[u8])) {
        if self.len.is_multiple_of(TASKS_PER_PART) {
            self.part_starts.push(self.bytes.len());
        }
        let mut w = Tee { buf: &mut self.bytes, tap };
        // A spec of owned strings, numbers and maps of them always encodes.
        let _ = rmp_serde::encode::write_named(&mut w, spec);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (for the memory they cost).
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The specs, decoded one at a time.
    pub fn decode_each(&self, mut f: impl FnMut(TaskSpec)) -> Result<(), String> {
        let mut rd = &self.bytes[..];
        for i in 0..self.len {
            let spec = rmp_serde::from_read(&mut rd).map_err(|e| format!("task {i} does not decode: {e}"))?;
            f(spec);
        }
        Ok(())
    }
}

impl TaskList {
    pub fn len(&self) -> usize {
        match self {
            TaskList::Specs(parts) => parts.iter().map(Vec::len).sum(),
            TaskList::Encoded(e) => e.len(),
            TaskList::Stored(parts) => parts.iter().map(|p| p.n).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every spec in order, handed over one at a time.
    pub fn for_each(self, mut f: impl FnMut(TaskSpec)) -> Result<(), String> {
        match self {
            TaskList::Specs(parts) => {
                parts.into_iter().flatten().for_each(f);
                Ok(())
            }
            TaskList::Encoded(e) => e.decode_each(&mut f),
            TaskList::Stored(parts) => {
                let mut first = 0;
                for p in &parts {
                    each_spec(p, first, |r, i| {
                        f(next_spec_owned(r).map_err(|e| format!("task {i} does not decode: {e}"))?);
                        Ok(())
                    })?;
                    first += p.n;
                }
                Ok(())
            }
        }
    }

    /// Every spec in order as a view: stored parts are read in place, their
    /// strings and arguments borrowed (nothing allocated per task for them).
    /// (`f` may take what it keeps out of the view: it is reused.)
    pub fn for_each_view(self, mut f: impl FnMut(&mut SpecView<'_>)) -> Result<(), String> {
        match self {
            TaskList::Stored(parts) => {
                let mut first = 0;
                for p in &parts {
                    let mut v = SpecView::default();
                    each_spec(p, first, |r, i| {
                        read_spec(r, &mut v).map_err(|e| format!("task {i} does not decode: {e}"))?;
                        f(&mut v);
                        Ok(())
                    })?;
                    first += p.n;
                }
                Ok(())
            }
            other => other.for_each(|s| f(&mut SpecView::of(s))),
        }
    }

    /// The specs, decoded (for tests and small lists).
    pub fn to_specs(&self) -> Vec<TaskSpec> {
        let mut out = Vec::with_capacity(self.len());
        let _ = self.clone().for_each(|s| out.push(s));
        out
    }

    /// The tasks in stored parts of at most `TASKS_PER_PART`, in order.
    pub fn parts(&self) -> Vec<PartTasks<'_>> {
        match self {
            TaskList::Specs(parts) => {
                let all: Vec<&TaskSpec> = parts.iter().flatten().collect();
                all.chunks(TASKS_PER_PART).map(|c| PartTasks::Specs(c.to_vec())).collect()
            }
            TaskList::Encoded(e) => (0..e.part_starts.len())
                .map(|p| {
                    let end = e.part_starts.get(p + 1).copied().unwrap_or(e.bytes.len());
                    let n = (e.len - p * TASKS_PER_PART).min(TASKS_PER_PART);
                    PartTasks::Encoded { n, bytes: &e.bytes[e.part_starts[p]..end] }
                })
                .collect(),
            TaskList::Stored(parts) => {
                parts.iter().map(|p| PartTasks::Encoded { n: p.n, bytes: &p.bytes }).collect()
            }
        }
    }
}

/// Runs `f` on a reader at each spec of a stored part in turn (with its
/// task's index, from `first`), and checks that the part holds exactly them.
fn each_spec<'a>(
    p: &'a StoredPart,
    first: usize,
    mut f: impl FnMut(&mut Reader<'a>, usize) -> Result<(), String>,
) -> Result<(), String> {
    let mut r = Reader::new(&p.bytes);
    for i in first..first + p.n {
        f(&mut r, i)?;
    }
    if !r.is_empty() {
        return Err(format!("{} bytes after the part's tasks", p.bytes.len() - r.pos()));
    }
    Ok(())
}

impl PartialEq for TaskList {
    fn eq(&self, other: &TaskList) -> bool {
        self.len() == other.len() && self.to_specs() == other.to_specs()
    }
}

impl From<Vec<TaskSpec>> for TaskList {
    fn from(v: Vec<TaskSpec>) -> TaskList {
        TaskList::Specs(vec![v])
    }
}

impl FromIterator<TaskSpec> for TaskList {
    fn from_iter<I: IntoIterator<Item = TaskSpec>>(iter: I) -> Self {
        TaskList::Specs(vec![iter.into_iter().collect()])
    }
}

impl Serialize for TaskList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_specs())
    }
}

impl<'de> Deserialize<'de> for TaskList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<TaskSpec>::deserialize(d).map(TaskList::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize) -> Vec<TaskSpec> {
        (0..n)
            .map(|i| TaskSpec {
                key: i.is_multiple_of(3).then(|| format!("k{i}")),
                ..TaskSpec::cmd(vec![format!("t{i}")])
            })
            .collect()
    }

    #[test]
    fn encoded_and_decoded_lists_hold_the_same_specs_in_the_same_parts() {
        let s = specs(TASKS_PER_PART + 3);
        let mut e = EncodedTasks::default();
        let mut seen = 0usize;
        for t in &s {
            e.push(t, &mut |b| seen += b.len());
        }
        assert_eq!(seen, e.byte_len(), "the tap sees every byte");
        let enc = TaskList::Encoded(e);
        assert_eq!(enc.len(), s.len());
        assert_eq!(enc.to_specs(), s);
        let dec = TaskList::Specs(vec![s[..5].to_vec(), s[5..].to_vec()]);
        let (pe, pd) = (enc.parts(), dec.parts());
        assert_eq!(pe.len(), 2);
        assert_eq!(pd.len(), 2);
        for (a, b) in pe.iter().zip(&pd) {
            let (PartTasks::Encoded { n, bytes }, PartTasks::Specs(v)) = (a, b) else { panic!("kinds") };
            assert_eq!(*n, v.len());
            let mut want = Vec::new();
            for t in v {
                rmp_serde::encode::write_named(&mut want, t).unwrap();
            }
            assert_eq!(*bytes, &want[..]);
        }
    }
}
