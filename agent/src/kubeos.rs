//! KubeOS's agent request types, read from JSON as KubeOS's proxy sends them,
//! and their mapping onto this agent's [`PrepareRequest`].
//!
//! Reference: openEuler KubeOS `KubeOS-Rust/manager/src/api/types.rs`
//! (`UpgradeRequest`, `CertsInfo`) and `manager/src/sys_mgmt/disk_image.rs`
//! (how its agent uses them):
//! - `check_sum` is the bare lowercase hex SHA-256 of the image (`sha256sum`),
//!   so a bare 64-hex value maps to `sha256:<hex>`; `blake3:`/`sha256:`
//!   prefixed values pass through.
//! - `image_type` `disk` is the image-from-URL case; `docker` and
//!   `containerd` (KubeOS: pull `container_image` with that runtime) both
//!   mean this agent's own OCI client (docs/oci.md): `container_image` is
//!   pulled from its registry as an ab-os bundle artifact, no container
//!   runtime involved. `check_sum` then pins the OCI manifest (`sha256`, the
//!   image digest) or the root image (`blake3:`), and may be empty when the
//!   reference carries `@sha256:`; `flag_safe` allows a plain-HTTP registry
//!   and `certs.ca_cert` names its CA.
//! - A URL that is not `https://` needs `flag_safe` (KubeOS: "The upgrade image
//!   url is not safe"): it maps to `allow_http`.
//! - `certs` holds file names relative to KubeOS's `/etc/KubeOS/certs/`
//!   (`cfg.certs_dir`); with `mtls` all three are required, else only the CA
//!   (which, unlike KubeOS, may be left empty to use the built-in roots).

use crate::prepare::{PrepareRequest, Tls};
use std::path::{Component, Path, PathBuf};
pub use wire::rpc::{single_param, CertsInfo, UpgradeRequest};
use wire::Digest;

/// How this agent serves KubeOS's request.
pub trait ToPrepare {
    /// What to write, or why this request cannot be served.
    fn to_prepare(&self, certs_dir: &Path) -> Result<PrepareRequest, String>;
}

impl ToPrepare for UpgradeRequest {
    /// What to write, or why this request cannot be served.
    fn to_prepare(&self, certs_dir: &Path) -> Result<PrepareRequest, String> {
        match self.image_type.as_str() {
            "" | "disk" => {}
            "docker" | "containerd" => return to_prepare_oci(self, certs_dir),
            t => {
                return Err(format!(
                    "unknown image_type {t:?} (expected disk, docker or containerd)"
                ))
            }
        }
        let url = self.image_url.trim();
        if url.is_empty() {
            return Err("image_url is empty".into());
        }
        let tls = if url.starts_with("https://") {
            let cert =
                |field: &str, name: &str, needed: bool| cert_path(certs_dir, field, name, needed);
            Tls {
                ca_cert: cert("ca_cert", &self.certs.ca_cert, self.mtls)?,
                client_cert: cert("client_cert", &self.certs.client_cert, self.mtls)?
                    .filter(|_| self.mtls),
                client_key: cert("client_key", &self.certs.client_key, self.mtls)?
                    .filter(|_| self.mtls),
            }
        } else {
            Tls::default()
        };
        let version = self.version.trim();
        Ok(PrepareRequest {
            url: url.to_owned(),
            digest: digest_from_check_sum(&self.check_sum)?,
            version: (!version.is_empty()).then(|| version.to_owned()),
            tls,
            allow_http: self.flag_safe,
        })
    }
}

/// A request arriving over the socket may name a local file only under the
/// node's `file-sources` directories, through no `..` and no symlink: the
/// agent runs as root, and a path is otherwise anything it can open
/// (another slot's device, a FIFO that blocks the job for ever).
pub fn check_file_source(url: &str, allowed: &[PathBuf]) -> Result<(), String> {
    let Some(path) = url.strip_prefix("file://") else {
        return Ok(());
    };
    let path = Path::new(path);
    let under = allowed.iter().find(|dir| {
        path.starts_with(dir) && crate::configure::paths::check_below(dir, path).is_ok()
    });
    match under {
        Some(_) => Ok(()),
        None if allowed.is_empty() => Err(format!(
            "{url}: a request may not name a local file on this node (no file-sources set)"
        )),
        None => Err(format!(
            "{url}: a request's local file must be under {} (file-sources), through no `..` or symlink",
            allowed
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `imagetype` docker/containerd: the bundle artifact in a registry.
fn to_prepare_oci(req: &UpgradeRequest, certs_dir: &Path) -> Result<PrepareRequest, String> {
    let image = req.container_image.trim();
    if image.is_empty() {
        return Err(format!(
            "image_type {} needs container_image (REGISTRY/REPO:TAG or @sha256:…)",
            req.image_type
        ));
    }
    let image = image.strip_prefix("docker://").unwrap_or(image);
    let digest = match req.check_sum.trim() {
        "" => String::new(),
        sum => digest_from_check_sum(sum)?,
    };
    let ca = cert_path(certs_dir, "ca_cert", &req.certs.ca_cert, false)?;
    let version = req.version.trim();
    Ok(PrepareRequest {
        url: format!("oci://{image}"),
        digest,
        version: (!version.is_empty()).then(|| version.to_owned()),
        tls: Tls {
            ca_cert: ca,
            ..Tls::default()
        },
        allow_http: req.flag_safe,
    })
}

/// `blake3:<hex>` or `sha256:<hex>` from a KubeOS `check_sum` (DESIGN.md §5).
pub fn digest_from_check_sum(check_sum: &str) -> Result<String, String> {
    Digest::from_check_sum(check_sum)
        .map(|d| d.to_string())
        .map_err(|e| e.to_string())
}

/// A KubeOS cert file name under `certs_dir`. KubeOS concatenates the two, so
/// a leading `/` stays inside the directory; `..` may not leave it.
fn cert_path(
    certs_dir: &Path,
    field: &str,
    name: &str,
    needed: bool,
) -> Result<Option<PathBuf>, String> {
    let name = name.trim().trim_start_matches('/');
    if name.is_empty() {
        return match needed {
            true => Err(format!("mtls needs certs.{field}")),
            false => Ok(None),
        };
    }
    let rel = Path::new(name);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "certs.{field} {name:?} must name a file in {}",
            certs_dir.display()
        ));
    }
    Ok(Some(certs_dir.join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniserde::json::Value;

    const HEX: &str = "98ea7aff44631d183e6df3488f1107357d7503e11e5f146effdbfd11810cd4a2";

    fn parse(json: &str) -> Result<UpgradeRequest, String> {
        let v: Value = miniserde::json::from_str(json).unwrap();
        UpgradeRequest::from_params(Some(&v))
    }

    fn kubeos_json(url: &str, mtls: bool) -> String {
        format!(
            r#"[{{"version":"KubeOS v2","check_sum":"{}","image_type":"disk",
            "container_image":"","image_url":"{url}","flag_safe":false,"mtls":{mtls},
            "certs":{{"ca_cert":"ca.pem","client_cert":"client.pem","client_key":"client.key"}}}}]"#,
            HEX.to_uppercase()
        )
    }

    #[test]
    fn kubeos_mtls_request_maps_to_prepare_request() {
        let req = parse(&kubeos_json("https://repo/os.img.zst", true)).unwrap();
        let p = req.to_prepare(Path::new("/etc/KubeOS/certs")).unwrap();
        assert_eq!(p.url, "https://repo/os.img.zst");
        assert_eq!(p.digest, format!("sha256:{HEX}"));
        assert_eq!(p.version.as_deref(), Some("KubeOS v2"));
        assert!(!p.allow_http);
        assert_eq!(
            p.tls,
            Tls {
                ca_cert: Some("/etc/KubeOS/certs/ca.pem".into()),
                client_cert: Some("/etc/KubeOS/certs/client.pem".into()),
                client_key: Some("/etc/KubeOS/certs/client.key".into()),
            }
        );
    }

    #[test]
    fn tls_without_mtls_uses_only_the_ca_and_http_needs_flag_safe() {
        let req = parse(&kubeos_json("https://repo/os.img.zst", false)).unwrap();
        let tls = req.to_prepare(Path::new("/c")).unwrap().tls;
        assert_eq!(tls.ca_cert, Some(PathBuf::from("/c/ca.pem")));
        assert_eq!((tls.client_cert, tls.client_key), (None, None));
        let mut req = parse(&kubeos_json("http://repo/os.img.zst", false)).unwrap();
        req.flag_safe = true;
        let p = req.to_prepare(Path::new("/c")).unwrap();
        assert!(p.allow_http);
        assert_eq!(p.tls, Tls::default());
    }

    #[test]
    fn digests() {
        let b3 = format!("blake3:{HEX}");
        assert_eq!(digest_from_check_sum(&b3), Ok(b3.clone()));
        assert_eq!(
            digest_from_check_sum(&format!(" SHA256:{} ", HEX.to_uppercase())),
            Ok(format!("sha256:{HEX}"))
        );
        assert!(digest_from_check_sum("md5:abc").is_err());
        assert!(digest_from_check_sum("22222").is_err());
    }

    #[test]
    fn docker_and_containerd_mean_the_registry() {
        for t in ["docker", "containerd"] {
            let mut req = parse(&kubeos_json("", false)).unwrap();
            req.image_type = t.into();
            req.container_image = "127.0.0.1:5000/os:2".into();
            let p = req.to_prepare(Path::new("/c")).unwrap();
            assert_eq!(p.url, "oci://127.0.0.1:5000/os:2");
            assert_eq!(p.digest, format!("sha256:{HEX}"));
            assert_eq!(p.tls.ca_cert, Some(PathBuf::from("/c/ca.pem")));
            assert_eq!(p.tls.client_cert, None);
            req.check_sum = String::new();
            req.container_image = format!("r.io/os@sha256:{HEX}");
            let p = req.to_prepare(Path::new("/c")).unwrap();
            assert_eq!(
                (p.url, p.digest),
                (format!("oci://r.io/os@sha256:{HEX}"), String::new())
            );
            req.container_image = " ".into();
            assert!(req
                .to_prepare(Path::new("/c"))
                .unwrap_err()
                .contains("needs container_image"));
        }
    }

    #[test]
    fn refusals_and_bad_params() {
        let mut req = parse(&kubeos_json("https://r/x", true)).unwrap();
        req.image_type = "podman".into();
        assert!(req
            .to_prepare(Path::new("/c"))
            .unwrap_err()
            .contains("unknown image_type"));
        let mut req = parse(&kubeos_json("https://r/x", true)).unwrap();
        req.certs.client_key = "../../root/key".into();
        assert!(req.to_prepare(Path::new("/c")).is_err());
        req.certs.client_key = String::new();
        assert_eq!(
            req.to_prepare(Path::new("/c")).unwrap_err(),
            "mtls needs certs.client_key"
        );
        let err = parse(r#"[{"check_sum":"x","image_url":"u","mtls":"yes"}]"#).unwrap_err();
        assert_eq!(err, "field `mtls` must be true or false");
        let err = parse(r#"[{"check_sum":"x"}]"#).unwrap_err();
        assert_eq!(err, "UpgradeRequest lacks field `image_url`");
        assert!(parse(r#"[1]"#).is_err());
        assert!(parse(r#"[{}, {}]"#).is_err());
        assert!(parse(r#"{"check_sum":"x","image_url":"u"}"#).is_ok());
    }
}
