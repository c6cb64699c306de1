use std::fmt;

/// What went wrong talking to a registry, sorted so callers can tell a
/// missing tag from bad credentials from a network failure worth a retry.
#[derive(Debug)]
pub enum Error {
    /// The reference, a digest or an option cannot be used as given.
    BadReference(String),
    /// The registry does not have it (MANIFEST_UNKNOWN, BLOB_UNKNOWN,
    /// NAME_UNKNOWN or a plain 404).
    NotFound { what: String, detail: String },
    /// Missing or rejected credentials (401 after authenticating, or a
    /// token endpoint that refused them), or access denied (403).
    Unauthorized { registry: String, detail: String },
    /// Content whose sha256 is not the one it is addressed by.
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A manifest, config or layer of a kind this client does not install.
    UnsupportedMediaType { what: String, media_type: String },
    /// A manifest that does not parse or breaks the bundle artifact's rules.
    BadManifest(String),
    /// Any other HTTP status.
    Status { code: u16, detail: String },
    /// The transport failed (connect, TLS, read); the caller decides whether
    /// it is worth a retry.
    Transport(ureq::Error),
    /// A local file (CA, auth file) could not be used.
    File(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadReference(r) => write!(f, "{r}"),
            Error::NotFound { what, detail } => write!(f, "{what} not found ({detail})"),
            Error::Unauthorized { registry, detail } => {
                write!(f, "registry {registry} refused access: {detail}")
            }
            Error::DigestMismatch {
                what,
                expected,
                actual,
            } => write!(f, "{what} has digest {actual}, expected {expected}"),
            Error::UnsupportedMediaType { what, media_type } => {
                write!(f, "{what} has unsupported media type {media_type:?}")
            }
            Error::BadManifest(r) => write!(f, "bad manifest: {r}"),
            Error::Status { code, detail } => write!(f, "HTTP {code}: {detail}"),
            Error::Transport(e) => write!(f, "{e}"),
            Error::File(r) => write!(f, "{r}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ureq::Error> for Error {
    fn from(e: ureq::Error) -> Self {
        Error::Transport(e)
    }
}
