//! The real node image (issue 16): Debian node roots v1, v2 and a broken v3
//! from a recipe (`os-image rootfs --from debian`), bundled with this
//! workspace's os-init and os-agent, and a disk with v1 in slot A whose slots
//! fit the ~840 MiB root images. v3's containerd configuration is not valid
//! TOML, so containerd never starts and its trial fails the health gate.
//!
//! Every root carries a small OCI image of the static busybox
//! (`os-image container`), tarred into `/usr/share/node-test/busybox.tar`,
//! for the node to import into containerd from a local file.
//!
//! Bundles are cached by the digest of everything that goes into them (the
//! binaries, the kernel package, the recipe and its files, the version) in
//! `/var/cache/ab-os-test/node-bundles` (`ROOTFS_CACHE` overrides the
//! directory), one entry per version: a rerun with the same inputs only
//! hard-links them.

use crate::demo::Bundle;
use crate::run;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Fixed, so the mmdebstrap base, the container image and the bundles are
/// reproducible and their caches hit.
pub const EPOCH: &str = "1700000000";
/// Where the container image's tarball lies in every root.
pub const CONTAINER_TAR: &str = "/usr/share/node-test/busybox.tar";
/// Large enough for a root image of the recipe (838 MiB).
pub const SLOT_SIZE: &str = "1G";
/// The systemd health check's wait for the boot to finish: a boot under TCG
/// reaches multi-user in about a minute; v3's never does, and its trial
/// should not take longer than needed to say so.
const BOOT_TIMEOUT_SECS: u32 = 120;
/// Not valid TOML: containerd refuses to start with it.
const BROKEN_CONTAINERD: &str =
    "# v3 of the node-image test: not valid TOML, containerd does not start.\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n";

/// The bundles and what it took to make them.
#[derive(Debug, Clone)]
pub struct NodeImages {
    pub dir: PathBuf,
    pub os_image: PathBuf,
    /// v1, v2 and the broken v3, in `dir/bundles`.
    pub bundles: Vec<Bundle>,
    /// Versions taken from the cache.
    pub cached: Vec<String>,
    /// Time to build the bundles that were not cached (root and bundle).
    pub build_time: Duration,
}

/// The cache of bases and bundles.
pub fn cache_root() -> PathBuf {
    std::env::var_os("ROOTFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/ab-os-test".into())
}

/// Builds (or takes from the cache) node bundles v1, v2 and v3 into
/// `dir/bundles`.
pub fn build(dir: &Path) -> NodeImages {
    std::fs::create_dir_all(dir).unwrap();
    let os_image = crate::host_binary("image-builder", "os-image");
    let os_init = crate::musl_binary("initramfs", "os-init");
    let os_agent = crate::musl_binary("agent", "os-agent");
    let files = dir.join("recipe");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files).unwrap();
    container_tarball(&os_image, &files);
    std::fs::write(files.join("containerd-broken.toml"), BROKEN_CONTAINERD).unwrap();
    let out = dir.join("bundles");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut images = NodeImages {
        dir: dir.to_path_buf(),
        os_image: os_image.clone(),
        bundles: Vec::new(),
        cached: Vec::new(),
        build_time: Duration::ZERO,
    };
    for version in ["1", "2", "3"] {
        let recipe = files.join(format!("node-{version}.recipe"));
        std::fs::write(&recipe, recipe_text(version == "3")).unwrap();
        let inputs = [
            os_image.as_path(),
            &os_init,
            &os_agent,
            &crate::kernel_deb(),
            &recipe,
            &files.join("busybox.tar"),
            &files.join("containerd-broken.toml"),
        ];
        let entry = cache_entry(version, &inputs);
        if entry.join(format!("os-{version}.manifest.json")).exists() {
            images.cached.push(version.into());
        } else {
            let t = Instant::now();
            let tools = [os_image.as_path(), &os_init, &os_agent];
            build_into_cache(dir, &entry, version, &recipe, tools);
            images.build_time += t.elapsed();
        }
        for ext in ["img.zst", "manifest.json"] {
            let name = format!("os-{version}.{ext}");
            link_or_copy(&entry.join(&name), &out.join(&name));
        }
        images.bundles.push(bundle(&out, version));
    }
    images
}

/// The recipe of every version; `broken`: containerd's config is not valid.
fn recipe_text(broken: bool) -> String {
    let mut text = format!(
        "# Written by tests/src/node_image.rs\n\
         kernel-deb = {}\n\
         hostname = node\n\
         serial-autologin = yes\n\
         allow-failed = systemd-networkd-wait-online.service\n\
         boot-timeout = {BOOT_TIMEOUT_SECS}\n\
         file = busybox.tar -> {CONTAINER_TAR}\n",
        crate::kernel_deb().display()
    );
    if broken {
        text += "file = containerd-broken.toml -> /etc/containerd/config.toml\n";
    }
    text
}

/// `dir/busybox.tar`: an OCI image layout of the static busybox as
/// `local/busybox:1` would be imported, tarred reproducibly.
fn container_tarball(os_image: &Path, dir: &Path) {
    let layout = dir.join("busybox-layout");
    run(Command::new(os_image)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["container", "--binary", "/bin/busybox", "--name", "busybox"])
        .arg("--layout")
        .arg(&layout)
        .args(["--tag", "1"]));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{EPOCH}"))
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(dir.join("busybox.tar"))
        .arg("."));
    std::fs::remove_dir_all(&layout).unwrap();
}

/// `cache_root()/node-bundles/os-V-KEY`, KEY the BLAKE3 of the version and
/// the inputs' bytes; other entries of the same version are removed (one
/// ~180 MiB bundle per version is kept).
fn cache_entry(version: &str, inputs: &[&Path]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(format!("node-image 1\nversion {version}\nepoch {EPOCH}\n").as_bytes());
    for p in inputs {
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let key = h.finalize().to_hex();
    let base = cache_root().join("node-bundles");
    std::fs::create_dir_all(&base).unwrap();
    let name = format!("os-{version}-{}", &key[..32]);
    for e in std::fs::read_dir(&base).unwrap().flatten() {
        let other = e.file_name().to_string_lossy().into_owned();
        if other.starts_with(&format!("os-{version}-")) && other != name {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    base.join(name)
}

/// Builds the root of `version` under `dir` with `[os_image, os_init,
/// os_agent]` and bundles it into `entry` (written beside it and renamed, so
/// an interrupted build leaves no entry).
fn build_into_cache(dir: &Path, entry: &Path, version: &str, recipe: &Path, tools: [&Path; 3]) {
    let [os_image, os_init, agent] = tools;
    let root = dir.join(format!("rootfs-v{version}"));
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new(os_image)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["rootfs", "--from", "debian", "--version", version])
        .arg("--recipe")
        .arg(recipe)
        .arg("--out")
        .arg(&root)
        .arg("--agent")
        .arg(agent)
        .arg("--cache-dir")
        .arg(cache_root()));
    let work = entry.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    run(Command::new(os_image)
        .args(["bundle", "--version", version, "--rootfs"])
        .arg(&root)
        .arg("--out")
        .arg(&work)
        .arg("--os-init")
        .arg(os_init));
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::rename(&work, entry).unwrap();
}

fn link_or_copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

fn bundle(out: &Path, version: &str) -> Bundle {
    let text = std::fs::read_to_string(out.join(format!("os-{version}.manifest.json"))).unwrap();
    let manifest = wire::manifest::Manifest::parse(&text).expect("os-image wrote a bad manifest");
    Bundle {
        version: version.into(),
        image: out.join(format!("os-{version}.img.zst")),
        digest: manifest.image_digest.to_string(),
        size: manifest.image_size,
    }
}

impl NodeImages {
    /// A fresh disk with v1 committed in slot A, B empty, slots of
    /// [`SLOT_SIZE`].
    pub fn build_disk(&self, out: &Path) {
        let _ = std::fs::remove_file(out);
        run(Command::new(&self.os_image)
            .arg("disk")
            .arg("--bundle")
            .arg(self.bundles[0].manifest())
            .args(["--slot-size", SLOT_SIZE])
            .arg("--out")
            .arg(out));
    }

    pub fn bundle(&self, version: &str) -> &Bundle {
        self.bundles
            .iter()
            .find(|b| b.version == version)
            .unwrap_or_else(|| panic!("no bundle v{version}"))
    }
}
