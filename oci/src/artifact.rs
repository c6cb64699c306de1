//! The bundle as an OCI artifact (docs/oci.md): an OCI image manifest whose
//! config blob is the bundle manifest (`NAME.manifest.json`, byte for byte)
//! and whose one layer is the compressed root image (`NAME.img.zst`, byte for
//! byte), so the agent streams the layer blob exactly as it streams the image
//! file over HTTP, resuming with Range requests at chunk boundaries.
//!
//! Media types are our own (a registry stores any; the config media type is
//! what tells a bundle from a container image), inside a standard OCI image
//! manifest, which every registry accepts.

use crate::digest;
use crate::Error;
use miniserde::json::{self, Number, Object, Value};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.ab-os.bundle.v1";
/// The config blob: the bundle manifest JSON (docs/bundle.md).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.ab-os.bundle.manifest.v1+json";
/// The layer blob: the root image as independent zstd frames.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.ab-os.image.layer.v1.ext4+zstd";
/// Standard annotation: a blob's file name.
pub const TITLE: &str = "org.opencontainers.image.title";
/// Standard annotation on the manifest: the OS version inside.
pub const VERSION: &str = "org.opencontainers.image.version";
/// Our annotation on the manifest: `blake3:<hex>` of the uncompressed image
/// (informative; the agent checks the config blob's `image_digest`).
pub const IMAGE_DIGEST: &str = "org.ab-os.image.digest";
/// Annotation: the bundle manifest's detached signature (the `.sig` file's
/// JSON, docs/signing.md), over the config blob's bytes.
pub const SIGNATURE: &str = "org.ab-os.bundle.signature";
/// Largest manifest read (containerd uses the same bound).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub annotations: Vec<(String, String)>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            annotations: Vec::new(),
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("mediaType".into(), Value::String(self.media_type.clone()));
        o.insert("digest".into(), Value::String(self.digest.clone()));
        o.insert("size".into(), Value::Number(Number::U64(self.size)));
        if !self.annotations.is_empty() {
            o.insert("annotations".into(), annotations(&self.annotations));
        }
        Value::Object(o)
    }

    pub fn from_value(v: &Value, what: &str) -> Result<Descriptor, Error> {
        let bad = |why: &str| Error::BadManifest(format!("{what}: {why}"));
        let Value::Object(o) = v else {
            return Err(bad("not an object"));
        };
        let text = |key: &str| match o.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(bad(&format!("`{key}` missing or not a string"))),
        };
        let digest = text("digest")?;
        let digest = digest::parse(&digest)
            .ok_or_else(|| bad(&format!("digest {digest:?} is not sha256:<64 hex digits>")))?;
        let size = match o.get("size") {
            Some(Value::Number(Number::U64(n))) => *n,
            _ => return Err(bad("`size` missing or not a non-negative integer")),
        };
        Ok(Descriptor {
            media_type: text("mediaType")?,
            digest,
            size,
            annotations: read_annotations(o),
        })
    }
}

/// The string values of an object's `annotations` (others are skipped).
fn read_annotations(o: &Object) -> Vec<(String, String)> {
    match o.get("annotations") {
        Some(Value::Object(a)) => a
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn annotations(list: &[(String, String)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The image manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleArtifact {
    pub config: Descriptor,
    pub layer: Descriptor,
    pub annotations: Vec<(String, String)>,
}

impl BundleArtifact {
    /// The manifest JSON, compact, keys sorted: the same bundle always gives
    /// the same bytes, hence the same digest.
    pub fn to_json(&self) -> Vec<u8> {
        let mut o = Object::new();
        o.insert("schemaVersion".into(), Value::Number(Number::U64(2)));
        o.insert("mediaType".into(), Value::String(OCI_MANIFEST.into()));
        o.insert("artifactType".into(), Value::String(ARTIFACT_TYPE.into()));
        o.insert("config".into(), self.config.to_value());
        o.insert(
            "layers".into(),
            Value::Array([self.layer.to_value()].into_iter().collect()),
        );
        if !self.annotations.is_empty() {
            o.insert("annotations".into(), annotations(&self.annotations));
        }
        json::to_string(&Value::Object(o)).into_bytes()
    }

    /// Reads a manifest served as `media_type` (the response's Content-Type;
    /// empty when unknown) and checks that it is a bundle.
    pub fn parse(bytes: &[u8], media_type: &str) -> Result<BundleArtifact, Error> {
        let unsupported = |what: &str, mt: &str| Error::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: mt.to_owned(),
        };
        let served = media_type.split(';').next().unwrap_or("").trim();
        if [OCI_INDEX, DOCKER_LIST, DOCKER_MANIFEST].contains(&served) {
            return Err(unsupported(
                "the manifest (an ab-os bundle is a single OCI image manifest)",
                served,
            ));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| Error::BadManifest("not UTF-8".into()))?;
        let v: Value =
            json::from_str(text).map_err(|_| Error::BadManifest("not valid JSON".into()))?;
        let Value::Object(o) = v else {
            return Err(Error::BadManifest("not a JSON object".into()));
        };
        match o.get("schemaVersion") {
            Some(Value::Number(Number::U64(2))) => {}
            _ => return Err(Error::BadManifest("schemaVersion is not 2".into())),
        }
        if let Some(Value::String(mt)) = o.get("mediaType") {
            if mt != OCI_MANIFEST {
                return Err(unsupported("the manifest", mt));
            }
        }
        let config = Descriptor::from_value(
            o.get("config")
                .ok_or_else(|| Error::BadManifest("no config".into()))?,
            "config",
        )?;
        if config.media_type != CONFIG_MEDIA_TYPE {
            return Err(unsupported(
                "the config (a container image, not an ab-os bundle? expected \
                 application/vnd.ab-os.bundle.manifest.v1+json)",
                &config.media_type,
            ));
        }
        let layers = match o.get("layers") {
            Some(Value::Array(l)) => l,
            _ => return Err(Error::BadManifest("no layers".into())),
        };
        let [layer] = layers.as_slice() else {
            return Err(Error::BadManifest(format!(
                "a bundle has exactly one layer, this manifest has {}",
                layers.len()
            )));
        };
        let layer = Descriptor::from_value(layer, "layer")?;
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(unsupported("the layer", &layer.media_type));
        }
        Ok(BundleArtifact {
            config,
            layer,
            annotations: read_annotations(&o),
        })
    }
}

/// An OCI image layout's `index.json` listing `entries` (manifest descriptor,
/// tag) — `org.opencontainers.image.ref.name` carries the tag.
pub fn layout_index(entries: &[(Descriptor, String)]) -> Vec<u8> {
    let manifests: miniserde::json::Array = entries
        .iter()
        .map(|(d, tag)| {
            let mut d = d.clone();
            d.annotations
                .retain(|(k, _)| k != "org.opencontainers.image.ref.name");
            d.annotations
                .push(("org.opencontainers.image.ref.name".into(), tag.clone()));
            d.to_value()
        })
        .collect();
    let mut o = Object::new();
    o.insert("schemaVersion".into(), Value::Number(Number::U64(2)));
    o.insert("mediaType".into(), Value::String(OCI_INDEX.into()));
    o.insert("manifests".into(), Value::Array(manifests));
    json::to_string(&Value::Object(o)).into_bytes()
}

/// The entries of an OCI image layout's `index.json`: each manifest
/// descriptor with its `org.opencontainers.image.ref.name` (if any).
pub fn parse_layout_index(bytes: &[u8]) -> Result<Vec<(Descriptor, Option<String>)>, Error> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::BadManifest("index.json is not UTF-8".into()))?;
    let v: Value =
        json::from_str(text).map_err(|_| Error::BadManifest("index.json is not JSON".into()))?;
    let Value::Object(o) = v else {
        return Err(Error::BadManifest("index.json is not an object".into()));
    };
    let list = match o.get("manifests") {
        Some(Value::Array(l)) => l.as_slice(),
        None => &[],
        _ => {
            return Err(Error::BadManifest(
                "index.json: manifests is not a list".into(),
            ))
        }
    };
    list.iter()
        .map(|v| {
            let d = Descriptor::from_value(v, "index.json entry")?;
            let name = d
                .annotation("org.opencontainers.image.ref.name")
                .map(str::to_owned);
            Ok((d, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BundleArtifact {
        let mut layer = Descriptor::new(LAYER_MEDIA_TYPE, &digest::sha256(b"image"), 5);
        layer
            .annotations
            .push((TITLE.into(), "os-2.img.zst".into()));
        BundleArtifact {
            config: Descriptor::new(CONFIG_MEDIA_TYPE, &digest::sha256(b"{}"), 2),
            layer,
            annotations: vec![(VERSION.into(), "2".into())],
        }
    }

    #[test]
    fn manifest_round_trips_and_is_deterministic() {
        let a = sample();
        let json = a.to_json();
        assert_eq!(json, sample().to_json());
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains(r#""artifactType":"application/vnd.ab-os.bundle.v1""#),
            "{text}"
        );
        assert_eq!(BundleArtifact::parse(&json, OCI_MANIFEST).unwrap(), a);
        assert_eq!(BundleArtifact::parse(&json, "").unwrap(), a);
    }

    #[test]
    fn container_images_and_indexes_are_refused_by_media_type() {
        let json = sample().to_json();
        let e = BundleArtifact::parse(&json, OCI_INDEX).unwrap_err();
        assert!(matches!(e, Error::UnsupportedMediaType { .. }), "{e}");
        let image = String::from_utf8(json).unwrap().replace(
            CONFIG_MEDIA_TYPE,
            "application/vnd.oci.image.config.v1+json",
        );
        let e = BundleArtifact::parse(image.as_bytes(), OCI_MANIFEST).unwrap_err();
        assert!(e.to_string().contains("not an ab-os bundle"), "{e}");
        let e = BundleArtifact::parse(b"{\"schemaVersion\":2}", OCI_MANIFEST).unwrap_err();
        assert!(matches!(e, Error::BadManifest(_)), "{e}");
        assert!(BundleArtifact::parse(b"[", OCI_MANIFEST).is_err());
    }

    #[test]
    fn layout_index_carries_the_tags() {
        let m = Descriptor::new(OCI_MANIFEST, &digest::sha256(b"m"), 1);
        let bytes = layout_index(&[(m.clone(), "2".into())]);
        let back = parse_layout_index(&bytes).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0.digest, m.digest);
        assert_eq!(back[0].1.as_deref(), Some("2"));
    }
}
