//! Image references as docker and containerd read them:
//! `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`.
//!
//! The first path component is the registry when it has a `.` or a `:` or is
//! `localhost`; otherwise the registry is Docker Hub and a one-component
//! repository gets `library/`. Without tag and digest the tag is `latest`.

use crate::digest;
use crate::Error;
use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's distribution API lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (Docker Hub: `docker.io`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`, lowercase.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::BadReference(format!("image reference {s:?}: {why}"));
        let s = s.trim();
        let s = s
            .strip_prefix("docker://")
            .or_else(|| s.strip_prefix("oci://"))
            .unwrap_or(s);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(digest::parse(d).ok_or_else(|| bad("digest is not sha256:<64 hex digits>"))?),
            ),
            None => (s, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if path.contains('/') => (DOCKER_HUB.to_owned(), path.to_owned()),
            _ => (DOCKER_HUB.to_owned(), format!("library/{path}")),
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !repo_ok {
            return Err(bad(
                "repository must be lowercase letters, digits and . _ - separated by /",
            ));
        }
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("bad registry host"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the manifests endpoint for: the digest when there is
    /// one (it pins the content), else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host the distribution API of `registry` answers on.
    pub fn api_host(registry: &str) -> &str {
        if registry == DOCKER_HUB || registry == "index.docker.io" {
            DOCKER_HUB_API
        } else {
            registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn registry_repository_tag_and_digest() {
        let x = r("127.0.0.1:5000/os/node:2");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("127.0.0.1:5000", "os/node", Some("2"))
        );
        assert_eq!(x.digest, None);
        assert_eq!(x.manifest_ref(), "2");
        let x = r(&format!(
            "registry.example.com/os@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        ));
        assert_eq!(x.tag, None);
        assert_eq!(x.digest.as_deref(), Some(D));
        assert_eq!(x.manifest_ref(), D);
        let x = r(&format!("localhost/os:v2@{D}"));
        assert_eq!(
            (x.registry.as_str(), x.tag.as_deref()),
            ("localhost", Some("v2"))
        );
        assert_eq!(x.manifest_ref(), D, "the digest pins the content");
        assert_eq!(x.to_string(), format!("localhost/os:v2@{D}"));
    }

    #[test]
    fn docker_hub_defaults() {
        let x = r("busybox");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r("openeuler/kubeos:1").repository, "openeuler/kubeos");
        assert_eq!(Reference::api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(Reference::api_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(r("docker://127.0.0.1:5000/os:2").registry, "127.0.0.1:5000");
    }

    #[test]
    fn bad_references_say_why() {
        for s in [
            "",
            "Upper/Case:1",
            "r.io/os:",
            "r.io/os@sha256:abc",
            "r.io/os:bad tag",
            "r.io//os",
        ] {
            let e = Reference::parse(s).unwrap_err().to_string();
            assert!(e.contains("image reference"), "{s}: {e}");
        }
    }
}
