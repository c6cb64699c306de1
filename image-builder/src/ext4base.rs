//! `os-image bundle --base PREVIOUS`: the new root file system made from
//! the previous bundle's, so that unchanged files keep their blocks and a
//! node's delta download fetches little (docs/bundle.md, "Layout for small
//! deltas").
//!
//! 1. unpack the previous image (every chunk and the whole image checked
//!    against its manifest) and cut it where its ext4 ends;
//! 2. refuse to use it (fresh image instead, with a warning) unless it has
//!    the fresh image's identity (UUID, hash seed) and block size;
//! 3. grow it to the fresh image's size if smaller (resize2fs);
//! 4. read both trees (ext4tree.rs), remove what changed or went away, then
//!    hold every free block except the last free ranges that fit the new
//!    data, write new and changed files (which thus go at the end, not into
//!    the holes before), release the held blocks;
//! 5. set owners, modes, xattrs, every inode's times; zero the free blocks
//!    (removed files' data) in the chunks that changed anyway;
//! 6. check: `e2fsck -fn` clean and the tree equal to the fresh image's,
//!    field by field. Anything else: the fresh image is used, with a warning
//!    saying why.
//!
//! The fresh image (`mkfs.ext4 -d`, ext4.rs) is always made first: it is
//! the reference the result is checked against and the fallback.

use crate::ext4tree::{self, Entry, Tree, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crate::manifest::{Manifest, ManifestFile};
use crate::{ext4, tools, unpack};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Room kept free beside the new files' data, for directory and extent
/// blocks: a sixteenth plus 1 MiB.
fn blocks_needed(data_blocks: u64) -> u64 {
    data_blocks + data_blocks / 16 + 256
}

/// A previous bundle's ext4, unpacked, and what its chunks were.
pub struct Base {
    pub image: PathBuf,
    chunk_size: u64,
    digests: Vec<[u8; 32]>,
}

/// Unpacks the bundle of `manifest_path` into `out`, checked chunk by chunk
/// and whole against its manifest, and cuts it to its ext4 file system.
/// A base that fails here is refused: the caller named a bad bundle.
pub fn unpack_base(manifest_path: &Path, out: &Path) -> Result<Base> {
    let m = Manifest::load(manifest_path)?;
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("create {}", out.display()))?;
    unpack::write_image(&m, &m.image_path(manifest_path), &mut f, 0)
        .with_context(|| format!("unpack the base bundle {}", manifest_path.display()))?;
    let size = ext4_size(&mut f).with_context(|| {
        format!(
            "the base bundle {} holds no ext4 file system",
            manifest_path.display()
        )
    })?;
    if size > m.image_size {
        bail!(
            "base {}: ext4 of {size} bytes in an image of {}",
            manifest_path.display(),
            m.image_size
        );
    }
    f.set_len(size)?;
    f.sync_all()?;
    Ok(Base {
        image: out.to_path_buf(),
        chunk_size: m.chunk_size,
        digests: m.chunks.iter().map(|c| c.digest).collect(),
    })
}

/// Bytes the ext4 file system at the start of `f` covers (superblock
/// block count times block size).
fn ext4_size(f: &mut File) -> Result<u64> {
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xef53 {
        bail!("no ext4 superblock");
    }
    let le32 = |at: usize| u64::from(u32::from_le_bytes(sb[at..at + 4].try_into().unwrap()));
    let blocks = le32(0x150) << 32 | le32(0x04);
    Ok(blocks * (1024 << le32(0x18)))
}

/// Makes `base` (an unpacked previous image) hold the tree of `fresh`,
/// whose files come from `staging`. `Ok(false)`, with a warning logged,
/// when the base cannot be used: the caller then keeps `fresh`.
pub fn build_on_base(
    base: &Base,
    fresh: &Path,
    staging: &Path,
    time: u64,
    work: &Path,
) -> Result<bool> {
    match try_build(base, fresh, staging, time, work) {
        Ok(()) => Ok(true),
        Err(e) => {
            log::warn!(
                "--base not used, the image is made afresh (a delta from the base's \
                 nodes will be larger): {e:#}"
            );
            Ok(false)
        }
    }
}

fn try_build(b: &Base, fresh: &Path, staging: &Path, time: u64, work: &Path) -> Result<()> {
    let base = b.image.as_path();
    check_identity(base, fresh)?;
    let fresh_size = fs::metadata(fresh)?.len();
    if fs::metadata(base)?.len() < fresh_size {
        grow(base, fresh_size, time)?;
    }
    let want = ext4tree::read(fresh, work).context("read the fresh image's tree")?;
    let have = ext4tree::read(base, work).context("read the base image's tree")?;
    let plan = Plan::new(&have, &want);
    log::info!(
        "--base: {} paths kept, {} removed, {} written",
        want.entries.len() - plan.create.len(),
        plan.remove.len(),
        plan.create.len()
    );
    let untouched = plan.untouched_inodes(&have);
    run_debugfs(base, &plan.removals(&have)?, time, work)?;
    let held = hold_free_space(base, plan.data_blocks(&want))?;
    let xattrs = fetch_xattrs(fresh, &have, &want, &plan, work)?;
    let mut script = String::new();
    script.push_str(
        &held
            .iter()
            .map(|(a, n)| format!("setb {a} {n}\n"))
            .collect::<String>(),
    );
    script.push_str(&plan.creations(&want, staging, &xattrs)?);
    script.push_str(
        &held
            .iter()
            .map(|(a, n)| format!("freeb {a} {n}\n"))
            .collect::<String>(),
    );
    run_debugfs(base, &script, time, work)?;
    zero_free_blocks(b)?;
    // Unchanged files keep the base's times, so their inode table blocks
    // stay the base's bytes (a new time in every inode changed every inode
    // table chunk of each release); what was written or changed gets `time`.
    ext4::set_inode_times_except(base, time, false, &untouched, work)?;
    ext4::fsck(base)?;
    let got = ext4tree::read(base, work).context("read the built image's tree")?;
    let diff = got.differences(&want);
    if !diff.is_empty() {
        bail!(
            "the image built on the base differs from the fresh one at {} paths, first {:?}",
            diff.len(),
            &diff[..diff.len().min(5)]
        );
    }
    Ok(())
}

/// The base must have the fresh image's UUID, directory hash seed and
/// block and inode sizes: the same OS (identity from os-release `ID`) built
/// with the same settings.
fn check_identity(base: &Path, fresh: &Path) -> Result<()> {
    const FIELDS: [&str; 4] = [
        "Filesystem UUID:",
        "Directory Hash Seed:",
        "Block size:",
        "Inode size:",
    ];
    let header = |image: &Path| -> Result<Vec<String>> {
        let mut cmd = tools::command("dumpe2fs")?;
        let out = tools::run(cmd.arg("-h").arg(image))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .lines()
            .filter(|l| FIELDS.iter().any(|f| l.starts_with(f)))
            .map(str::to_owned)
            .collect())
    };
    let (b, f) = (header(base)?, header(fresh)?);
    if b != f || f.len() != FIELDS.len() {
        bail!("the base is another file system ({b:?}, the new image has {f:?})");
    }
    Ok(())
}

fn grow(image: &Path, size: u64, time: u64) -> Result<()> {
    File::options()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("grow {}", image.display()))?;
    let mut cmd = tools::command("resize2fs")?;
    cmd.env("E2FSPROGS_FAKE_TIME", time.to_string())
        .arg("-f")
        .arg(image)
        .arg(format!("{}k", size / 1024));
    tools::run(&mut cmd).map(drop)
}

/// What changes between the base's tree and the new one.
struct Plan {
    /// Paths of the base to remove, children before their directory.
    remove: Vec<String>,
    /// Paths of the new tree to make, parents before their children.
    create: Vec<String>,
    /// Paths kept whose owner, mode or xattrs change (set in place: the
    /// data keeps its blocks).
    retouch: Vec<String>,
}

impl Plan {
    fn new(have: &Tree, want: &Tree) -> Plan {
        let mut remove = Vec::new();
        let mut gone_dirs: Vec<&str> = Vec::new();
        for (path, e) in &have.entries {
            let under_gone = gone_dirs.last().is_some_and(|d| {
                path.starts_with(d) && path.as_bytes().get(d.len()) == Some(&b'/')
            });
            let keep = !under_gone
                && match want.entries.get(path) {
                    Some(w) if e.is_dir() => w.is_dir(),
                    Some(_) => have.same_data(want, path),
                    None => false,
                };
            if !keep {
                if e.is_dir() && !under_gone {
                    gone_dirs.push(path);
                }
                remove.push(path.clone());
            }
        }
        remove.reverse();
        let removed: std::collections::HashSet<&String> = remove.iter().collect();
        let kept = |p: &String| have.entries.contains_key(p) && !removed.contains(p);
        let create = want.entries.keys().filter(|p| !kept(p)).cloned().collect();
        let retouch = want
            .entries
            .iter()
            .filter(|(p, w)| {
                kept(p) && {
                    let h = &have.entries[*p];
                    (h.mode, h.uid, h.gid, &h.inline) != (w.mode, w.uid, w.gid, &w.inline)
                }
            })
            .map(|(p, _)| p.clone())
            .collect();
        Plan {
            remove,
            create,
            retouch,
        }
    }

    /// Inodes of the base this plan leaves as they were: every path of the
    /// inode kept and not retouched, and for a directory no entry made or
    /// removed in it. (A removed inode's number may come back for a new
    /// file: removed inodes are never in the set.)
    fn untouched_inodes(&self, have: &Tree) -> std::collections::HashSet<u32> {
        use std::collections::HashSet;
        let changed_dirs: HashSet<&Path> = self
            .create
            .iter()
            .chain(&self.remove)
            .filter_map(|p| Path::new(p).parent())
            .collect();
        let removed: HashSet<&str> = self.remove.iter().map(String::as_str).collect();
        let retouched: HashSet<&str> = self.retouch.iter().map(String::as_str).collect();
        let (mut keep, mut spoiled) = (HashSet::new(), HashSet::new());
        for (p, e) in &have.entries {
            let touched = removed.contains(p.as_str())
                || retouched.contains(p.as_str())
                || (e.is_dir() && changed_dirs.contains(Path::new(p)));
            if touched {
                spoiled.insert(e.ino);
            } else {
                keep.insert(e.ino);
            }
        }
        keep.retain(|i| !spoiled.contains(i));
        keep
    }

    /// Blocks of data the files to write need.
    fn data_blocks(&self, want: &Tree) -> u64 {
        let data: u64 = self
            .create
            .iter()
            .map(|p| &want.entries[p])
            .filter(|e| !e.is_dir())
            .map(|e| e.size.div_ceil(ext4::BLOCK_SIZE))
            .sum();
        let dirs = self.create.len() as u64;
        blocks_needed(data + dirs)
    }

    fn removals(&self, have: &Tree) -> Result<String> {
        let mut s = String::new();
        for p in &self.remove {
            let verb = if have.entries[p].is_dir() {
                "rmdir"
            } else {
                "rm"
            };
            writeln!(s, "{verb} {}", quote(p)?)?;
        }
        Ok(s)
    }

    /// The debugfs commands that make every path of `create` and set the
    /// metadata of those and of `retouch`.
    fn creations(&self, want: &Tree, staging: &Path, xattrs: &XattrFiles) -> Result<String> {
        let mut s = String::new();
        let mut first_link: std::collections::HashMap<u32, &str> = Default::default();
        for p in &self.create {
            let e = &want.entries[p];
            let q = quote(p)?;
            match e.mode & S_IFMT {
                S_IFDIR => writeln!(s, "mkdir {q}")?,
                S_IFREG => match first_link.get(&e.ino) {
                    Some(first) => writeln!(s, "ln {} {q}", quote(first)?)?,
                    None => {
                        let src = staging.join(p.trim_start_matches('/'));
                        writeln!(s, "write {} {q}", quote_path(&src)?)?;
                        first_link.insert(e.ino, p);
                    }
                },
                S_IFLNK => {
                    let target = fs::read_link(staging.join(p.trim_start_matches('/')))
                        .with_context(|| format!("read the symlink {p} in staging"))?;
                    writeln!(s, "symlink {q} {}", quote_path(&target)?)?;
                }
                _ => s.push_str(&mknod(p, e)?),
            }
        }
        for p in self.create.iter().chain(&self.retouch) {
            let e = &want.entries[p];
            let q = quote(p)?;
            writeln!(s, "sif {q} mode 0{:o}", e.mode)?;
            writeln!(s, "sif {q} uid {}\nsif {q} gid {}", e.uid, e.gid)?;
            if !e.is_dir() {
                let links = want.links_of(p).len() + 1;
                writeln!(s, "sif {q} links_count {links}")?;
            }
            for name in xattrs.names_to_remove(p) {
                writeln!(s, "ea_rm {q} {}", quote(name)?)?;
            }
            for (name, file) in xattrs.values_of(p) {
                writeln!(s, "ea_set -f {} {q} {}", quote_path(file)?, quote(name)?)?;
            }
        }
        Ok(s)
    }
}

/// `mknod` takes a name in the current directory, not a path.
fn mknod(path: &str, e: &Entry) -> Result<String> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    let kind = match e.mode & S_IFMT {
        0o010000 => "p".to_owned(),
        t @ (0o020000 | 0o060000) => {
            let dev = e
                .inline
                .iter()
                .find_map(|l| l.strip_prefix("Device major/minor number: "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|mm| mm.split_once(':'))
                .context(format!("no device numbers for {path}"))?;
            let (maj, min) = (
                u32::from_str_radix(dev.0, 16)?,
                u32::from_str_radix(dev.1, 16)?,
            );
            format!("{} {maj} {min}", if t == 0o020000 { "c" } else { "b" })
        }
        _ => bail!("{path}: sockets and unknown file types are not copied"),
    };
    Ok(format!(
        "cd {}\nmknod {} {kind}\ncd /\n",
        quote(dir)?,
        quote(name)?
    ))
}

/// debugfs splits its commands at blanks; double quotes group. Names it
/// cannot take are refused (the image is then made afresh).
fn quote(s: &str) -> Result<String> {
    if s.is_empty() || s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        bail!("file name {s:?} cannot be passed to debugfs");
    }
    Ok(format!("\"{s}\""))
}

fn quote_path(p: &Path) -> Result<String> {
    quote(
        p.to_str()
            .context(format!("{} is not UTF-8", p.display()))?,
    )
}

/// Extended attribute values of the new tree, read from the fresh image
/// into files for `ea_set -f`.
struct XattrFiles {
    values: std::collections::HashMap<String, Vec<(String, PathBuf)>>,
    /// Names a kept directory has on the base.
    stale: std::collections::HashMap<String, Vec<String>>,
}

impl XattrFiles {
    fn values_of(&self, path: &str) -> &[(String, PathBuf)] {
        self.values.get(path).map_or(&[], Vec::as_slice)
    }

    fn names_to_remove(&self, path: &str) -> &[String] {
        self.stale.get(path).map_or(&[], Vec::as_slice)
    }
}

fn fetch_xattrs(
    fresh: &Path,
    have: &Tree,
    want: &Tree,
    plan: &Plan,
    work: &Path,
) -> Result<XattrFiles> {
    let dir = work.join("xattrs");
    fs::create_dir_all(&dir)?;
    let mut files = XattrFiles {
        values: Default::default(),
        stale: Default::default(),
    };
    for p in &plan.retouch {
        files.stale.insert(p.clone(), have.entries[p].xattr_names());
    }
    let mut script = String::new();
    for p in plan.create.iter().chain(&plan.retouch) {
        let e = &want.entries[p];
        for name in e.xattr_names() {
            let file = dir.join(
                files
                    .values
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    .to_string(),
            );
            writeln!(
                script,
                "ea_get -f {} <{}> {}",
                quote_path(&file)?,
                e.ino,
                quote(&name)?
            )?;
            files
                .values
                .entry(p.clone())
                .or_default()
                .push((name, file));
        }
    }
    if !script.is_empty() {
        let cmds = work.join("xattrs.cmds");
        fs::write(&cmds, script)?;
        let mut cmd = tools::command("debugfs")?;
        let out = tools::run(cmd.arg("-f").arg(&cmds).arg(fresh))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(err) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
            bail!(
                "debugfs reading xattrs of {} failed: {err}",
                fresh.display()
            );
        }
    }
    Ok(files)
}

/// Runs a `debugfs -w` script; any message on stderr is a failure.
fn run_debugfs(image: &Path, script: &str, time: u64, work: &Path) -> Result<()> {
    let file = work.join("base.cmds");
    fs::write(&file, script).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = tools::command("debugfs")?;
    cmd.env("E2FSPROGS_FAKE_TIME", time.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&file)
        .arg(image);
    let out = tools::run(&mut cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(err) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        bail!("debugfs on {} failed: {err}", image.display());
    }
    Ok(())
}

/// The free block ranges of `image` to hold while new files are written,
/// `(first, count)`: all but the last ones, which together hold `needed`
/// blocks. New data then goes after the data that stays, and the blocks
/// of removed files stay free, so nothing that stays moves.
fn hold_free_space(image: &Path, needed: u64) -> Result<Vec<(u64, u64)>> {
    let mut cmd = tools::command("dumpe2fs")?;
    let out = tools::run(cmd.arg(image))?;
    let free = free_ranges(&String::from_utf8_lossy(&out.stdout))?;
    Ok(ranges_to_hold(&free, needed))
}

/// Removed files leave their data in blocks now free. In a chunk that is
/// still the base's, it stays (nodes hold that chunk: zeroing it would make
/// them fetch it); in a chunk that changed anyway it is zeroed, as free
/// blocks are in a fresh image, so that the chunk compresses better.
fn zero_free_blocks(base: &Base) -> Result<()> {
    use std::io::Write;
    let image = &base.image;
    let unchanged = unchanged_chunks(base)?;
    let mut cmd = tools::command("dumpe2fs")?;
    let out = tools::run(cmd.arg(image))?;
    let free = free_ranges(&String::from_utf8_lossy(&out.stdout))?;
    let mut f = File::options()
        .write(true)
        .open(image)
        .with_context(|| format!("open {}", image.display()))?;
    let zeros = vec![0u8; ext4::BLOCK_SIZE as usize];
    for (first, count) in free {
        for block in first..first + count {
            let at = block * ext4::BLOCK_SIZE;
            if unchanged.get((at / base.chunk_size) as usize) == Some(&true) {
                continue;
            }
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&zeros)
                .with_context(|| format!("zero free blocks of {}", image.display()))?;
        }
    }
    f.sync_all()?;
    Ok(())
}

/// Per chunk of the base's chunk size: does the image still hold the base's chunk?
fn unchanged_chunks(base: &Base) -> Result<Vec<bool>> {
    let mut f =
        File::open(&base.image).with_context(|| format!("open {}", base.image.display()))?;
    let mut buf = vec![0u8; base.chunk_size as usize];
    let mut same = Vec::new();
    for digest in &base.digests {
        let n = read_full(&mut f, &mut buf)
            .with_context(|| format!("read {}", base.image.display()))?;
        if n == 0 {
            break;
        }
        same.push(blake3::hash(&buf[..n]).as_bytes() == digest);
    }
    Ok(same)
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `Free blocks: A-B, C, ...` lines of dumpe2fs, merged where adjacent.
fn free_ranges(dumpe2fs: &str) -> Result<Vec<(u64, u64)>> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for line in dumpe2fs.lines() {
        // Group lines are indented; the header's `Free blocks:` is a count.
        let Some(list) = line.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for item in list.split(", ").filter(|s| !s.is_empty()) {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (a, b): (u64, u64) = (
                a.trim()
                    .parse()
                    .context(format!("dumpe2fs range {item:?}"))?,
                b.trim()
                    .parse()
                    .context(format!("dumpe2fs range {item:?}"))?,
            );
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == a => last.1 += b - a + 1,
                _ => ranges.push((a, b - a + 1)),
            }
        }
    }
    Ok(ranges)
}

fn ranges_to_hold(free: &[(u64, u64)], needed: u64) -> Vec<(u64, u64)> {
    let mut room = 0;
    let mut keep_from = free.len();
    while keep_from > 0 && room < needed {
        keep_from -= 1;
        room += free[keep_from].1;
    }
    free[..keep_from].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ranges_merge_across_groups() {
        let text = "Free blocks:              9834\nGroup 0:\n  Free blocks: 10-19, 30\nGroup 1:\n  Free blocks: 31-40\n  Free inodes: 1-5\n  Free blocks: \n";
        assert_eq!(free_ranges(text).unwrap(), [(10, 10), (30, 11)]);
    }

    #[test]
    fn the_last_ranges_that_fit_stay_free() {
        let free = [(10, 10), (30, 5), (100, 50)];
        assert_eq!(ranges_to_hold(&free, 40), [(10, 10), (30, 5)]);
        assert_eq!(ranges_to_hold(&free, 52), [(10, 10)]);
        assert!(ranges_to_hold(&free, 1000).is_empty());
    }

    #[test]
    fn untouched_inodes_are_the_kept_files_and_unchanged_directories() {
        let entry = |ino: u32, mode: u32, content: u8| ext4tree::Entry {
            ino,
            mode,
            uid: 0,
            gid: 0,
            size: if mode == 0o40755 { 0 } else { 1 },
            inline: Vec::new(),
            content: (mode != 0o40755).then_some([content; 32]),
        };
        let tree = |e: &[(&str, ext4tree::Entry)]| Tree {
            entries: e.iter().map(|(p, e)| (p.to_string(), e.clone())).collect(),
        };
        let dir = 0o40755;
        let have = tree(&[
            ("/", entry(2, dir, 0)),
            ("/etc", entry(12, dir, 0)),
            ("/etc/kept", entry(13, 0o100644, 1)),
            ("/etc/changed", entry(14, 0o100644, 2)),
            ("/usr", entry(15, dir, 0)),
            ("/usr/same", entry(16, 0o100644, 3)),
            ("/usr/chmod", entry(17, 0o100644, 4)),
            ("/usr/link1", entry(18, 0o100644, 5)),
            ("/usr/lib", entry(19, dir, 0)),
            ("/usr/lib/link2", entry(18, 0o100644, 5)),
        ]);
        let mut want = have.clone();
        // New content for /etc/changed: removed and written again, so /etc
        // changes; /usr/chmod only gets another mode (retouched).
        want.entries.get_mut("/etc/changed").unwrap().content = Some([9; 32]);
        want.entries.get_mut("/usr/chmod").unwrap().mode = 0o100755;
        // A hard link's other path goes: both paths' inode is spoiled.
        want.entries.remove("/usr/lib/link2");
        let plan = Plan::new(&have, &want);
        let keep = plan.untouched_inodes(&have);
        let mut keep: Vec<u32> = keep.into_iter().collect();
        keep.sort();
        // Kept: / (no entry of its own made or removed), /etc/kept,
        // /usr/same. Not: /etc (an entry replaced), /etc/changed, /usr/chmod
        // (retouched), inode 18 (/usr/link1 is written again: its links
        // changed), so not /usr either, nor /usr/lib (its entry removed).
        assert_eq!(keep, [2, 13, 16]);
    }

    #[test]
    fn quoting_refuses_what_debugfs_cannot_parse() {
        assert_eq!(quote("/a b").unwrap(), "\"/a b\"");
        assert!(quote("/a\"b").is_err());
        assert!(quote("/a\nb").is_err());
    }
}
