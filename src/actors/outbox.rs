//! The scheduler actor's effect sink: records to journal, and messages
//! gathered per connection, sent at once or after the flush as the core
//! marks them, with a cap on what one connection may gather.

use crate::core::Effects;
use crate::ids::ConnId;
use crate::persistence::Record;
use crate::protocol::{conn::encode, ToClient, ToNanny, ToWorker};
use bytes::Bytes;
use std::collections::HashMap;

/// Effects of the steps since the last flush, executed together.
#[derive(Default)]
pub struct Outbox {
    pub(super) records: Vec<Record>,
    /// Records of this group appended already (a job's task specs are not
    /// kept until the group's flush): the group still waits for the flush.
    pub(super) staged: usize,
    /// Messages that promise something (acknowledgements, replies, results):
    /// sent once the group's records are durable.
    pub(super) frames: HashMap<ConnId, Vec<Bytes>>,
    pub(super) closes: Vec<ConnId>,
    /// Messages that promise nothing (assignments, registrations): sent at
    /// once, without waiting for the journal.
    pub(super) urgent: HashMap<ConnId, Vec<Bytes>>,
    /// Bytes gathered per connection, and the most one may gather: a peer
    /// that asks for more than that in one group (and does not read) is cut
    /// off instead of growing the scheduler.
    pub(super) bytes: HashMap<ConnId, usize>,
    limit: usize,
    pub(super) overflowed: Vec<ConnId>,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.staged == 0 && self.frames.is_empty() && self.closes.is_empty()
    }
    pub(super) fn new(limit: usize) -> Outbox {
        Outbox { limit, ..Outbox::default() }
    }
    fn push<T: serde::Serialize>(&mut self, conn: ConnId, msg: &T, urgent: bool) {
        let gathered = self.bytes.entry(conn).or_default();
        if *gathered > self.limit {
            return; // cut off already
        }
        let frames = if urgent { &mut self.urgent } else { &mut self.frames };
        match encode(msg) {
            Ok(b) => {
                *gathered = gathered.saturating_add(b.len());
                if *gathered > self.limit {
                    self.overflowed.push(conn);
                    return;
                }
                frames.entry(conn).or_default().push(b)
            }
            Err(e) => tracing::error!(conn = %conn, error = %e, "cannot encode a message"),
        }
    }
}

impl Effects for Outbox {
    fn to_worker(&mut self, conn: ConnId, msg: ToWorker) {
        self.push(conn, &msg, true);
    }
    fn to_worker_after_flush(&mut self, conn: ConnId, msg: ToWorker) {
        self.push(conn, &msg, false);
    }
    fn to_client(&mut self, conn: ConnId, msg: ToClient) {
        self.push(conn, &msg, false);
    }
    fn to_nanny(&mut self, conn: ConnId, msg: ToNanny) {
        self.push(conn, &msg, true);
    }
    fn journal(&mut self, record: Record) {
        self.records.push(record);
    }
    fn close(&mut self, conn: ConnId) {
        self.closes.push(conn);
    }
}
