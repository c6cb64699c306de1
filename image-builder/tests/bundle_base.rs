//! `os-image bundle --base`: a bundle built on the previous one has the
//! tree of a fresh build, keeps the base's chunks where nothing changed,
//! and a corrupt or foreign base is refused or not used.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The reference rootfs with a small "package" added and a few changes: new
/// files (data, a hard link, a symlink, a fifo, an xattr), one file changed,
/// one removed, one mode changed.
fn make_next_rootfs(dest: &Path) {
    let r = reference();
    run(Command::new("cp").arg("-a").arg(&r.rootfs).arg(dest));
    let pkg = dest.join("usr/share/pkg");
    std::fs::create_dir_all(pkg.join("doc")).unwrap();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..300_000u32)
            .map(|n| (n * 7 + u32::from(i)) as u8)
            .collect();
        std::fs::write(pkg.join(format!("part{i}")), data).unwrap();
    }
    std::fs::hard_link(pkg.join("part0"), pkg.join("doc/part0-link")).unwrap();
    std::os::unix::fs::symlink("../part1", pkg.join("doc/part1")).unwrap();
    run(Command::new("mkfifo").arg(pkg.join("fifo")));
    let path = std::ffi::CString::new(pkg.join("part2").to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.pkg".as_ptr(),
            b"yes".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    std::fs::write(dest.join("etc/hostname"), "next\n").unwrap();
    std::fs::write(dest.join("usr/lib/data"), vec![8u8; 100_000]).unwrap();
    std::fs::remove_file(dest.join("usr/lib/long-link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dest.join("usr/lib/os-release"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// Blocks `debugfs blocks` lists for `path`.
fn blocks_of(image: &Path, path: &str) -> Vec<u64> {
    String::from_utf8_lossy(&debugfs(image, &format!("blocks {path}")))
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect()
}

#[test]
fn a_bundle_built_on_its_base_has_the_fresh_tree_and_keeps_the_base_chunks() {
    let r = reference();
    let dir = r.dir.join("on-base");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let next = dir.join("rootfs");
    make_next_rootfs(&next);
    let (fresh_out, based_out) = (dir.join("fresh"), dir.join("based"));
    let base = manifest_path(&r.out);
    let o = bundle(&next, &fresh_out, &r.os_init, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bundle(
        &next,
        &based_out,
        &r.os_init,
        &["--base", base.to_str().unwrap()],
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("built on the base"), "{log}");

    let (old, fresh, based) = (
        dir.join("old.img"),
        dir.join("fresh.img"),
        dir.join("based.img"),
    );
    let old_m = unpack(&base, &old);
    unpack(&manifest_path(&fresh_out), &fresh);
    let based_m = unpack(&manifest_path(&based_out), &based);
    run(Command::new("e2fsck").arg("-fn").arg(&based));
    // The same tree as the fresh image, read by debugfs field by field.
    let work = tempfile::tempdir().unwrap();
    let tree = |image: &Path| image_builder::ext4tree::read(image, work.path()).unwrap();
    let (fresh_tree, based_tree) = (tree(&fresh), tree(&based));
    assert!(fresh_tree.entries.contains_key("/usr/share/pkg/fifo"));
    assert!(!fresh_tree.entries.contains_key("/usr/lib/long-link"));
    assert_eq!(based_tree.differences(&fresh_tree), Vec::<String>::new());
    let ea = String::from_utf8_lossy(&debugfs(&based, "ea_list /usr/share/pkg/part2")).into_owned();
    assert!(ea.contains("user.pkg (3) = \"yes\""), "{ea}");
    // Free blocks read as zeros, as in a fresh image, in the chunks that
    // are not the base's: removed files' data stays only where it keeps a
    // chunk the nodes hold.
    let image = std::fs::read(&based).unwrap();
    let chunk = based_m.chunk_size as usize;
    let kept = |block: usize| {
        let i = block * 4096 / chunk;
        old_m.chunks.get(i).map(|c| c.digest) == based_m.chunks.get(i).map(|c| c.digest)
    };
    let groups = run(Command::new("dumpe2fs").arg(&based)).stdout;
    let text = String::from_utf8_lossy(&groups);
    let ranges = text
        .lines()
        .filter_map(|l| l.strip_prefix("  Free blocks: "))
        .flat_map(|l| l.split(", ").filter(|r| !r.is_empty()));
    let mut free = 0;
    for r in ranges {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        free += b - a + 1;
        for block in (a..=b).filter(|&x| !kept(x)) {
            let data = &image[block * 4096..(block + 1) * 4096];
            assert!(
                data.iter().all(|&x| x == 0),
                "free block {block} not zeroed"
            );
        }
    }
    assert!(free > 0);
    // A mode change is made in place: the data keeps its blocks.
    assert_eq!(
        blocks_of(&based, "/usr/lib/os-release"),
        blocks_of(&old, "/usr/lib/os-release")
    );
    let links = based_tree.links_of("/usr/share/pkg/part0");
    assert_eq!(links, ["/usr/share/pkg/doc/part0-link"]);

    // Structure: a chunk that differs from the base's at the same offset
    // holds metadata (everything before the first file data block: super
    // block, group descriptors, bitmaps, inode tables), the blocks of a
    // written file or of a changed directory, or the verity tree.
    let mut touched: Vec<u64> = Vec::new();
    for p in based_tree.differences(&tree(&old)) {
        touched.extend(blocks_of(&based, &p));
        let parent = p
            .rsplit_once('/')
            .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
        touched.extend(blocks_of(&based, parent));
    }
    let first_data = blocks_of(&based, "/boot/vmlinuz")
        .into_iter()
        .min()
        .unwrap();
    let fs_end = based_m.verity.as_ref().unwrap().hash_offset;
    let block = 4096;
    let chunk = based_m.chunk_size;
    let mut same = 0;
    for (i, c) in based_m.chunks.iter().enumerate() {
        let (start, end) = (i as u64 * chunk, (i as u64 + 1) * chunk);
        if old_m.chunks.get(i).is_some_and(|o| o.digest == c.digest) {
            same += 1;
            continue;
        }
        let explained = start < first_data * block
            || end > fs_end
            || touched.iter().any(|b| (start..end).contains(&(b * block)));
        assert!(
            explained,
            "chunk {i} ({start}..{end}) moved without a reason"
        );
    }
    assert!(
        same * 2 > based_m.chunks.len(),
        "{same} of {} chunks kept",
        based_m.chunks.len()
    );
}

#[test]
fn a_corrupt_base_is_refused_and_another_os_is_not_used() {
    let r = reference();
    let dir = r.dir.join("bad-base");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("base");
    run(Command::new("cp").arg("-a").arg(&r.out).arg(&copy));
    let zst = copy.join(format!("os-{VERSION}.img.zst"));
    let mut bytes = std::fs::read(&zst).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&zst, bytes).unwrap();
    let base = manifest_path(&copy);
    let o = bundle(
        &r.rootfs,
        &dir.join("out"),
        &r.os_init,
        &["--base", base.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("unpack the base bundle"), "{err}");
    assert!(!dir
        .join("out")
        .join(format!("os-{VERSION}.img.zst"))
        .exists());

    // Another OS (os-release ID, thus UUID and hash seed): a fresh image,
    // byte for byte the bundle built without --base, and a warning.
    let other = dir.join("other-rootfs");
    run(Command::new("cp").arg("-a").arg(&r.rootfs).arg(&other));
    let release = other.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&release).unwrap();
    std::fs::write(&release, format!("ID=other\n{text}")).unwrap();
    let other_out = dir.join("other");
    let o = bundle(&other, &other_out, &r.os_init, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("out2");
    let based_on_other = manifest_path(&other_out);
    let o = bundle(
        &r.rootfs,
        &out,
        &r.os_init,
        &["--base", based_on_other.to_str().unwrap()],
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("--base not used") && log.contains("another file system"),
        "{log}"
    );
    for f in entries_of(&r.out) {
        assert!(
            std::fs::read(r.out.join(&f)).unwrap() == std::fs::read(out.join(&f)).unwrap(),
            "{f} differs from the bundle built without --base"
        );
    }
}
