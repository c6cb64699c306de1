//! `os-image keygen` and `os-image sign` (docs/signing.md): ed25519 keys and
//! detached signatures of bundle manifests, in the formats of
//! [`wire::signature`], the same code the node verifies with.

use crate::manifest::Manifest;
use anyhow::{bail, Context, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wire::signature::{SecretKey, Signature, MAX_FILE_BYTES, SIG_SUFFIX};

/// Writes a new key pair as `STEM.key` (mode 0600) and `STEM.pub`; never
/// overwrites a file. Returns both paths.
pub fn keygen(stem: &Path) -> Result<(PathBuf, PathBuf)> {
    let with = |ext: &str| {
        let mut p = stem.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret_path, public_path) = (with(".key"), with(".pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            bail!("{} exists; keygen never overwrites a key", p.display());
        }
    }
    let (key, pem) = SecretKey::generate().map_err(anyhow::Error::msg)?;
    write_new(&secret_path, pem.as_bytes(), 0o600)?;
    write_new(&public_path, key.public().to_pem().as_bytes(), 0o644)?;
    log::info!(
        "key {}: secret {} (keep it offline), public {} (install it on nodes)",
        key.public().id(),
        secret_path.display(),
        public_path.display()
    );
    Ok((secret_path, public_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Reads a secret key file (PEM PKCS#8, ours or openssl's).
pub fn load_key(path: &Path) -> Result<SecretKey> {
    let meta = fs::metadata(path).with_context(|| format!("read key {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!("key {}: larger than {MAX_FILE_BYTES} bytes", path.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "key {} can be read by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = fs::read_to_string(path).with_context(|| format!("read key {}", path.display()))?;
    SecretKey::from_pem(&text).with_context(|| format!("key {}", path.display()))
}

/// `MANIFEST.sig` for a manifest file.
pub fn sig_path(manifest: &Path) -> PathBuf {
    let mut p = manifest.as_os_str().to_owned();
    p.push(SIG_SUFFIX);
    PathBuf::from(p)
}

/// The signature of `bytes`, which must be a valid bundle manifest.
pub fn sign_bytes(key: &SecretKey, bytes: &[u8]) -> Result<Signature> {
    let text = std::str::from_utf8(bytes).context("the manifest is not UTF-8")?;
    Manifest::parse(text)
        .map_err(anyhow::Error::msg)
        .context("only a valid bundle manifest is signed")?;
    Ok(key.sign(bytes))
}

/// `os-image sign`: writes `MANIFEST.sig` (replacing an older one).
pub fn sign_file(key_path: &Path, manifest: &Path) -> Result<PathBuf> {
    let key = load_key(key_path)?;
    let bytes = fs::read(manifest).with_context(|| format!("read {}", manifest.display()))?;
    let sig = sign_bytes(&key, &bytes).with_context(|| manifest.display().to_string())?;
    let out = sig_path(manifest);
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::Builder::new()
        .prefix(".os-image-sig.")
        .tempfile_in(dir.unwrap_or(Path::new(".")))
        .context("create a temp file for the signature")?;
    tmp.write_all(sig.to_json().as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.persist(&out)
        .with_context(|| format!("rename into {}", out.display()))?;
    log::info!("wrote {} (key {})", out.display(), sig.key_id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::signature::PublicKey;

    #[test]
    fn keygen_writes_a_private_secret_and_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let stem = t.path().join("vendor");
        let (secret, public) = keygen(&stem).unwrap();
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = load_key(&secret).unwrap();
        let public = PublicKey::from_pem(&fs::read_to_string(public).unwrap()).unwrap();
        assert_eq!(key.public(), public);
        let err = keygen(&stem).unwrap_err().to_string();
        assert!(err.contains("never overwrites"), "{err}");
    }

    #[test]
    fn only_a_valid_manifest_is_signed() {
        let (key, _) = SecretKey::generate().unwrap();
        let err = format!("{:#}", sign_bytes(&key, b"{\"format\":1}").unwrap_err());
        assert!(err.contains("only a valid bundle manifest"), "{err}");
    }
}
