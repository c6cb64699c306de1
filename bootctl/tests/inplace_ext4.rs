//! Commits are in place on a real filesystem: on an ext4 image loop-mounted on
//! the host, every bootctl write leaves each copy's inode, size and physical
//! extents (FIEMAP, via `filefrag -v`) exactly as they were. GRUB depends on
//! this: it rewrites the block's sectors without going through the filesystem.
//!
//! Needs root (mount). The FAT half of this check runs inside a QEMU guest, in
//! the top-level `tests` crate.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Inode, size and the physical extent list of `file`.
fn placement(file: &Path) -> (u64, u64, Vec<String>) {
    let meta = std::fs::metadata(file).unwrap();
    let report = sh(Command::new("filefrag").arg("-v").arg(file));
    // Extent lines look like "   0:        0..       0:      34816..     34816:      1:   last,eof".
    let extents: Vec<String> = report
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
                && l.contains("..")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        !extents.is_empty(),
        "no extents reported for {}:\n{report}",
        file.display()
    );
    (meta.ino(), meta.len(), extents)
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn commits_keep_inode_size_and_extents_on_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.ext4");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(Command::new("truncate").arg("-s").arg("16M").arg(&image));
    sh(Command::new("mkfs.ext4").arg("-q").arg(&image));
    let mounted = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "this test loop-mounts an ext4 image and must run as root: {}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    let _mount = Mount(mnt.clone());

    let bootctl = env!("CARGO_BIN_EXE_bootctl");
    let run = |args: &[&str]| sh(Command::new(bootctl).arg("--esp").arg(&mnt).args(args));
    run(&["init"]);
    let copies = [mnt.join("ab1/env"), mnt.join("ab2/env")];
    let before: Vec<_> = copies.iter().map(|c| placement(c)).collect();
    for (a, b) in before.iter().zip(before.iter().skip(1)) {
        assert_ne!(a.2, b.2, "the two copies share an extent");
    }

    let steps: &[&[&str]] = &[
        &["arm", "B", "--tries", "3"],
        &["confirm", "B"],
        &["arm", "A"],
        &["mark-failed", "A"],
        &["rollback"],
    ];
    for step in steps {
        run(step);
        for (copy, was) in copies.iter().zip(&before) {
            assert_eq!(
                &placement(copy),
                was,
                "{} moved after `bootctl {step:?}`",
                copy.display()
            );
        }
    }

    // A repair of a zeroed copy is in place too.
    // Synced before its placement is taken: written and not yet synced, ext4 may report
    // the new extent as `unwritten` until writeback converts it (CI once saw
    // "last,unwritten,eof" before the repair and "last,eof" after it).
    let mut f = std::fs::File::create(&copies[0]).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 1024]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let damaged = placement(&copies[0]);
    run(&["repair"]);
    assert_eq!(placement(&copies[0]), damaged, "repair moved copy 1");
    let state = run(&["status", "--json"]);
    assert!(
        state.contains(r#""active":"A""#) && state.contains(r#""repaired":false"#),
        "{state}"
    );
}
