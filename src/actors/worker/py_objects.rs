//! What a slot knows of its Python executor's objects: the stored results
//! it made or was sent lately, which it keeps as Python objects (at most
//! `worker.result_cache` bytes of their stored size, oldest out first).
//! A task of this slot that takes one as input is told to use the object
//! itself, so it crosses no pipe and is not unpickled again. The account
//! follows the executor's own (`_Objects` in `actord/executor.py`) step by
//! step; where the two differ, the executor says which inputs it lacks and
//! they are sent.

use crate::protocol::StoredResult;
use std::collections::VecDeque;

pub(super) struct Held {
    cap: u64,
    size: u64,
    /// Path and stored size, oldest first.
    items: VecDeque<(String, u64)>,
}

impl Held {
    pub(super) fn new(cap: u64) -> Held {
        Held { cap, size: 0, items: VecDeque::new() }
    }

    /// The executor now keeps the object of `path` (as `_Objects.keep`).
    pub(super) fn keep(&mut self, path: &str, size: u64) {
        if size > self.cap {
            return;
        }
        self.forget(path);
        self.items.push_back((path.to_string(), size));
        self.size += size;
        while self.size > self.cap {
            let Some((_, s)) = self.items.pop_front() else { break };
            self.size -= s;
        }
    }

    pub(super) fn forget(&mut self, path: &str) {
        if let Some(i) = self.items.iter().position(|(p, _)| p == path) {
            let (_, s) = self.items.remove(i).expect("found above");
            self.size -= s;
        }
    }

    pub(super) fn has(&self, r: &StoredResult) -> bool {
        self.items.iter().any(|(p, s)| *p == r.path && *s == r.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str, size: u64) -> StoredResult {
        StoredResult { path: path.into(), size, checksum: String::new() }
    }

    #[test]
    fn the_account_keeps_the_latest_up_to_the_cap() {
        let mut h = Held::new(10);
        h.keep("a", 4);
        h.keep("b", 4);
        assert!(h.has(&r("a", 4)) && h.has(&r("b", 4)));
        assert!(!h.has(&r("a", 5)), "another size is another result");
        h.keep("c", 4);
        assert!(!h.has(&r("a", 4)), "the oldest leaves past the cap");
        assert_eq!(h.size, 8);
        h.keep("big", 11);
        assert!(!h.has(&r("big", 11)) && h.items.len() == 2, "over the cap: not kept, nothing evicted");
        h.keep("b", 2);
        assert_eq!((h.items.len(), h.size), (2, 6));
        assert_eq!(h.items.back().map(|(p, _)| p.as_str()), Some("b"), "kept again: newest");
        h.forget("c");
        assert_eq!((h.items.len(), h.size), (1, 2));
        let mut off = Held::new(0);
        off.keep("a", 1);
        assert!(!off.has(&r("a", 1)));
    }
}
