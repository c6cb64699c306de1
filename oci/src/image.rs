//! A container image of one static program (the cluster side's os-operator
//! and os-proxy): the OCI image config and manifest, with one gzip layer.
//! Written by `os-image container`; read by any runtime.

use crate::artifact::{Descriptor, OCI_MANIFEST};
use miniserde::json::{self, Array, Number, Object, Value};

/// The image config's media type.
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip-compressed tar layer.
pub const IMAGE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the image runs and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    /// `UID:GID`, or `None` for root.
    pub user: Option<String>,
    pub env: Vec<String>,
    /// `sha256:` of the uncompressed layer tar.
    pub diff_id: String,
    /// RFC 3339 creation time (from SOURCE_DATE_EPOCH, for reproducible images).
    pub created: String,
    pub labels: Vec<(String, String)>,
}

fn strings(list: &[String]) -> Value {
    let mut a = Array::new();
    a.extend(list.iter().cloned().map(Value::String));
    Value::Array(a)
}

impl ImageConfig {
    /// The config JSON, compact, keys sorted: same input, same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut config = Object::new();
        config.insert("Entrypoint".into(), strings(&self.entrypoint));
        config.insert("Env".into(), strings(&self.env));
        if let Some(u) = &self.user {
            config.insert("User".into(), Value::String(u.clone()));
        }
        if !self.labels.is_empty() {
            config.insert(
                "Labels".into(),
                Value::Object(
                    self.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
        }
        let mut rootfs = Object::new();
        rootfs.insert("type".into(), Value::String("layers".into()));
        rootfs.insert(
            "diff_ids".into(),
            strings(std::slice::from_ref(&self.diff_id)),
        );
        let mut o = Object::new();
        o.insert("architecture".into(), Value::String("amd64".into()));
        o.insert("os".into(), Value::String("linux".into()));
        o.insert("created".into(), Value::String(self.created.clone()));
        o.insert("config".into(), Value::Object(config));
        o.insert("rootfs".into(), Value::Object(rootfs));
        json::to_string(&Value::Object(o)).into_bytes()
    }
}

/// The image manifest naming `config` and the one `layer`.
pub fn manifest(
    config: &Descriptor,
    layer: &Descriptor,
    annotations: &[(String, String)],
) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("schemaVersion".into(), Value::Number(Number::U64(2)));
    o.insert("mediaType".into(), Value::String(OCI_MANIFEST.into()));
    o.insert("config".into(), config.to_value());
    let mut layers = Array::new();
    layers.push(layer.to_value());
    o.insert("layers".into(), Value::Array(layers));
    if !annotations.is_empty() {
        o.insert(
            "annotations".into(),
            Value::Object(
                annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    json::to_string(&Value::Object(o)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_manifest_are_what_runtimes_read() {
        let c = ImageConfig {
            entrypoint: vec!["/usr/local/bin/os-operator".into()],
            user: Some("65532:65532".into()),
            env: vec!["PATH=/usr/local/bin".into()],
            diff_id: "sha256:00".into(),
            created: "1970-01-01T00:00:00Z".into(),
            labels: vec![],
        };
        let text = String::from_utf8(c.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"architecture":"amd64","config":{"Entrypoint":["/usr/local/bin/os-operator"],"Env":["PATH=/usr/local/bin"],"User":"65532:65532"},"created":"1970-01-01T00:00:00Z","os":"linux","rootfs":{"diff_ids":["sha256:00"],"type":"layers"}}"#
        );
        let m = manifest(
            &Descriptor::new(IMAGE_CONFIG, "sha256:aa", 10),
            &Descriptor::new(IMAGE_LAYER_GZIP, "sha256:bb", 20),
            &[],
        );
        let m = String::from_utf8(m).unwrap();
        assert!(m.starts_with(r#"{"config":{"digest":"sha256:aa","mediaType":"application/vnd.oci.image.config.v1+json","size":10},"layers":[{"#), "{m}");
        assert!(
            m.ends_with(
                r#""mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#
            ),
            "{m}"
        );
    }
}
