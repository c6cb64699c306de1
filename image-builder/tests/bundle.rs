//! `os-image bundle` end to end on a small rootfs around the real Debian
//! kernel (scripts/fetch-kernel.sh): outputs verify against their manifest,
//! builds are byte-identical, the ext4 image is clean and holds the kernel and
//! an initramfs whose module load order puts dependencies first; bad input
//! fails with an error that says what to fix, and leaves no bundle behind.

mod common;

use common::*;
use image_builder::manifest::{Manifest, ManifestFile};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

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
