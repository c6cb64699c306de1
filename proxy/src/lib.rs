//! os-proxy: the node side of an A/B OS rollout (DESIGN.md §7).
//!
//! One proxy runs per node. It acts on the node's `OSInstance`: writes the new image through
//! the agent while workloads still run, cordons (recording that it did), drains through the
//! Eviction API, has the agent arm the trial boot and reboot, follows the node through the
//! reboot and the agent's health gate, applies settings, uncordons what it cordoned, and
//! reports every step in the OSInstance status.
//!
//! - [`lifecycle`]: the pure decision, what to do next from what is observed now;
//! - [`agent_client`]: os-agent's JSON-RPC socket;
//! - [`cordon`], [`drain`]: the node's schedulability and its pods;
//! - [`report`]: OSInstance status writes;
//! - [`run`]: the loop that observes, decides and acts, and waits on watches in between.

pub mod agent_client;
pub mod cli;
pub mod cordon;
pub mod drain;
mod execute;
pub mod lifecycle;
pub mod report;
pub mod run;
mod watches;

pub use run::{run, Config, Proxy};
