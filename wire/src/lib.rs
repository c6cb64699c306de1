//! One definition of everything that crosses a boundary between the parts
//! (DESIGN.md §5, §6; docs/decisions.md "One contract"):
//!
//! - [`Slot`]: `A` or `B` (`no_std`, for bootctl's core);
//! - [`digest`]: every digest spelling the project accepts, one parser, one
//!   formatter;
//! - [`record`]: slot states, slot records and os-init's rescue note, as the
//!   text files on PERSIST spell them;
//! - [`manifest`]: the bundle manifest (parse, check, write);
//! - [`signature`]: detached ed25519 signatures of manifests and their key
//!   files (feature `signature`);
//! - [`verity`]: the dm-verity tree layout of a root image and its table line;
//! - [`rpc`]: os-agent's JSON-RPC messages, the status report, error codes
//!   and error kinds.
//!
//! JSON goes through miniserde on the node (feature `miniserde`, default) and
//! through serde on the cluster side (feature `serde`); both derive from the
//! same types, and a test encodes with one and decodes with the other.
#![cfg_attr(not(feature = "std"), no_std)]

mod slot;
pub use slot::Slot;

#[cfg(feature = "std")]
pub mod digest;
#[cfg(feature = "std")]
pub use digest::Digest;
#[cfg(feature = "miniserde")]
pub mod json;
#[cfg(feature = "miniserde")]
pub mod manifest;
#[cfg(feature = "std")]
pub mod record;
#[cfg(feature = "std")]
pub mod rpc;
#[cfg(feature = "signature")]
pub mod signature;
#[cfg(feature = "std")]
pub mod verity;
