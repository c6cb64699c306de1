//! One registry endpoint, spoken to over the distribution API (v2) with a
//! blocking `ureq` agent: manifests by tag or digest, blobs whole or from an
//! offset, and the push side (blob upload, manifest put).
//!
//! Authentication is lazy, as docker and containerd do it: a request goes
//! out with whatever authorization the client already has; a 401 names the
//! scheme in `WWW-Authenticate`, the client gets a token (or uses Basic),
//! and the request is repeated once. Tokens are kept for the next request,
//! and fetched again when the registry refuses an expired one.

use crate::artifact::{DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST};
use crate::auth::{token_from_response, Challenge, Credentials};
use crate::{digest, Error, Reference};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use ureq::http::{Request, Response, Uri};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Body, ResponseExt, SendBody};

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM file of the CA that signs the registry's certificate (else the
    /// built-in web roots).
    pub ca_cert: Option<PathBuf>,
    /// Speak plain HTTP (a registry on a trusted network, a test).
    pub plain_http: bool,
    /// Whether `credentials` may go out unencrypted (to a plain-HTTP
    /// registry or token realm). Only whoever owns the credentials can say
    /// so (the node's own settings); a request that merely allows plain
    /// HTTP does not, and then the credentials are never sent.
    pub credentials_in_clear: bool,
    pub credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    /// A response that delivers no byte for this long is stalled.
    pub read_timeout: Duration,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca_cert: None,
            plain_http: false,
            credentials_in_clear: false,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            user_agent: concat!("ab-os-oci/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A manifest as served, with the sha256 of its bytes.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The response's Content-Type (empty when the registry sent none).
    pub media_type: String,
    pub digest: String,
}

/// An open blob stream.
pub struct Blob {
    pub reader: Box<dyn Read + Send>,
    /// Size of the whole blob, when the registry says.
    pub total: Option<u64>,
    /// A range was asked for and the registry sent the whole blob instead
    /// (it does not support Range): the reader runs to the blob's end.
    pub whole: bool,
}

pub struct Client {
    agent: ureq::Agent,
    registry: String,
    base: String,
    plain_http: bool,
    credentials_in_clear: bool,
    credentials: Option<Credentials>,
    /// The `Authorization` value that worked last (Bearer token or Basic).
    authorization: Mutex<Option<String>>,
}

impl Client {
    /// A client for `registry` (`host[:port]`, as in a [`Reference`]).
    pub fn new(registry: &str, opts: ClientOptions) -> Result<Client, Error> {
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &opts.ca_cert {
            tls = tls.root_certs(RootCerts::new_with_certs(&load_certs(ca)?));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .https_only(!opts.plain_http)
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .user_agent(opts.user_agent.as_str())
            .build();
        let scheme = if opts.plain_http { "http" } else { "https" };
        Ok(Client {
            agent: config.into(),
            registry: registry.to_owned(),
            base: format!("{scheme}://{}", Reference::api_host(registry)),
            plain_http: opts.plain_http,
            credentials_in_clear: opts.credentials_in_clear,
            credentials: opts.credentials,
            authorization: Mutex::new(None),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The URL of a blob (for logs and errors).
    pub fn blob_url(&self, repo: &str, digest: &str) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.base)
    }

    /// The manifest `reference` (tag or digest) of `repo`; verified against
    /// the digest when fetched by one.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, Error> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let resp = self.request("GET", &url, &[("Accept", &accept)], None, repo, "pull")?;
        let what = || format!("manifest {}/{repo}:{reference}", self.registry);
        let resp = expect(resp, &[200], &what)?;
        let media_type = header(&resp, "content-type").unwrap_or_default();
        let served_digest = header(&resp, "docker-content-digest");
        let bytes = read_limited(resp.into_body().into_reader(), MAX_MANIFEST_BYTES, &what())?;
        let actual = digest::sha256(&bytes);
        let expected = digest::parse(reference).or(served_digest.and_then(|d| digest::parse(&d)));
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(Error::DigestMismatch {
                what: what(),
                expected,
                actual,
            });
        }
        Ok(Fetched {
            bytes,
            media_type: media_type.split(';').next().unwrap_or("").trim().to_owned(),
            digest: actual,
        })
    }

    /// A small blob, whole, checked against its digest.
    pub fn get_blob(&self, repo: &str, digest: &str, max: u64) -> Result<Vec<u8>, Error> {
        let blob = self.open_blob(repo, digest, 0)?;
        let what = format!("blob {digest} of {}/{repo}", self.registry);
        if blob.total.is_some_and(|t| t > max) {
            return Err(Error::BadManifest(format!(
                "{what} is larger than {max} bytes"
            )));
        }
        let bytes = read_limited(blob.reader, max, &what)?;
        let actual = digest::sha256(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what,
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob at byte `offset` (a Range request when not 0). The caller
    /// verifies what it reads.
    pub fn open_blob(&self, repo: &str, digest: &str, offset: u64) -> Result<Blob, Error> {
        self.open_blob_range(repo, digest, offset, None)
    }

    /// Opens bytes `offset..=last` of a blob (`last`: `None` for the rest), a
    /// Range request unless the whole blob is asked for. A registry that
    /// ignores Range sends the whole blob: the bytes before `offset` are
    /// skipped, the reader runs to the blob's end and [`Blob::whole`] says so.
    pub fn open_blob_range(
        &self,
        repo: &str,
        digest: &str,
        offset: u64,
        last: Option<u64>,
    ) -> Result<Blob, Error> {
        let url = self.blob_url(repo, digest);
        let range = format!(
            "bytes={offset}-{}",
            last.map_or(String::new(), |l| l.to_string())
        );
        let ranged = offset > 0 || last.is_some();
        let headers: &[(&str, &str)] = if ranged { &[("Range", &range)] } else { &[] };
        let resp = self.request("GET", &url, headers, None, repo, "pull")?;
        let what = || format!("blob {digest} of {}/{repo}", self.registry);
        let resp = expect(resp, &[200, 206], &what)?;
        let length = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        let status = resp.status().as_u16();
        let content_range = header(&resp, "content-range");
        let mut reader: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
        let total = match (status, offset) {
            (200, 0) => length,
            (200, _) => {
                // The registry ignored Range: skip what the caller has.
                log::warn!("{url}: registry ignored the Range request; skipping {offset} bytes");
                io::copy(&mut (&mut reader).take(offset), &mut io::sink())
                    .map_err(|e| Error::Transport(ureq::Error::from(e)))?;
                length
            }
            _ => check_content_range(content_range.as_deref(), offset)
                .map_err(|detail| Error::Status { code: 206, detail })?,
        };
        Ok(Blob {
            reader,
            total,
            whole: ranged && status == 200,
        })
    }

    /// Whether the registry already has the blob (HEAD).
    pub fn has_blob(&self, repo: &str, digest: &str) -> Result<bool, Error> {
        let url = self.blob_url(repo, digest);
        let resp = self.request("HEAD", &url, &[], None, repo, "pull,push")?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => expect(resp, &[], &|| format!("blob {digest}")).map(|_| false),
        }
    }

    /// Uploads a blob in one PUT (a monolithic upload), streaming `body`.
    pub fn push_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        body: &mut dyn Read,
    ) -> Result<(), Error> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self.request(
            "POST",
            &url,
            &[("Content-Length", "0")],
            Some(&[]),
            repo,
            "pull,push",
        )?;
        let what = || format!("upload to {}/{repo}", self.registry);
        let resp = expect(resp, &[202], &what)?;
        let location = header(&resp, "location")
            .ok_or_else(|| Error::BadManifest(format!("{}: no Location in the answer", what())))?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", percent_encode(digest));
        let mut builder = Request::builder()
            .method("PUT")
            .uri(&put)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string());
        // The registry may name another host for the upload (its storage);
        // the registry's token or Basic credentials are for the registry only.
        let auth = self.authorization.lock().unwrap().clone();
        if let Some(auth) = auth.filter(|_| same_origin_urls(&put, &self.base)) {
            builder = builder.header("Authorization", auth);
        }
        let req = builder
            .body(SendBody::from_reader(body))
            .map_err(|e| Error::BadReference(format!("upload URL {put:?}: {e}")))?;
        let resp = self.agent.run(req)?;
        expect(resp, &[201], &what).map(|_| ())
    }

    /// Stores a manifest under a tag (or its digest).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self.request(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Some(bytes),
            repo,
            "pull,push",
        )?;
        expect(resp, &[201], &|| {
            format!("manifest {}/{repo}:{reference}", self.registry)
        })
        .map(|_| ())
    }

    /// Sends a request, authenticating and repeating it once on a 401.
    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        repo: &str,
        actions: &str,
    ) -> Result<Response<Body>, Error> {
        let current = self.authorization.lock().unwrap().clone();
        let resp = self.send(method, url, headers, body, current.as_deref())?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        // The registry may send a request on to another host (blob storage,
        // a CDN). A 401 from there is that host's, not the registry's:
        // answering it sent the registry's credentials to a token realm of
        // that host's choosing. (ureq drops Authorization on every redirect,
        // so the registry's own token never reaches it either.)
        let answered = resp.get_uri().clone();
        if !same_origin(&answered, url) {
            return Err(self.unauthorized(format!(
                "{answered} (where it redirected {url}) answered 401; the credentials for {} \
                 go only to it and its token realm, never to a host it redirects to (storage \
                 behind a registry must serve its redirects without credentials, e.g. signed URLs)",
                self.registry
            )));
        }
        let challenge = header(&resp, "www-authenticate");
        let detail = error_detail(resp.into_body());
        let challenge = challenge
            .as_deref()
            .and_then(Challenge::parse)
            .ok_or_else(|| {
                self.unauthorized(format!(
                    "401 without a usable WWW-Authenticate challenge ({detail})"
                ))
            })?;
        let auth = match challenge {
            Challenge::Basic if self.credentials.is_some() && !self.may_send_credentials(url) => {
                return Err(self.withheld(url, &detail));
            }
            Challenge::Basic => match &self.credentials {
                Some(c) if current.is_none() || current.as_deref() != Some(&c.basic_header()) => {
                    c.basic_header()
                }
                Some(_) => {
                    return Err(self.unauthorized(format!("credentials rejected ({detail})")))
                }
                None => {
                    return Err(self.unauthorized(format!(
                        "the registry wants credentials and none are configured for {} ({detail})",
                        self.registry
                    )))
                }
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repo}:{actions}"));
                format!("Bearer {}", self.token(&realm, service.as_deref(), &scope)?)
            }
        };
        *self.authorization.lock().unwrap() = Some(auth.clone());
        let resp = self.send(method, url, headers, body, Some(&auth))?;
        if resp.status().as_u16() == 401 {
            let detail = error_detail(resp.into_body());
            return Err(self.unauthorized(match &self.credentials {
                Some(_) => format!("credentials rejected ({detail})"),
                None => format!("anonymous access refused, no credentials configured ({detail})"),
            }));
        }
        Ok(resp)
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        auth: Option<&str>,
    ) -> Result<Response<Body>, Error> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        let bad = |e: ureq::http::Error| Error::BadReference(format!("request {url:?}: {e}"));
        log::debug!("{method} {url}");
        let resp = match body {
            Some(bytes) => self.agent.run(b.body(bytes).map_err(bad)?)?,
            None => self.agent.run(b.body(()).map_err(bad)?)?,
        };
        Ok(resp)
    }

    /// A token from the registry's token endpoint, for `scope`.
    fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, Error> {
        if !self.plain_http && !realm.to_ascii_lowercase().starts_with("https://") {
            return Err(self.unauthorized(format!(
                "its token endpoint {realm} is not HTTPS; refusing to send credentials \
                 or trust a token over it (allow plain HTTP for this registry to accept)"
            )));
        }
        let mut url = realm.to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in [("service", service), ("scope", Some(scope))] {
            if let Some(v) = v {
                url.push(sep);
                url.push_str(&format!("{k}={}", percent_encode(v)));
                sep = '&';
            }
        }
        let mut b = Request::builder().method("GET").uri(&url);
        // Over plain HTTP that the node did not vouch for, ask anonymously.
        let send = self
            .credentials
            .as_ref()
            .filter(|_| self.may_send_credentials(&url));
        if let Some(c) = send {
            b = b.header("Authorization", c.basic_header());
        }
        let req = b
            .body(())
            .map_err(|e| self.unauthorized(format!("token realm {realm:?} is not a URL: {e}")))?;
        log::debug!("token: GET {url}");
        let resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let text = {
            let mut s = String::new();
            resp.into_body()
                .into_reader()
                .take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|e| Error::Transport(ureq::Error::from(e)))?;
            s
        };
        match status {
            200 => token_from_response(&text)
                .ok_or_else(|| self.unauthorized(format!("token endpoint {realm} sent no token"))),
            401 | 403 if send.is_none() && self.credentials.is_some() => {
                Err(self.withheld(&url, "the token endpoint refused anonymous access"))
            }
            401 | 403 => Err(self.unauthorized(match &self.credentials {
                Some(c) => format!(
                    "token endpoint {realm} refused the credentials of user {:?}",
                    c.username
                ),
                None => format!("token endpoint {realm} refused anonymous access"),
            })),
            code if code == 429 || code >= 500 => Err(Error::Status {
                code,
                detail: format!("token endpoint {realm}: {}", first_line(&text)),
            }),
            code => Err(self.unauthorized(format!(
                "token endpoint {realm} answered {code}: {}",
                first_line(&text)
            ))),
        }
    }

    /// Credentials go out only where the owner of the credentials allowed
    /// plain HTTP ([`ClientOptions::credentials_in_clear`]), or encrypted to a
    /// registry reached over HTTPS. Over plain HTTP the owner did not allow,
    /// never: a token realm is named by the registry's 401, which anyone on
    /// the path can write, so an `https://` realm in it says nothing about
    /// where the credentials would end up.
    fn may_send_credentials(&self, url: &str) -> bool {
        self.credentials_in_clear
            || (!self.plain_http && url.to_ascii_lowercase().starts_with("https://"))
    }

    fn withheld(&self, url: &str, detail: &str) -> Error {
        self.unauthorized(format!(
            "{detail}; the credentials for {} are not sent over plain HTTP, nor to a \
             token realm a plain-HTTP answer named ({url}): only a registry the node \
             itself lists as plain HTTP gets them in clear",
            self.registry
        ))
    }

    fn unauthorized(&self, detail: String) -> Error {
        Error::Unauthorized {
            registry: self.registry.clone(),
            detail,
        }
    }
}

/// Whether `uri` has the scheme, host and port of `url`.
fn same_origin(uri: &Uri, url: &str) -> bool {
    let origin = |u: &Uri| {
        let scheme = u.scheme_str().map(str::to_ascii_lowercase);
        let port = u.port_u16().or(match scheme.as_deref() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        (scheme, u.host().map(str::to_ascii_lowercase), port)
    };
    url.parse::<Uri>().is_ok_and(|u| origin(&u) == origin(uri))
}

fn same_origin_urls(a: &str, b: &str) -> bool {
    a.parse::<Uri>().is_ok_and(|a| same_origin(&a, b))
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Passes a response with one of `ok`'s statuses; sorts any other.
fn expect(
    resp: Response<Body>,
    ok: &[u16],
    what: &dyn Fn() -> String,
) -> Result<Response<Body>, Error> {
    let code = resp.status().as_u16();
    if ok.contains(&code) {
        return Ok(resp);
    }
    let detail = error_detail(resp.into_body());
    Err(match code {
        404 => Error::NotFound {
            what: what(),
            detail,
        },
        403 => Error::Unauthorized {
            registry: what(),
            detail: format!("access denied ({detail})"),
        },
        code => Error::Status {
            code,
            detail: format!("{}: {detail}", what()),
        },
    })
}

/// The registry's error codes (`{"errors":[{"code":…,"message":…}]}`), or the
/// first line of the body.
fn error_detail(body: Body) -> String {
    let mut text = String::new();
    let _ = body.into_reader().take(8192).read_to_string(&mut text);
    if let Ok(miniserde::json::Value::Object(o)) = miniserde::json::from_str(&text) {
        if let Some(miniserde::json::Value::Array(errors)) = o.get("errors") {
            let parts: Vec<String> = errors
                .iter()
                .filter_map(|e| match e {
                    miniserde::json::Value::Object(e) => {
                        let s = |k: &str| match e.get(k) {
                            Some(miniserde::json::Value::String(s)) => s.clone(),
                            _ => String::new(),
                        };
                        Some(format!("{}: {}", s("code"), s("message")))
                    }
                    _ => None,
                })
                .collect();
            if !parts.is_empty() {
                return parts.join("; ");
            }
        }
    }
    first_line(&text)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn read_limited(body: impl Read, max: u64, what: &str) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    body.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Transport(ureq::Error::from(e)))?;
    if bytes.len() as u64 > max {
        return Err(Error::BadManifest(format!(
            "{what} is larger than {max} bytes"
        )));
    }
    Ok(bytes)
}

/// Checks `Content-Range: bytes START-END/TOTAL` against the offset asked
/// for; returns TOTAL when the server knows it. Shared with the agent's
/// plain-HTTP source.
pub fn check_content_range(value: Option<&str>, offset: u64) -> Result<Option<u64>, String> {
    let bad = || format!("asked for bytes from {offset}, server sent Content-Range {value:?}");
    let spec = value
        .and_then(|v| v.trim().strip_prefix("bytes "))
        .ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let start = range
        .split_once('-')
        .and_then(|(s, _)| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    if start != offset {
        return Err(bad());
    }
    Ok(total.parse().ok())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn load_certs(path: &PathBuf) -> Result<Vec<Certificate<'static>>, Error> {
    let pem =
        std::fs::read(path).map_err(|e| Error::File(format!("CA file {}: {e}", path.display())))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| Error::File(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::File(format!(
            "CA file {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_encoding() {
        assert_eq!(
            check_content_range(Some("bytes 5-9/10"), 5).unwrap(),
            Some(10)
        );
        assert!(check_content_range(Some("bytes 0-9/10"), 5).is_err());
        assert!(check_content_range(None, 5).is_err());
        assert!(same_origin(
            &"http://Reg.Example/v2/x".parse().unwrap(),
            "http://reg.example:80/v2/y"
        ));
        for other in [
            "https://reg.example/v2/y",
            "http://reg.example:5000/v2/y",
            "http://storage.example/v2/y",
        ] {
            assert!(!same_origin(
                &"http://reg.example/v2/x".parse().unwrap(),
                other
            ));
        }
        assert_eq!(
            percent_encode("repository:os/node:pull,push"),
            "repository%3Aos%2Fnode%3Apull%2Cpush"
        );
    }
}
