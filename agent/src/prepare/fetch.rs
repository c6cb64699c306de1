//! Where the image comes from: `https://` (or `http://` when allowed) through
//! ureq with rustls, or `file:///`. Opens the image at a compressed offset
//! (HTTP Range) so a broken download resumes instead of starting over, and
//! sorts every failure into "try again" or "give up" for the retry loop.

use super::{PrepareError, Tls};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// A failure to fetch, as the retry loop sees it.
#[derive(Debug)]
pub enum FetchError {
    /// 404/410, or a missing file.
    NotFound,
    /// Any other HTTP status; 5xx, 408 and 429 are worth retrying.
    Status { code: u16, detail: String },
    /// No byte arrived for the read timeout.
    Stalled,
    /// Connection refused, reset or dropped, or a connect timeout.
    Network(String),
    /// Handshake or certificate failure; retrying cannot help.
    Tls(String),
    /// The server answered a Range request with the wrong range.
    BadRange(String),
    /// Reading a `file://` source failed.
    File(io::Error),
    /// A registry refused the request (credentials, access); retrying cannot help.
    Registry(String),
    /// A small file (manifest, signature) is larger than it may be.
    Oversized { max: u64 },
}

impl FetchError {
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            FetchError::Stalled | FetchError::Network(_) => true,
            FetchError::NotFound
            | FetchError::Tls(_)
            | FetchError::BadRange(_)
            | FetchError::File(_)
            | FetchError::Registry(_)
            | FetchError::Oversized { .. } => false,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotFound => write!(f, "not found"),
            FetchError::Status { code, detail } if detail.is_empty() => {
                write!(f, "HTTP status {code}")
            }
            FetchError::Status { code, detail } => write!(f, "HTTP status {code} ({detail})"),
            FetchError::Stalled => write!(f, "stalled"),
            FetchError::Oversized { max } => write!(f, "larger than {max} bytes"),
            FetchError::Network(e) => write!(f, "{e}"),
            FetchError::Tls(e) => write!(f, "TLS: {e}"),
            FetchError::BadRange(e) => write!(f, "{e}"),
            FetchError::File(e) => write!(f, "{e}"),
            FetchError::Registry(e) => write!(f, "{e}"),
        }
    }
}

/// An open image stream.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    /// Size of the whole resource when the server says (or the file's size).
    pub total: Option<u64>,
    /// The server's strong validator for the resource (its `ETag`), when it
    /// gave one: a resumed request sends it as `If-Range`.
    pub etag: Option<String>,
    /// A range was asked for with a validator the resource no longer has:
    /// the server sent the whole, changed resource from byte 0.
    pub changed: bool,
    /// A range was asked for and the server sent the whole resource (it
    /// does not support Range): the bytes before the offset were skipped,
    /// and the reader runs to the end of the resource.
    pub whole: bool,
}

/// Fetches from one URL scheme, with the request's TLS settings. Cheap to
/// clone (shared clients), so a helper thread can open the source.
#[derive(Clone)]
pub enum Fetcher {
    Http(ureq::Agent),
    /// Local files; under a `file-sources` directory (`beneath`), opened only
    /// through no `..` and no symlink below it ([`crate::sys::open_beneath`]).
    File {
        beneath: Option<PathBuf>,
    },
    /// One blob of an OCI registry (the URL only names it in messages).
    Registry(RegistryBlob),
}

/// Where a layer blob is: the registry endpoint (origin or mirror) that
/// served the manifest, the repository, the blob's digest.
#[derive(Clone)]
pub struct RegistryBlob {
    pub client: std::sync::Arc<oci::Client>,
    pub repo: String,
    pub digest: String,
}

/// Sorts a registry client's error for the retry loop.
pub fn from_oci(e: oci::Error) -> FetchError {
    match e {
        oci::Error::Transport(t) => classify(t),
        oci::Error::NotFound { .. } => FetchError::NotFound,
        oci::Error::Status { code, detail } => FetchError::Status { code, detail },
        other => FetchError::Registry(other.to_string()),
    }
}

impl Fetcher {
    /// Checks the URL's scheme against `allow_http` and loads the TLS files.
    pub fn new(
        url: &str,
        tls: &Tls,
        allow_http: bool,
        connect: Duration,
        read: Duration,
    ) -> Result<Fetcher, PrepareError> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("file") => {
                // Refused before the slot is touched; open_file checks again
                // on what it opened.
                let path = file_path(url)?;
                return match fs::metadata(&path) {
                    Ok(m) if !m.is_file() => Err(PrepareError::BadRequest {
                        reason: format!("{} is not a regular file", path.display()),
                    }),
                    _ => Ok(Fetcher::File { beneath: None }),
                };
            }
            Some("https") => {}
            Some("http") if allow_http => {}
            Some("http") => {
                return Err(PrepareError::PlainHttpRefused {
                    url: url.to_owned(),
                })
            }
            _ => {
                return Err(PrepareError::BadRequest {
                    reason: format!(
                        "unsupported image URL {url:?} (https://, http:// or file:///)"
                    ),
                })
            }
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls_config(tls)?)
            .https_only(!allow_http)
            .http_status_as_error(false)
            .timeout_connect(Some(connect))
            // A per-read timeout, not a total one: a slow but steady download
            // of a large image is fine, a silent server is not.
            .timeout_per_read(Some(read))
            .user_agent(concat!("os-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Fetcher::Http(config.into()))
    }

    /// Opens `url` at byte `offset`, up to and including byte `last` when
    /// given (else to the end); over HTTP with `If-Range: validator` when one
    /// is given, so a resource that changed comes whole instead of as a range
    /// of something else.
    pub fn open(
        &self,
        url: &str,
        offset: u64,
        last: Option<u64>,
        validator: Option<&str>,
    ) -> Result<Body, FetchError> {
        match self {
            // A file reads from any offset; the caller stops at `last`.
            Fetcher::File { beneath } => open_file(
                &file_path(url).map_err(|e| FetchError::File(io::Error::other(e.to_string())))?,
                beneath.as_deref(),
                offset,
                validator,
            ),
            Fetcher::Http(agent) => open_http(agent, url, offset, last, validator),
            Fetcher::Registry(b) => {
                let blob = b
                    .client
                    .open_blob_range(&b.repo, &b.digest, offset, last)
                    .map_err(from_oci)?;
                // A blob is addressed by its digest: it cannot change.
                Ok(Body {
                    reader: blob.reader,
                    total: blob.total,
                    etag: None,
                    changed: false,
                    whole: blob.whole,
                })
            }
        }
    }

    /// Files under one of the node's `file-sources` directories (where a
    /// socket request may name them, so whoever writes there is not trusted)
    /// are read only from below that directory: the image, its manifest and
    /// signature, and every reopen, whoever named the file.
    pub fn confined(self, url: &str, file_sources: &[PathBuf]) -> Fetcher {
        match (self, file_path(url)) {
            (Fetcher::File { .. }, Ok(path)) => Fetcher::File {
                beneath: file_sources.iter().find(|d| path.starts_with(d)).cloned(),
            },
            (other, _) => other,
        }
    }

    /// Reads a small document (the manifest) whole; `None` when it does not exist.
    pub fn read_small(&self, url: &str, max: u64) -> Result<Option<String>, FetchError> {
        let body = match self.open(url, 0, None, None) {
            Ok(b) => b,
            Err(FetchError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if body.total.is_some_and(|t| t > max) {
            return Err(FetchError::Oversized { max });
        }
        let mut text = String::new();
        body.reader
            .take(max + 1)
            .read_to_string(&mut text)
            .map_err(classify_io)?;
        if text.len() as u64 > max {
            return Err(FetchError::Oversized { max });
        }
        Ok(Some(text))
    }
}

/// Sorts an error from reading an open body.
pub fn classify_io(e: io::Error) -> FetchError {
    classify(ureq::Error::from(e))
}

fn classify(e: ureq::Error) -> FetchError {
    use ureq::Error as E;
    match e {
        E::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            FetchError::Network(format!("connecting timed out ({e})"))
        }
        E::Timeout(_) => FetchError::Stalled,
        E::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            FetchError::Stalled
        }
        // rustls reports certificate and handshake failures as InvalidData.
        E::Io(io) if io.kind() == io::ErrorKind::InvalidData => FetchError::Tls(io.to_string()),
        E::Rustls(_) | E::Pem(_) | E::Tls(_) | E::TlsRequired => FetchError::Tls(e.to_string()),
        other => FetchError::Network(other.to_string()),
    }
}

fn open_http(
    agent: &ureq::Agent,
    url: &str,
    offset: u64,
    last: Option<u64>,
    validator: Option<&str>,
) -> Result<Body, FetchError> {
    let mut req = agent.get(url);
    let ranged = offset > 0 || last.is_some();
    if ranged {
        let last = last.map_or(String::new(), |l| l.to_string());
        req = req.header("Range", format!("bytes={offset}-{last}"));
        if let Some(v) = validator {
            req = req.header("If-Range", v);
        }
    }
    let resp = req.call().map_err(classify)?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    let content_range = header("content-range");
    // Only a strong validator says "the same bytes" (RFC 9110 §13.1.5).
    let etag = header("etag").filter(|e| e.starts_with('"'));
    let body = resp.into_body();
    match status {
        200 if offset == 0 => Ok(Body {
            reader: Box::new(body.into_reader()),
            total: length,
            etag,
            changed: false,
            whole: ranged,
        }),
        200 if validator.is_some() && etag.as_deref() != validator => {
            log::warn!(
                "{url}: the resource changed (validator {} is now {}); it comes whole",
                validator.unwrap_or_default(),
                etag.as_deref().unwrap_or("none")
            );
            Ok(Body {
                reader: Box::new(body.into_reader()),
                total: length,
                etag,
                changed: true,
                whole: true,
            })
        }
        200 => {
            // The server ignored Range: skip what we already have rather than
            // fail; it costs bandwidth, not correctness.
            log::warn!("{url}: server ignored the Range request; skipping {offset} bytes");
            let mut reader = body.into_reader();
            io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(classify_io)?;
            Ok(Body {
                reader: Box::new(reader),
                total: length,
                etag,
                changed: false,
                whole: true,
            })
        }
        206 => {
            let total = check_content_range(content_range.as_deref(), offset)?;
            Ok(Body {
                reader: Box::new(body.into_reader()),
                total,
                etag,
                changed: false,
                whole: false,
            })
        }
        404 | 410 => Err(FetchError::NotFound),
        code => Err(FetchError::Status {
            code,
            detail: error_detail(body),
        }),
    }
}

/// Checks `Content-Range` against the offset asked for; returns the total size.
fn check_content_range(value: Option<&str>, offset: u64) -> Result<Option<u64>, FetchError> {
    oci::check_content_range(value, offset).map_err(FetchError::BadRange)
}

/// A short, printable reason from an error response: the HTML title if
/// there is one (nginx: "400 No required SSL certificate was sent"), else the
/// first line of the body.
fn error_detail(body: ureq::Body) -> String {
    let mut text = String::new();
    let _ = body.into_reader().take(4096).read_to_string(&mut text);
    let title = text
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(t, _)| t);
    let line = title.unwrap_or_else(|| text.lines().next().unwrap_or(""));
    line.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn file_path(url: &str) -> Result<PathBuf, PrepareError> {
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(PrepareError::BadRequest {
            reason: format!("{url:?} is not an absolute file:/// URL"),
        }),
    }
}

/// Opens a regular file only: `O_NONBLOCK` so a FIFO's open cannot block,
/// then `fstat` on what was opened (no race with a rename), and anything but
/// a regular file (FIFO, device, directory, socket) is refused.
fn open_file(
    path: &Path,
    beneath: Option<&Path>,
    offset: u64,
    validator: Option<&str>,
) -> Result<Body, FetchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = match beneath {
        Some(dir) => crate::sys::open_beneath(dir, path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (a file under {} is read through no `..` or symlink)",
                    path.display(),
                    dir.display()
                ),
            )
        }),
        None => fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path),
    };
    let mut file = opened.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FetchError::NotFound,
        _ => FetchError::File(e),
    })?;
    let meta = file.metadata().map_err(FetchError::File)?;
    if !meta.is_file() {
        return Err(FetchError::File(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        ))));
    }
    let total = meta.len();
    // The file's identity and last change stand in for an ETag.
    use std::os::unix::fs::MetadataExt;
    let etag = format!(
        "\"file-{:x}-{:x}-{:x}-{:x}.{:x}\"",
        meta.dev(),
        meta.ino(),
        total,
        meta.mtime(),
        meta.mtime_nsec()
    );
    let changed = validator.is_some_and(|v| v != etag);
    let start = if changed { 0 } else { offset };
    file.seek(SeekFrom::Start(start))
        .map_err(FetchError::File)?;
    Ok(Body {
        reader: Box::new(file),
        total: Some(total),
        etag: Some(etag),
        changed,
        whole: false,
    })
}

fn tls_config(tls: &Tls) -> Result<TlsConfig, PrepareError> {
    let mut builder = TlsConfig::builder();
    if let Some(ca) = &tls.ca_cert {
        builder = builder.root_certs(RootCerts::new_with_certs(&read_certs(ca)?));
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let pem = read_pem_file(key)?;
            let key_der = PrivateKey::from_pem(&pem)
                .map_err(|e| tls_file(key, format!("no usable private key: {e}")))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key_der)));
        }
        (None, None) => {}
        (Some(path), None) | (None, Some(path)) => {
            return Err(tls_file(
                path,
                "a client certificate needs its key and the key its certificate".into(),
            ));
        }
    }
    Ok(builder.build())
}

/// Largest PEM file read (a CA bundle, a client certificate or key): a whole system bundle
/// is about 200 KiB.
const MAX_PEM_FILE: u64 = 1 << 20;

fn read_pem_file(path: &Path) -> Result<Vec<u8>, PrepareError> {
    match bootctl::small_file::read_bytes(path, MAX_PEM_FILE) {
        Ok(Some(pem)) => Ok(pem),
        Ok(None) => Err(tls_file(path, "no such file".into())),
        Err(e) => Err(tls_file(path, e.to_string())),
    }
}

/// Every certificate in a PEM file; an error if there is none.
fn read_certs(path: &Path) -> Result<Vec<Certificate<'static>>, PrepareError> {
    let pem = read_pem_file(path)?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item.map_err(|e| tls_file(path, format!("bad PEM: {e}")))? {
            PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(tls_file(path, "no certificate in the file".into()));
    }
    Ok(certs)
}

fn tls_file(path: &Path, reason: String) -> PrepareError {
    PrepareError::TlsFiles {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_start_where_we_asked() {
        assert_eq!(
            check_content_range(Some("bytes 100-199/200"), 100).unwrap(),
            Some(200)
        );
        assert_eq!(
            check_content_range(Some("bytes 100-199/*"), 100).unwrap(),
            None
        );
        assert!(matches!(
            check_content_range(Some("bytes 0-199/200"), 100),
            Err(FetchError::BadRange(_))
        ));
        assert!(matches!(
            check_content_range(None, 100),
            Err(FetchError::BadRange(_))
        ));
    }

    #[test]
    fn schemes_and_tls_files_are_checked_up_front() {
        let t = Duration::from_secs(1);
        let none = Tls::default();
        assert!(matches!(
            Fetcher::new("http://h/x", &none, false, t, t),
            Err(PrepareError::PlainHttpRefused { .. })
        ));
        assert!(matches!(
            Fetcher::new("ftp://h/x", &none, true, t, t),
            Err(PrepareError::BadRequest { .. })
        ));
        assert!(matches!(
            Fetcher::new("file://rel/x", &none, false, t, t),
            Err(PrepareError::BadRequest { .. })
        ));
        assert!(matches!(
            Fetcher::new("http://h/x", &none, true, t, t),
            Ok(Fetcher::Http(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        fs::write(&empty, "nothing here").unwrap();
        let tls = Tls {
            ca_cert: Some(empty.clone()),
            ..Tls::default()
        };
        let err = Fetcher::new("https://h/x", &tls, false, t, t)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no certificate") && err.contains("ca.pem"),
            "{err}"
        );
        let tls = Tls {
            client_cert: Some(empty),
            ..Tls::default()
        };
        assert!(Fetcher::new("https://h/x", &tls, false, t, t)
            .err()
            .unwrap()
            .to_string()
            .contains("needs its key"));
    }

    #[test]
    fn tls_files_are_read_bounded_and_only_if_regular() {
        let t = Duration::from_secs(1);
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.pem");
        fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
        let fifo = dir.path().join("fifo.pem");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, says) in [
            (huge, "larger than 1048576 bytes"),
            (fifo, "is a FIFO"),
            (PathBuf::from("/dev/zero"), "is a device"),
            (dir.path().join("missing.pem"), "no such file"),
        ] {
            let tls = Tls {
                ca_cert: Some(path.clone()),
                ..Tls::default()
            };
            let err = Fetcher::new("https://h/x", &tls, false, t, t)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(says), "{path:?}: {err}");
        }
    }

    #[test]
    fn file_sources_open_at_an_offset_and_missing_files_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        fs::write(&path, b"0123456789").unwrap();
        let url = format!("file://{}", path.display());
        let mut body = Fetcher::File { beneath: None }
            .open(&url, 4, None, None)
            .unwrap();
        let mut rest = String::new();
        body.reader.read_to_string(&mut rest).unwrap();
        assert_eq!((rest.as_str(), body.total), ("456789", Some(10)));
        let missing = format!("file://{}", dir.path().join("nope").display());
        assert!(matches!(
            Fetcher::File { beneath: None }.read_small(&missing, 10),
            Ok(None)
        ));
        assert!(Fetcher::File { beneath: None }.read_small(&url, 5).is_err());
    }
}
