//! `os-image bundle`: the update bundle of DESIGN.md §5 from a root filesystem.
//!
//! 1. stage the rootfs in a work directory inside OUTDIR (rootfs.rs) and check
//!    it: os-release version, one kernel, one modules release;
//! 2. add `/boot/vmlinuz`, `/boot/initramfs.img` (initramfs.rs, kmod.rs) and
//!    the mount points;
//! 3. make the ext4 root image, deterministically, and fsck it (ext4.rs);
//! 4. read the image once, hashing it whole and per chunk and compressing
//!    each chunk as its own zstd frame, into a temp file (hashing.rs,
//!    chunked.rs): memory stays at a few chunks whatever the image size;
//! 5. write the manifest to a temp file, rename the image and then the
//!    manifest into place. A failed build leaves no file with a final name;
//!    the work directory goes away in every case.

use crate::chunked::ChunkWriter;
use crate::hashing::HashingReader;
use crate::manifest::{Chunk, Manifest, ManifestFile};
use crate::rootfs::TreeStats;
use crate::{elf, ext4, ext4base, initramfs, kmod, rootfs, tools};
use anyhow::{bail, Context, Result};
use std::fs::{self, File, Permissions};
use std::io::{self, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub rootfs: PathBuf,
    pub version: String,
    pub out: PathBuf,
    pub name: Option<String>,
    pub root_size: Option<u64>,
    pub os_init: Option<PathBuf>,
    pub chunk_size: u64,
    pub level: i32,
    /// Secret key to sign the manifest with (`NAME.manifest.json.sig`).
    pub sign: Option<PathBuf>,
    /// Leave out the dm-verity tree (for kernels without dm-verity): the
    /// slot is then mounted as plain ext4.
    pub no_verity: bool,
    /// The previous bundle's manifest: the new ext4 is made from its image
    /// so that unchanged files keep their blocks (ext4base.rs).
    pub base: Option<PathBuf>,
}

/// Paths of the files a bundle build wrote, and what the manifest says of the image.
#[derive(Debug, Clone)]
pub struct BundleOutput {
    pub image: PathBuf,
    pub manifest: PathBuf,
    /// `NAME.manifest.json.sig`, when signed.
    pub signature: Option<PathBuf>,
    /// `blake3:<hex>` of the uncompressed root image.
    pub image_digest: String,
    pub image_size: u64,
}

/// Default image size: content plus a quarter plus this, rounded up to [`SIZE_STEP`].
const HEADROOM: u64 = 16 << 20;
const SIZE_STEP: u64 = 16 << 20;
/// Inode counts are multiples of this (1 MiB of inode table).
const INODE_STEP: u64 = 4096;
/// Below content plus this, mkfs.ext4 cannot fit its own metadata.
const MIN_SLACK: u64 = 2 << 20;
/// Chunks are held in memory twice (plain and compressed).
/// Largest chunk a node can decode (its zstd window limit): the manifest's own bound.
const MAX_CHUNK: u64 = wire::manifest::MAX_CHUNK_SIZE;
const READ_BUFFER: usize = 1 << 20;
/// Compression threads at most: each holds a chunk and its frame.
const MAX_THREADS: usize = 4;
const OS_INIT_HINT: &str =
    "build it with `cargo build --profile node --target x86_64-unknown-linux-musl -p initramfs` \
     and pass --os-init target/x86_64-unknown-linux-musl/node/os-init";

/// What staging found and added.
struct Staged {
    stats: TreeStats,
    /// Every timestamp in the image.
    time: u64,
    /// What the file system's UUID, directory hash seed and verity salt are
    /// derived from: the rootfs's os-release `ID`, the same for every
    /// version of the OS (docs/bundle.md, "Layout for small deltas").
    identity: String,
}

pub fn run(opts: &BundleOptions) -> Result<BundleOutput> {
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("os-{}", opts.version));
    check_options(opts, &name)?;
    for tool in ["mkfs.ext4", "debugfs", "e2fsck"] {
        tools::find(tool)?;
    }
    if opts.base.is_some() {
        for tool in ["dumpe2fs", "resize2fs"] {
            tools::find(tool)?;
        }
    }
    let os_init = find_os_init(opts.os_init.as_deref())?;
    // A bad key fails the build before any work.
    let key = opts
        .sign
        .as_deref()
        .map(crate::sign::load_key)
        .transpose()?;
    let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    check_out_not_in_rootfs(&opts.out, &opts.rootfs)?;
    fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".os-image-")
        .tempdir_in(&opts.out)
        .with_context(|| format!("create a work directory in {}", opts.out.display()))?;
    let staging = work.path().join("rootfs");
    fs::create_dir(&staging).with_context(|| format!("create {}", staging.display()))?;
    // Owner of a directory we just made = our effective uid, without unsafe code.
    let as_root = fs::metadata(&staging)?.uid() == 0;
    if !as_root {
        log::warn!("not running as root: every file in the image will be owned by 0:0");
    }
    let staged = prepare_staging(
        opts,
        &os_init,
        &staging,
        source_date_epoch.as_deref(),
        as_root,
    )?;
    let image = make_root_image(opts, &staged, &staging, work.path(), as_root)?;
    fs::remove_dir_all(&staging).with_context(|| format!("remove {}", staging.display()))?;
    // The dm-verity tree goes after the file system, in the same image; the
    // salt is derived from the bundle's name and version (same input, same
    // bytes).
    let verity = if opts.no_verity {
        log::warn!("--no-verity: the image has no dm-verity tree; nodes mount it unchecked");
        None
    } else {
        let salt = blake3::derive_key(
            "ab-os os-image 2026 verity salt",
            staged.identity.as_bytes(),
        );
        let verity = crate::verity::append_tree(&image, salt)?;
        log::info!(
            "verity: {} data blocks, tree at byte {}, root {}",
            verity.data_blocks,
            verity.hash_offset,
            wire::digest::hex(&verity.root_hash)
        );
        Some(verity)
    };
    publish(opts, &name, &image, key.as_ref(), verity)
}

/// The ext4 image of the staging tree, `work/root.ext4`.
fn make_root_image(
    opts: &BundleOptions,
    staged: &Staged,
    staging: &Path,
    work: &Path,
    as_root: bool,
) -> Result<PathBuf> {
    let size = image_size(&staged.stats, opts.root_size)?;
    let params = ext4::Ext4Params {
        size,
        inodes: inode_count(&staged.stats),
        uuid: ext4::derived_uuid("uuid", "root", &staged.identity),
        hash_seed: ext4::derived_uuid("hash_seed", "root", &staged.identity),
        time: staged.time,
        owners_to_root: !as_root,
    };
    let image = work.join("root.ext4");
    // A bad base fails the build before mkfs: the caller named it.
    let base = match &opts.base {
        Some(manifest) => Some(ext4base::unpack_base(manifest, &work.join("base.ext4"))?),
        None => None,
    };
    log::info!(
        "mkfs.ext4: {} MiB root image, {} inodes",
        size >> 20,
        params.inodes
    );
    ext4::make(&image, staging, &params, work).with_context(|| {
        let content = content_bytes(&staged.stats);
        format!(
            "make the root image ({} MiB for about {} MiB of rootfs)",
            size >> 20,
            content >> 20
        )
    })?;
    if let Some(base) = base {
        let built = ext4base::build_on_base(&base, &image, staging, staged.time, work)?;
        let base = &base.image;
        if built {
            fs::rename(base, &image)
                .with_context(|| format!("rename {} to {}", base.display(), image.display()))?;
            log::info!("root image built on the base bundle's");
        } else {
            fs::remove_file(base).with_context(|| format!("remove {}", base.display()))?;
        }
    }
    Ok(image)
}

fn check_options(opts: &BundleOptions, name: &str) -> Result<()> {
    let bad = |s: &str| {
        s.is_empty()
            || s.starts_with('.')
            || s.chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    };
    if bad(&opts.version) {
        bail!("--version {:?} cannot be part of a file name", opts.version);
    }
    if bad(name) {
        bail!("--name {name:?} is not a plain file name");
    }
    if opts.chunk_size == 0
        || opts.chunk_size % ext4::BLOCK_SIZE != 0
        || opts.chunk_size > MAX_CHUNK
    {
        bail!(
            "--chunk-size {} is not a multiple of 4 KiB up to {} MiB (what a node decodes)",
            opts.chunk_size,
            MAX_CHUNK >> 20
        );
    }
    if let Some(size) = opts.root_size {
        if size == 0 || size % ext4::BLOCK_SIZE != 0 {
            bail!("--root-size {size} is not a multiple of 4 KiB");
        }
    }
    Ok(())
}

/// The work directory is made in OUTDIR: inside the rootfs it would be
/// copied into itself.
fn check_out_not_in_rootfs(out: &Path, rootfs: &Path) -> Result<()> {
    let Ok(rootfs) = rootfs.canonicalize() else {
        return Ok(());
    };
    // OUTDIR may not exist yet: resolve its nearest existing ancestor.
    let mut existing = out;
    let mut rest = Vec::new();
    while let (Err(_), Some(parent)) = (existing.canonicalize(), existing.parent()) {
        rest.push(existing.file_name().unwrap_or_default());
        existing = parent;
    }
    let mut resolved = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    resolved.extend(rest.iter().rev());
    if resolved.starts_with(&rootfs) {
        bail!(
            "--out {} is inside --rootfs {}",
            out.display(),
            rootfs.display()
        );
    }
    Ok(())
}

/// `--os-init`, else `os-init` beside the running `os-image`.
fn find_os_init(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locate the os-image executable")?
            .with_file_name("os-init"),
    };
    if !path.is_file() {
        bail!("os-init not found at {}: {OS_INIT_HINT}", path.display());
    }
    elf::require_static(&path, "os-init")?;
    Ok(path)
}

fn prepare_staging(
    opts: &BundleOptions,
    os_init: &Path,
    staging: &Path,
    source_date_epoch: Option<&str>,
    as_root: bool,
) -> Result<Staged> {
    log::info!("staging {} in {}", opts.rootfs.display(), staging.display());
    rootfs::stage(&opts.rootfs, staging, as_root)?;
    rootfs::check_version(staging, &opts.version)?;
    let identity = rootfs::os_release(staging)
        .ok()
        .and_then(|text| rootfs::os_release_value(&text, "ID"))
        .unwrap_or_else(|| "linux".into());
    let time = build_time(source_date_epoch, rootfs::tree_stats(staging)?.newest_mtime)?;
    let kernel = rootfs::find_kernel(staging)?;
    let (release, modules_dir) = rootfs::find_modules(staging)?;
    rootfs::check_kernel_release(&kernel, &release)?;
    let tree = kmod::ModuleTree::scan(&modules_dir)?;
    let wanted: Vec<&str> = kmod::WANTED
        .iter()
        .copied()
        .filter(|m| !(opts.no_verity && *m == kmod::VERITY_MODULE))
        .collect();
    let modules = tree.resolve(&wanted)?;
    rootfs::place_kernel(staging, &kernel)?;
    let path = staging.join("boot/initramfs.img");
    // Never write through what the rootfs brought: a symlink may point
    // anywhere, a file may be a hard link to the user's rootfs.
    if fs::symlink_metadata(&path).is_ok() {
        fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    // The initramfs holds the kernel's modules and os-init, nothing else of
    // the root: its timestamps come from the modules (clamped to the build
    // time), so that a release that changes only other files leaves its
    // bytes, and the chunks they fill, as they were (docs/bundle.md, "Layout
    // for small deltas").
    let module_paths: Vec<&Path> = modules.iter().map(|m| m.path.as_path()).collect();
    let initramfs_time = initramfs_time(time, &module_paths)?;
    initramfs::build(&path, os_init, &modules, initramfs_time)?;
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    log::info!(
        "initramfs: kernel {release}, {} modules ({}), {} KiB",
        modules.len(),
        names.join(" "),
        fs::metadata(&path)?.len() >> 10
    );
    rootfs::add_mount_points(staging)?;
    let stats = rootfs::tree_stats(staging)?;
    log::info!(
        "staged {} inodes, {} MiB of data",
        stats.inodes,
        stats.bytes >> 20
    );
    Ok(Staged {
        stats,
        time,
        identity,
    })
}

/// The newest mtime of `files` (the modules put in the initramfs), clamped to
/// the build time `time` as SOURCE_DATE_EPOCH asks; `time` without files. At
/// least 1, as `time` is.
fn initramfs_time(time: u64, files: &[&Path]) -> Result<u32> {
    let mut newest: Option<i64> = None;
    for f in files {
        let m = fs::metadata(f).with_context(|| format!("stat {}", f.display()))?;
        newest = Some(newest.map_or(m.mtime(), |n| n.max(m.mtime())));
    }
    let t = newest.map_or(time, |n| (n.max(1) as u64).min(time));
    // `time` was checked to fit in 32 bits.
    Ok(t as u32)
}

/// SOURCE_DATE_EPOCH if set, else the newest mtime of the input, so that the
/// same input gives the same image. At least 1: E2FSPROGS_FAKE_TIME=0 means
/// "not set" to e2fsprogs.
fn build_time(source_date_epoch: Option<&str>, newest_mtime: i64) -> Result<u64> {
    let t = match source_date_epoch {
        Some(s) => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
        None => newest_mtime.max(0) as u64,
    };
    if t > u64::from(u32::MAX) {
        bail!("timestamp {t} is beyond 2106, which the initramfs's cpio cannot hold");
    }
    Ok(t.max(1))
}

/// Inodes for mkfs: the tree plus the reserved ones and a little room,
/// rounded up to [`INODE_STEP`] so that a few files more or less keep the
/// inode tables, and every block after them, where they were.
fn inode_count(stats: &TreeStats) -> u64 {
    (stats.inodes + stats.inodes / 16 + 64).next_multiple_of(INODE_STEP)
}

/// Data blocks plus inode tables.
fn content_bytes(stats: &TreeStats) -> u64 {
    stats.bytes + inode_count(stats) * ext4::INODE_SIZE
}

fn image_size(stats: &TreeStats, root_size: Option<u64>) -> Result<u64> {
    let content = content_bytes(stats);
    match root_size {
        None => Ok((content + content / 4 + HEADROOM).div_ceil(SIZE_STEP) * SIZE_STEP),
        Some(size) if size < content + MIN_SLACK => bail!(
            "the rootfs needs at least {} MiB ({} bytes) in ext4, more than --root-size {} MiB ({size} bytes)",
            (content + MIN_SLACK).div_ceil(1 << 20),
            content + MIN_SLACK,
            size >> 20
        ),
        Some(size) => Ok(size),
    }
}

/// Compresses `image` into `OUTDIR/NAME.img.zst` and writes the manifest.
fn publish(
    opts: &BundleOptions,
    name: &str,
    image: &Path,
    key: Option<&wire::signature::SecretKey>,
    verity: Option<wire::verity::Verity>,
) -> Result<BundleOutput> {
    let image_name = format!("{name}.img.zst");
    let temp = |suffix: &str| {
        tempfile::Builder::new()
            .prefix(&format!(".{name}.{suffix}."))
            .permissions(Permissions::from_mode(0o644))
            .tempfile_in(&opts.out)
            .with_context(|| format!("create a temp file in {}", opts.out.display()))
    };
    let zst = temp("img.zst")?;
    let (chunks, digest, image_size) = compress(image, zst.as_file(), opts.chunk_size, opts.level)?;
    let manifest = Manifest {
        name: name.to_string(),
        os_version: opts.version.clone(),
        arch: "x86_64".to_string(),
        image: image_name.clone(),
        image_size,
        image_digest: wire::Digest::blake3(*digest.as_bytes()),
        compressed_size: chunks.iter().map(|c| c.zsize).sum(),
        chunk_size: opts.chunk_size,
        chunks,
        verity,
    };
    manifest
        .check()
        .map_err(anyhow::Error::msg)
        .context("the manifest just built")?;
    let json = temp("manifest.json")?;
    manifest.save(json.path())?;
    json.as_file().sync_all()?;
    // The signature covers the manifest's bytes exactly as written.
    let sig = match key {
        Some(key) => {
            let bytes = fs::read(json.path())?;
            let sig = crate::sign::sign_bytes(key, &bytes)?;
            let mut file = temp("manifest.json.sig")?;
            io::Write::write_all(&mut file, sig.to_json().as_bytes())?;
            file.as_file().sync_all()?;
            Some(file)
        }
        None => None,
    };
    // Image first, then the signature: a manifest with the final name always
    // has its image (and its signature, when signed) beside it.
    let image_path = opts.out.join(&image_name);
    let manifest_path = opts.out.join(format!("{name}.manifest.json"));
    let sig_path = crate::sign::sig_path(&manifest_path);
    zst.persist(&image_path)
        .with_context(|| format!("rename into {}", image_path.display()))?;
    let signature = match sig {
        Some(file) => {
            file.persist(&sig_path)
                .with_context(|| format!("rename into {}", sig_path.display()))?;
            Some(sig_path)
        }
        None => {
            // An older signature would not match this manifest.
            match fs::remove_file(&sig_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {}", sig_path.display()))
                }
                _ => None,
            }
        }
    };
    json.persist(&manifest_path)
        .with_context(|| format!("rename into {}", manifest_path.display()))?;
    File::open(&opts.out)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", opts.out.display()))?;
    log::info!(
        "wrote {} ({})",
        manifest_path.display(),
        manifest.image_digest
    );
    Ok(BundleOutput {
        image: image_path,
        manifest: manifest_path,
        signature,
        image_digest: manifest.image_digest.to_string(),
        image_size,
    })
}

/// One pass over the image: whole-image BLAKE3, chunk digests, zstd frames.
fn compress(
    image: &Path,
    out: &File,
    chunk_size: u64,
    level: i32,
) -> Result<(Vec<Chunk>, blake3::Hash, u64)> {
    let start = Instant::now();
    let file = File::open(image).with_context(|| format!("open {}", image.display()))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, HashingReader::new(file));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    let mut writer = ChunkWriter::new(out, chunk_size as usize, level, threads)?;
    io::copy(&mut reader, &mut writer).with_context(|| format!("compress {}", image.display()))?;
    let (out, chunks) = writer.finish().context("write the compressed image")?;
    out.sync_all().context("sync the compressed image")?;
    let (digest, size) = reader.into_inner().finish();
    let secs = start.elapsed().as_secs_f64();
    let compressed: u64 = chunks.iter().map(|c| c.zsize).sum();
    log::info!(
        "compressed {} MiB into {} MiB in {secs:.1} s ({:.0} MB/s), {} chunks",
        size >> 20,
        compressed >> 20,
        size as f64 / 1e6 / secs.max(1e-9),
        chunks.len()
    );
    Ok((chunks, digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BundleOptions {
        BundleOptions {
            rootfs: "/nonexistent".into(),
            version: "1.2".into(),
            out: "/nonexistent".into(),
            name: None,
            root_size: None,
            os_init: None,
            chunk_size: 4 << 20,
            level: 3,
            sign: None,
            no_verity: false,
            base: None,
        }
    }

    #[test]
    fn options_are_checked_before_any_work() {
        assert!(check_options(&opts(), "os-1.2").is_ok());
        let bad_version = BundleOptions {
            version: "1/2".into(),
            ..opts()
        };
        assert!(check_options(&bad_version, "os-1").is_err());
        assert!(check_options(&opts(), "a b").is_err());
        let odd_chunk = BundleOptions {
            chunk_size: 1000,
            ..opts()
        };
        assert!(check_options(&odd_chunk, "n").is_err());
        let odd_root = BundleOptions {
            root_size: Some(4097),
            ..opts()
        };
        assert!(check_options(&odd_root, "n").is_err());
    }

    #[test]
    fn out_inside_the_rootfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let err = check_out_not_in_rootfs(&rootfs.join("new/out"), &rootfs).unwrap_err();
        assert!(err.to_string().contains("is inside --rootfs"), "{err}");
        check_out_not_in_rootfs(&dir.path().join("out"), &rootfs).unwrap();
        check_out_not_in_rootfs(&rootfs.join("../out"), &rootfs).unwrap();
    }

    #[test]
    fn build_time_prefers_source_date_epoch() {
        assert_eq!(build_time(Some("1700000000"), 5).unwrap(), 1_700_000_000);
        assert_eq!(build_time(None, 5).unwrap(), 5);
        assert_eq!(build_time(None, 0).unwrap(), 1);
        assert!(build_time(Some("yesterday"), 5).is_err());
    }

    #[test]
    fn initramfs_time_is_the_newest_module_clamped_to_the_build_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mtime: i64| {
            let p = dir.path().join(name);
            fs::write(&p, name).unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            p
        };
        let (a, b) = (file("a.ko", 1_000), file("b.ko", 2_000));
        // Another build time (another release), the same modules: the same.
        assert_eq!(initramfs_time(5_000, &[&a, &b]).unwrap(), 2_000);
        assert_eq!(initramfs_time(9_000, &[&b, &a]).unwrap(), 2_000);
        // SOURCE_DATE_EPOCH before the modules' time clamps it.
        assert_eq!(initramfs_time(1_500, &[&a, &b]).unwrap(), 1_500);
        assert_eq!(initramfs_time(7, &[]).unwrap(), 7);
        let gone = dir.path().join("gone.ko");
        assert!(initramfs_time(7, &[&gone]).is_err());
    }

    #[test]
    fn sizes() {
        let stats = TreeStats {
            inodes: 1000,
            bytes: 100 << 20,
            newest_mtime: 0,
        };
        let content = content_bytes(&stats);
        let size = image_size(&stats, None).unwrap();
        assert_eq!(size % SIZE_STEP, 0);
        assert!(size >= content + content / 4 + HEADROOM);
        assert_eq!(image_size(&stats, Some(1 << 30)).unwrap(), 1 << 30);
        let err = image_size(&stats, Some(64 << 20)).unwrap_err().to_string();
        assert!(
            err.contains("103 MiB") && err.contains("--root-size 64 MiB"),
            "{err}"
        );
    }
}
