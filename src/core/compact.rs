//! Small containers that keep a task's record short: a list that is almost
//! always empty (`RareVec`, one word), the worker processes holding an
//! attempt (`Holders`, one inline), a job's argument arena (`ArgsRef`).

use std::ops::Deref;

/// A list that is empty for most tasks (workers it killed, inputs it waits
/// for where it is pinned, its dependents in a map): one pointer, no heap
/// until the first element.
#[derive(Clone, Debug, PartialEq, Eq)]
// One word instead of a `Vec`'s three, for the price of a second allocation
// in the rare list that is used.
#[allow(clippy::box_collection)]
pub struct RareVec<T>(Option<Box<Vec<T>>>);

impl<T> Default for RareVec<T> {
    fn default() -> Self {
        RareVec(None)
    }
}

impl<T> IntoIterator for RareVec<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|v| *v).unwrap_or_default().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a RareVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T> RareVec<T> {
    pub fn new() -> Self {
        RareVec(None)
    }

    pub fn push(&mut self, v: T) {
        self.0.get_or_insert_with(Default::default).push(v);
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain(keep);
            if v.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl<T> Deref for RareVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }
}

impl<T> FromIterator<T> for RareVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let v: Vec<T> = iter.into_iter().collect();
        RareVec((!v.is_empty()).then(|| Box::new(v)))
    }
}

/// No worker process (an id `process_key` never returns).
const NOBODY: u64 = u64::MAX - 1;

/// Worker processes handed an attempt of a task, oldest first: the first
/// inline (nearly every task has exactly one), the rest out of line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holders {
    first: u64,
    rest: RareVec<u64>,
}

impl Default for Holders {
    fn default() -> Self {
        Holders { first: NOBODY, rest: RareVec::new() }
    }
}

impl Holders {
    pub fn one(process: u64) -> Holders {
        Holders { first: process, rest: RareVec::new() }
    }

    pub fn len(&self) -> usize {
        usize::from(self.first != NOBODY) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first == NOBODY
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (self.first != NOBODY).then_some(self.first).into_iter().chain(self.rest.iter().copied())
    }

    pub fn contains(&self, process: u64) -> bool {
        self.iter().any(|p| p == process)
    }

    pub fn push(&mut self, process: u64) {
        if self.first == NOBODY {
            self.first = process;
        } else {
            self.rest.push(process);
        }
    }

    /// Removes the holder at `at` (in `iter` order).
    pub fn remove(&mut self, at: usize) {
        let mut all: Vec<u64> = self.iter().collect();
        if at < all.len() {
            all.remove(at);
        }
        let mut it = all.into_iter();
        self.first = it.next().unwrap_or(NOBODY);
        self.rest = it.collect();
    }

    pub fn get(&self, at: usize) -> Option<u64> {
        self.iter().nth(at)
    }
}

/// A task's outcome as its record keeps it: results in the job's arena,
/// errors (rare) in the job's list of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stored {
    #[default]
    None,
    Ok(ResultRef),
    /// Index in `Job::errors`.
    Err(u32),
    /// Index in `Job::stored`: a result in the results store.
    Ref(u32),
}

impl Stored {
    pub fn is_none(&self) -> bool {
        *self == Stored::None
    }

    pub fn is_some(&self) -> bool {
        !self.is_none()
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Stored::Ok(_) | Stored::Ref(_))
    }

    pub fn is_err(&self) -> bool {
        matches!(self, Stored::Err(_))
    }
}

/// Where one result is in a `ResultArena`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultRef {
    chunk: u32,
    start: u32,
    len: u32,
}

/// Size of the chunks small results are packed into; a larger result gets
/// a chunk of its own.
const CHUNK: usize = 1 << 20;

/// A job's results, packed one after the other in chunks: a few bytes per
/// noop result instead of an allocation each.
#[derive(Default)]
pub struct ResultArena {
    chunks: Vec<Vec<u8>>,
}

impl ResultArena {
    pub fn push(&mut self, result: &[u8]) -> ResultRef {
        let fits = |c: &Vec<u8>| c.capacity() - c.len() >= result.len();
        if result.len() > CHUNK / 4 || !self.chunks.last().is_some_and(fits) {
            let cap = if result.len() > CHUNK / 4 { result.len() } else { CHUNK };
            self.chunks.push(Vec::with_capacity(cap));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let start = c.len();
        c.extend_from_slice(result);
        // (A frame, and so a result, is far below 4 GiB; chunks are too.)
        ResultRef { chunk: chunk as u32, start: start as u32, len: result.len() as u32 }
    }

    pub fn get(&self, r: ResultRef) -> &[u8] {
        &self.chunks[r.chunk as usize][r.start as usize..(r.start + r.len) as usize]
    }
}

/// A task's arguments in its job's arena (`Job::args`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgsRef {
    pub start: u32,
    pub len: u32,
}

impl ArgsRef {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// Index → key, for the tasks of a job that have a key, in index order. A
/// task's key is found at its index when every task has one (the usual
/// graph), else by binary search: no hash table beside the tasks, and the
/// neighbours of the task looked up are in the same cache lines.
#[derive(Debug, Default)]
pub struct TaskKeys {
    keyed: Vec<(u32, Box<str>)>,
}

impl TaskKeys {
    /// Adds task `idx`'s key; tasks come in index order.
    pub fn push(&mut self, idx: u32, key: String) {
        debug_assert!(self.keyed.last().is_none_or(|(last, _)| *last < idx), "keys in index order");
        self.keyed.push((idx, key.into_boxed_str()));
    }

    fn find(&self, idx: u32) -> Option<usize> {
        match self.keyed.get(idx as usize) {
            Some((i, _)) if *i == idx => Some(idx as usize),
            _ => self.keyed.binary_search_by_key(&idx, |(i, _)| *i).ok(),
        }
    }

    pub fn get(&self, idx: u32) -> Option<&str> {
        self.find(idx).map(|at| &*self.keyed[at].1)
    }

    pub fn contains(&self, idx: u32) -> bool {
        self.find(idx).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.keyed.iter().map(|(i, k)| (*i, &**k))
    }

    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
    }
}

/// Bytes of a list from which its pages are populated at once.
const POPULATE_FROM: usize = 8 << 20;

/// Has the kernel map a large new list's pages in one call instead of
/// one fault per 4 KiB page as it fills (a million task records are
/// 36,000 pages). Only a hint: the contents do not change.
pub fn populate<T>(v: &Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < POPULATE_FROM {
        return;
    }
    const PAGE: usize = 4096;
    let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (v.as_ptr() as usize + bytes) & !(PAGE - 1);
    if end > start {
        // SAFETY: the range lies within the list's own allocation; the
        // advice changes no contents, only which pages are mapped now.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_vec_allocates_only_when_used() {
        let mut v: RareVec<u32> = RareVec::new();
        assert!(v.is_empty() && v.0.is_none());
        v.push(1);
        v.push(2);
        assert_eq!(&v[..], &[1, 2]);
        v.retain(|x| *x == 2);
        assert_eq!(&v[..], &[2]);
        v.retain(|_| false);
        assert!(v.0.is_none(), "emptied: no heap left");
        assert_eq!(std::mem::size_of::<RareVec<u64>>(), 8);
    }

    #[test]
    fn a_task_record_stays_small() {
        // A million of them are common: every byte here is a megabyte there.
        let size = std::mem::size_of::<super::super::Task>();
        assert!(size <= 144, "Task is {size} bytes");
    }

    #[test]
    fn results_pack_into_chunks_and_large_ones_get_their_own() {
        let mut a = ResultArena::default();
        let small: Vec<ResultRef> = (0..1000u32).map(|i| a.push(&i.to_le_bytes())).collect();
        let big = a.push(&vec![7u8; CHUNK]);
        let after = a.push(b"x");
        assert_eq!(a.chunks.len(), 3, "the small ones share a chunk; the big one has its own");
        for (i, r) in small.iter().enumerate() {
            assert_eq!(a.get(*r), &(i as u32).to_le_bytes());
        }
        assert_eq!(a.get(big).len(), CHUNK);
        assert_eq!(a.get(after), b"x");
        let empty = a.push(b"");
        assert_eq!(a.get(empty), b"");
    }

    #[test]
    fn task_keys_are_found_dense_or_sparse() {
        let mut dense = TaskKeys::default();
        for i in 0..100u32 {
            dense.push(i, format!("k{i}"));
        }
        assert_eq!(dense.get(42), Some("k42"));
        assert_eq!(dense.get(100), None);
        let mut sparse = TaskKeys::default();
        for i in (0..100u32).filter(|i| i % 3 == 1) {
            sparse.push(i, format!("k{i}"));
        }
        assert_eq!(sparse.len(), 33);
        for i in 0..110u32 {
            let want = (i < 100 && i % 3 == 1).then(|| format!("k{i}"));
            assert_eq!(sparse.get(i).map(str::to_string), want, "task {i}");
            assert_eq!(sparse.contains(i), want.is_some());
        }
        assert_eq!(sparse.iter().next(), Some((1, "k1")));
        assert!(TaskKeys::default().is_empty() && TaskKeys::default().get(0).is_none());
    }

    #[test]
    fn holders_keep_order_with_the_first_inline() {
        let mut h = Holders::default();
        assert!(h.is_empty() && !h.contains(7));
        assert_eq!(h.len(), 0);
        h.push(7);
        h.push(8);
        h.push(9);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![7, 8, 9]);
        h.remove(0);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(h.get(1), Some(9));
        assert!(h.contains(9) && !h.contains(7));
        assert_eq!(Holders::one(3).len(), 1);
    }
}
