//! Why a prepare failed: one variant per failed operation, each message
//! naming the URL, file, or slot and device (STYLE.md §6).

use bootctl::record::RecordError;
use bootctl::Slot;
use std::path::PathBuf;
use std::time::Duration;
use wire::rpc::Reason;

/// Why a prepare failed. Every message names the URL, file, or slot and device.
#[derive(Debug)]
pub enum PrepareError {
    /// The request itself is unusable (digest or URL form).
    BadRequest {
        reason: String,
    },
    /// `http://` without `allow_http` (KubeOS `flag_safe`).
    PlainHttpRefused {
        url: String,
    },
    /// A CA, client certificate or key file could not be read or used.
    TlsFiles {
        path: PathBuf,
        reason: String,
    },
    /// GRUB may boot the target slot, so it must not be rewritten now.
    SlotInUse {
        slot: Slot,
        reason: &'static str,
    },
    /// Opening, sizing, writing, syncing or reading back the slot failed.
    Slot {
        slot: Slot,
        path: PathBuf,
        op: &'static str,
        offset: Option<u64>,
        source: std::io::Error,
    },
    /// Clearing or writing the slot record on PERSIST failed.
    Record {
        slot: Slot,
        source: RecordError,
    },
    /// The image does not fit the slot (`image`: its size, when known up front).
    TooLarge {
        slot: Slot,
        path: PathBuf,
        image: Option<u64>,
        capacity: u64,
    },
    NotFound {
        url: String,
    },
    /// The server answered with an error status (after retries for 5xx).
    Http {
        url: String,
        status: u16,
        detail: String,
    },
    /// TLS handshake or certificate verification failed.
    Tls {
        url: String,
        reason: String,
    },
    /// The connection kept failing.
    Network {
        url: String,
        attempts: u32,
        reason: String,
    },
    /// No data arrived for the read timeout, on every attempt.
    Stalled {
        url: String,
        attempts: u32,
        timeout: Duration,
    },
    /// The stream kept ending before the image was complete.
    Truncated {
        url: String,
        attempts: u32,
        offset: u64,
    },
    /// The manifest is unreadable, inconsistent, or does not describe the image.
    BadManifest {
        url: String,
        reason: String,
    },
    /// A node with trusted keys got a bundle without a valid signature by one
    /// of them (`reason`: unsigned, untrusted-key, bad-signature).
    Signature {
        url: String,
        reason: Reason,
        detail: String,
    },
    /// The manifest disagrees with the request (digest or version).
    ManifestMismatch {
        url: String,
        field: &'static str,
        manifest: String,
        requested: String,
    },
    /// The compressed stream is not valid zstd.
    Corrupt {
        url: String,
        offset: u64,
        reason: String,
    },
    /// A chunk's bytes do not match the manifest's digest.
    ChunkMismatch {
        url: String,
        chunk: usize,
        offset: u64,
    },
    /// The image (no manifest) decompresses to another digest than requested.
    DigestMismatch {
        url: String,
        actual: String,
        expected: String,
    },
    /// The compressed stream's sha256 is not the one it is pinned by (an OCI
    /// layer's digest, or a sha256 checksum of the image file).
    LayerMismatch {
        url: String,
        actual: String,
        expected: String,
    },
    /// What the slot reads back is not the requested image.
    VerifyFailed {
        slot: Slot,
        path: PathBuf,
        actual: String,
        expected: String,
    },
    Cancelled {
        slot: Slot,
    },
    /// An OCI registry refused or could not serve the image: unknown tag or
    /// repository, rejected credentials, a manifest or config whose digest
    /// is wrong, a media type that is not an ab-os bundle.
    Registry {
        image: String,
        reason: String,
    },
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use PrepareError as E;
        match self {
            E::BadRequest { reason } => write!(f, "invalid prepare request: {reason}"),
            E::PlainHttpRefused { url } => write!(
                f,
                "refusing plain HTTP for {url}: use https:// or allow HTTP (flag_safe)"
            ),
            E::TlsFiles { path, reason } => write!(f, "TLS file {}: {reason}", path.display()),
            E::SlotInUse { slot, reason } => write!(f, "refusing to write slot {slot}: {reason}"),
            E::Slot {
                slot,
                path,
                op,
                offset: Some(at),
                source,
            } => write!(
                f,
                "{op} slot {slot} ({}) at byte {at}: {source}",
                path.display()
            ),
            E::Slot {
                slot,
                path,
                op,
                offset: None,
                source,
            } => write!(f, "{op} slot {slot} ({}): {source}", path.display()),
            E::Record { slot, source } => write!(f, "slot {slot} record: {source}"),
            E::TooLarge {
                slot,
                path,
                image: Some(size),
                capacity,
            } => {
                write!(
                    f,
                    "image of {size} bytes does not fit slot {slot} ({}, {capacity} bytes)",
                    path.display()
                )
            }
            E::TooLarge {
                slot,
                path,
                image: None,
                capacity,
            } => write!(
                f,
                "image is larger than slot {slot} ({}, {capacity} bytes)",
                path.display()
            ),
            E::VerifyFailed {
                slot,
                path,
                actual,
                expected,
            } => write!(
                f,
                "slot {slot} ({}) reads back as {actual}, expected {expected}",
                path.display()
            ),
            E::Cancelled { slot } => {
                write!(f, "writing slot {slot} cancelled; the slot is left empty")
            }
            source_side => source_side.fmt_source(f),
        }
    }
}

impl PrepareError {
    /// The messages of failures on the source's side: server, network, bundle.
    fn fmt_source(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use PrepareError as E;
        match self {
            E::NotFound { url } => write!(f, "{url}: not found (HTTP 404 or no such file)"),
            E::Http {
                url,
                status,
                detail,
            } if detail.is_empty() => write!(f, "{url}: server answered HTTP {status}"),
            E::Http {
                url,
                status,
                detail,
            } => write!(f, "{url}: server answered HTTP {status} ({detail})"),
            E::Tls { url, reason } => write!(f, "{url}: TLS failed: {reason}"),
            E::Network {
                url,
                attempts,
                reason,
            } => write!(
                f,
                "{url}: download failed after {attempts} attempt(s): {reason}"
            ),
            E::Stalled {
                url,
                attempts,
                timeout,
            } => {
                write!(
                    f,
                    "{url}: download stalled (no data for {}s) on {attempts} attempt(s)",
                    timeout.as_secs_f64()
                )
            }
            E::Truncated {
                url,
                attempts,
                offset,
            } => write!(
                f,
                "{url}: stream truncated at compressed byte {offset} on {attempts} attempt(s)"
            ),
            E::BadManifest { url, reason } => write!(f, "bundle manifest for {url}: {reason}"),
            E::Signature { url, detail, .. } => write!(
                f,
                "{url}: {detail}; this node writes only bundles signed by a key it trusts \
                 (`os-agent status` lists them)"
            ),
            E::ManifestMismatch {
                url,
                field,
                manifest,
                requested,
            } => {
                write!(f, "bundle manifest for {url}: {field} is {manifest}, the request says {requested}")
            }
            E::Corrupt {
                url,
                offset,
                reason,
            } => write!(
                f,
                "{url}: corrupt zstd data near compressed byte {offset}: {reason}"
            ),
            E::ChunkMismatch { url, chunk, offset } => write!(
                f,
                "{url}: chunk {chunk} (image byte {offset}) does not match its manifest digest"
            ),
            E::DigestMismatch {
                url,
                actual,
                expected,
            } => write!(
                f,
                "{url}: image digest is {actual}, the request says {expected}"
            ),
            E::Registry { image, reason } => write!(f, "image {image}: {reason}"),
            E::LayerMismatch {
                url,
                actual,
                expected,
            } => write!(
                f,
                "{url}: the compressed stream's digest is {actual}, expected {expected}"
            ),
            local => unreachable!("{local:?} is formatted by Display"),
        }
    }
}

impl PrepareError {
    /// The stable reason sent to clients, which gives the error's kind.
    pub fn reason(&self) -> Reason {
        use PrepareError as E;
        match self {
            E::BadRequest { .. } => Reason::BadRequest,
            E::PlainHttpRefused { .. } => Reason::PlainHttp,
            E::TlsFiles { .. } => Reason::TlsFiles,
            E::SlotInUse { .. } => Reason::SlotInUse,
            E::Slot { .. } => Reason::SlotIo,
            E::Record { .. } => Reason::RecordIo,
            E::TooLarge { .. } => Reason::TooLarge,
            E::NotFound { .. } => Reason::NotFound,
            // Server trouble and throttling pass; other answers are the server's final word.
            E::Http { status, .. } if *status >= 500 || matches!(status, 408 | 429) => {
                Reason::ServerError
            }
            E::Http { .. } => Reason::HttpRefused,
            E::Tls { .. } => Reason::Tls,
            E::Network { .. } | E::Stalled { .. } | E::Truncated { .. } => Reason::Network,
            E::BadManifest { .. } => Reason::BadManifest,
            E::Signature { reason, .. } => *reason,
            E::ManifestMismatch { .. } => Reason::ManifestMismatch,
            E::Corrupt { .. } => Reason::Corrupt,
            E::ChunkMismatch { .. } | E::DigestMismatch { .. } | E::LayerMismatch { .. } => {
                Reason::DigestMismatch
            }
            E::VerifyFailed { .. } => Reason::VerifyFailed,
            E::Cancelled { .. } => Reason::Cancelled,
            E::Registry { .. } => Reason::Registry,
        }
    }
}

impl std::error::Error for PrepareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PrepareError::Slot { source, .. } => Some(source),
            PrepareError::Record { source, .. } => Some(source),
            _ => None,
        }
    }
}
