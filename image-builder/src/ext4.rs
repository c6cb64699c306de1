//! The ext4 root image, made rootless with `mkfs.ext4 -d` and made
//! deterministic: the same staging tree gives the same bytes.
//!
//! What would otherwise vary, and how it is pinned:
//! - the host's /etc/mke2fs.conf: replaced by our own ([`MKE2FS_CONF`]);
//! - UUID and directory hash seed: derived from the bundle name and version;
//! - superblock times, root and lost+found: `E2FSPROGS_FAKE_TIME`;
//! - inode times: mke2fs 1.47 copies atime/mtime/ctime from the staging
//!   files, and ctime cannot be set on Linux, so afterwards every inode's
//!   times are set with `debugfs` (one script, by inode number, see
//!   [`used_inodes`]);
//! - file owners when not built as root: set to 0:0 the same way.
//!
//! No journal: the root is mounted read-only, and nothing is ever replayed.

use crate::tools;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Replaces /etc/mke2fs.conf so the image does not depend on the build host's.
/// The features are those of Debian 12's ext4 minus the journal and the
/// online-resize reservation, all read by GRUB 2.06 and Linux 4.x and later.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\thash_alg = half_md4
\tflex_bg_size = 16
\treserved_ratio = 0
\tlazy_itable_init = false
\tlazy_journal_init = false

[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^has_journal,^resize_inode
\t}
\tos_root = {
\t\tinode_ratio = 16384
\t}
";
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes per inode table entry (`inode_size`).
pub const INODE_SIZE: u64 = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Params {
    /// Image size in bytes, a multiple of [`BLOCK_SIZE`].
    pub size: u64,
    pub inodes: u64,
    pub uuid: String,
    pub hash_seed: String,
    /// Every timestamp in the filesystem, seconds since the epoch (> 0).
    pub time: u64,
    /// Set every file's owner to 0:0 (staging copied without root).
    pub owners_to_root: bool,
}

/// A UUID (version 4 layout) derived from `purpose`, `name` and `version`.
pub fn derived_uuid(purpose: &str, name: &str, version: &str) -> String {
    let material = format!("{purpose}\0{name}\0{version}");
    let mut b = blake3::derive_key("ab-os os-image 2025 ext4 identifiers", material.as_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The mkfs.ext4 arguments for `params`.
pub fn mkfs_args(params: &Ext4Params, staging: &Path, image: &Path) -> Vec<OsString> {
    let extended = format!("hash_seed={},root_owner=0:0", params.hash_seed);
    let (block, inodes) = (BLOCK_SIZE.to_string(), params.inodes.to_string());
    let fixed = [
        "-q", "-F", "-t", "ext4", "-T", "os_root", "-b", &block, "-N", &inodes,
    ];
    let mut args: Vec<OsString> = fixed.iter().map(OsString::from).collect();
    args.extend(["-U", &params.uuid, "-E", &extended, "-d"].map(OsString::from));
    args.extend([staging.as_os_str(), image.as_os_str()].map(OsString::from));
    args.push(format!("{}k", params.size / 1024).into());
    args
}

/// Makes the image at `image` from `staging`; `work` holds scratch files.
pub fn make(image: &Path, staging: &Path, params: &Ext4Params, work: &Path) -> Result<()> {
    if params.size % BLOCK_SIZE != 0 || params.time == 0 {
        bail!(
            "ext4 image size {} is not a multiple of {BLOCK_SIZE} or time is 0",
            params.size
        );
    }
    File::create(image)
        .and_then(|f| f.set_len(params.size))
        .with_context(|| format!("create {}", image.display()))?;
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).with_context(|| format!("write {}", conf.display()))?;
    let mut mkfs = tools::command("mkfs.ext4")?;
    mkfs.env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", params.time.to_string())
        .args(mkfs_args(params, staging, image));
    if let Err(e) = tools::run(&mut mkfs) {
        if format!("{e:#}").contains("Could not allocate") {
            return Err(e.context(format!(
                "the rootfs does not fit in a {}-byte ext4 image",
                params.size
            )));
        }
        return Err(e);
    }
    fix_inodes(image, params, work)?;
    fsck(image)
}

/// Sets the times (and owners) of every inode mke2fs copied from staging.
fn fix_inodes(image: &Path, params: &Ext4Params, work: &Path) -> Result<()> {
    set_inode_times(image, params.time, params.owners_to_root, work)
}

/// Sets atime, ctime and mtime of every used inode of `image` to `t` (and
/// owners to 0:0 when asked): mke2fs -d takes the change time from the
/// staged files, which no one can set.
pub fn set_inode_times(image: &Path, t: u64, owners_to_root: bool, work: &Path) -> Result<()> {
    set_inode_times_except(image, t, owners_to_root, &HashSet::new(), work)
}

/// [`set_inode_times`] for every used inode but those in `keep`, whose times
/// (and inode table bytes) stay as they are.
pub fn set_inode_times_except(
    image: &Path,
    t: u64,
    owners_to_root: bool,
    keep: &HashSet<u32>,
    work: &Path,
) -> Result<()> {
    let script = work.join("debugfs.cmds");
    let mut inodes = used_inodes(image)?;
    inodes.retain(|i| !keep.contains(i));
    let mut out = BufWriter::new(
        File::create(&script).with_context(|| format!("create {}", script.display()))?,
    );
    for ino in &inodes {
        write!(
            out,
            "sif <{ino}> atime @{t}\nsif <{ino}> ctime @{t}\nsif <{ino}> mtime @{t}\n"
        )?;
        if owners_to_root {
            write!(out, "sif <{ino}> uid 0\nsif <{ino}> gid 0\n")?;
        }
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("write {}", script.display()))?;
    let mut debugfs = tools::command("debugfs")?;
    debugfs
        .env("E2FSPROGS_FAKE_TIME", t.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image);
    let output = tools::run(&mut debugfs)?;
    // debugfs exits 0 even when a command fails; its errors go to stderr.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(err) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        bail!("debugfs on {} failed: {err}", image.display());
    }
    log::debug!(
        "set times of {} inodes in {}",
        inodes.len(),
        image.display()
    );
    Ok(())
}

/// `e2fsck -fn`: the image must be clean.
pub fn fsck(image: &Path) -> Result<()> {
    let mut cmd = tools::command("e2fsck")?;
    cmd.arg("-fn").arg(image);
    let out = cmd
        .output()
        .with_context(|| format!("run e2fsck on {}", image.display()))?;
    if !out.status.success() {
        bail!(
            "e2fsck -fn {} found problems ({}): {}{}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The superblock fields needed to walk the inode bitmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    block_size: u64,
    first_data_block: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    first_ino: u32,
    desc_size: u64,
}

const EXT4_MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;
/// Group flag: inode bitmap never initialized, i.e. all its inodes are free.
const BG_INODE_UNINIT: u16 = 0x1;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn parse_superblock(sb: &[u8; 1024]) -> Result<Superblock> {
    if le16(sb, 0x38) != EXT4_MAGIC {
        bail!("no ext4 superblock");
    }
    let is_64bit = le32(sb, 0x60) & INCOMPAT_64BIT != 0;
    let desc_size = if is_64bit {
        u64::from(le16(sb, 0xfe))
    } else {
        32
    };
    let s = Superblock {
        block_size: 1024u64 << le32(sb, 0x18),
        first_data_block: u64::from(le32(sb, 0x14)),
        inodes_count: le32(sb, 0x00),
        inodes_per_group: le32(sb, 0x28),
        first_ino: le32(sb, 0x54),
        desc_size,
    };
    if s.inodes_per_group == 0 || s.desc_size < 32 || s.block_size > 65536 {
        bail!("unexpected ext4 superblock values {s:?}");
    }
    Ok(s)
}

/// Inode numbers in use from the first non-reserved one (`s_first_ino`, 11:
/// lost+found) on, read from the image's inode bitmaps.
pub fn used_inodes(image: &Path) -> Result<Vec<u32>> {
    let mut f = File::open(image).with_context(|| format!("open {}", image.display()))?;
    let read = |f: &mut File, at: u64, buf: &mut [u8]| -> std::io::Result<()> {
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(buf)
    };
    let mut sb = [0u8; 1024];
    read(&mut f, 1024, &mut sb)
        .with_context(|| format!("read the superblock of {}", image.display()))?;
    let s = parse_superblock(&sb).with_context(|| image.display().to_string())?;
    let groups = s.inodes_count.div_ceil(s.inodes_per_group) as usize;
    let mut gdt = vec![0u8; groups * s.desc_size as usize];
    let gdt_at = (s.first_data_block + 1) * s.block_size;
    read(&mut f, gdt_at, &mut gdt)
        .with_context(|| format!("read group descriptors of {}", image.display()))?;
    let mut bitmap = vec![0u8; s.inodes_per_group.div_ceil(8) as usize];
    let mut used = Vec::new();
    for (g, desc) in gdt.chunks_exact(s.desc_size as usize).enumerate() {
        if le16(desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = if s.desc_size >= 64 {
            u64::from(le32(desc, 0x24))
        } else {
            0
        };
        let block = hi << 32 | u64::from(le32(desc, 0x04));
        read(&mut f, block * s.block_size, &mut bitmap)
            .with_context(|| format!("read inode bitmap {g} of {}", image.display()))?;
        let base = g as u32 * s.inodes_per_group + 1;
        let set =
            (0..s.inodes_per_group).filter(|i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0);
        used.extend(set.map(|i| base + i).filter(|&ino| ino >= s.first_ino));
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_distinct_and_well_formed() {
        let a = derived_uuid("uuid", "os-1", "1");
        assert_eq!(a, derived_uuid("uuid", "os-1", "1"));
        assert_ne!(a, derived_uuid("uuid", "os-2", "2"));
        assert_ne!(a, derived_uuid("hash_seed", "os-1", "1"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn size_argument_is_in_kib() {
        let p = Ext4Params {
            size: 64 << 20,
            inodes: 100,
            uuid: "u".into(),
            hash_seed: "h".into(),
            time: 1,
            owners_to_root: false,
        };
        let args = mkfs_args(&p, Path::new("/s"), Path::new("/i"));
        let tail: Vec<_> = args[args.len() - 3..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(tail, ["/s", "/i", "65536k"]);
    }

    #[test]
    fn superblock_parse_checks_magic() {
        let mut sb = [0u8; 1024];
        assert!(parse_superblock(&sb).is_err());
        sb[0x38..0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x28..0x2c].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x18] = 2;
        let s = parse_superblock(&sb).unwrap();
        assert_eq!((s.block_size, s.desc_size), (4096, 32));
    }

    /// Used inodes as e2fsprogs counts them: total minus free, minus the
    /// reserved ones below lost+found.
    fn used_per_superblock(image: &Path) -> u32 {
        let mut sb = [0u8; 1024];
        let mut f = File::open(image).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut sb).unwrap();
        le32(&sb, 0) - le32(&sb, 0x10) - (le32(&sb, 0x54) - 1)
    }

    #[test]
    fn real_image_is_deterministic_with_times_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s");
        std::fs::create_dir_all(staging.join("etc/sub")).unwrap();
        std::fs::write(staging.join("etc/a"), "a").unwrap();
        std::os::unix::fs::symlink("a", staging.join("etc/l")).unwrap();
        let params = Ext4Params {
            size: 16 << 20,
            inodes: 64,
            uuid: derived_uuid("uuid", "t", "1"),
            hash_seed: derived_uuid("hash_seed", "t", "1"),
            time: 1_700_000_000,
            owners_to_root: true,
        };
        let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
        make(&a, &staging, &params, dir.path()).unwrap();
        // A later ctime and atime on the staging files must not show.
        std::fs::write(staging.join("etc/a"), "a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make(&b, &staging, &params, dir.path()).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "images differ"
        );
        let used = used_inodes(&a).unwrap();
        assert_eq!(used.len() as u32, used_per_superblock(&a));
        assert_eq!(used[0], 11, "lost+found first");
        let mut cmd = tools::command("debugfs").unwrap();
        let out = tools::run(cmd.arg("-R").arg("stat /etc/a").arg(&a)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("0x6553f100:00000000").count(), 4, "{text}");
        assert!(text.contains("User:     0   Group:     0"), "{text}");
    }
}
