//! Bundle signatures (docs/signing.md): an ed25519 signature over the exact
//! bytes of a bundle manifest, detached beside it as `NAME.manifest.json.sig`.
//! The manifest is the signed statement (version, image digest, chunk
//! digests), so a node that trusts the key trusts every byte it writes.
//!
//! Files, one definition for `os-image` (writes) and `os-agent` (reads):
//!
//! - public key `NAME.pub`: PEM `PUBLIC KEY` (SubjectPublicKeyInfo, the
//!   form `openssl pkey -pubout` writes);
//! - secret key `NAME.key`: PEM `PRIVATE KEY` (PKCS#8, as `openssl genpkey
//!   -algorithm ed25519` or `os-image keygen` writes it);
//! - signature `*.sig`: one JSON object,
//!   `{"format":1,"algorithm":"ed25519","key_id":ID,"signature":BASE64}`,
//!   where ID is [`PublicKey::id`].
//!
//! Everything parsed here comes from the network or the disk: sizes are
//! bounded, PEM is strict (one block, base64 only), DER must be exactly the
//! ed25519 form.

use base64::Engine;
use miniserde::{Deserialize, Serialize};
use std::fmt;

/// `.sig` beside the signed manifest.
pub const SIG_SUFFIX: &str = ".sig";

/// Where a manifest's signature is: its path plus [`SIG_SUFFIX`], with the
/// manifest URL's query and fragment kept after it (a token the server wants
/// on every file is not a part of the file's name).
pub fn signature_url(manifest_url: &str) -> String {
    let (path, query) =
        manifest_url.split_at(manifest_url.find(['?', '#']).unwrap_or(manifest_url.len()));
    format!("{path}{SIG_SUFFIX}{query}")
}
/// A signature file or key file larger than this is refused unread.
pub const MAX_FILE_BYTES: u64 = 4096;
/// The signature file layout written and read (`format`).
pub const FORMAT: u32 = 1;

/// DER of an ed25519 SubjectPublicKeyInfo, up to the 32 key bytes (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// A key or signature file that is not in its format.
    Malformed { what: &'static str, reason: String },
    /// Signed by a key this node does not trust.
    UntrustedKey {
        key_id: String,
        trusted: Vec<String>,
    },
    /// The key is trusted but the signature does not match the bytes.
    BadSignature { key_id: String },
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Malformed { what, reason } => write!(f, "{what}: {reason}"),
            SignatureError::UntrustedKey { key_id, trusted } => write!(
                f,
                "signed by key {key_id}, which is not trusted here (trusted: {})",
                if trusted.is_empty() {
                    "none".to_owned()
                } else {
                    trusted.join(", ")
                }
            ),
            SignatureError::BadSignature { key_id } => write!(
                f,
                "the signature by key {key_id} does not match the manifest \
                 (changed after signing, or signed over other bytes)"
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

fn malformed(what: &'static str, reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        what,
        reason: reason.into(),
    }
}

/// The DER inside the one PEM block labelled `label`.
fn pem_decode(text: &str, label: &str, what: &'static str) -> Result<Vec<u8>, SignatureError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(malformed(
            what,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(begin.as_str()) {
        return Err(malformed(what, format!("does not start with {begin}")));
    }
    let mut body = String::new();
    loop {
        match lines.next() {
            None => return Err(malformed(what, format!("no {end} line"))),
            Some(l) if l == end => break,
            Some(l) => body.push_str(l),
        }
    }
    if lines.next().is_some() {
        return Err(malformed(what, format!("text after {end}")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| malformed(what, format!("bad base64 ({e})")))
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A trusted ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` holding an ed25519 SubjectPublicKeyInfo.
    pub fn from_pem(text: &str) -> Result<PublicKey, SignatureError> {
        let der = pem_decode(text, "PUBLIC KEY", "public key")?;
        let bytes = der
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| malformed("public key", "not an ed25519 SubjectPublicKeyInfo"))?;
        Ok(PublicKey { bytes })
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.bytes);
        pem_encode(&der, "PUBLIC KEY")
    }

    /// The key's name in signatures and messages: the first 16 hex digits of
    /// the SHA-256 of its 32 bytes.
    pub fn id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        crate::digest::hex(&d.as_ref()[..8])
    }

    /// Whether `sig` is this key's signature of `message`.
    fn verifies(&self, message: &[u8], sig: &[u8; 64]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }
}

/// A signing key (only `os-image` holds one).
pub struct SecretKey {
    pair: ring::signature::Ed25519KeyPair,
}

impl SecretKey {
    /// A fresh key and its PKCS#8 PEM, to be written with mode 0600.
    pub fn generate() -> Result<(SecretKey, String), SignatureError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| malformed("secret key", "the system random source failed"))?;
        let pem = pem_encode(pkcs8.as_ref(), "PRIVATE KEY");
        Ok((SecretKey::from_pem(&pem)?, pem))
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8 v1 as openssl writes it, or v2).
    pub fn from_pem(text: &str) -> Result<SecretKey, SignatureError> {
        let der = pem_decode(text, "PRIVATE KEY", "secret key")?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| malformed("secret key", format!("not an ed25519 PKCS#8 key ({e})")))?;
        Ok(SecretKey { pair })
    }

    pub fn public(&self) -> PublicKey {
        use ring::signature::KeyPair;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { bytes }
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(self.pair.sign(message).as_ref());
        Signature {
            key_id: self.public().id(),
            bytes,
        }
    }
}

/// A detached signature as the `.sig` file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: String,
    pub bytes: [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct RawSignature {
    format: u32,
    algorithm: String,
    key_id: String,
    signature: String,
}

impl Signature {
    pub fn parse(text: &str) -> Result<Signature, SignatureError> {
        const WHAT: &str = "signature";
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(malformed(
                WHAT,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        let raw: RawSignature = miniserde::json::from_str(text).map_err(|_| {
            malformed(
                WHAT,
                "not a signature object {format, algorithm, key_id, signature}",
            )
        })?;
        if raw.format != FORMAT {
            return Err(malformed(
                WHAT,
                format!(
                    "format {} is not supported (this build reads {FORMAT})",
                    raw.format
                ),
            ));
        }
        if raw.algorithm != "ed25519" {
            return Err(malformed(
                WHAT,
                format!(
                    "algorithm {:?} is not supported (ed25519 only)",
                    raw.algorithm
                ),
            ));
        }
        let id_ok = raw.key_id.len() == 16
            && raw
                .key_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !id_ok {
            return Err(malformed(WHAT, "key_id is not 16 lowercase hex digits"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.signature.as_bytes())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| malformed(WHAT, "signature is not 64 bytes of base64"))?;
        Ok(Signature {
            key_id: raw.key_id,
            bytes,
        })
    }

    pub fn to_json(&self) -> String {
        let mut text = miniserde::json::to_string(&RawSignature {
            format: FORMAT,
            algorithm: "ed25519".into(),
            key_id: self.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(self.bytes),
        });
        text.push('\n');
        text
    }

    /// Checks the signature over `message` against `trusted`; returns the
    /// key that signed.
    pub fn verify<'k>(
        &self,
        message: &[u8],
        trusted: &'k [PublicKey],
    ) -> Result<&'k PublicKey, SignatureError> {
        let key = trusted
            .iter()
            .find(|k| k.id() == self.key_id)
            .ok_or_else(|| SignatureError::UntrustedKey {
                key_id: self.key_id.clone(),
                trusted: trusted.iter().map(PublicKey::id).collect(),
            })?;
        if key.verifies(message, &self.bytes) {
            Ok(key)
        } else {
            Err(SignatureError::BadSignature {
                key_id: self.key_id.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] = br#"{"format":1,"name":"v2"}"#;

    #[test]
    fn a_signature_verifies_with_its_key_and_survives_its_text_form() {
        let (key, pem) = SecretKey::generate().unwrap();
        let again = SecretKey::from_pem(&pem).unwrap();
        assert_eq!(again.public(), key.public());
        let public = PublicKey::from_pem(&key.public().to_pem()).unwrap();
        let sig = Signature::parse(&key.sign(MANIFEST).to_json()).unwrap();
        assert_eq!(sig.key_id, public.id());
        let trusted = [public];
        assert_eq!(sig.verify(MANIFEST, &trusted).unwrap(), &trusted[0]);
    }

    #[test]
    fn changed_bytes_and_other_keys_are_refused() {
        let (key, _) = SecretKey::generate().unwrap();
        let (other, _) = SecretKey::generate().unwrap();
        let sig = key.sign(MANIFEST);
        let mut edited = MANIFEST.to_vec();
        edited[3] ^= 1;
        assert_eq!(
            sig.verify(&edited, &[key.public()]),
            Err(SignatureError::BadSignature {
                key_id: key.public().id()
            })
        );
        match sig.verify(MANIFEST, &[other.public()]) {
            Err(SignatureError::UntrustedKey { key_id, trusted }) => {
                assert_eq!(key_id, key.public().id());
                assert_eq!(trusted, vec![other.public().id()]);
            }
            r => panic!("{r:?}"),
        }
        // A signature naming a trusted key's id but made by another key.
        let mut forged = other.sign(MANIFEST);
        forged.key_id = key.public().id();
        assert!(matches!(
            forged.verify(MANIFEST, &[key.public()]),
            Err(SignatureError::BadSignature { .. })
        ));
        assert!(sig.verify(MANIFEST, &[]).is_err());
    }

    #[test]
    fn the_signature_url_keeps_the_manifests_query() {
        assert_eq!(
            signature_url("https://h/os-2.manifest.json"),
            "https://h/os-2.manifest.json.sig"
        );
        assert_eq!(
            signature_url("https://h/os-2.manifest.json?token=a.b#f"),
            "https://h/os-2.manifest.json.sig?token=a.b#f"
        );
    }

    #[test]
    fn openssl_keys_are_read() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) and its `pkey -pubout`.
        let secret = "-----BEGIN PRIVATE KEY-----\n\
                      MC4CAQAwBQYDK2VwBCIEIN1k65wXqG3uSh13aOYf6vCOnX1SW23BtsBXlEl23Wwy\n\
                      -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
                      MCowBQYDK2VwAyEAGggXUlphIMGX5GOBldBDsReXMiZ5mMdMVBDBtEHSySc=\n\
                      -----END PUBLIC KEY-----\n";
        let key = SecretKey::from_pem(secret).unwrap();
        let public = PublicKey::from_pem(public).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(PublicKey::from_pem(&public.to_pem()).unwrap(), public);
        assert!(key.sign(MANIFEST).verify(MANIFEST, &[public]).is_ok());
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        let (key, _) = SecretKey::generate().unwrap();
        let good = key.public().to_pem();
        let body: String = good.lines().nth(1).unwrap().to_owned();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not start with"),
            ("-----BEGIN PUBLIC KEY-----\n".into(), "no -----END"),
            (good.replace("PUBLIC KEY", "PRIVATE KEY"), "does not start with"),
            (format!("{good}trailing\n"), "text after"),
            (
                format!("-----BEGIN PUBLIC KEY-----\n{body}!\n-----END PUBLIC KEY-----\n"),
                "bad base64",
            ),
            // An RSA-sized or truncated key, and a P-256 SPKI header.
            (
                format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", &body[..40]),
                "",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
                    .into(),
                "not an ed25519",
            ),
            ("x".repeat(5000), "larger than"),
        ];
        for (text, want) in cases {
            let err = PublicKey::from_pem(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(SecretKey::from_pem(&good).is_err());
    }

    #[test]
    fn malformed_signatures_are_refused_with_a_reason() {
        let (key, _) = SecretKey::generate().unwrap();
        let good = key.sign(MANIFEST).to_json();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "not a signature object"),
            ("[]".into(), "not a signature object"),
            (good.replace("\"format\":1", "\"format\":2"), "format 2"),
            (good.replace("ed25519", "rsa"), "algorithm \"rsa\""),
            (
                good.replace(&key.public().id(), "ABCDEF0123456789"),
                "key_id",
            ),
            (good.replace(&key.public().id(), "abc"), "key_id"),
            (
                good.replacen(
                    &base64::engine::general_purpose::STANDARD.encode(key.sign(MANIFEST).bytes),
                    "AAAA",
                    1,
                ),
                "64 bytes",
            ),
            (
                good.replace("\"signature\"", "\"sig\""),
                "not a signature object",
            ),
            (format!("{}{}", " ".repeat(5000), good), "larger than"),
        ];
        for (text, want) in cases {
            let err = Signature::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
