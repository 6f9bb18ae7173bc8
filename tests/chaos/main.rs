//! Chaos tests: real processes, real signals.

#[path = "../common/mod.rs"]
mod common;

mod durability;
mod stall;
mod supervision;
