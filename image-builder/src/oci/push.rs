//! `os-image oci --push`: config, layer and manifest of a layout artifact to
//! a registry, with the `oci` crate's distribution client. Blobs the
//! registry already has are skipped; the manifest goes last, so the tag
//! never names content that is not all there.

use super::LayoutArtifact;
use crate::progress::{self, ProgressReader};
use ::oci::artifact::{Descriptor, OCI_MANIFEST};
use ::oci::auth::{AuthFile, Credentials};
use ::oci::{Client, ClientOptions, Reference};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::time::Duration;

const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const TLS_HINT: &str = "pass --ca-cert with the CA that signs the registry's certificate \
                        (or --plain-http if the registry speaks plain HTTP)";

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `REGISTRY/REPO[:TAG]` [default tag: the layout tag], or
    /// `REGISTRY/REPO@sha256:…` (must be the artifact's digest).
    pub target: String,
    pub plain_http: bool,
    pub ca_cert: Option<PathBuf>,
    pub auth: Auth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    /// A docker-style auth file (`~/.docker/config.json`, containers' `auth.json`).
    File(PathBuf),
    /// `USER:PASSWORD`.
    Creds(String),
}

/// Pushes `written` to `opts.target`; returns the reference pushed to.
pub fn push(written: &LayoutArtifact, opts: &PushOptions) -> Result<Reference> {
    let target = push_target(&opts.target, &written.tag, &written.digest)?;
    let client = Client::new(
        &target.registry,
        ClientOptions {
            ca_cert: opts.ca_cert.clone(),
            plain_http: opts.plain_http,
            // The builder's own credentials, sent as its own flag says.
            credentials_in_clear: opts.plain_http,
            credentials: credentials(&opts.auth, &target.registry)?,
            ..ClientOptions::default()
        },
    )
    .map_err(|e| explain(e, &target))
    .context("set up the registry client")?;
    let a = &written.artifact;
    push_blob(&client, &target, written, &a.config, "config", false)?;
    push_blob(&client, &target, written, &a.layer, "layer", true)?;
    let reference = target.manifest_ref().to_owned();
    client
        .put_manifest(
            &target.repository,
            &reference,
            OCI_MANIFEST,
            &written.manifest,
        )
        .map_err(|e| explain(e, &target))
        .with_context(|| format!("push the manifest to {target}"))?;
    Ok(target)
}

/// The reference to push to. Without a tag (and digest) in `s`, the layout
/// tag is used, not `latest`; a digest must be the artifact's own.
pub fn push_target(s: &str, layout_tag: &str, digest: &str) -> Result<Reference> {
    let mut target = Reference::parse(s).context("--push")?;
    let name = s.split('@').next().unwrap_or(s);
    let name = name.rsplit('/').next().unwrap_or(name);
    if !name.contains(':') && target.digest.is_none() {
        target.tag = Some(layout_tag.to_owned());
    }
    if let Some(d) = &target.digest {
        if d != digest {
            bail!("--push {s}: the artifact's digest is {digest}, not {d}");
        }
        // The registry stores the manifest under the tag, or else its digest.
        if target.tag.is_some() {
            target.digest = None;
        }
    }
    Ok(target)
}

fn credentials(auth: &Auth, registry: &str) -> Result<Option<Credentials>> {
    match auth {
        Auth::Anonymous => Ok(None),
        Auth::Creds(s) => Credentials::parse(s)
            .map(Some)
            .ok_or_else(|| anyhow!("--creds wants USER:PASSWORD")),
        Auth::File(path) => {
            let file = AuthFile::load(path)?;
            let creds = file.credentials_for(registry);
            if creds.is_none() {
                log::warn!(
                    "{} has no credentials for {registry}; pushing anonymously",
                    path.display()
                );
            }
            Ok(creds)
        }
    }
}

fn push_blob(
    client: &Client,
    target: &Reference,
    written: &LayoutArtifact,
    blob: &Descriptor,
    what: &str,
    show_progress: bool,
) -> Result<()> {
    let repo = &target.repository;
    let failed = || format!("push the {what} blob {} to {target}", blob.digest);
    if client
        .has_blob(repo, &blob.digest)
        .map_err(|e| explain(e, target))
        .with_context(failed)?
    {
        eprintln!("os-image: {what} {} already in {target}", blob.digest);
        return Ok(());
    }
    let path = written.blob_path(&blob.digest);
    let mut file =
        BufReader::new(File::open(&path).with_context(|| format!("open {}", path.display()))?);
    let total = blob.size;
    let sent = if show_progress {
        let mut body = ProgressReader::new(file, total, PROGRESS_EVERY, |done| {
            eprintln!("os-image: {what}: {}", progress::describe(done, total))
        });
        client.push_blob(repo, &blob.digest, total, &mut body)
    } else {
        client.push_blob(repo, &blob.digest, total, &mut file)
    };
    sent.map_err(|e| explain(e, target)).with_context(failed)
}

/// The client's error with what to do about it, where that is clear.
fn explain(e: ::oci::Error, target: &Reference) -> anyhow::Error {
    use ::oci::Error;
    let hint = match &e {
        Error::Unauthorized { .. } => {
            Some("pass --creds USER:PASSWORD or --auth-file with an entry for this registry")
        }
        Error::Transport(ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => {
            Some(TLS_HINT)
        }
        // rustls failures in the handshake reach ureq as InvalidData I/O errors.
        Error::Transport(ureq::Error::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            Some(TLS_HINT)
        }
        Error::Transport(
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(_),
        ) => Some("is the registry up at that address?"),
        _ => None,
    };
    match hint {
        // The hint last, after the cause it answers.
        Some(h) => anyhow!("registry {}: {e}; {h}", target.registry),
        None => anyhow::Error::new(e).context(format!("registry {}", target.registry)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn target_defaults_to_the_layout_tag_and_checks_a_digest() {
        let t = push_target("127.0.0.1:5000/os", "2", D).unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.manifest_ref()),
            ("127.0.0.1:5000", "os", "2")
        );
        assert_eq!(
            push_target("127.0.0.1:5000/os:v2", "2", D)
                .unwrap()
                .manifest_ref(),
            "v2"
        );
        assert_eq!(
            push_target(&format!("r.io/os@{D}"), "2", D)
                .unwrap()
                .manifest_ref(),
            D
        );
        assert_eq!(
            push_target(&format!("r.io/os:x@{D}"), "2", D)
                .unwrap()
                .manifest_ref(),
            "x"
        );
        let other = D.replace("ba78", "0000");
        let e = push_target(&format!("r.io/os@{other}"), "2", D).unwrap_err();
        assert!(format!("{e:#}").contains("not sha256:0000"), "{e:#}");
        let e = push_target("r.io/Os:2", "2", D).unwrap_err();
        assert!(format!("{e:#}").contains("--push"), "{e:#}");
    }

    #[test]
    fn credentials_from_flags() {
        let c = credentials(&Auth::Creds("u:p:w".into()), "r.io")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
        assert!(credentials(&Auth::Creds("nocolon".into()), "r.io").is_err());
        assert_eq!(credentials(&Auth::Anonymous, "r.io").unwrap(), None);
    }
}
