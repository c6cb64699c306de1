//! A/B boot state shared by GRUB and Linux (DESIGN.md §3–§4).
//!
//! - [`envblk`]: the GRUB environment block codec, byte-identical to `grub-editenv`.
//! - [`state`]: the four-variable A/B state with typed transitions.
//! - [`grub_model`]: what the generated grub.cfg does at boot, as a pure function.
//!
//! Those three are the `no_std`, allocation-free core. With the default `std`
//! feature come [`store`] (the two copies on a mounted ESP, committed in place)
//! and [`grubcfg`] (the grub.cfg generator), plus what the node-side programs
//! share: [`record`] (slot records on PERSIST) and [`partitions`] (finding the
//! A/B partitions by GPT name).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod envblk;
pub mod grub_model;
pub mod state;

#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod durable;
#[cfg(feature = "std")]
pub mod grubcfg;
#[cfg(feature = "std")]
pub mod partitions;
#[cfg(feature = "std")]
pub mod record;
#[cfg(feature = "std")]
pub mod small_file;
#[cfg(feature = "std")]
pub mod store;
#[cfg(feature = "std")]
mod sys;

pub use grub_model::{grub_boot, GrubBoot, Source};
pub use state::{AbState, Slot};
