//! `os-image bundle` end to end on a small rootfs around the real Debian
//! kernel (scripts/fetch-kernel.sh): outputs verify against their manifest,
//! builds are byte-identical, the ext4 image is clean and holds the kernel and
//! an initramfs whose module load order puts dependencies first; bad input
//! fails with an error that says what to fix, and leaves no bundle behind.

use image_builder::manifest::{Manifest, ManifestFile};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const VERSION: &str = "7.1";
const OLD_INITRAMFS: &str = "the rootfs's own initramfs";

/// Module directories (relative to lib/modules/<release>/kernel) copied into
/// the test rootfs: everything the wanted modules need, and more.
const MODULE_DIRS: &[&str] = &[
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

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

fn kernel() -> &'static Kernel {
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

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cp(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A rootfs with the kernel as /boot/vmlinuz-<release>, a subset of its
/// modules, os-release behind a symlink, a hard link and a long symlink.
fn make_rootfs(root: &Path) {
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
fn fake_os_init(dir: &Path) -> PathBuf {
    let path = dir.join("os-init");
    std::fs::copy("/bin/busybox", &path).unwrap();
    path
}

/// Runs `os-image bundle`; `extra` may override `--version`.
fn bundle(rootfs: &Path, out: &Path, os_init: &Path, extra: &[&str]) -> Output {
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

struct Reference {
    dir: PathBuf,
    rootfs: PathBuf,
    os_init: PathBuf,
    out: PathBuf,
    log: String,
}

/// The rootfs and its bundle, built once for the tests that compare with it,
/// under the target directory: a static is never dropped, a temp dir would leak.
fn reference() -> &'static Reference {
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

fn manifest_path(out: &Path) -> PathBuf {
    out.join(format!("os-{VERSION}.manifest.json"))
}

/// Decompresses the bundle frame by frame into `dest`, checking every digest.
fn unpack(manifest: &Path, dest: &Path) -> Manifest {
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

fn debugfs(image: &Path, request: &str) -> Vec<u8> {
    run(Command::new("debugfs").arg("-R").arg(request).arg(image)).stdout
}

/// A newc archive's entries: (name, mode, rdev major, data).
fn read_cpio(bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let h = &bytes[at..at + 110];
        assert_eq!(&h[..6], b"070701", "bad magic at {at}");
        let field = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name = String::from_utf8(bytes[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
        at = (at + 110 + namesize).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push((name, mode, field(9), bytes[at..at + size].to_vec()));
        at = (at + size).next_multiple_of(4);
    }
}

fn position(order: &[&str], name: &str) -> usize {
    order
        .iter()
        .position(|m| *m == name)
        .unwrap_or_else(|| panic!("{name} not in {order:?}"))
}

/// The initramfs's `modules/load-order` lines.
fn load_order(image: &Path) -> Vec<String> {
    let gz = debugfs(image, "cat /boot/initramfs.img");
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut cpio)
        .unwrap();
    let entries = read_cpio(&cpio);
    let list = &entries
        .iter()
        .find(|e| e.0 == "modules/load-order")
        .expect("a load-order")
        .3;
    String::from_utf8_lossy(list)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn check_initramfs(image: &Path, os_init: &Path) {
    let gz = debugfs(image, "cat /boot/initramfs.img");
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut cpio)
        .unwrap();
    let entries = read_cpio(&cpio);
    let get = |n: &str| {
        entries
            .iter()
            .find(|e| e.0 == n)
            .unwrap_or_else(|| panic!("no {n} in the initramfs"))
    };
    assert_eq!(get("init").3, std::fs::read(os_init).unwrap());
    assert_eq!(get("init").1, 0o100755);
    assert_eq!((get("dev/console").1, get("dev/console").2), (0o020600, 5));
    for d in ["dev", "proc", "sys", "run", "sysroot", "tmp", "modules"] {
        assert_eq!(get(d).1 & 0o170000, 0o040000, "{d}");
    }
    let text = String::from_utf8(get("modules/load-order").3.clone()).unwrap();
    let order: Vec<&str> = text.lines().collect();
    assert!(
        position(&order, "jbd2.ko") < position(&order, "ext4.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "mbcache.ko") < position(&order, "ext4.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "crc32c_generic.ko") < position(&order, "jbd2.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "fat.ko") < position(&order, "vfat.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "virtio.ko") < position(&order, "virtio_blk.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "nvme-core.ko") < position(&order, "nvme.ko"),
        "{order:?}"
    );
    assert!(
        position(&order, "dm-mod.ko") < position(&order, "dm-bufio.ko")
            && position(&order, "dm-bufio.ko") < position(&order, "dm-verity.ko"),
        "{order:?}"
    );
    for m in &order {
        let data = &get(&format!("modules/{m}")).3;
        assert_eq!(&data[..4], b"\x7fELF", "{m}");
    }
    let modules = entries.iter().filter(|e| e.0.ends_with(".ko")).count();
    assert_eq!(modules, order.len(), "every module listed once");
}

fn entries_of(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bundle_verifies_is_reproducible_and_holds_kernel_and_initramfs() {
    let r = reference();
    assert_eq!(
        entries_of(&r.out),
        [
            format!("os-{VERSION}.img.zst"),
            format!("os-{VERSION}.manifest.json")
        ]
    );
    for step in ["staging", "initramfs: kernel", "mkfs.ext4", "compressed"] {
        assert!(r.log.contains(step), "no {step:?} line in {}", r.log);
    }
    let image = r.dir.join("reference.ext4");
    let m = unpack(&manifest_path(&r.out), &image);
    assert_eq!(
        (m.name.as_str(), m.os_version.as_str(), m.arch.as_str()),
        ("os-7.1", VERSION, "x86_64")
    );
    assert_eq!(m.image, "os-7.1.img.zst");
    // The file system (a multiple of 16 MiB), then its dm-verity tree, which
    // veritysetup accepts with the manifest's parameters.
    let v = m
        .verity
        .clone()
        .expect("the manifest records the verity tree");
    assert_eq!(v.hash_offset % (16 << 20), 0);
    assert_eq!(v.total_bytes(), m.image_size);
    run(Command::new("veritysetup")
        .arg("verify")
        .arg("--no-superblock")
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(format!("--salt={}", wire::digest::hex(&v.salt)))
        .arg(&image)
        .arg(&image)
        .arg(wire::digest::hex(&v.root_hash)));
    run(Command::new("e2fsck").arg("-fn").arg(&image));

    let boot = String::from_utf8_lossy(&debugfs(&image, "ls -l /boot")).into_owned();
    assert!(
        boot.contains(" vmlinuz\n") || boot.contains(" vmlinuz "),
        "{boot}"
    );
    assert!(boot.contains("initramfs.img"), "{boot}");
    assert_eq!(
        debugfs(&image, "cat /boot/vmlinuz"),
        std::fs::read(&kernel().vmlinuz).unwrap()
    );
    assert_eq!(
        debugfs(&image, "cat /usr/lib/os-release"),
        std::fs::read(r.rootfs.join("usr/lib/os-release")).unwrap()
    );
    let root = String::from_utf8_lossy(&debugfs(&image, "ls /")).into_owned();
    for dir in ["persist", "var", "etc", "proc", "sys", "dev", "run", "tmp"] {
        assert!(
            root.split_whitespace().any(|w| w == dir),
            "no /{dir} in {root}"
        );
    }
    check_initramfs(&image, &r.os_init);
    // The staging tree may be hard links to the rootfs: the rootfs is untouched.
    let own = std::fs::read_to_string(r.rootfs.join("boot/initramfs.img")).unwrap();
    assert_eq!(own, OLD_INITRAMFS);
    assert!(!r.rootfs.join("boot/vmlinuz").exists() && !r.rootfs.join("persist").exists());

    // Same input, another output directory: the same bytes.
    let again = r.dir.join("again");
    let o = bundle(&r.rootfs, &again, &r.os_init, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in entries_of(&r.out) {
        assert!(
            std::fs::read(r.out.join(&f)).unwrap() == std::fs::read(again.join(&f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn tarball_input_gives_the_same_image_as_the_directory() {
    let r = reference();
    // Other tests build from r.rootfs meanwhile, and a build hard-links the
    // rootfs into its staging directory, which changes the files' ctime: GNU
    // tar would fail with "file changed as we read it". Tar a private copy.
    let copy = r.dir.join("rootfs-for-tar");
    let _ = std::fs::remove_dir_all(&copy);
    run(Command::new("cp").arg("-a").arg(&r.rootfs).arg(&copy));
    let tarball = r.dir.join("rootfs.tar.zst");
    run(Command::new("tar")
        .args(["--zstd", "--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&copy)
        .arg("."));
    let out = r.dir.join("from-tar");
    let o = bundle(&tarball, &out, &r.os_init, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_dir = Manifest::load(&manifest_path(&r.out)).unwrap();
    let from_tar = Manifest::load(&manifest_path(&out)).unwrap();
    assert_eq!(from_tar.image_digest, from_dir.image_digest);
}

#[test]
fn no_verity_leaves_out_the_tree_and_the_module() {
    let r = reference();
    let out = r.dir.join("no-verity");
    let _ = std::fs::remove_dir_all(&out);
    let o = bundle(&r.rootfs, &out, &r.os_init, &["--no-verity"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = r.dir.join("no-verity.ext4");
    let m = unpack(&manifest_path(&out), &image);
    assert_eq!(m.verity, None);
    assert_eq!(m.image_size % (16 << 20), 0, "the file system alone");
    let with = Manifest::load(&manifest_path(&r.out)).unwrap();
    assert_eq!(with.verity.unwrap().hash_offset, m.image_size);
    let order = load_order(&image);
    assert!(!order.iter().any(|m| m.starts_with("dm-")), "{order:?}");
    let _ = std::fs::remove_file(&image);
}

/// Runs a build expected to fail; returns its stderr.
fn fails(rootfs: &Path, os_init: &Path, extra: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let o = bundle(rootfs, out.path(), os_init, extra);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        entries_of(out.path()).is_empty(),
        "files left behind: {:?}",
        entries_of(out.path())
    );
    stderr
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let r = reference();
    let err = fails(&r.rootfs, Path::new("/nonexistent/os-init"), &[]);
    assert!(
        err.contains("os-init not found at /nonexistent/os-init"),
        "{err}"
    );
    assert!(
        err.contains("cargo build --profile node --target x86_64-unknown-linux-musl -p initramfs"),
        "{err}"
    );

    // A glibc build (what `cargo build --release` makes) or no program at
    // all: refused, naming the file and how to build the static one.
    let dynamic = Path::new("/bin/true");
    let err = fails(&r.rootfs, dynamic, &[]);
    assert!(
        err.contains("/bin/true is dynamically linked") && err.contains("`make bins`"),
        "{err}"
    );
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), "#!/bin/sh\n").unwrap();
    let err = fails(&r.rootfs, text.path(), &[]);
    assert!(
        err.contains("is not an x86_64 ELF executable") && err.contains("`make bins`"),
        "{err}"
    );

    let err = fails(&r.rootfs, &r.os_init, &["--version", "8"]);
    assert!(
        err.contains("VERSION_ID=7.1") && err.contains("--version is 8"),
        "{err}"
    );

    let err = fails(&r.rootfs, &r.os_init, &["--root-size", "16M"]);
    assert!(
        err.contains("--root-size 16 MiB") && err.contains("needs at least"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    std::fs::write(
        bare.join("etc/os-release"),
        format!("VERSION_ID={VERSION}\n"),
    )
    .unwrap();
    let err = fails(&bare, &r.os_init, &[]);
    assert!(
        err.contains("no kernel in the rootfs") && err.contains("/boot/vmlinuz-*"),
        "{err}"
    );

    std::fs::create_dir(bare.join("boot")).unwrap();
    std::fs::write(bare.join("boot/vmlinuz"), "not really a kernel").unwrap();
    let err = fails(&bare, &r.os_init, &[]);
    assert!(
        err.contains("no kernel modules") && err.contains("/lib/modules/<release>/"),
        "{err}"
    );
}

fn os_image(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_os-image"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_signed_bundle_verifies_with_the_public_key_and_travels_in_the_oci_artifact() {
    use wire::signature::{PublicKey, Signature};
    let r = reference();
    let dir = r.dir.join("signed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stem = dir.join("vendor");
    let o = os_image(&["keygen".as_ref(), "--out".as_ref(), stem.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (key, public) = (dir.join("vendor.key"), dir.join("vendor.pub"));
    let o = os_image(&["keygen".as_ref(), "--out".as_ref(), stem.as_os_str()]);
    assert!(!o.status.success(), "keygen overwrote a key");

    let out = dir.join("out");
    let o = bundle(
        &r.rootfs,
        &out,
        &r.os_init,
        &["--sign", key.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = manifest_path(&out);
    // Signing changes nothing else: the same image and manifest as unsigned.
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        std::fs::read(manifest_path(&r.out)).unwrap()
    );
    let sig_path = dir
        .join("out")
        .join(format!("os-{VERSION}.manifest.json.sig"));
    let sig = Signature::parse(&std::fs::read_to_string(&sig_path).unwrap()).unwrap();
    let trusted = [PublicKey::from_pem(&std::fs::read_to_string(&public).unwrap()).unwrap()];
    let bytes = std::fs::read(&manifest).unwrap();
    sig.verify(&bytes, &trusted).unwrap();
    let mut edited = bytes.clone();
    edited.push(b' ');
    assert!(sig.verify(&edited, &trusted).is_err());

    // `os-image sign` on an existing bundle gives a signature that verifies too.
    std::fs::remove_file(&sig_path).unwrap();
    let o = os_image(&[
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        manifest.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = Signature::parse(&std::fs::read_to_string(&sig_path).unwrap()).unwrap();
    again.verify(&bytes, &trusted).unwrap();
    // A file that is not a bundle manifest is not signed.
    let o = os_image(&[
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        public.as_os_str(),
    ]);
    assert!(!o.status.success());

    // The OCI artifact carries the signature as an annotation.
    let layout = dir.join("layout");
    let o = os_image(&[
        "oci".as_ref(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "--layout".as_ref(),
        layout.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index = std::fs::read(layout.join("index.json")).unwrap();
    let entries = oci::artifact::parse_layout_index(&index).unwrap();
    let digest = entries[0]
        .0
        .digest
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let art_bytes = std::fs::read(layout.join("blobs/sha256").join(digest)).unwrap();
    let art = oci::artifact::BundleArtifact::parse(&art_bytes, "").unwrap();
    let carried = art
        .annotations
        .iter()
        .find(|(k, _)| k == oci::artifact::SIGNATURE)
        .map(|(_, v)| v.clone())
        .expect("signature annotation");
    Signature::parse(&carried)
        .unwrap()
        .verify(&bytes, &trusted)
        .unwrap();
}

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
