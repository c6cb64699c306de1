//! Benchmark: what a delta download saves (docs/bundle.md, "Delta"), on
//! images built by `os-image` from the demo root filesystem, served by nginx
//! on loopback (Range requests, as a production web server answers them).
//!
//! Images: v1 (the running one), and three upgrades from it:
//! (a) the same image again, (b) v2 = v1 plus one package (a `.deb`
//! unpacked into the rootfs), (c) v3 = v1 with another kernel (another
//! Debian kernel package: vmlinuz, modules and the initramfs change).
//! (b) and (c) are built twice: afresh, and with `os-image bundle --base`
//! v1 (the ext4 made from v1's, docs/bundle.md "Layout for small deltas").
//! For each: the share of the bundle's chunks the new image does not share
//! with v1 (what the layout allows), and `prepare` run twice on a node whose
//! slot A holds v1 and slot B zeros: with the delta, and without it (a plain
//! full download). Printed: bytes nginx sent, requests, prepare time.
//!
//! `cargo bench -p agent --bench delta`. Inputs, from the environment:
//! - `DELTA_BENCH_KERNEL_DEB`: kernel package of v1 and v2 (default: the
//!   tests' kernel, `scripts/fetch-kernel.sh`);
//! - `DELTA_BENCH_NEW_KERNEL_DEB`: kernel package of v3 (case (c) is left
//!   out without it), e.g. `apt-get download linux-image-6.1.0-50-amd64`;
//! - `DELTA_BENCH_PACKAGE_DEB`: the package added in v2 (case (b) is left
//!   out without it), e.g. `apt-get download vim`;
//! - `DELTA_BENCH_ROOT`: `demo` (default, `os-image demo-rootfs`: busybox
//!   and the kernel) or `node` (the Debian node root of docs/node-image.md,
//!   `os-image rootfs --from debian` from a recipe written here: systemd,
//!   containerd, os-agent and the kernel; the base tarball is cached in
//!   `DELTA_BENCH_CACHE`, default /var/cache/ab-os-test). For `node`, (b)
//!   adds `DELTA_BENCH_PACKAGE` (a package name, e.g. `vim`) to the recipe's
//!   `packages`, so apt installs it with its dependencies, and each version
//!   is built with its own SOURCE_DATE_EPOCH, as releases are;
//! - `OS_IMAGE`, `OS_INIT`, `OS_AGENT`: the binaries (default: built with
//!   cargo, as the tests crate builds them);
//! - `DELTA_BENCH_CHUNK` (os-image's `--chunk-size`, default its default),
//!   `DELTA_BENCH_DIR` (default /var/tmp).

use agent::config::Overrides;
use agent::prepare::{prepare, PrepareRequest, Tls};
use agent::progress::Progress;
use bootctl::store::Esp;
use bootctl::Slot;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use wire::manifest::Manifest;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("DELTA_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::tempdir_in(base).unwrap();
    // nginx's workers run as nobody: they must reach the bundles.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let node_root = match std::env::var("DELTA_BENCH_ROOT").as_deref() {
        Ok("node") => true,
        Ok("demo") | Err(_) => false,
        Ok(other) => panic!("DELTA_BENCH_ROOT={other:?}: `demo` or `node`"),
    };
    let tools = Tools::find(node_root);
    let kernel = env_path("DELTA_BENCH_KERNEL_DEB").unwrap_or_else(default_kernel_deb);
    let out = work.path().join("bundles");
    let chunk = std::env::var("DELTA_BENCH_CHUNK").ok();
    let build = |version: &str, kernel: &Path, package: Option<&Package>, base: Option<&Built>| {
        tools.bundle(
            work.path(),
            &out,
            version,
            (kernel, package),
            chunk.as_deref(),
            base,
        )
    };
    let v1 = build("1", &kernel, None, None);
    let mut cases = vec![("(a) the same image".to_owned(), v1.clone())];
    let package = if node_root {
        std::env::var("DELTA_BENCH_PACKAGE").ok().map(Package::Apt)
    } else {
        env_path("DELTA_BENCH_PACKAGE_DEB").map(Package::Deb)
    };
    if let Some(package) = package {
        let name = format!("(b) + package {}", package.name());
        cases.push((name.clone(), build("2", &kernel, Some(&package), None)));
        let based = build("2", &kernel, Some(&package), Some(&v1));
        cases.push((format!("{name}, --base v1"), based));
    } else if node_root {
        println!("(b) left out: set DELTA_BENCH_PACKAGE (a Debian package name)");
    } else {
        println!("(b) left out: set DELTA_BENCH_PACKAGE_DEB");
    }
    if let Some(deb) = env_path("DELTA_BENCH_NEW_KERNEL_DEB") {
        let name = format!(
            "(c) kernel {} -> {}",
            package_name(&kernel),
            package_name(&deb)
        );
        cases.push((name.clone(), build("3", &deb, None, None)));
        let based = build("3", &deb, None, Some(&v1));
        cases.push((format!("{name}, --base v1"), based));
    } else {
        println!("(c) left out: set DELTA_BENCH_NEW_KERNEL_DEB");
    }
    let nginx = Nginx::start(work.path(), &out);
    let slot_size = cases
        .iter()
        .map(|(_, b)| b.manifest.image_size)
        .max()
        .unwrap()
        + (16 << 20);
    println!(
        "v1 ({} root): {} MiB image, {} MiB bundle, {} chunks of {} KiB; served by nginx on \
         127.0.0.1:{}",
        if node_root { "Debian node" } else { "demo" },
        v1.manifest.image_size >> 20,
        v1.manifest.compressed_size >> 20,
        v1.manifest.chunks.len(),
        v1.manifest.chunk_size >> 10,
        nginx.port
    );
    println!(
        "{:<52} {:>8} {:>14} {:>14} {:>7} {:>5} {:>9} {:>9} {:>9}",
        "upgrade from v1",
        "chunks",
        "bundle bytes",
        "fetched bytes",
        "share",
        "reqs",
        "delta s",
        "scan s",
        "full s"
    );
    for (name, new) in &cases {
        let layout = new_chunks(&v1.manifest, &new.manifest);
        let delta = run_prepare(work.path(), &nginx, &v1, new, slot_size, Mode::Delta);
        let scan = run_prepare(work.path(), &nginx, &v1, new, slot_size, Mode::DeltaNoIndex);
        let full = run_prepare(work.path(), &nginx, &v1, new, slot_size, Mode::Full);
        assert_eq!(full.bytes, new.manifest.compressed_size, "a full download");
        assert_eq!(
            scan.bytes, delta.bytes,
            "the index changes what is read, not fetched"
        );
        println!(
            "{name:<52} {:>8} {:>14} {:>14} {:>6.2}% {:>5} {:>9.3} {:>9.3} {:>9.3}",
            format!("{}/{}", layout, new.manifest.chunks.len()),
            new.manifest.compressed_size,
            delta.bytes,
            delta.bytes as f64 * 100.0 / new.manifest.compressed_size as f64,
            delta.requests,
            delta.seconds,
            scan.seconds,
            full.seconds
        );
    }
    for (name, new) in &cases {
        let at = new_chunk_indices(&v1.manifest, &new.manifest);
        if !at.is_empty() {
            println!("{name}: new chunks {}", ranges(&at));
        }
    }
    println!(
        "chunks: chunks of the new image that v1 does not hold; share: fetched / bundle bytes; \
         delta s: prepare with the delta (scan, copy, fetch, write, read back, verify) on a node \
         whose slot A has its record and chunk index, as os-image writes them; scan s: the same \
         without the index (slot A is read to find its chunks); full s: without the delta; \
         caches dropped before each"
    );
}

/// `vim` of `vim_2%3a9.0.1378-2+deb12u2_amd64.deb`.
fn package_name(deb: &Path) -> String {
    let file = deb.file_name().unwrap().to_string_lossy();
    file.split('_')
        .next()
        .unwrap_or(&file)
        .trim_start_matches("linux-image-")
        .to_owned()
}

/// What (b) adds to v1.
enum Package {
    /// A `.deb` unpacked into the demo root.
    Deb(PathBuf),
    /// A package name added to the node recipe's `packages`.
    Apt(String),
}

impl Package {
    fn name(&self) -> String {
        match self {
            Package::Deb(deb) => package_name(deb),
            Package::Apt(name) => name.clone(),
        }
    }
}

/// SOURCE_DATE_EPOCH of node root `version`: a day per version, as each
/// release is built at its own time.
fn node_epoch(version: &str) -> u64 {
    1_700_000_000 + 86_400 * version.parse::<u64>().unwrap()
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key).map(PathBuf::from)
}

/// Chunks of `new` whose digest is nowhere in `old`.
fn new_chunks(old: &Manifest, new: &Manifest) -> usize {
    new_chunk_indices(old, new).len()
}

fn new_chunk_indices(old: &Manifest, new: &Manifest) -> Vec<usize> {
    let have: std::collections::HashSet<_> = old.chunks.iter().map(|c| c.digest).collect();
    (0..new.chunks.len())
        .filter(|&i| !have.contains(&new.chunks[i].digest))
        .collect()
}

/// `0, 2-5, 9`: where the new chunks are (the image's file system metadata
/// is at the start, the dm-verity tree at the end).
fn ranges(indices: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            indices[i].to_string()
        } else {
            format!("{}-{}", indices[i], indices[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

#[derive(Clone)]
struct Built {
    version: String,
    image: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
}

struct Tools {
    os_image: PathBuf,
    os_init: PathBuf,
    /// The static os-agent for a node root; `None` for the demo root.
    os_agent: Option<PathBuf>,
}

impl Tools {
    fn find(node_root: bool) -> Tools {
        let os_image = env_path("OS_IMAGE").unwrap_or_else(|| {
            cargo_build(
                "target/e2e-host",
                &["--release", "-p", "image-builder", "--bin", "os-image"],
            );
            repo_root().join("target/e2e-host/release/os-image")
        });
        let os_init = env_path("OS_INIT").unwrap_or_else(|| musl_binary("initramfs", "os-init"));
        let os_agent = node_root
            .then(|| env_path("OS_AGENT").unwrap_or_else(|| musl_binary("agent", "os-agent")));
        Tools {
            os_image,
            os_init,
            os_agent,
        }
    }

    /// The root of `version` in `rootfs`: the demo root with `package`
    /// unpacked into it, or the node root from a recipe naming `kernel` and
    /// `package`.
    fn rootfs(
        &self,
        work: &Path,
        rootfs: &Path,
        version: &str,
        (kernel, package): (&Path, Option<&Package>),
    ) {
        let Some(agent) = &self.os_agent else {
            let mut demo = Command::new(&self.os_image);
            demo.args(["demo-rootfs", "--version", version, "--kernel-deb"])
                .arg(kernel)
                .arg("--out")
                .arg(rootfs);
            run(&mut demo);
            match package {
                Some(Package::Deb(deb)) => {
                    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(rootfs));
                }
                Some(Package::Apt(name)) => panic!("{name}: the demo root takes a .deb"),
                None => {}
            }
            return;
        };
        let mut recipe = format!(
            "# Written by agent/benches/delta.rs\nkernel-deb = {}\nhostname = node\n",
            kernel.display()
        );
        match package {
            Some(Package::Apt(name)) => recipe += &format!("packages = {name}\n"),
            Some(Package::Deb(deb)) => panic!("{}: the node root takes a name", deb.display()),
            None => {}
        }
        let path = work.join(format!("node-{version}.recipe"));
        fs::write(&path, recipe).unwrap();
        let cache =
            std::env::var("DELTA_BENCH_CACHE").unwrap_or_else(|_| "/var/cache/ab-os-test".into());
        fs::create_dir_all(&cache).unwrap();
        run(Command::new(&self.os_image)
            .env("SOURCE_DATE_EPOCH", node_epoch(version).to_string())
            .args(["rootfs", "--from", "debian", "--version", version])
            .arg("--recipe")
            .arg(&path)
            .arg("--out")
            .arg(rootfs)
            .arg("--agent")
            .arg(agent)
            .arg("--cache-dir")
            .arg(&cache));
    }

    /// The root of `version` ([`rootfs`](Self::rootfs)), then `os-image
    /// bundle`, with `--base` when given (named `os-VERSION-base`).
    fn bundle(
        &self,
        work: &Path,
        out: &Path,
        version: &str,
        input: (&Path, Option<&Package>),
        chunk: Option<&str>,
        base: Option<&Built>,
    ) -> Built {
        let rootfs = work.join(format!("rootfs-v{version}"));
        let _ = fs::remove_dir_all(&rootfs);
        self.rootfs(work, &rootfs, version, input);
        let mut bundle = Command::new(&self.os_image);
        bundle
            .args(["bundle", "--version", version, "--rootfs"])
            .arg(&rootfs)
            .arg("--out")
            .arg(out)
            .arg("--os-init")
            .arg(&self.os_init);
        if let Some(c) = chunk {
            bundle.args(["--chunk-size", c]);
        }
        let name = match base {
            Some(b) => {
                bundle.arg("--base").arg(&b.manifest_path);
                format!("os-{version}-base")
            }
            None => format!("os-{version}"),
        };
        bundle.args(["--name", &name]);
        let log = run(&mut bundle);
        assert!(
            base.is_none() || log.contains("built on the base"),
            "--base not used: {log}"
        );
        fs::remove_dir_all(&rootfs).unwrap();
        let manifest_path = out.join(format!("{name}.manifest.json"));
        let text = fs::read_to_string(&manifest_path).unwrap();
        Built {
            version: version.into(),
            image: out.join(format!("{name}.img.zst")),
            manifest_path,
            manifest: Manifest::parse(&text).unwrap(),
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn cargo_build(target_dir: &str, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(repo_root())
        .arg("build")
        .args(args)
        .env("CARGO_TARGET_DIR", repo_root().join(target_dir)));
}

/// Static `bin` of `package`, built for the node as the tests crate builds it.
fn musl_binary(package: &str, bin: &str) -> PathBuf {
    cargo_build(
        "target/e2e-musl",
        &[
            "--profile",
            "node",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            package,
            "--bin",
            bin,
        ],
    );
    repo_root().join(format!(
        "target/e2e-musl/x86_64-unknown-linux-musl/node/{bin}"
    ))
}

fn default_kernel_deb() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/fetch-kernel.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/fetch-kernel.sh failed");
    let dl = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("dl");
    fs::read_dir(&dl)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("no kernel package in {}", dl.display()))
}

/// Runs `cmd`, returns its stderr (the log).
fn run(cmd: &mut Command) -> String {
    let out = cmd.env("RUST_LOG", "info").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?}: {log}");
    log
}

/// nginx serving `root` on a free loopback port, logging each response's
/// URI, status and body bytes.
struct Nginx {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Nginx {
    fn start(work: &Path, root: &Path) -> Nginx {
        let prefix = work.join("nginx");
        fs::create_dir_all(&prefix).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = prefix.join("access.log");
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{}}\nhttp {{\n  log_format bench '$uri $status $body_bytes_sent';\n  \
             access_log {log} bench;\n  client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n  \
             fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            p = prefix.display(),
            log = log.display(),
            root = root.display()
        );
        fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed().as_secs() < 10, "nginx did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Nginx { child, port, log }
    }

    /// (responses, body bytes) for `uri` in the log after line `from`.
    fn served(&self, uri: &str, from: usize) -> (usize, u64) {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let hits: Vec<u64> = text
            .lines()
            .skip(from)
            .filter_map(|l| {
                let mut f = l.split(' ');
                (f.next()? == uri).then(|| f.nth(1)?.parse().ok())?
            })
            .collect();
        (hits.len(), hits.iter().sum())
    }

    fn lines(&self) -> usize {
        fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILL would
    /// leave them running) before it exits.
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child, which `wait` reaps below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

struct Run {
    seconds: f64,
    bytes: u64,
    requests: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Delta on a node as os-image builds it: slot A's record and index.
    Delta,
    /// Delta, slot A without record or index: it is scanned.
    DeltaNoIndex,
    /// `delta no`.
    Full,
}

/// One prepare of `new` on a fresh node: slot A holds `running`'s image,
/// slot B zeros.
fn run_prepare(
    work: &Path,
    nginx: &Nginx,
    running: &Built,
    new: &Built,
    slot: u64,
    mode: Mode,
) -> Run {
    let node = work.join("node");
    let _ = fs::remove_dir_all(&node);
    fs::create_dir_all(node.join("esp")).unwrap();
    Esp::new(node.join("esp")).init(Slot::A, true).unwrap();
    let (a, b) = (node.join("root-a"), node.join("root-b"));
    let img = fs::File::create(&a).unwrap();
    let unpacked = Command::new("zstd")
        .arg("-dc")
        .arg(&running.image)
        .stdout(img)
        .status()
        .unwrap();
    assert!(unpacked.success());
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(slot)
        .unwrap();
    fs::File::create(&b).unwrap().set_len(slot).unwrap();
    let mut o = Overrides::default();
    for (k, v) in [
        ("root-a", &a),
        ("root-b", &b),
        ("esp", &node.join("esp")),
        ("state-dir", &node.join("persist")),
        ("keys-dir", &node.join("no-keys")),
    ] {
        o.set(k, v.to_str().unwrap()).unwrap();
    }
    o.set("booted", "A").unwrap();
    o.set("delta", if mode == Mode::Full { "no" } else { "yes" })
        .unwrap();
    let cfg = o
        .resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
        .unwrap();
    if mode == Mode::Delta {
        let m = &running.manifest;
        let rec = m.slot_record(Slot::A, bootctl::record::SlotState::Good, 1);
        bootctl::record::write(&cfg.state_dir, &rec).unwrap();
        agent::prepare::save_index(&cfg.state_dir, Slot::A, m);
    }
    let uri = format!("/{}", new.image.file_name().unwrap().to_string_lossy());
    let req = PrepareRequest {
        url: format!("http://127.0.0.1:{}{uri}", nginx.port),
        digest: new.manifest.image_digest.to_string(),
        version: Some(new.version.clone()),
        tls: Tls::default(),
        allow_http: true,
    };
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let mark = nginx.lines();
    let start = Instant::now();
    prepare(&cfg, &req, &Progress::default(), &AtomicBool::new(false)).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let (requests, bytes) = nginx.served(&uri, mark);
    fs::remove_dir_all(&node).unwrap();
    Run {
        seconds,
        bytes,
        requests,
    }
}
