//! Benchmark: `os-image bundle` against the baseline it is measured by, in one
//! run, on the same rootfs: `mkfs.ext4 -d` into an image of the same size,
//! then `zstd -3` of that image (what a build script without os-image would
//! do, minus the initramfs, determinism, fsck, hashes and chunk index).
//!
//! The rootfs is the Debian kernel package from scripts/fetch-kernel.sh (its
//! kernel, ~400 MB of modules) plus an os-release, hard-linked into a temp dir.
//! Printed: best wall time of `BUNDLE_BENCH_ROUNDS` rounds (default 3),
//! throughput (rootfs bytes and image bytes per second), and peak RSS: for
//! os-image its own and that of the largest tool it ran (cp, mkfs.ext4,
//! debugfs, e2fsck); for the baseline its largest process. A last os-image run
//! with a 4x larger --root-size shows its own memory does not grow with the
//! image. Nothing is asserted: machines differ.
//!
//! `cargo bench -p image-builder --bench bundle`

use image_builder::bundle::{self, BundleOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const VERSION: &str = "1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child-run") => return child_run(&args[2..]),
        Some("child-bundle") => return child_bundle(&args[2..]),
        _ => {}
    }
    let rounds: usize =
        std::env::var("BUNDLE_BENCH_ROUNDS").map_or(3, |r| r.parse().expect("BUNDLE_BENCH_ROUNDS"));
    let work = tempfile::tempdir().unwrap();
    let (rootfs, os_init) = make_rootfs(work.path());
    let (content, files) = apparent_size(&rootfs);
    let out = work.path().join("out");
    let (key, _) = image_builder::sign::keygen(&work.path().join("bench")).unwrap();
    let mut signed = Best::default();
    let mut plain = Best::default();
    let mut ours = Best::default();
    let mut base = Best::default();
    let mut image_size = 0;
    for _ in 0..rounds {
        let _ = std::fs::remove_dir_all(&out);
        ours.add(child(&[
            "child-bundle",
            path(&rootfs),
            path(&out),
            path(&os_init),
            "0",
            "-",
            "verity",
        ]));
        let _ = std::fs::remove_dir_all(work.path().join("out-plain"));
        plain.add(child(&[
            "child-bundle",
            path(&rootfs),
            path(&work.path().join("out-plain")),
            path(&os_init),
            "0",
            "-",
            "no-verity",
        ]));
        let _ = std::fs::remove_dir_all(work.path().join("out-signed"));
        signed.add(child(&[
            "child-bundle",
            path(&rootfs),
            path(&work.path().join("out-signed")),
            path(&os_init),
            "0",
            path(&key),
            "verity",
        ]));
        let manifest = out.join(format!("os-{VERSION}.manifest.json"));
        image_size =
            <image_builder::manifest::Manifest as image_builder::manifest::ManifestFile>::load(
                &manifest,
            )
            .unwrap()
            .image_size;
        base.add(baseline(work.path(), &rootfs, image_size));
    }
    let bigger = (image_size * 4).to_string();
    let _ = std::fs::remove_dir_all(&out);
    let big = child(&[
        "child-bundle",
        path(&rootfs),
        path(&out),
        path(&os_init),
        &bigger,
        "-",
        "verity",
    ]);

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "rootfs: {:.1} MB in {files} files; ext4 image {} MiB; {cpus} CPUs",
        content as f64 / 1e6,
        image_size >> 20
    );
    println!(
        "{:<34} {:>8} {:>14} {:>12}  peak RSS",
        "method (best of rounds)", "seconds", "rootfs MB/s", "image MB/s"
    );
    for (name, best, rss) in [
        (
            "os-image bundle",
            &ours,
            format!(
                "own {} MiB, largest tool {} MiB",
                ours.rss_self >> 10,
                ours.rss_children >> 10
            ),
        ),
        (
            "os-image bundle --no-verity",
            &plain,
            format!("own {} MiB", plain.rss_self >> 10),
        ),
        (
            "os-image bundle --sign",
            &signed,
            format!("own {} MiB", signed.rss_self >> 10),
        ),
        (
            "mkfs.ext4 -d + zstd -3 (baseline)",
            &base,
            format!("largest process {} MiB", base.rss_children >> 10),
        ),
    ] {
        let secs = best.time.as_secs_f64();
        println!(
            "{name:<34} {secs:>8.2} {:>14.1} {:>12.1}  {rss}",
            content as f64 / 1e6 / secs,
            image_size as f64 / 1e6 / secs
        );
    }
    let ratio = |a: &Best, b: &Best| a.time.as_secs_f64() / b.time.as_secs_f64();
    println!(
        "time ratios: verity tree {:.2}x (bundle / --no-verity), signature {:.2}x (--sign / bundle)",
        ratio(&ours, &plain),
        ratio(&signed, &ours)
    );
    println!(
        "os-image bundle, --root-size {} MiB: {:.2} s, own peak RSS {} MiB (image 4x larger)",
        (image_size * 4) >> 20,
        big.time.as_secs_f64(),
        big.rss_self >> 10
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// One measured run: wall time and peak RSS in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    time: Duration,
    rss_self: u64,
    rss_children: u64,
}

/// Best time over rounds, largest memory over rounds.
#[derive(Debug, Default)]
struct Best {
    time: Duration,
    rss_self: u64,
    rss_children: u64,
}

impl Best {
    fn add(&mut self, r: Run) {
        if self.time.is_zero() || r.time < self.time {
            self.time = r.time;
        }
        self.rss_self = self.rss_self.max(r.rss_self);
        self.rss_children = self.rss_children.max(r.rss_children);
    }
}

/// Runs this benchmark binary in a child mode, so each measurement has a
/// process (and a getrusage) of its own.
fn child(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .output()
        .unwrap();
    let time = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rss = text.split_whitespace().map(|n| {
        n.parse::<u64>()
            .unwrap_or_else(|_| panic!("{args:?}: {text}"))
    });
    Run {
        time,
        rss_self: rss.next().unwrap(),
        rss_children: rss.next().unwrap(),
    }
}

/// Peak RSS (KiB) of this process and of its largest waited-for descendant.
fn print_rusage() {
    let max_rss = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
        usage.ru_maxrss
    };
    println!(
        "{} {}",
        max_rss(libc::RUSAGE_SELF),
        max_rss(libc::RUSAGE_CHILDREN)
    );
}

fn child_run(cmd: &[String]) {
    let out = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print_rusage();
}

fn child_bundle(args: &[String]) {
    let root_size: u64 = args[3].parse().unwrap();
    bundle::run(&BundleOptions {
        rootfs: PathBuf::from(&args[0]),
        version: VERSION.to_string(),
        out: PathBuf::from(&args[1]),
        name: None,
        root_size: (root_size > 0).then_some(root_size),
        os_init: Some(PathBuf::from(&args[2])),
        chunk_size: image_builder::manifest::DEFAULT_CHUNK_SIZE,
        level: 3,
        sign: (args[4] != "-").then(|| PathBuf::from(&args[4])),
        no_verity: args[5] == "no-verity",
        base: None,
    })
    .unwrap();
    print_rusage();
}

/// mkfs.ext4 -d then zstd, each in its own measured child.
fn baseline(work: &Path, rootfs: &Path, size: u64) -> Run {
    let image = work.join("baseline.ext4");
    let zst = work.join("baseline.ext4.zst");
    let _ = std::fs::remove_file(&image);
    let size_kib = format!("{}k", size >> 10);
    let mkfs = child(&[
        "child-run",
        "mkfs.ext4",
        "-q",
        "-F",
        "-d",
        path(rootfs),
        path(&image),
        &size_kib,
    ]);
    let zstd = child(&[
        "child-run",
        "zstd",
        "-q",
        "-f",
        "-3",
        path(&image),
        "-o",
        path(&zst),
    ]);
    Run {
        time: mkfs.time + zstd.time,
        rss_self: 0,
        rss_children: mkfs.rss_children.max(zstd.rss_children),
    }
}

/// The kernel package's tree (hard links: instant) plus os-release, and a
/// stand-in os-init (any file will do for the build).
fn make_rootfs(work: &Path) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-kernel.sh");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "fetch-kernel.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let rootfs = work.join("rootfs");
    let linked = Command::new("cp")
        .arg("-al")
        .arg(cache.join("root"))
        .arg(&rootfs)
        .status()
        .unwrap();
    if !linked.success() {
        let _ = std::fs::remove_dir_all(&rootfs);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(cache.join("root"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(copied.success());
    }
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(
        rootfs.join("etc/os-release"),
        format!("ID=bench\nVERSION_ID={VERSION}\n"),
    )
    .unwrap();
    let os_init = work.join("os-init");
    // Statically linked, as os-image requires of os-init.
    std::fs::copy("/bin/busybox", &os_init).unwrap();
    (rootfs, os_init)
}

/// Bytes and number of the regular files below `dir`.
fn apparent_size(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            let (b, f) = apparent_size(&entry.path());
            bytes += b;
            files += f;
        } else if kind.is_file() {
            bytes += entry.metadata().unwrap().len();
            files += 1;
        }
    }
    (bytes, files)
}
