//! Which bundle-signing keys this node trusts (docs/signing.md): every
//! `*.pub` in the image's key directory and the node's, read afresh for each
//! request so a rotated key needs no restart.
//!
//! Fail closed: a key file that cannot be read or parsed still makes
//! signatures required (it names a key the image meant to trust); only a node
//! with no key file at all takes unsigned bundles, and `status` says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use wire::signature::{PublicKey, MAX_FILE_BYTES};

/// A directory holding more files than this is not a key directory.
const MAX_KEY_FILES: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Keys read, with the file each came from.
    pub keys: Vec<(PathBuf, PublicKey)>,
    /// Key files (or directories) that could not be used, and why.
    pub unusable: Vec<String>,
}

impl Trust {
    /// Reads the `*.pub` files of `dirs`; a missing directory holds no keys.
    pub fn load(dirs: &[PathBuf]) -> Trust {
        let mut trust = Trust::default();
        for dir in dirs {
            trust.load_dir(dir);
        }
        trust
    }

    fn load_dir(&mut self, dir: &Path) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.unusable.push(format!("{}: {e}", dir.display()));
                return;
            }
        };
        self.load_listed(dir, entries.map(|e| e.map(|e| e.path())));
    }

    /// Reads the key files among `listed`, the entries of `dir`.
    fn load_listed(&mut self, dir: &Path, listed: impl Iterator<Item = io::Result<PathBuf>>) {
        let mut files = Vec::new();
        for entry in listed {
            match entry {
                Ok(path) if path.extension().is_some_and(|x| x == "pub") => files.push(path),
                Ok(_) => {}
                // A listing cut short (EIO: a dm-verity error in the image's
                // directory block) may have left out every key: skipping the
                // error turned signatures off.
                Err(e) => {
                    self.unusable.push(format!(
                        "{}: listing the key files failed ({e}); check the disk",
                        dir.display()
                    ));
                    return;
                }
            }
        }
        files.sort();
        if files.len() > MAX_KEY_FILES {
            self.unusable.push(format!(
                "{}: more than {MAX_KEY_FILES} key files",
                dir.display()
            ));
            return;
        }
        for file in files {
            match read_key(&file) {
                Ok(key) => self.keys.push((file, key)),
                Err(e) => self.unusable.push(format!("{}: {e}", file.display())),
            }
        }
    }

    /// Whether bundles must be signed: some key file exists, usable or not.
    pub fn required(&self) -> bool {
        !self.keys.is_empty() || !self.unusable.is_empty()
    }

    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(|(_, k)| k.clone()).collect()
    }

    /// The status report's view.
    pub fn report(&self) -> wire::rpc::Trust {
        wire::rpc::Trust {
            signatures_required: self.required(),
            keys: self.keys.iter().map(|(_, k)| k.id()).collect(),
            unusable: self.unusable.clone(),
        }
    }
}

/// One key file: a regular file (not a symlink), at most `MAX_FILE_BYTES`.
fn read_key(path: &Path) -> Result<PublicKey, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let text = bootctl::small_file::read(path, MAX_FILE_BYTES)
        .map_err(|e| e.to_string())?
        .ok_or("removed while the keys were read")?;
    PublicKey::from_pem(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::signature::SecretKey;

    #[test]
    fn keys_are_read_from_every_directory_and_bad_files_keep_signatures_required() {
        let t = tempfile::tempdir().unwrap();
        let (image, node) = (t.path().join("image"), t.path().join("node"));
        fs::create_dir_all(&image).unwrap();
        fs::create_dir_all(&node).unwrap();
        assert!(!Trust::load(&[image.clone(), node.clone()]).required());
        assert!(!Trust::load(&[t.path().join("missing")]).required());

        let (a, _) = SecretKey::generate().unwrap();
        let (b, _) = SecretKey::generate().unwrap();
        fs::write(image.join("vendor.pub"), a.public().to_pem()).unwrap();
        fs::write(node.join("rotated.pub"), b.public().to_pem()).unwrap();
        fs::write(node.join("README"), "not a key").unwrap();
        let trust = Trust::load(&[image.clone(), node.clone()]);
        assert!(trust.required());
        assert_eq!(trust.public_keys(), vec![a.public(), b.public()]);
        assert!(trust.unusable.is_empty(), "{:?}", trust.unusable);

        // A damaged key file: no key, yet signatures stay required.
        fs::remove_file(node.join("rotated.pub")).unwrap();
        fs::write(image.join("vendor.pub"), "garbage").unwrap();
        let trust = Trust::load(&[image.clone(), node.clone()]);
        assert!(trust.keys.is_empty());
        assert!(trust.required());
        assert!(
            trust.unusable[0].contains("vendor.pub"),
            "{:?}",
            trust.unusable
        );

        // A symlinked key file is not followed.
        fs::remove_file(image.join("vendor.pub")).unwrap();
        let elsewhere = t.path().join("elsewhere.pub");
        fs::write(&elsewhere, a.public().to_pem()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, image.join("link.pub")).unwrap();
        let trust = Trust::load(&[image]);
        assert!(trust.keys.is_empty() && trust.required());
        assert!(trust.unusable[0].contains("not a regular file"));
    }

    #[test]
    fn a_listing_that_fails_keeps_signatures_required() {
        // What read_dir yields when getdents fails part way: the entries
        // before, then the error (the key's entry never comes).
        let mut trust = Trust::default();
        let dir = Path::new("/usr/share/os-agent/keys");
        let listed = [
            Ok(dir.join("README")),
            Err(io::Error::from_raw_os_error(libc::EIO)),
        ];
        trust.load_listed(dir, listed.into_iter());
        assert!(trust.required(), "an I/O error turned signatures off");
        assert!(
            trust.unusable[0].contains("/usr/share/os-agent/keys: listing"),
            "{:?}",
            trust.unusable
        );
    }
}
