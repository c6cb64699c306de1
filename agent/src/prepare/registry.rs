//! Images from OCI registries (docs/oci.md): `oci://REGISTRY/REPO[:TAG][@sha256:…]`
//! in a prepare request (KubeOS `imagetype: docker | containerd` with
//! `containerimage`), resolved to the bundle's layer blob, which then streams
//! through the same verified write path as an HTTP bundle.
//!
//! Trust: something must pin the content. Either the reference's
//! `@sha256:` or a `sha256:` digest in the request pins the OCI manifest
//! (the image digest `docker`, `crictl` and `skopeo` print); a `blake3:`
//! digest pins the root image itself. A tag alone is refused. From the
//! pinned manifest on, every step is checked by digest: the config blob
//! (the bundle manifest) by its sha256, the layer by its sha256 over the
//! whole compressed stream, every chunk by its BLAKE3, and the slot read
//! back against the bundle's image digest.
//!
//! Mirrors configured on the node for the image's registry are tried first,
//! in order; the registry itself last. Credentials come from the node's
//! auth file, per endpoint host.

use super::cancellable;
use super::fetch::{from_oci, Fetcher, RegistryBlob};
use super::manifest::{format_blake3, Manifest, MAX_MANIFEST_BYTES};
use super::resume::{fetch_failure, with_retries, Failure, Job, Layer, Retry};
use super::slot::SlotDevice;
use super::{Pin, PrepareError, PrepareRequest, Source};
use crate::config::Config;
use crate::progress::Progress;
use crate::trust::Trust;
use oci::artifact::{BundleArtifact, SIGNATURE};
use oci::auth::AuthFile;
use oci::{Client, ClientOptions, Reference};
use std::sync::atomic::AtomicBool;

pub const SCHEME: &str = "oci://";

/// The image reference of an `oci://` URL; `None` for other URLs.
pub fn reference(url: &str) -> Result<Option<Reference>, PrepareError> {
    let Some(rest) = url.strip_prefix(SCHEME) else {
        return Ok(None);
    };
    Reference::parse(rest)
        .map(Some)
        .map_err(|e| PrepareError::BadRequest {
            reason: e.to_string(),
        })
}

/// What pins the content: the OCI manifest's digest and/or the image's BLAKE3.
struct Pins {
    manifest: Option<String>,
    image: Option<[u8; 32]>,
}

fn pins(req: &PrepareRequest, reference: &Reference) -> Result<Pins, PrepareError> {
    let digest = req.digest.trim();
    let bad = |reason: String| PrepareError::BadRequest { reason };
    let (manifest, image) = match digest {
        "" => (None, None),
        d => match Pin::parse(d, "the OCI manifest")? {
            Pin::Blake3(b) => (None, Some(b)),
            Pin::Sha256(d) => (Some(d), None),
        },
    };
    if let (Some(a), Some(b)) = (&manifest, &reference.digest) {
        if a != b {
            return Err(bad(format!(
                "the request's digest {a} and the reference's {b} disagree"
            )));
        }
    }
    let manifest = manifest.or_else(|| reference.digest.clone());
    if manifest.is_none() && image.is_none() {
        return Err(bad(format!(
            "nothing pins {reference}: a tag can move; give the image's digest \
             (REF@sha256:…, or check_sum sha256:… of the manifest or blake3:… of the root image)"
        )));
    }
    Ok(Pins { manifest, image })
}

/// Whether `rec` holds the image `req` pins (by the manifest digest, the
/// root image's BLAKE3, or both), without asking the registry. A request
/// pinned only by a tag is never held: the tag may have moved.
pub fn holds(
    req: &PrepareRequest,
    reference: &Reference,
    rec: &bootctl::record::SlotRecord,
) -> Result<bool, PrepareError> {
    let pins = pins(req, reference)?;
    let by_manifest = pins.manifest.as_ref().map(|m| {
        rec.source
            == format!(
                "{SCHEME}{}/{}@{m}",
                reference.registry, reference.repository
            )
    });
    let by_image = pins.image.map(|b| rec.digest == format_blake3(&b));
    Ok(match (by_manifest, by_image) {
        (None, None) => false,
        (m, i) => m.unwrap_or(true) && i.unwrap_or(true),
    })
}

/// Finds the bundle behind `reference` (mirrors first), checks it against
/// the request, and returns the layer blob as the source to stream.
pub fn resolve(
    cfg: &Config,
    req: &PrepareRequest,
    reference: &Reference,
    device: &SlotDevice,
    progress: &Progress,
    cancel: &AtomicBool,
    retry: &Retry,
) -> Result<Source, PrepareError> {
    let pins = pins(req, reference)?;
    let trust = &Trust::load(&cfg.keys_dirs);
    let auth = if cfg.registry.auth_file.exists() {
        AuthFile::load(&cfg.registry.auth_file).map_err(|e| PrepareError::Registry {
            image: reference.to_string(),
            reason: e.to_string(),
        })?
    } else {
        AuthFile::default()
    };
    let endpoints = cfg.registry.endpoints(&reference.registry);
    let last = endpoints.len() - 1;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let image = if *endpoint == reference.registry {
            reference.to_string()
        } else {
            format!("{reference} (mirror {endpoint})")
        };
        // Plain HTTP where the node lists the host, or (KubeOS flagSafe) for
        // the request's own registry; never a mirror the node set up for
        // HTTPS. Credentials go in clear only where the node said so.
        let node_plain = cfg.registry.is_plain_http(endpoint);
        let opts = ClientOptions {
            ca_cert: cfg.registry.ca_cert.clone().or(req.tls.ca_cert.clone()),
            plain_http: node_plain || (req.allow_http && *endpoint == reference.registry),
            credentials_in_clear: node_plain,
            credentials: auth.credentials_for(endpoint),
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            user_agent: concat!("os-agent/", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        let client = Client::new(endpoint, opts).map_err(|e| PrepareError::Registry {
            image: image.clone(),
            reason: e.to_string(),
        })?;
        let fetcher = Fetcher::Registry(RegistryBlob {
            client: std::sync::Arc::new(client),
            repo: reference.repository.clone(),
            digest: String::new(),
        });
        let found = {
            let job = Job::plain(
                &fetcher,
                &image,
                device,
                progress,
                cancel,
                retry,
                cfg.read_timeout,
            );
            resolve_at(&job, req, reference, &pins, &image, trust)
        };
        match found {
            Ok((artifact, manifest, manifest_digest)) => {
                let Fetcher::Registry(mut blob) = fetcher else {
                    unreachable!("built as a registry fetcher above")
                };
                blob.digest = artifact.layer.digest.clone();
                let url = blob.client.blob_url(&blob.repo, &blob.digest);
                log::info!(
                    "{image}: manifest {manifest_digest}, version {}, layer {} ({} bytes)",
                    manifest.os_version,
                    artifact.layer.digest,
                    artifact.layer.size
                );
                return Ok(Source {
                    fetcher: Fetcher::Registry(blob),
                    url,
                    anchor: Some(manifest.image_digest.bytes),
                    manifest: Some(manifest),
                    layer: Some(Layer {
                        digest: artifact.layer.digest,
                        size: Some(artifact.layer.size),
                    }),
                    pinned: format!(
                        "{SCHEME}{}/{}@{manifest_digest}",
                        reference.registry, reference.repository
                    ),
                    // The bundle manifest is the config blob, fetched by the
                    // digest the pinned OCI manifest names (or pinned by
                    // its BLAKE3): it is what the publisher built.
                    manifest_pinned: true,
                });
            }
            Err(e @ PrepareError::Cancelled { .. }) => return Err(e),
            Err(e) if i < last => log::warn!("{e}; trying the next endpoint"),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the registry itself is always the last endpoint")
}

/// Manifest → artifact → config (bundle manifest), each checked.
fn resolve_at(
    job: &Job,
    req: &PrepareRequest,
    reference: &Reference,
    pins: &Pins,
    image: &str,
    trust: &Trust,
) -> Result<(BundleArtifact, Manifest, String), PrepareError> {
    let Fetcher::Registry(blob) = job.fetcher else {
        unreachable!("resolve_at runs on a registry fetcher")
    };
    let (client, repo) = (&blob.client, blob.repo.as_str());
    let wanted = pins
        .manifest
        .as_deref()
        .unwrap_or_else(|| reference.manifest_ref());
    // Each request runs on a helper thread so that a cancel does not wait for
    // a silent registry's read timeout (cancellable.rs).
    let cancelled = || {
        Failure::Fatal(PrepareError::Cancelled {
            slot: job.device.slot,
        })
    };
    let fetched = with_retries(job, image, || {
        let (client, repo, wanted) = (client.clone(), repo.to_owned(), wanted.to_owned());
        cancellable::run(job.cancel, move || client.get_manifest(&repo, &wanted))
            .map_err(|_| cancelled())?
            .map_err(|e| oci_failure(image, e))
    })?;
    if let Some(pin) = pins.manifest.as_ref().filter(|p| **p != fetched.digest) {
        return Err(PrepareError::Registry {
            image: image.to_owned(),
            reason: format!("manifest digest is {}, expected {pin}", fetched.digest),
        });
    }
    let artifact = BundleArtifact::parse(&fetched.bytes, &fetched.media_type).map_err(|e| {
        PrepareError::Registry {
            image: image.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let config_what = format!("{image} config {}", artifact.config.digest);
    let config = with_retries(job, &config_what, || {
        let (client, repo) = (client.clone(), repo.to_owned());
        let digest = artifact.config.digest.clone();
        cancellable::run(job.cancel, move || {
            client.get_blob(&repo, &digest, MAX_MANIFEST_BYTES)
        })
        .map_err(|_| cancelled())?
        .map_err(|e| oci_failure(image, e))
    })?;
    let text = String::from_utf8(config).map_err(|_| PrepareError::BadManifest {
        url: config_what.clone(),
        reason: "not UTF-8".into(),
    })?;
    if trust.required() {
        let sig = artifact
            .annotations
            .iter()
            .find(|(k, _)| k == SIGNATURE)
            .map(|(_, v)| v.as_str());
        let sig_at = format!("{image} manifest {} annotation {SIGNATURE}", fetched.digest);
        super::verify_signed(&config_what, &sig_at, &text, sig, trust)?;
    }
    let m = Manifest::parse(&text).map_err(|reason| PrepareError::BadManifest {
        url: config_what.clone(),
        reason,
    })?;
    let mismatch = |field, manifest, requested| PrepareError::ManifestMismatch {
        url: config_what.clone(),
        field,
        manifest,
        requested,
    };
    if let Some(pin) = pins.image.filter(|p| *p != m.image_digest.bytes) {
        return Err(mismatch(
            "image_digest",
            m.image_digest.to_string(),
            format_blake3(&pin),
        ));
    }
    if let Some(v) = req.version.as_ref().filter(|v| **v != m.os_version) {
        return Err(mismatch("os_version", m.os_version.clone(), v.clone()));
    }
    if artifact.layer.size != m.compressed_size {
        return Err(PrepareError::BadManifest {
            url: config_what,
            reason: format!(
                "the layer is {} bytes, the bundle manifest says compressed_size {}",
                artifact.layer.size, m.compressed_size
            ),
        });
    }
    Ok((artifact, m, fetched.digest))
}

/// Transport failures and statuses are sorted as for any download (a TLS
/// failure is final, a reset connection or a 503 is retried); what the
/// registry says about the content (unknown, refused, wrong) is final.
fn oci_failure(image: &str, e: oci::Error) -> Failure {
    match e {
        e @ (oci::Error::Transport(_) | oci::Error::Status { .. }) => {
            fetch_failure(image, from_oci(e), false)
        }
        other => Failure::Fatal(PrepareError::Registry {
            image: image.to_owned(),
            reason: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::Tls;

    const M: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const B: &str = "blake3:98ea7aff44631d183e6df3488f1107357d7503e11e5f146effdbfd11810cd4a2";

    fn req(digest: &str) -> PrepareRequest {
        PrepareRequest {
            url: String::new(),
            digest: digest.into(),
            version: None,
            tls: Tls::default(),
            allow_http: false,
        }
    }

    #[test]
    fn a_tag_alone_is_refused_and_digests_pin() {
        let tag = Reference::parse("127.0.0.1:5000/os:2").unwrap();
        let e = pins(&req(""), &tag).err().unwrap().to_string();
        assert!(e.contains("a tag can move"), "{e}");
        assert_eq!(pins(&req(M), &tag).unwrap().manifest.as_deref(), Some(M));
        assert!(pins(&req(B), &tag).unwrap().image.is_some());
        let pinned = Reference::parse(&format!("127.0.0.1:5000/os@{M}")).unwrap();
        assert_eq!(
            pins(&req(""), &pinned).unwrap().manifest.as_deref(),
            Some(M)
        );
        let other = M.replace("ba78", "0000");
        let e = pins(&req(&other), &pinned).err().unwrap().to_string();
        assert!(e.contains("disagree"), "{e}");
        assert!(pins(&req("md5:x"), &tag).is_err());
    }

    #[test]
    fn oci_urls_parse_and_others_pass_through() {
        assert!(reference("https://x/os.img.zst").unwrap().is_none());
        let r = reference("oci://127.0.0.1:5000/os:2").unwrap().unwrap();
        assert_eq!(r.repository, "os");
        assert!(reference("oci://Bad/Repo").is_err());
    }
}
