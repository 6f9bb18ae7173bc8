//! actord: a fault-tolerant, Dask-style distributed task system.
//!
//! `core` is the scheduler's pure state machine; `actors` run it and the
//! nanny; `protocol` is the wire format; `persistence` the journal;
//! `client` the Rust client; `cli` the `actord` command line.

pub mod actors;
pub mod alloc;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod darts;
pub mod dashboard;
pub mod functions;
pub mod ids;
pub mod journal_record;
pub mod persistence;
pub mod process;
pub mod protocol;
pub mod results_store;
pub mod schedfile;
pub mod security;
pub mod slurm;
pub mod util;
