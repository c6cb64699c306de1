//! `os-image oci`: a bundle as an OCI artifact (docs/oci.md) in an OCI image
//! layout directory (image-spec `image-layout.md`), optionally pushed to a
//! registry ([`push`]).
//!
//! The config blob is `NAME.manifest.json` and the one layer is `NAME.img.zst`,
//! both byte for byte, so their sha256 digests pin exactly the files
//! `os-image bundle` wrote.
//!
//! Crash-safe ordering: every blob reaches its content-addressed name by an
//! atomic rename (or `link(2)`) of complete, synced content; `index.json` is
//! replaced last. A crash leaves at worst unreferenced blobs or temp files,
//! never an index naming a missing or partial blob.

pub mod push;

use crate::manifest::{Manifest, ManifestFile};
use ::oci::artifact::{
    layout_index, parse_layout_index, BundleArtifact, Descriptor, CONFIG_MEDIA_TYPE, IMAGE_DIGEST,
    LAYER_MEDIA_TYPE, OCI_MANIFEST, SIGNATURE, TITLE, VERSION,
};
use ::oci::digest;
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};
use std::fs::{File, Permissions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const OCI_LAYOUT: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX: &str = "index.json";
const READ_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct OciOptions {
    /// The bundle's `NAME.manifest.json`.
    pub manifest: PathBuf,
    pub layout: PathBuf,
    /// [default: the manifest's `os_version`]
    pub tag: Option<String>,
    pub push: Option<push::PushOptions>,
}

/// How a blob got into the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobWrite {
    /// A blob with that digest and size was there already.
    Present,
    /// Hard-linked from the bundle file: no second copy on disk.
    Linked,
    Copied,
}

/// A bundle written into an OCI image layout.
#[derive(Debug, Clone)]
pub struct LayoutArtifact {
    pub layout: PathBuf,
    pub tag: String,
    pub artifact: BundleArtifact,
    /// The image manifest bytes, as stored and as pushed.
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of [`LayoutArtifact::manifest`]: what `REF@DIGEST` pins.
    pub digest: String,
    pub layer_write: BlobWrite,
}

impl LayoutArtifact {
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout, digest)
    }
}

/// Runs `os-image oci`: writes the layout, pushes if asked, and prints the
/// manifest digest as the last line of stdout.
pub fn run(opts: &OciOptions) -> Result<()> {
    if let Some(p) = &opts.push {
        // A bad reference is found before any work.
        ::oci::Reference::parse(&p.target).context("--push")?;
    }
    let written = write_layout(&opts.manifest, &opts.layout, opts.tag.as_deref())?;
    let layer = &written.artifact.layer;
    eprintln!(
        "os-image: {}:{} = {} (layer {:.1} MiB, {})",
        written.layout.display(),
        written.tag,
        written.digest,
        layer.size as f64 / f64::from(1 << 20),
        match written.layer_write {
            BlobWrite::Present => "already in the layout",
            BlobWrite::Linked => "hard-linked",
            BlobWrite::Copied => "copied",
        }
    );
    if let Some(p) = &opts.push {
        let target = push::push(&written, p)?;
        let pinned = format!(
            "{}/{}@{}",
            target.registry, target.repository, written.digest
        );
        match &target.tag {
            Some(tag) => eprintln!(
                "os-image: pushed {}/{}:{tag}; pin it as {pinned}",
                target.registry, target.repository
            ),
            None => eprintln!("os-image: pushed {pinned}"),
        }
    }
    println!("{}", written.digest);
    Ok(())
}

/// Writes the bundle of `manifest_path` into the OCI image layout `layout`
/// (created if missing) under `tag`, keeping the layout's other tags.
pub fn write_layout(
    manifest_path: &Path,
    layout: &Path,
    tag: Option<&str>,
) -> Result<LayoutArtifact> {
    let config = std::fs::read(manifest_path)
        .with_context(|| format!("read bundle manifest {}", manifest_path.display()))?;
    // Parse the very bytes that become the config blob.
    let bundle = std::str::from_utf8(&config)
        .map_err(|_| anyhow::anyhow!("not UTF-8"))
        .and_then(|text| Manifest::parse(text).map_err(anyhow::Error::msg))
        .with_context(|| format!("bundle manifest {}", manifest_path.display()))?;
    let tag = tag.unwrap_or(&bundle.os_version).to_owned();
    check_tag(&tag)?;
    let signature = read_signature(manifest_path)?;
    let image = bundle.image_path(manifest_path);
    let (layer_digest, layer_size) = sha256_file(&image)?;
    ensure!(
        layer_size == bundle.compressed_size,
        "{} is {layer_size} bytes, its manifest says compressed_size {}: an incomplete or mismatched bundle",
        image.display(),
        bundle.compressed_size
    );

    let blobs = prepare_layout(layout)?;
    let index = read_index(layout)?;
    let config_digest = digest::sha256(&config);
    put_blob_bytes(layout, &config_digest, &config)?;
    let layer_write = put_blob_file(layout, &layer_digest, layer_size, &image)?;

    let mut layer = Descriptor::new(LAYER_MEDIA_TYPE, &layer_digest, layer_size);
    layer.annotations.push((TITLE.into(), bundle.image.clone()));
    let artifact = BundleArtifact {
        config: Descriptor::new(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        layer,
        // In key order, as the JSON has them: the value equals its own parse.
        annotations: signature
            .map(|sig| (SIGNATURE.to_owned(), sig))
            .into_iter()
            .chain([
                (IMAGE_DIGEST.into(), bundle.image_digest.to_string()),
                (VERSION.into(), bundle.os_version.clone()),
            ])
            .collect(),
    };
    let manifest = artifact.to_json();
    let manifest_digest = digest::sha256(&manifest);
    put_blob_bytes(layout, &manifest_digest, &manifest)?;
    sync_dir(&blobs)?;

    let entry = Descriptor::new(OCI_MANIFEST, &manifest_digest, manifest.len() as u64);
    write_index(layout, index, entry, &tag)?;
    Ok(LayoutArtifact {
        layout: layout.to_path_buf(),
        tag,
        artifact,
        manifest,
        digest: manifest_digest,
        layer_write,
    })
}

/// The bundle's `NAME.manifest.json.sig`, if there is one: checked for form
/// (the key is the node's business) and carried as an annotation.
fn read_signature(manifest_path: &Path) -> Result<Option<String>> {
    let path = crate::sign::sig_path(manifest_path);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let sig =
        wire::signature::Signature::parse(&text).with_context(|| format!("{}", path.display()))?;
    log::info!("carrying {} (key {})", path.display(), sig.key_id);
    Ok(Some(sig.to_json().trim_end().to_owned()))
}

/// The distribution spec's tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<()> {
    let ok = tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    ensure!(
        ok,
        "tag {tag:?} is not a valid OCI tag (letters, digits, _ . -, not starting with . or -, \
         at most 128); pass --tag"
    );
    Ok(())
}

/// `sha256:<hex>` and length of a file, streamed.
fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let size = io::copy(
        &mut BufReader::with_capacity(READ_BUFFER, file),
        &mut hasher,
    )
    .with_context(|| format!("read {}", path.display()))?;
    Ok((digest::format(&hasher.finalize().into()), size))
}

/// `blobs/sha256/HEX`. Every digest here is one os-image computed
/// (`digest::format`); its hex, and nothing else, becomes the file name.
fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let bytes = digest::bytes(digest).expect("a sha256 digest os-image computed");
    layout.join("blobs/sha256").join(wire::digest::hex(&bytes))
}

/// Creates the layout skeleton (or checks an existing one); returns `blobs/sha256`.
pub(crate) fn prepare_layout(layout: &Path) -> Result<PathBuf> {
    let marker = layout.join(OCI_LAYOUT);
    match std::fs::read(&marker) {
        Ok(content) => {
            let text = String::from_utf8_lossy(&content);
            ensure!(
                text.contains(r#""imageLayoutVersion""#) && text.contains(r#""1.0.0""#),
                "{} is not an OCI image layout 1.0.0 ({} says {text})",
                layout.display(),
                marker.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let non_empty = std::fs::read_dir(layout).is_ok_and(|mut d| d.next().is_some());
            if non_empty {
                bail!(
                    "{} is neither empty nor an OCI image layout (no {OCI_LAYOUT} file); \
                     choose another --layout",
                    layout.display()
                );
            }
            std::fs::create_dir_all(layout)
                .with_context(|| format!("create {}", layout.display()))?;
            write_atomic(layout, OCI_LAYOUT, OCI_LAYOUT_CONTENT)?;
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", marker.display())),
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    Ok(blobs)
}

/// A blob of that name and size is taken as present: blobs only ever appear
/// under their name complete (rename or link of synced content).
fn blob_present(path: &Path, size: u64) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == size => Ok(true),
        Ok(m) => bail!(
            "{} is {} bytes, its digest says {size}: remove the damaged blob",
            path.display(),
            m.len()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

pub(crate) fn put_blob_bytes(layout: &Path, digest: &str, bytes: &[u8]) -> Result<()> {
    let path = blob_path(layout, digest);
    if !blob_present(&path, bytes.len() as u64)? {
        let dir = path.parent().expect("blob path has a parent");
        let name = path.file_name().expect("blob path has a name");
        write_atomic(dir, name, bytes)?;
    }
    Ok(())
}

/// Puts `source` (whose digest is `digest`) into the layout: a hard link when
/// both are on one filesystem, else a verified copy through a temp file.
fn put_blob_file(layout: &Path, digest: &str, size: u64, source: &Path) -> Result<BlobWrite> {
    let path = blob_path(layout, digest);
    if blob_present(&path, size)? {
        return Ok(BlobWrite::Present);
    }
    // link(2) is atomic: the name appears with the complete, already synced file.
    match std::fs::hard_link(source, &path) {
        Ok(()) => return Ok(BlobWrite::Linked),
        // Another os-image writing the same layout got there first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && blob_present(&path, size)? => {
            return Ok(BlobWrite::Present)
        }
        Err(e) => log::info!(
            "cannot hard-link {} into {} ({e}); copying",
            source.display(),
            layout.display()
        ),
    }
    copy_blob(source, &path, digest)?;
    Ok(BlobWrite::Copied)
}

/// Copies `source` to the blob `path` through a temp file beside it,
/// checking that what was copied has `digest`.
fn copy_blob(source: &Path, path: &Path, digest: &str) -> Result<()> {
    let dir = path.parent().expect("blob path has a parent");
    let mut temp = temp_file(dir, ".blob.")?;
    let file = File::open(source).with_context(|| format!("open {}", source.display()))?;
    let mut hashing = HashingWriter {
        inner: temp.as_file_mut(),
        hasher: Sha256::new(),
    };
    io::copy(
        &mut BufReader::with_capacity(READ_BUFFER, file),
        &mut hashing,
    )
    .with_context(|| format!("copy {} into {}", source.display(), dir.display()))?;
    let copied = digest::format(&hashing.hasher.finalize().into());
    ensure!(
        copied == digest,
        "{} changed while being copied (was {digest}, copied {copied})",
        source.display()
    );
    temp.as_file().sync_all().context("sync the copied layer")?;
    temp.persist(path)
        .with_context(|| format!("rename into {}", path.display()))?;
    Ok(())
}

/// A `Write` adapter hashing what passes through, so a copy is checked
/// against the digest it will be stored under.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The tagged entries of `index.json` (none when there is none yet).
/// `layout_index` names every entry, so an index with untagged manifests
/// (written by another tool) is refused rather than rewritten wrongly.
pub(crate) fn read_index(layout: &Path) -> Result<Vec<(Descriptor, String)>> {
    let path = layout.join(INDEX);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    parse_layout_index(&bytes)
        .with_context(|| format!("{}", path.display()))?
        .into_iter()
        .map(|(d, tag)| match tag {
            Some(tag) => Ok((d, tag)),
            None => bail!(
                "{} lists manifest {} without a tag (org.opencontainers.image.ref.name); \
                 os-image keeps only tagged layouts: use another --layout",
                path.display(),
                d.digest
            ),
        })
        .collect()
}

/// Writes `index` plus `entry` under `tag` as `index.json`, replacing the
/// entry that had that tag in place, so the order of the others stays.
pub(crate) fn write_index(
    layout: &Path,
    mut index: Vec<(Descriptor, String)>,
    entry: Descriptor,
    tag: &str,
) -> Result<()> {
    match index.iter_mut().find(|(_, t)| t == tag) {
        Some(existing) => existing.0 = entry,
        None => index.push((entry, tag.to_owned())),
    }
    write_atomic(layout, INDEX, &layout_index(&index))?;
    sync_dir(layout)
}

/// Temp file in `dir`, write, fsync, rename to `name`. The caller syncs `dir`.
fn write_atomic(dir: &Path, name: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let mut temp = temp_file(dir, ".tmp.")?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    temp.persist(&path)
        .with_context(|| format!("rename into {}", path.display()))?;
    Ok(())
}

/// World-readable like the bundle files: a layout is served or copied by
/// other users (registries, skopeo, a web server).
fn temp_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}

#[cfg(test)]
mod tests;
