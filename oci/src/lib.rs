//! The OCI side of ab-os (docs/oci.md): an update bundle travels through a
//! container registry as an OCI artifact, and both ends speak the
//! distribution API themselves, blocking, over `ureq`:
//! - [`Reference`]: `registry/repo:tag` or `registry/repo@sha256:…`;
//! - [`artifact`]: the bundle artifact's media types and its image manifest
//!   (config blob = the bundle manifest, one layer = the compressed image);
//! - [`image`]: a container image of one static program (config, manifest);
//! - [`auth`]: credentials from a docker-style auth file, and the
//!   `WWW-Authenticate` challenges (Bearer token and Basic);
//! - [`Client`]: one registry endpoint: manifests and blobs, pulled (blobs at
//!   an offset, for resuming) and pushed.
//!
//! Digests are the trust anchor: everything fetched by digest is hashed and
//! compared before it is used; nothing here trusts a tag.

pub mod artifact;
pub mod auth;
mod client;
pub mod digest;
mod error;
pub mod image;
pub mod reference;

pub use client::{check_content_range, Blob, Client, ClientOptions, Fetched};
pub use error::Error;
pub use reference::Reference;
