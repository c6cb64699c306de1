//! `os-image rootfs --from debian` with the real mmdebstrap and the real
//! Debian mirror (http://deb.debian.org/debian): a node root from a small
//! recipe holds systemd as init, containerd, the agent's unit and health
//! checks, the recipe's users, keys, files and units, and no initramfs; it
//! goes through `os-image bundle` unchanged and the bundle verifies.
//!
//! The mmdebstrap base is cached in /var/cache/ab-os-test (ROOTFS_CACHE
//! overrides) as debian-<digest of its inputs>.tar: the first run downloads
//! and installs (about a minute here), later runs unpack the cache.

use image_builder::manifest::{Manifest, ManifestFile};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

const VERSION: &str = "16.1";
/// Fixed, so the cache key (and the base's timestamps) do not move.
const EPOCH: &str = "1700000000";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LWZvci1yb290ZnMtZGViaWFu tester@ci";

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

/// The kernel package scripts/fetch-kernel.sh keeps in its cache.
fn kernel_deb() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-kernel.sh");
    let out = run(&mut Command::new(script));
    let cache = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let release = std::fs::read_to_string(cache.join("release")).unwrap();
    let prefix = format!("linux-image-{}_", release.trim());
    std::fs::read_dir(cache.join("dl"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .unwrap_or_else(|| panic!("no {prefix}*.deb in {}/dl", cache.display()))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ROOTFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/ab-os-test".into())
}

/// Static stand-in for os-agent and os-init (busybox-static): os-image
/// refuses dynamic ones, and nothing here runs them.
fn static_stand_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/busybox", &path).unwrap();
    path
}

fn write_recipe(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/motd"), "node image test\n").unwrap();
    std::fs::write(dir.join("files/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(
        dir.join("files/hello"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let recipe = dir.join("node.recipe");
    std::fs::write(
        &recipe,
        format!(
            "# rootfs_debian.rs\n\
             kernel-deb = {}\n\
             hostname = test-node\n\
             serial-autologin = yes\n\
             allow-failed = systemd-networkd-wait-online.service\n\
             enable = fstrim.timer\n\
             user = tester\n\
             authorized-key = tester {KEY}\n\
             authorized-key = root {KEY}\n\
             file = files/motd -> /etc/motd\n\
             file = files/hello -> /usr/local/bin/hello\n",
            kernel_deb().display()
        ),
    )
    .unwrap();
    recipe
}

fn rootfs(recipe: &Path, out: &Path, agent: &Path, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_os-image"))
        .env("RUST_LOG", "info")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("rootfs")
        .args(["--from", "debian", "--version", VERSION])
        .arg("--recipe")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--agent")
        .arg(agent)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap()
}

struct Built {
    dir: PathBuf,
    recipe: PathBuf,
    agent: PathBuf,
    root: PathBuf,
    log: String,
}

/// The root, built once for the tests that look at it.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rootfs-debian");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let recipe = write_recipe(&dir);
        let agent = static_stand_in(&dir, "os-agent");
        let root = dir.join("root");
        let t = Instant::now();
        let o = rootfs(&recipe, &root, &agent, &cache_dir());
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{log}");
        let cached = log.contains("base: cached");
        eprintln!(
            "os-image rootfs: {:.1} s ({} base)\n{}",
            t.elapsed().as_secs_f64(),
            if cached { "cached" } else { "fresh" },
            log.lines()
                .filter(|l| l.contains("took") || l.contains("node root") || l.contains("unpacked"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Built {
            dir,
            recipe,
            agent,
            root,
            log,
        }
    })
}

fn link(root: &Path, rel: &str) -> PathBuf {
    std::fs::read_link(root.join(rel)).unwrap_or_else(|e| panic!("/{rel}: {e}"))
}

#[test]
fn a_debian_node_root_has_what_a_node_needs() {
    let b = built();
    let root = &b.root;
    let resolve = |rel: &str| image_builder::rootfs::resolve_in_root(root, Path::new(rel)).unwrap();

    // systemd is init.
    assert_eq!(resolve("sbin/init"), root.join("usr/lib/systemd/systemd"));
    assert!(resolve("sbin/init").is_file());
    // containerd, ctr, runc, iproute2.
    for bin in [
        "usr/bin/containerd",
        "usr/bin/ctr",
        "usr/bin/runc",
        "usr/bin/ip",
    ] {
        assert!(resolve(bin).is_file(), "/{bin}");
    }
    // The kernel without an initramfs generator run, modules as plain .ko.
    let boot: Vec<String> = std::fs::read_dir(root.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(boot.iter().any(|n| n.starts_with("vmlinuz-")), "{boot:?}");
    assert!(!boot.iter().any(|n| n.starts_with("initrd")), "{boot:?}");
    assert!(!resolve("usr/sbin/update-initramfs").exists());
    let (release, modules) = image_builder::rootfs::find_modules(root).unwrap();
    assert!(modules.join("modules.dep").is_file());
    assert!(
        modules.join("kernel/fs/ext4/ext4.ko").is_file(),
        "{release}"
    );
    assert!(root.join(format!("boot/vmlinuz-{release}")).is_file());

    // The agent, its unit enabled, its health checks executable.
    assert!(root.join("usr/bin/os-agent").is_file());
    assert_eq!(
        link(
            root,
            "etc/systemd/system/multi-user.target.wants/os-agent.service"
        ),
        Path::new("/usr/lib/systemd/system/os-agent.service")
    );
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/os-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/os-agent serve"), "{unit}");
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    let checks: Vec<_> = std::fs::read_dir(root.join("etc/os-agent/health.d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut names: Vec<_> = checks
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "10-systemd-running",
            "15-no-restart-loops",
            "20-containerd",
            "30-os-agent-socket"
        ],
        "{checks:?}"
    );
    for c in &checks {
        let mode = std::fs::metadata(c).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", c.display());
        let text = std::fs::read_to_string(c).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{}", c.display());
        for placeholder in ["@BOOT_TIMEOUT@", "@RESTART_WINDOW@"] {
            assert!(
                !text.contains(placeholder),
                "{placeholder} in {}",
                c.display()
            );
        }
        // Each check is valid sh.
        run(Command::new("sh").arg("-n").arg(c));
    }
    let allowed = std::fs::read_to_string(root.join("etc/os-agent/allow-failed")).unwrap();
    assert!(allowed
        .lines()
        .any(|l| l == "systemd-networkd-wait-online.service"));
    // The socket check's client works with perl-base (Essential) alone.
    assert!(root
        .join("usr/lib/x86_64-linux-gnu/perl-base/IO/Socket/UNIX.pm")
        .is_file());

    // Identity: VERSION_ID, an empty machine-id, the hostname.
    let os_release = std::fs::read_to_string(resolve("etc/os-release")).unwrap();
    assert_eq!(
        image_builder::rootfs::os_release_value(&os_release, "VERSION_ID").as_deref(),
        Some(VERSION)
    );
    let machine_id = std::fs::symlink_metadata(root.join("etc/machine-id")).unwrap();
    assert!(machine_id.is_file() && machine_id.len() == 0);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "test-node\n"
    );
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert!(
        fstab.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6
                && f[0] == "PARTLABEL=ESP"
                && f[1] == "/boot/efi"
                && f[2] == "vfat"
                && f[3].split(',').any(|o| o == "nofail")
        }),
        "{fstab}"
    );
    assert!(root.join("boot/efi").is_dir());

    // The serial console logs root in (recipe), networkd runs DHCP.
    let autologin = std::fs::read_to_string(
        root.join("etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"),
    )
    .unwrap();
    assert!(autologin.contains("--autologin root"), "{autologin}");
    assert!(root
        .join("etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service")
        .is_symlink());
    assert!(root
        .join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        .is_symlink());
    // The recipe's unit, user, keys and files.
    assert!(root
        .join("etc/systemd/system/timers.target.wants/fstrim.timer")
        .is_symlink());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("tester:x:1000:1000::/home/tester:")),
        "{passwd}"
    );
    assert!(std::fs::read_to_string(root.join("etc/shadow"))
        .unwrap()
        .contains("\ntester:*:"));
    for home in ["home/tester", "root"] {
        let keys = root.join(home).join(".ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{KEY}\n"));
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "node image test\n"
    );
    let hello = std::fs::metadata(root.join("usr/local/bin/hello")).unwrap();
    assert_eq!(
        hello.permissions().mode() & 0o7777,
        0o755,
        "no set-uid bit from the source"
    );

    // Small: no manuals, no documentation but copyrights, no translations.
    assert!(!root.join("usr/share/man/man1").exists());
    assert!(root.join("usr/share/doc/systemd/copyright").is_file());
    assert!(!root
        .join("usr/share/doc/systemd/changelog.Debian.gz")
        .exists());
    assert!(!root.join("usr/share/locale/de").exists());
    // No usrmerge (and its perl): merged-/usr was laid out by mmdebstrap's hook.
    assert!(!root.join("var/lib/dpkg/info/usrmerge.list").exists());
    assert!(!root.join("var/lib/dpkg/info/perl.list").exists());
    let stats = image_builder::rootfs::tree_stats(root).unwrap();
    eprintln!(
        "root: {} MiB ({} MiB of modules), {} inodes",
        stats.bytes >> 20,
        image_builder::rootfs::tree_stats(&modules).unwrap().bytes >> 20,
        stats.inodes
    );
    assert!(b.log.contains("node root for version 16.1"), "{}", b.log);
}

/// Decompresses the bundle frame by frame, checking every chunk and the
/// whole image against the manifest; returns the image.
fn verify_bundle(manifest_path: &Path) -> (Manifest, PathBuf) {
    let m = Manifest::load(manifest_path).unwrap();
    assert_eq!(m.os_version, VERSION);
    let mut zst = Vec::new();
    std::fs::File::open(m.image_path(manifest_path))
        .unwrap()
        .read_to_end(&mut zst)
        .unwrap();
    assert_eq!(zst.len() as u64, m.compressed_size);
    let image_path = manifest_path.with_extension("img");
    let mut image = std::io::BufWriter::new(std::fs::File::create(&image_path).unwrap());
    let mut whole = blake3::Hasher::new();
    let mut size = 0u64;
    for (i, c) in m.chunks.iter().enumerate() {
        let frame = &zst[c.zoffset as usize..(c.zoffset + c.zsize) as usize];
        let data = zstd::bulk::decompress(frame, m.chunk_size as usize).unwrap();
        assert_eq!(*blake3::hash(&data).as_bytes(), c.digest, "chunk {i}");
        whole.update(&data);
        size += data.len() as u64;
        std::io::Write::write_all(&mut image, &data).unwrap();
    }
    assert_eq!(size, m.image_size);
    assert_eq!(
        format!("blake3:{}", whole.finalize().to_hex()),
        m.image_digest.to_string()
    );
    (m, image_path)
}

#[test]
fn the_root_goes_through_os_image_bundle_unchanged() {
    let b = built();
    let out = b.dir.join("bundle");
    let _ = std::fs::remove_dir_all(&out);
    let os_init = static_stand_in(&b.dir, "os-init");
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_os-image"))
        .env("RUST_LOG", "info")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["bundle", "--version", VERSION])
        .arg("--rootfs")
        .arg(&b.root)
        .arg("--out")
        .arg(&out)
        .arg("--os-init")
        .arg(&os_init)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let manifest = out.join(format!("os-{VERSION}.manifest.json"));
    let (m, image) = verify_bundle(&manifest);
    eprintln!(
        "bundle: {:.1} s, image {} MiB, compressed {} MiB",
        t.elapsed().as_secs_f64(),
        m.image_size >> 20,
        m.compressed_size >> 20
    );
    // The image's file system has the node's init, os-release and the initramfs.
    let debugfs = |req: &str| {
        String::from_utf8_lossy(&run(Command::new("debugfs").arg("-R").arg(req).arg(&image)).stdout)
            .into_owned()
    };
    assert!(debugfs("cat /usr/lib/os-release").contains(&format!("VERSION_ID=\"{VERSION}\"")));
    assert!(debugfs("stat /boot/initramfs.img").contains("Type: regular"));
    assert!(debugfs("stat /usr/lib/systemd/systemd").contains("Type: regular"));
    assert!(debugfs("stat /etc/machine-id").contains("Size: 0"));
    // The staging copy changed nothing in the root.
    assert!(!b.root.join("boot/initramfs.img").exists());
    // Hundreds of MiB: not left behind.
    std::fs::remove_dir_all(&out).unwrap();
    let _ = image;
}

#[test]
fn a_second_build_reuses_the_cached_base() {
    let b = built();
    let out = b.dir.join("again");
    let _ = std::fs::remove_dir_all(&out);
    let t = Instant::now();
    let o = rootfs(&b.recipe, &out, &b.agent, &cache_dir());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("base: cached"), "{log}");
    assert!(!log.contains("mmdebstrap: I:"), "{log}");
    eprintln!(
        "os-image rootfs with the cached base: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for f in [
        "usr/lib/os-release",
        "etc/passwd",
        "etc/fstab",
        "etc/os-agent/health.d/10-systemd-running",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(b.root.join(f)).unwrap(),
            "{f}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Errors that need no build: each says what is wrong and what to do.
#[test]
fn bad_inputs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = static_stand_in(d, "os-agent");
    std::fs::write(d.join("k.deb"), "not really").unwrap();
    let good = d.join("good.recipe");
    std::fs::write(&good, "kernel-deb = k.deb\n").unwrap();
    let cache = d.join("cache");
    let fail = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let os_image = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_os-image"));
        c.args(["rootfs", "--from", "debian", "--version", "1"]);
        c
    };

    // A recipe error names the file and the line.
    let bad = d.join("bad.recipe");
    std::fs::write(
        &bad,
        "kernel-deb = k.deb\n# fine\nfile = a -> /etc/../shadow\n",
    )
    .unwrap();
    let e = fail(
        os_image()
            .arg("--recipe")
            .arg(&bad)
            .arg("--out")
            .arg(d.join("o"))
            .arg("--agent")
            .arg(&agent),
    );
    assert!(
        e.contains("bad.recipe: line 3: ") && e.contains("plain components"),
        "{e}"
    );

    // The output directory must be new or empty.
    std::fs::create_dir(d.join("full")).unwrap();
    std::fs::write(d.join("full/x"), "").unwrap();
    let e = fail(
        os_image()
            .arg("--recipe")
            .arg(&good)
            .arg("--out")
            .arg(d.join("full"))
            .arg("--agent")
            .arg(&agent),
    );
    assert!(e.contains("is not empty"), "{e}");

    // A dynamically linked agent is refused.
    let e = fail(
        os_image()
            .arg("--recipe")
            .arg(&good)
            .arg("--out")
            .arg(d.join("o"))
            .arg("--agent")
            .arg("/bin/sh"),
    );
    assert!(e.contains("dynamically linked"), "{e}");

    // mmdebstrap missing: the Debian package is named.
    let e = fail(
        os_image()
            .env("PATH", d.join("no-such-dir"))
            .arg("--recipe")
            .arg(&good)
            .arg("--out")
            .arg(d.join("o"))
            .arg("--agent")
            .arg(&agent),
    );
    assert!(
        e.contains("`mmdebstrap` not found: install the Debian package mmdebstrap"),
        "{e}"
    );

    // An unreachable mirror is reported before mmdebstrap runs.
    let offline = d.join("offline.recipe");
    std::fs::write(
        &offline,
        "kernel-deb = k.deb\nmirror = http://127.0.0.1:9/debian\n",
    )
    .unwrap();
    let e = fail(
        os_image()
            .arg("--recipe")
            .arg(&offline)
            .arg("--out")
            .arg(d.join("o"))
            .arg("--agent")
            .arg(&agent)
            .arg("--cache-dir")
            .arg(&cache),
    );
    assert!(
        e.contains("the Debian mirror http://127.0.0.1:9/debian is unreachable"),
        "{e}"
    );
    assert!(!d.join("o").exists(), "nothing made");
    // The cache holds no half-made entry.
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
