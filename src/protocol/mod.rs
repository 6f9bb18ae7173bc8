//! The wire protocol: one serde enum per direction, msgpack with named
//! fields, in 4-byte big-endian length-prefixed frames (see docs/protocol.md).
//! The handshake is here; each peer's messages are in their own file.

mod client;
pub mod conn;
mod info;
mod nanny;
mod record;
mod task;
#[cfg(test)]
mod wire_tests;
mod worker;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use client::{FromClient, TaskOutcome, ToClient};
pub use conn::{Conn, ConnError};
pub use info::{JobDetail, JobInfo, JournalInfo, StatusInfo, StoredSize, TaskInfo, WorkerInfo};
pub use nanny::{FromNanny, NannyInfo, SlotInfo, SlotState, ToNanny};
pub use task::{Dep, Outcome, PyFunction, Resources, StoredResult, TaskKind, TaskSpec};
pub use worker::{Assignment, FromWorker, NannySlot, TaskReport, ToWorker};

/// Bump when any message below changes shape.
pub const PROTOCOL_VERSION: u32 = 2;
/// First field of every `Hello`, so a stray connection is told apart at once.
pub const MAGIC: &str = "actord";
/// Default largest frame either side accepts (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Who opens a connection; decides which enums the two sides speak after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    Worker,
    Nanny,
}

/// The first frame of every connection, from the side that connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: String,
    pub protocol: u32,
    pub role: Role,
    /// A fresh random nonce (32 bytes) that the scheduler's proof must cover.
    #[serde(default, with = "serde_bytes")]
    pub nonce: Vec<u8>,
    pub host: String,
    pub pid: u32,
    /// Who runs the peer ($USER), for the scheduler's log of admin requests.
    #[serde(default)]
    pub user: String,
    /// The scheduler epoch the peer read from the scheduler file (0 if none):
    /// a scheduler older than that has been replaced and refuses the peer.
    #[serde(default)]
    pub epoch: u64,
}

/// The scheduler's answer to `Hello`; after `Rejected` it closes the connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        protocol: u32,
        instance: Uuid,
        epoch: u64,
    },
    Rejected {
        error: String,
    },
    /// The scheduler's nonce and its proof of the secret (see
    /// `security::handshake`); the peer answers with `HelloProof`.
    Challenge {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
}

/// The connecting side's proof that it knows the secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloProof {
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}
