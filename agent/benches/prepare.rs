//! Benchmark: `os-agent prepare` against the shell pipelines it replaces, in
//! one run, on the same input bundle and the same target file:
//!
//! - os-agent prepare (file:// source): decompress, hash, write, fsync, read
//!   back from the device and verify, record; and the same on a node with a
//!   trusted key, the manifest signed (docs/signing.md);
//! - `zstd -dc IN | dd of=TARGET bs=1M conv=fsync` (no verification at all);
//! - download-to-temp-then-copy, as KubeOS does it: copy the bundle to a temp
//!   dir, decompress it there, sha256sum it, dd it to the target with fsync.
//!
//! Every method reads the bundle from the page cache (warmed before each run)
//! and writes a target whose pages were dropped, so all start alike. Printed:
//! throughput (image bytes / wall time), peak RSS (for a pipeline: its
//! largest process) and temp bytes (what the method left in its scratch dir).
//!
//! `cargo bench -p agent --bench prepare`; image sizes in MiB from
//! `PREPARE_BENCH_MIB` (default "256,1024"), work dir from
//! `PREPARE_BENCH_DIR` (default /var/tmp: a disk, not a tmpfs), chunk size
//! in KiB from `PREPARE_BENCH_CHUNK_KIB` (default 1024, as `os-image bundle`).
//! `PREPARE_BENCH_BASELINE=PATH` adds a copy of this bench's binary built
//! from other sources (`cargo bench --no-run` prints its path) as one more
//! method in the same rounds, and prints both builds' ratios: the disk's
//! drift between two separate runs is larger than most changes.

#[path = "../tests/common/mod.rs"]
mod common;

use agent::config::Overrides;
use agent::prepare::{prepare, PrepareRequest, Tls};
use agent::progress::{Phase, Progress};
use bootctl::store::Esp;
use bootctl::Slot;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Chunk (and zstd frame) size of the input bundle: `PREPARE_BENCH_CHUNK_KIB`,
/// default 1024 (os-image's default).
fn chunk_size() -> usize {
    std::env::var("PREPARE_BENCH_CHUNK_KIB")
        .map_or(1 << 20, |v| v.trim().parse::<usize>().unwrap() << 10)
}
/// Rounds: `PREPARE_BENCH_RUNS`, default 5.
fn runs() -> usize {
    std::env::var("PREPARE_BENCH_RUNS").map_or(5, |v| v.trim().parse::<usize>().unwrap().max(1))
}

/// Pause before each measured run: `PREPARE_BENCH_SETTLE_MS`, default 2000.
fn settle() -> Duration {
    Duration::from_millis(
        std::env::var("PREPARE_BENCH_SETTLE_MS").map_or(2000, |v| v.trim().parse().unwrap()),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child-prepare") => {
            let keys = args.get(6).map(Path::new);
            return child_prepare(
                &args[2],
                &args[3],
                Path::new(&args[4]),
                Path::new(&args[5]),
                keys,
            );
        }
        Some("measure") => return measure_child(&args[2..]),
        _ => {}
    }
    let sizes: Vec<usize> = std::env::var("PREPARE_BENCH_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let base = std::env::var("PREPARE_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::tempdir_in(base).unwrap();
    println!(
        "input: file:// for every method (os-agent with `delta no`: every byte fetched and \
         written); target: a regular file on {}",
        work.path().display()
    );
    println!(
        "{:<42} {:>9} {:>10} {:>12} {:>12}",
        "method (image size)", "seconds", "MB/s", "peak RSS", "temp bytes"
    );
    for mib in sizes {
        bench_size(work.path(), mib << 20);
    }
}

/// The bench binary re-run as the process whose RSS is measured.
fn child_prepare(url: &str, digest: &str, target: &Path, node: &Path, keys: Option<&Path>) {
    let esp = node.join("esp");
    fs::create_dir_all(&esp).unwrap();
    Esp::new(&esp).init(Slot::A, true).unwrap();
    fs::write(node.join("root-a"), b"active").unwrap();
    let mut o = Overrides::default();
    for (k, v) in [
        ("root-a", node.join("root-a")),
        ("root-b", target.to_path_buf()),
        ("esp", esp),
        ("state-dir", node.join("persist")),
        (
            "keys-dir",
            keys.map_or(node.join("no-keys"), Path::to_path_buf),
        ),
    ] {
        o.set(k, v.to_str().unwrap()).unwrap();
    }
    o.set("booted", "A").unwrap();
    // The full write path: the target still holds the previous run's image,
    // which a delta would find in place and not write at all (the delta
    // bench measures that).
    o.set("delta", "no").unwrap();
    let cfg = o
        .resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
        .unwrap();
    let req = PrepareRequest {
        url: url.into(),
        digest: digest.into(),
        version: Some("2".into()),
        tls: Tls::default(),
        allow_http: false,
    };
    // Watch the progress as a status request would, to split the time into
    // writing (download, decompress, hash, write, fsync) and the rest of the
    // read-back that had not kept up.
    let progress = Progress::default();
    let start = Instant::now();
    let written = std::thread::scope(|s| {
        let job = s.spawn(|| prepare(&cfg, &req, &progress, &AtomicBool::new(false)).unwrap());
        let mut written = None;
        while !job.is_finished() {
            if written.is_none() && progress.snapshot().phase == Phase::Verifying {
                written = Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        job.join().unwrap();
        written
    });
    // Never saw the verifying phase: the read-back had nothing left when the
    // writes were done, so the whole prepare was writing.
    let written = written.unwrap_or_else(|| start.elapsed());
    println!("written {:.3}", written.as_secs_f64());
}

/// Runs `argv` and prints its peak RSS. A separate small process, because a
/// child's peak RSS starts at its parent's (the benchmark's) size.
// The child is reaped by `wait4` in `wait_with_rusage`, which std's `wait`
// would not let us read the rusage of.
#[allow(clippy::zombie_processes)]
fn measure_child(argv: &[String]) {
    let child = Command::new(&argv[0]).args(&argv[1..]).spawn().unwrap();
    let (status, rss_kib) = wait_with_rusage(child.id());
    println!("rss_kib {rss_kib} status {status}");
}

struct Input {
    zst: PathBuf,
    digest: String,
    size: u64,
}

fn bench_size(work: &Path, size: usize) {
    let dir = work.join(format!("{}m", size >> 20));
    fs::create_dir_all(&dir).unwrap();
    let input = make_bundle(&dir, size);
    let target = dir.join("target");
    File::create(&target).unwrap().set_len(size as u64).unwrap();
    // Allocate the target's blocks once, so no method pays for allocation.
    run_shell(&format!(
        "dd if=/dev/zero of={} bs=1M count={} conv=fsync,notrunc status=none",
        target.display(),
        size >> 20
    ));
    let label = |m: &str| format!("{m} ({} MiB)", size >> 20);
    let agent = format!(
        "child-prepare file://{} {} {} {}",
        input.zst.display(),
        input.digest,
        target.display(),
        dir.join("node").display()
    );
    // The signed variant: a node trusting one key, the manifest signed by it.
    let (key, _) = wire::signature::SecretKey::generate().unwrap();
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("bench.pub"), key.public().to_pem()).unwrap();
    let manifest = fs::read(dir.join("os-2.manifest.json")).unwrap();
    fs::write(
        dir.join("os-2.manifest.json.sig"),
        key.sign(&manifest).to_json(),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap().display().to_string();
    let agent_argv = |extra: &str| -> Vec<String> {
        [exe.clone()]
            .into_iter()
            .chain(agent.split(' ').map(String::from))
            .chain((!extra.is_empty()).then(|| extra.to_owned()))
            .collect()
    };
    let mut methods: Vec<(String, Vec<String>)> = vec![
        (label("os-agent prepare"), agent_argv("")),
        (label("os-agent prepare, signed"), agent_argv(&keys.display().to_string())),
        (label("zstd -dc | dd"), shell(&format!("zstd -dc {} | dd of={} bs=1M conv=fsync,notrunc status=none", input.zst.display(), target.display()))),
        (label("download, unpack, copy (KubeOS)"), shell(&format!(
            "cp {zst} img.zst && zstd -dq img.zst -o img && sha256sum img >/dev/null && dd if=img of={t} bs=1M conv=fsync,notrunc status=none",
            zst = input.zst.display(),
            t = target.display()
        ))),
    ];
    // Another build of this bench (a copy of its binary), run the same way
    // in the same rounds: two builds compared on one drifting disk.
    let baseline = std::env::var("PREPARE_BENCH_BASELINE").ok();
    if let Some(other) = &baseline {
        let mut argv = agent_argv("");
        argv[0].clone_from(other);
        methods.push((label("os-agent prepare, baseline build"), argv));
    }
    // Rounds of every method in turn, so that a drift of the disk's speed
    // (seen here: the same pipeline 1.6 s, then 2.0 s) falls on all alike,
    // and the ratio of two methods is taken within each round. Each round
    // starts one method later, so no method always follows the same one
    // (the KubeOS-style method writes two images' worth, which the virtual
    // disk's host goes on flushing after the guest's sync), and each
    // method starts after a settle pause.
    let runs = runs();
    let settle = settle();
    let mut all: Vec<Vec<Measured>> = methods.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for i in 0..methods.len() {
            let k = (round + i) % methods.len();
            std::thread::sleep(settle);
            all[k].push(measure(&dir, &input, &target, &methods[k].1));
        }
    }
    let paired = |a: usize, b: usize| -> Vec<f64> {
        let mut r: Vec<f64> = (0..runs)
            .map(|i| all[a][i].seconds / all[b][i].seconds)
            .collect();
        r.sort_by(f64::total_cmp);
        r
    };
    let mut medians = Vec::new();
    for ((name, _), measured) in methods.into_iter().zip(&all) {
        let mut sorted: Vec<&Measured> = measured.iter().collect();
        sorted.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let m = sorted[runs / 2];
        medians.push(m.seconds);
        println!(
            "{name:<42} {:>9.3} {:>10.0} {:>9.1} MiB {:>12}",
            m.seconds,
            input.size as f64 / m.seconds / 1e6,
            m.rss_kib as f64 / 1024.0,
            m.temp_bytes
        );
        if let Some(w) = m.written {
            println!(
                "{:<42} {w:>9.3} {:>10.0}",
                "  of which written + fsynced",
                input.size as f64 / w / 1e6
            );
        }
    }
    // methods: prepare, prepare signed, zstd | dd, KubeOS-style.
    let tree = wire::verity::tree_bytes((input.size / wire::verity::BLOCK).max(1));
    let speed = paired(2, 0);
    println!(
        "ratios ({} MiB, {runs} rounds): signed / unsigned prepare time {:.2}x; prepare speed \
         {:.2}x that of zstd -dc | dd (median of the rounds' ratios; lowest {:.2}x, highest \
         {:.2}x; ratio of the medians {:.2}x); a dm-verity tree adds {:.2}% to the image, \
         which prepare writes and verifies as image bytes",
        input.size >> 20,
        paired(1, 0)[runs / 2],
        speed[runs / 2],
        speed[0],
        speed[runs - 1],
        medians[2] / medians[0],
        tree as f64 * 100.0 / input.size as f64
    );
    if baseline.is_some() {
        let base = paired(2, 4);
        println!(
            "baseline build ({} MiB): prepare speed {:.2}x that of zstd -dc | dd (lowest {:.2}x, \
             highest {:.2}x); this build's speed {:.2}x the baseline's (median of the rounds)",
            input.size >> 20,
            base[runs / 2],
            base[0],
            base[runs - 1],
            paired(4, 0)[runs / 2]
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn shell(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn run_shell(script: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", script])
            .status()
            .unwrap()
            .success(),
        "{script}"
    );
}

/// Writes `bundle.img.zst` (one frame per chunk) and its manifest.
fn make_bundle(dir: &Path, size: usize) -> Input {
    let zst = dir.join("os-2.img.zst");
    let mut out = BufWriter::new(File::create(&zst).unwrap());
    let mut rng = common::Rng::new(size as u64);
    let chunk = chunk_size();
    let chunks = (0..size.div_ceil(chunk))
        .map(|i| common::synthetic_chunk(&mut rng, chunk.min(size - i * chunk)));
    let meta = common::build_bundle("os-2", "2", chunk, chunks, &mut out);
    out.flush().unwrap();
    fs::write(dir.join("os-2.manifest.json"), &meta.manifest).unwrap();
    Input {
        zst,
        digest: meta.digest,
        size: meta.image_size,
    }
}

struct Measured {
    seconds: f64,
    /// os-agent: seconds until the image was written and synced.
    written: Option<f64>,
    rss_kib: i64,
    temp_bytes: u64,
}

/// One run of `argv` in a fresh scratch dir, input warm, target cold.
fn measure(dir: &Path, input: &Input, target: &Path, argv: &[String]) -> Measured {
    let scratch = dir.join("scratch");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let _ = fs::remove_dir_all(dir.join("node"));
    run_shell("sync");
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    // Warm the input through a small buffer: the child inherits nothing big.
    std::io::copy(&mut File::open(&input.zst).unwrap(), &mut std::io::sink()).unwrap();
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("measure")
        .args(argv)
        .current_dir(&scratch)
        .env("TMPDIR", &scratch)
        .output()
        .unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(field("status"), Some(0.0), "{argv:?} failed: {text}");
    assert_eq!(
        fs::metadata(target).unwrap().len(),
        input.size,
        "target size unchanged"
    );
    Measured {
        seconds,
        written: field("written"),
        rss_kib: field("rss_kib").unwrap() as i64,
        temp_bytes: dir_bytes(&scratch),
    }
}

/// Waits for `pid` and returns its wait status and peak RSS in KiB (for a
/// shell: the largest of it and its children).
fn wait_with_rusage(pid: u32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes; `pid` is our child,
    // which std does not reap as long as we never call `wait` on it.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(
        rc,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    (status, usage.ru_maxrss)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}
