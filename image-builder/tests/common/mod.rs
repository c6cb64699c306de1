//! Helpers shared by the `os-image bundle` tests: the test rootfs around
//! the real Debian kernel, the reference bundle built once, unpacking.
#![allow(dead_code)]

use image_builder::manifest::{Manifest, ManifestFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const VERSION: &str = "7.1";
pub const OLD_INITRAMFS: &str = "the rootfs's own initramfs";

/// Module directories (relative to lib/modules/<release>/kernel) copied into
/// the test rootfs: everything the wanted modules need, and more.
pub const MODULE_DIRS: &[&str] = &[
    "fs/ext4",
    "fs/jbd2",
    "fs/fat",
    "fs/nls",
    "fs/overlayfs",
    "fs/mbcache.ko",
    "drivers/virtio",
    "drivers/block",
    "drivers/ata",
    "drivers/nvme",
    "drivers/md",
    "crypto",
    "lib",
    "block",
];

pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-kernel.sh");
        let out = run(&mut Command::new(script));
        let cache = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let release = std::fs::read_to_string(cache.join("release"))
            .unwrap()
            .trim()
            .to_string();
        Kernel {
            vmlinuz: cache.join("vmlinuz").canonicalize().unwrap(),
            modules: cache.join("modules"),
            release,
        }
    })
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn cp(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A rootfs with the kernel as /boot/vmlinuz-<release>, a subset of its
/// modules, os-release behind a symlink, a hard link and a long symlink.
pub fn make_rootfs(root: &Path) {
    let k = kernel();
    cp(
        &k.vmlinuz,
        &root.join(format!("boot/vmlinuz-{}", k.release)),
    );
    let modules = root.join("lib/modules").join(&k.release);
    for dir in MODULE_DIRS {
        cp(
            &k.modules.join("kernel").join(dir),
            &modules.join("kernel").join(dir),
        );
    }
    for f in std::fs::read_dir(k.modules.join("kernel/drivers/scsi")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "ko") {
            cp(
                &f,
                &modules
                    .join("kernel/drivers/scsi")
                    .join(f.file_name().unwrap()),
            );
        }
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        cp(&k.modules.join(f), &modules.join(f));
    }
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("usr/lib/os-release"),
        format!("NAME=Test\nVERSION_ID=\"{VERSION}\"\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    // Replaced in the image; must stay as it is in the rootfs.
    std::fs::write(root.join("boot/initramfs.img"), OLD_INITRAMFS).unwrap();
    std::fs::write(root.join("usr/lib/data"), vec![7u8; 100_000]).unwrap();
    std::fs::hard_link(root.join("usr/lib/data"), root.join("usr/lib/data-link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), root.join("usr/lib/long-link")).unwrap();
}

/// A statically linked program standing in for os-init (busybox-static):
/// os-image refuses a dynamic one.
pub fn fake_os_init(dir: &Path) -> PathBuf {
    let path = dir.join("os-init");
    std::fs::copy("/bin/busybox", &path).unwrap();
    path
}

/// Runs `os-image bundle`; `extra` may override `--version`.
pub fn bundle(rootfs: &Path, out: &Path, os_init: &Path, extra: &[&str]) -> Output {
    let version = if extra.contains(&"--version") {
        &[][..]
    } else {
        &["--version", VERSION][..]
    };
    Command::new(env!("CARGO_BIN_EXE_os-image"))
        .env("RUST_LOG", "info")
        .env_remove("SOURCE_DATE_EPOCH")
        .arg("bundle")
        .args(version)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--out")
        .arg(out)
        .arg("--os-init")
        .arg(os_init)
        .args(extra)
        .output()
        .unwrap()
}

pub struct Reference {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub os_init: PathBuf,
    pub out: PathBuf,
    pub log: String,
}

/// The rootfs and its bundle, built once for the tests that compare with it,
/// under the target directory: a static is never dropped, a temp dir would leak.
pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle-reference");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rootfs = dir.join("rootfs");
        make_rootfs(&rootfs);
        let os_init = fake_os_init(&dir);
        let out = dir.join("out");
        let o = bundle(&rootfs, &out, &os_init, &[]);
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{log}");
        Reference {
            rootfs,
            os_init,
            out,
            log,
            dir,
        }
    })
}

pub fn manifest_path(out: &Path) -> PathBuf {
    out.join(format!("os-{VERSION}.manifest.json"))
}

/// Decompresses the bundle frame by frame into `dest`, checking every digest.
pub fn unpack(manifest: &Path, dest: &Path) -> Manifest {
    let m = Manifest::load(manifest).unwrap();
    let zst = std::fs::read(m.image_path(manifest)).unwrap();
    assert_eq!(zst.len() as u64, m.compressed_size);
    let mut whole = blake3::Hasher::new();
    let mut image = Vec::new();
    for (i, c) in m.chunks.iter().enumerate() {
        let frame = &zst[c.zoffset as usize..(c.zoffset + c.zsize) as usize];
        let data = zstd::bulk::decompress(frame, m.chunk_size as usize).unwrap();
        let expected = (m.image_size - i as u64 * m.chunk_size).min(m.chunk_size);
        assert_eq!(data.len() as u64, expected, "chunk {i}");
        assert_eq!(*blake3::hash(&data).as_bytes(), c.digest, "chunk {i}");
        whole.update(&data);
        image.extend_from_slice(&data);
    }
    assert_eq!(
        format!("blake3:{}", whole.finalize().to_hex()),
        m.image_digest.to_string()
    );
    std::fs::write(dest, image).unwrap();
    m
}

pub fn debugfs(image: &Path, request: &str) -> Vec<u8> {
    run(Command::new("debugfs").arg("-R").arg(request).arg(image)).stdout
}

pub fn entries_of(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
