//! os-operator: the cluster side of the A/B OS rollout.
//!
//! `crd` holds the KubeOS-compatible `OS` and `OSInstance` resources (the proxy reuses them);
//! `rollout` decides, as a pure function of the spec, the observed nodes and the clock, which
//! nodes start, which have failed and whether the rollout halts.

pub mod audit;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod note;
pub mod rollout;
