//! The file tree of an ext4 image as `debugfs` reads it, rootless: every
//! path with its type, mode, owner, size, content digest, symlink target,
//! device numbers, extended attributes and hard links. Used by
//! [`crate::ext4base`] to see what a previous image holds and to check that
//! an image built from it holds exactly what a fresh one does.
//!
//! Times are left out (every inode gets the bundle's time afterwards), and
//! so is `/lost+found` (mkfs makes it, e2fsck checks it).

use crate::tools;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// `S_IFMT` and the types, as ext4 stores them in `i_mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Inode number in its image (not compared: images differ there).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File size; 0 for directories (their size depends on the layout).
    pub size: u64,
    /// Lines of `debugfs stat` that describe content kept in the inode:
    /// fast symlink target, device numbers, extended attributes.
    pub inline: Vec<String>,
    /// BLAKE3 of the data of regular files and slow symlinks.
    pub content: Option<[u8; 32]>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// Names of the extended attributes, from the `stat` lines.
    pub fn xattr_names(&self) -> Vec<String> {
        let mut in_xattrs = false;
        let mut names = Vec::new();
        for line in &self.inline {
            if line == "Extended attributes:" {
                in_xattrs = true;
            } else if let (true, Some(rest)) = (in_xattrs, line.strip_prefix("  ")) {
                if let Some((name, _)) = rest.split_once(" (") {
                    names.push(name.to_owned());
                }
            } else {
                in_xattrs = false;
            }
        }
        names
    }
}

/// Path (`/`, `/etc/hosts`) to entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

impl Tree {
    /// Other paths of the same inode (hard links), sorted.
    pub fn links_of(&self, path: &str) -> Vec<&str> {
        let Some(e) = self.entries.get(path) else {
            return Vec::new();
        };
        if e.is_dir() {
            return Vec::new();
        }
        self.by_inode()
            .remove(&e.ino)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != path)
            .collect()
    }

    /// Inode number to its non-directory paths, sorted.
    pub fn by_inode(&self) -> HashMap<u32, Vec<&str>> {
        let mut map: HashMap<u32, Vec<&str>> = HashMap::new();
        for (p, e) in self.entries.iter().filter(|(_, e)| !e.is_dir()) {
            map.entry(e.ino).or_default().push(p);
        }
        map
    }

    /// The same file at `path` in both trees: every compared field and the
    /// same hard links.
    pub fn same_file(&self, other: &Tree, path: &str) -> bool {
        match (self.entries.get(path), other.entries.get(path)) {
            (Some(a), Some(b)) => {
                let strip = |e: &Entry| Entry {
                    ino: 0,
                    ..e.clone()
                };
                strip(a) == strip(b) && self.links_of(path) == other.links_of(path)
            }
            _ => false,
        }
    }

    /// The same data at `path` in both trees (type, size, content, symlink
    /// target, device numbers, hard links); mode, owner and xattrs may differ.
    pub fn same_data(&self, other: &Tree, path: &str) -> bool {
        fn data(e: &Entry) -> (u32, u64, Option<[u8; 32]>, Vec<&String>) {
            let inline = e
                .inline
                .iter()
                .filter(|l| l.starts_with("Fast link") || l.starts_with("Device"))
                .collect();
            (e.mode & S_IFMT, e.size, e.content, inline)
        }
        match (self.entries.get(path), other.entries.get(path)) {
            (Some(a), Some(b)) => data(a) == data(b) && self.links_of(path) == other.links_of(path),
            _ => false,
        }
    }

    /// Every path where the trees differ (missing on one side or not the
    /// same file), sorted; empty when they are equal.
    pub fn differences(&self, other: &Tree) -> Vec<String> {
        let mut paths: Vec<&String> = self.entries.keys().chain(other.entries.keys()).collect();
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .filter(|p| !self.same_file(other, p))
            .cloned()
            .collect()
    }
}

/// Reads the tree of `image`; `work` holds the dumped file data for a moment.
pub fn read(image: &Path, work: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    tree.entries
        .insert("/".into(), bare_entry(2, S_IFDIR | 0o755));
    let mut level = vec![("/".to_owned(), 2u32)];
    while !level.is_empty() {
        let mut script = String::new();
        for (_, ino) in &level {
            writeln!(script, "ls -p <{ino}>")?;
        }
        let out = debugfs(image, &script, work)?;
        let sections = split_sections(&out, "ls -p <")?;
        if sections.len() != level.len() {
            bail!(
                "debugfs listed {} of {} directories",
                sections.len(),
                level.len()
            );
        }
        let mut next = Vec::new();
        for ((dir, _), lines) in level.iter().zip(sections) {
            for line in lines.into_iter().filter(|l| !l.is_empty()) {
                let (ino, mode, uid, gid, name, size) = parse_ls_line(line)?;
                if name == "." || name == ".." || (dir == "/" && name == "lost+found") {
                    continue;
                }
                let path = if dir == "/" {
                    format!("/{name}")
                } else {
                    format!("{dir}/{name}")
                };
                let mut e = bare_entry(ino, mode);
                (e.uid, e.gid, e.size) = (uid, gid, if e.is_dir() { 0 } else { size });
                if e.is_dir() {
                    next.push((path.clone(), ino));
                }
                tree.entries.insert(path, e);
            }
        }
        level = next;
    }
    add_stat_lines(image, &mut tree, work)?;
    add_contents(image, &mut tree, work)?;
    Ok(tree)
}

fn bare_entry(ino: u32, mode: u32) -> Entry {
    Entry {
        ino,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        inline: Vec::new(),
        content: None,
    }
}

/// Runs a read-only `debugfs -f` script on `image`, returns its stdout.
fn debugfs(image: &Path, script: &str, work: &Path) -> Result<String> {
    let file = work.join("tree.cmds");
    std::fs::write(&file, script).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = tools::command("debugfs")?;
    cmd.arg("-f").arg(&file).arg(image);
    let out = tools::run(&mut cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(err) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        bail!("debugfs reading {} failed: {err}", image.display());
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("debugfs output for {} is not UTF-8", image.display()))
}

/// The output lines of each `debugfs: COMMAND` whose command starts with `prefix`.
fn split_sections<'a>(out: &'a str, prefix: &str) -> Result<Vec<Vec<&'a str>>> {
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in out.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            if !cmd.starts_with(prefix) {
                bail!("unexpected debugfs command echo {line:?}");
            }
            sections.push(Vec::new());
        } else if let Some(s) = sections.last_mut() {
            s.push(line);
        } else if !line.is_empty() {
            bail!("debugfs output before the first command: {line:?}");
        }
    }
    Ok(sections)
}

/// One line of `ls -p`: `/INO/MODE/UID/GID/NAME/SIZE/` (SIZE empty for
/// directories).
fn parse_ls_line(line: &str) -> Result<(u32, u32, u32, u32, &str, u64)> {
    let bad = || anyhow::anyhow!("unexpected `debugfs ls -p` line {line:?}");
    let rest = line.strip_prefix('/').ok_or_else(bad)?;
    let mut f = rest.splitn(5, '/');
    let mut num = |radix| {
        f.next()
            .and_then(|s| u32::from_str_radix(s, radix).ok())
            .ok_or_else(bad)
    };
    let (ino, mode, uid, gid) = (num(10)?, num(8)?, num(10)?, num(10)?);
    let tail = f
        .next()
        .ok_or_else(bad)?
        .strip_suffix('/')
        .ok_or_else(bad)?;
    let (name, size) = tail.rsplit_once('/').ok_or_else(bad)?;
    let size = if size.is_empty() {
        0
    } else {
        size.parse().map_err(|_| bad())?
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok((ino, mode, uid, gid, name, size))
}

/// Fills [`Entry::inline`] from one `stat` per inode.
fn add_stat_lines(image: &Path, tree: &mut Tree, work: &Path) -> Result<()> {
    let mut inodes: Vec<u32> = tree.entries.values().map(|e| e.ino).collect();
    inodes.sort_unstable();
    inodes.dedup();
    let script: String = inodes.iter().map(|i| format!("stat <{i}>\n")).collect();
    let out = debugfs(image, &script, work)?;
    let sections = split_sections(&out, "stat <")?;
    if sections.len() != inodes.len() {
        bail!("debugfs gave {} of {} inodes", sections.len(), inodes.len());
    }
    let by_ino: HashMap<u32, Vec<String>> = inodes
        .iter()
        .zip(sections)
        .map(|(ino, lines)| (*ino, inline_lines(&lines)))
        .collect();
    for e in tree.entries.values_mut() {
        e.inline = by_ino[&e.ino].clone();
    }
    Ok(())
}

/// The `stat` lines that describe content held in the inode.
fn inline_lines(lines: &[&str]) -> Vec<String> {
    let mut keep = Vec::new();
    let mut in_xattrs = false;
    for line in lines {
        if *line == "Extended attributes:" {
            in_xattrs = true;
        } else if in_xattrs && line.starts_with("  ") {
        } else {
            in_xattrs = false;
            if !(line.starts_with("Fast link dest:") || line.starts_with("Device major/minor")) {
                continue;
            }
        }
        keep.push((*line).to_owned());
    }
    keep
}

/// Fills [`Entry::content`] of regular files and slow symlinks: `dump`s
/// them into `work`, hashes and removes the copies.
fn add_contents(image: &Path, tree: &mut Tree, work: &Path) -> Result<()> {
    let dir = work.join("tree-dump");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let has_data = |e: &Entry| {
        let t = e.mode & S_IFMT;
        t == S_IFREG || (t == S_IFLNK && !e.inline.iter().any(|l| l.starts_with("Fast link")))
    };
    let mut inodes: Vec<u32> = tree
        .entries
        .values()
        .filter(|e| has_data(e))
        .map(|e| e.ino)
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    let mut digests = HashMap::new();
    for batch in inodes.chunks(2000) {
        let script: String = batch
            .iter()
            .map(|i| format!("dump <{i}> \"{}/{i}\"\n", dir.display()))
            .collect();
        debugfs(image, &script, work)?;
        for ino in batch {
            let path = dir.join(ino.to_string());
            let mut hasher = blake3::Hasher::new();
            std::fs::File::open(&path)
                .and_then(|mut f| std::io::copy(&mut f, &mut hasher))
                .with_context(|| {
                    format!("read {} dumped from {}", path.display(), image.display())
                })?;
            digests.insert(*ino, *hasher.finalize().as_bytes());
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(&dir)?;
    for e in tree.entries.values_mut().filter(|e| has_data(e)) {
        e.content = Some(digests[&e.ino]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_lines_parse() {
        assert_eq!(
            parse_ls_line("/13/100644/0/0/a b/3/").unwrap(),
            (13, 0o100644, 0, 0, "a b", 3)
        );
        assert_eq!(
            parse_ls_line("/14/040755/1/2/e//").unwrap(),
            (14, 0o40755, 1, 2, "e", 0)
        );
        assert!(parse_ls_line("13/100644/0/0/a/3/").is_err());
        assert!(parse_ls_line("/13/100644/0/0//3/").is_err());
    }

    #[test]
    fn inline_lines_keep_link_device_and_xattrs() {
        let stat = [
            "Inode: 13   Type: regular",
            "Extended attributes:",
            "  user.foo (3) = \"bar\"",
            "Inode checksum: 0x1",
            "Fast link dest: \"a\"",
            "Device major/minor number: 01:03 (hex 01:03)",
        ];
        let kept = inline_lines(&stat);
        assert_eq!(kept.len(), 4, "{kept:?}");
        let mut e = bare_entry(1, S_IFREG);
        e.inline = kept;
        assert_eq!(e.xattr_names(), ["user.foo"]);
    }
}
