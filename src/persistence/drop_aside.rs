//! A sled handle whose last drop, which flushes and may never return on a
//! failed disk, happens on a thread nobody waits for.

/// The flush's handle on the database. A flush that fails or is abandoned
/// (the process stopping) may hold the last one, and sled flushes again on
/// drop, which never returns on a failed disk: that drop goes to a thread
/// nobody waits for.
pub(super) struct DropAside(pub(super) Option<sled::Db>);

impl DropAside {
    pub(super) fn get(&self) -> &sled::Db {
        self.0.as_ref().expect("held until released")
    }

    /// The flush succeeded: an ordinary drop.
    pub(super) fn release(&mut self) {
        self.0.take();
    }
}

impl Drop for DropAside {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            let _ = std::thread::Builder::new().name("journal-drop".into()).spawn(move || drop(db));
        }
    }
}
