//! `os-agent`: the program on every node (DESIGN.md §2, §4-§6).
//!
//! - [`config`]: where the slots, ESP and PERSIST are (discovered, or overridden
//!   so tests run on plain files).
//! - [`progress`]: the shared, lock-free progress of the running job.
//! - [`prepare`]: the write path: source → zstd → BLAKE3 → inactive slot, one
//!   pass, resumable, verified, recorded.
//! - [`node`]: activate, confirm, roll back, and what to do after a boot, as
//!   pure decisions over the A/B env and the slot records.
//! - [`etc_overlay`]: /etc changes follow an upgrade (the trial slot's /etc
//!   layer is seeded from the running slot's).
//! - [`health`]: the health gate after a trial boot.
//! - [`configure`]: node configuration (KubeOS's config models), one
//!   transaction per request.
//! - [`job`]: one mutating job at a time per node; [`status`] reports it.
//! - [`rpc`]: the JSON-RPC server (KubeOS-compatible, [`kubeos`]); [`cli`]:
//!   the command line.
//!
//! Blocking `std::io` only, no async runtime (DESIGN.md §2).

pub mod cli;
pub mod config;
pub mod configure;
pub mod etc_overlay;
pub mod health;
pub mod job;
pub mod kubeos;
pub mod node;
pub mod prepare;
pub mod progress;
pub mod rpc;
pub mod status;
pub mod stream;
mod sys;
pub mod trust;
