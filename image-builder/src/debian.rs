//! `os-image rootfs --from debian`: a Debian node root from a recipe
//! (docs/node-image.md).
//!
//! 1. read and check the recipe, the output directory and the inputs;
//! 2. the base: `mmdebstrap` (`--mode=root` as root, `--mode=unshare`
//!    otherwise) makes a tarball of a minbase Debian with systemd,
//!    containerd, iproute2 and the recipe's packages; a customize hook
//!    unpacks the kernel package (vmlinuz, modules, depmod) without running
//!    its maintainer scripts, so no initramfs generator runs in the root
//!    (`os-image bundle` makes the initramfs). With `--cache-dir` the tarball
//!    is kept as `debian-<key>.tar`, the key a digest of everything that goes
//!    into it, and reused;
//! 3. unpack the tarball into OUT and add the node's files (node.rs);
//! 4. check that `os-image bundle` will take the result (kernel, modules,
//!    VERSION_ID) and report its size.

use crate::recipe::{self, Kernel, Recipe};
use crate::{elf, node, rootfs, tools};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RootfsOptions {
    pub from: String,
    pub recipe: PathBuf,
    pub out: PathBuf,
    pub version: String,
    pub agent: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// Packages of every node root, beside the recipe's. `usr-is-merged`
/// satisfies init-system-helpers' `usrmerge | usr-is-merged` without
/// usrmerge's perl dependencies (the root is merged-/usr from the start,
/// made so by mmdebstrap's merged-usr hook, [`MERGED_USR_HOOKS`]).
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "containerd",
    "iproute2",
    "usr-is-merged",
];

/// mmdebstrap's hook directory that lays out merged-/usr before the
/// essential packages (debootstrap's way) instead of installing usrmerge.
pub const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// dpkg filters: no manuals, documentation (copyrights stay), info pages,
/// translations. mmdebstrap keeps them in /etc/dpkg/dpkg.cfg.d, so packages
/// installed later follow them too.
pub const DPKG_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];

/// The customize hook (`$1` = the chroot): fetch the kernel package, unpack
/// it outside the root, copy vmlinuz, config and modules in, run depmod.
/// `@FETCH@` puts the package at "$work/kernel.deb".
const KERNEL_HOOK: &str = r#"#!/bin/sh
# Written by os-image rootfs: the kernel without its maintainer scripts, so
# no initramfs generator runs (os-image bundle makes the initramfs).
set -eu
root=$1
work=$root/tmp/os-image-kernel
rm -rf "$work"
mkdir -p "$work/x"
@FETCH@
dpkg-deb -x "$work/kernel.deb" "$work/x"
mods=$work/x/lib/modules
[ -d "$mods" ] || mods=$work/x/usr/lib/modules
release=$(ls "$mods")
case $release in
''|*'
'*) echo "os-image: the kernel package must hold exactly one lib/modules/<release>" >&2; exit 1 ;;
esac
[ -f "$work/x/boot/vmlinuz-$release" ] || { echo "os-image: no boot/vmlinuz-$release in the kernel package" >&2; exit 1; }
mkdir -p "$root/boot" "$root/usr/lib/modules"
cp "$work/x/boot/vmlinuz-$release" "$root/boot/"
if [ -f "$work/x/boot/config-$release" ]; then cp "$work/x/boot/config-$release" "$root/boot/"; fi
cp -a "$mods/$release" "$root/usr/lib/modules/"
chroot "$root" /usr/sbin/depmod -a "$release"
rm -rf "$work"
echo "os-image: kernel $release (vmlinuz, $(find "$root/usr/lib/modules/$release" -name '*.ko' | wc -l) modules)"
"#;

const FETCH_DEB: &str = r#"cp -- @DEB@ "$work/kernel.deb""#;
/// A metapackage (linux-image-amd64) is resolved to the versioned package
/// it depends on, through the root's own apt.
const FETCH_PACKAGE: &str = r#"pkg=@PKG@
case $pkg in
linux-image-[0-9]*) ;;
*) pkg=$(chroot "$root" apt-cache depends "$pkg" | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1) ;;
esac
[ -n "$pkg" ] || { echo "os-image: cannot resolve the kernel package "@PKG@ >&2; exit 1; }
# apt downloads as _apt: let it write there (else it warns and downloads as root).
chroot "$root" chown _apt /tmp/os-image-kernel
chroot "$root" sh -c 'cd /tmp/os-image-kernel && apt-get download -q "$1"' sh "$pkg"
mv "$work/$pkg"_*.deb "$work/kernel.deb""#;

/// `'...'` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn run(opts: &RootfsOptions) -> Result<()> {
    let started = Instant::now();
    if opts.from != "debian" {
        bail!("--from {}: only `debian` is supported", opts.from);
    }
    check_version(&opts.version)?;
    let text = fs::read_to_string(&opts.recipe)
        .with_context(|| format!("read recipe {}", opts.recipe.display()))?;
    let base = opts
        .recipe
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let recipe = recipe::parse(&text, base)
        .map_err(|e| anyhow::anyhow!("recipe {}: {e}", opts.recipe.display()))?;
    check_out(&opts.out)?;
    let agent = agent_binary(opts.agent.as_deref(), recipe.agent.as_deref())?;
    if let Kernel::Deb(deb) = &recipe.kernel {
        if !deb.is_file() {
            bail!(
                "kernel-deb {}: no such file (scripts/fetch-kernel.sh caches one in /var/cache/ab-os-test/kernel/dl)",
                deb.display()
            );
        }
    }
    let mmdebstrap = tools::find("mmdebstrap")?;
    for tool in ["tar", "dpkg-deb"] {
        tools::find(tool)?;
    }
    let as_root = is_root(&opts.out)?;
    let plan = Plan::new(&recipe, &mmdebstrap)?;
    let base_tar = base_tarball(
        &plan,
        &recipe,
        opts.cache_dir.as_deref(),
        &opts.out,
        as_root,
    )?;

    let t = Instant::now();
    fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    log::info!("unpacking the base into {}", opts.out.display());
    unpack(base_tar.path(), &opts.out, as_root)?;
    drop(base_tar);
    log::info!("unpacked in {:.1} s", t.elapsed().as_secs_f64());
    node::configure(
        &opts.out,
        &recipe,
        &node::NodeInputs {
            version: &opts.version,
            agent: &agent,
            as_root,
        },
    )?;
    check_bundle_ready(&opts.out, &opts.version)?;
    if let Some(epoch) = &plan.source_date_epoch {
        // The files added after mmdebstrap get its timestamps too.
        tools::set_tree_mtime(&opts.out, epoch.trim().parse()?)?;
    }
    let stats = rootfs::tree_stats(&opts.out)?;
    log::info!(
        "node root for version {} in {}: {} MiB, {} inodes, {:.1} s",
        opts.version,
        opts.out.display(),
        stats.bytes >> 20,
        stats.inodes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The version becomes a file name and an os-release value.
fn check_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
        && !v.starts_with(['.', '-']);
    if !ok {
        bail!("--version {v:?}: use letters, digits and . _ + ~ - (it goes into /etc/os-release and file names)");
    }
    Ok(())
}

fn check_out(out: &Path) -> Result<()> {
    match fs::symlink_metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            if fs::read_dir(out)?.next().is_some() {
                bail!(
                    "--out {} is not empty: give a new or empty directory",
                    out.display()
                );
            }
            Ok(())
        }
        Ok(_) => bail!("--out {} exists and is not a directory", out.display()),
    }
}

/// `--agent`, else the recipe's `agent`, else os-agent beside os-image.
fn agent_binary(flag: Option<&Path>, recipe: Option<&Path>) -> Result<PathBuf> {
    let agent = match flag.or(recipe) {
        Some(a) => a.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("os-agent"),
    };
    if !agent.is_file() {
        bail!(
            "os-agent not found at {}: pass --agent or set agent = PATH in the recipe (`make bins` builds target/bin/os-agent)",
            agent.display()
        );
    }
    elf::require_static(&agent, "os-agent")?;
    Ok(agent)
}

/// Whether this process can set owners: it owns what it creates as uid 0.
fn is_root(out: &Path) -> Result<bool> {
    let probe_dir = out
        .ancestors()
        .skip(1)
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("."));
    let probe = tempfile::tempdir_in(probe_dir)
        .with_context(|| format!("create a directory in {}", probe_dir.display()))?;
    Ok(fs::metadata(probe.path())?.uid() == 0)
}

/// Everything that decides the base tarball's content.
struct Plan {
    packages: Vec<String>,
    hook: String,
    /// Canonical text of the inputs; its digest names the cache entry.
    inputs: String,
    source_date_epoch: Option<String>,
    /// mmdebstrap ships [`MERGED_USR_HOOKS`].
    merged_usr: bool,
}

impl Plan {
    fn new(recipe: &Recipe, mmdebstrap: &Path) -> Result<Plan> {
        let mut packages: Vec<String> = BASE_PACKAGES
            .iter()
            .map(|p| p.to_string())
            .chain(recipe.packages.iter().cloned())
            .collect();
        packages.sort();
        packages.dedup();
        let version = tools::run(std::process::Command::new(mmdebstrap).arg("--version"))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        // The key covers the hook's text with the fetch step as a template
        // (the .deb's path does not matter, its digest does).
        let (fetch, kernel_id, fetch_template) = match &recipe.kernel {
            Kernel::Deb(deb) => {
                let digest = blake3::hash(
                    &fs::read(deb).with_context(|| format!("read {}", deb.display()))?,
                );
                let path = deb
                    .to_str()
                    .with_context(|| format!("kernel-deb {} is not a UTF-8 path", deb.display()))?;
                (
                    FETCH_DEB.replace("@DEB@", &shell_quote(path)),
                    format!("deb blake3:{}", digest.to_hex()),
                    FETCH_DEB,
                )
            }
            Kernel::Package(name) => (
                FETCH_PACKAGE.replace("@PKG@", &shell_quote(name)),
                format!("package {name}"),
                FETCH_PACKAGE,
            ),
        };
        let hook = KERNEL_HOOK.replace("@FETCH@", &fetch);
        let merged_usr = Path::new(MERGED_USR_HOOKS).is_dir();
        let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
        if let Some(s) = &source_date_epoch {
            if s.trim().parse::<u64>().is_err() {
                bail!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds");
            }
        }
        let inputs = format!(
            "os-image debian base 1\nmmdebstrap: {version}\nsuite: {}\nmirror: {}\nvariant: minbase\npackages: {}\nkernel: {kernel_id}\ndpkg: {}\nhook: {}\nmerged-usr hook: {merged_usr}\nSOURCE_DATE_EPOCH: {}\n",
            recipe.suite,
            recipe.mirror,
            packages.join(","),
            DPKG_FILTERS.join(" "),
            blake3::hash(KERNEL_HOOK.replace("@FETCH@", fetch_template).as_bytes()).to_hex(),
            source_date_epoch.as_deref().unwrap_or("unset"),
        );
        Ok(Plan {
            packages,
            hook,
            inputs,
            source_date_epoch,
            merged_usr,
        })
    }

    fn key(&self) -> String {
        blake3::hash(self.inputs.as_bytes()).to_hex()[..32].to_string()
    }
}

/// The base tarball: from the cache, or made now (and cached when asked).
enum BaseTar {
    Cached(PathBuf),
    /// The work directory (removed on drop) and the tarball in it.
    Temp {
        _work: tempfile::TempDir,
        tar: PathBuf,
    },
}

impl BaseTar {
    fn path(&self) -> &Path {
        match self {
            BaseTar::Cached(p) | BaseTar::Temp { tar: p, .. } => p,
        }
    }
}

fn base_tarball(
    plan: &Plan,
    recipe: &Recipe,
    cache: Option<&Path>,
    out: &Path,
    as_root: bool,
) -> Result<BaseTar> {
    let name = format!("debian-{}.tar", plan.key());
    if let Some(dir) = cache {
        let cached = dir.join(&name);
        if cached.is_file() {
            log::info!(
                "base: cached {} (delete it to rebuild; its inputs are in {}.inputs)",
                cached.display(),
                cached.display()
            );
            return Ok(BaseTar::Cached(cached));
        }
        fs::create_dir_all(dir).with_context(|| format!("create cache {}", dir.display()))?;
    }
    check_mirror(&recipe.mirror, &recipe.suite)?;
    // Work next to the cache (the rename into place stays on one
    // filesystem) or next to OUT.
    let work_parent = match cache {
        Some(dir) => dir.to_path_buf(),
        None => out
            .ancestors()
            .skip(1)
            .find(|p| p.is_dir())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    let work = tempfile::Builder::new()
        .prefix(".os-image-debian-")
        .tempdir_in(&work_parent)
        .with_context(|| format!("create a work directory in {}", work_parent.display()))?;
    let hook = work.path().join("kernel-hook.sh");
    fs::write(&hook, &plan.hook).with_context(|| format!("write {}", hook.display()))?;
    let tar = work.path().join("base.tar");
    mmdebstrap(plan, recipe, &hook, &tar, as_root)?;
    match cache {
        Some(dir) => {
            let cached = dir.join(&name);
            fs::write(dir.join(format!("{name}.inputs")), &plan.inputs)?;
            fs::rename(&tar, &cached)
                .with_context(|| format!("move the base into {}", cached.display()))?;
            log::info!("base cached as {}", cached.display());
            Ok(BaseTar::Cached(cached))
        }
        None => Ok(BaseTar::Temp { _work: work, tar }),
    }
}

/// The mirror must answer for the suite before mmdebstrap spends minutes.
fn check_mirror(mirror: &str, suite: &str) -> Result<()> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_global(Some(Duration::from_secs(60)))
        .build();
    let agent: ureq::Agent = config.into();
    match agent.head(&url).call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::StatusCode(404)) => bail!(
            "the Debian mirror {mirror} has no suite {suite} ({url}: 404): check suite = and mirror = in the recipe"
        ),
        Err(e) => bail!(
            "the Debian mirror {mirror} is unreachable ({url}: {e}): check the network, a proxy, or mirror = in the recipe"
        ),
    }
}

fn mmdebstrap(plan: &Plan, recipe: &Recipe, hook: &Path, tar: &Path, as_root: bool) -> Result<()> {
    let mut cmd = tools::command("mmdebstrap")?;
    cmd.arg(if as_root {
        "--mode=root"
    } else {
        "--mode=unshare"
    })
    .arg("--variant=minbase")
    .arg("--format=tar")
    .arg("--aptopt=APT::Install-Recommends \"false\"")
    .arg(format!("--include={}", plan.packages.join(",")));
    for f in DPKG_FILTERS {
        cmd.arg(format!("--dpkgopt={f}"));
    }
    if plan.merged_usr {
        cmd.arg(format!("--hook-dir={MERGED_USR_HOOKS}"));
    } else {
        log::warn!(
            "{MERGED_USR_HOOKS} not found: mmdebstrap installs usrmerge (and perl) for merged-/usr"
        );
    }
    let hook = hook
        .to_str()
        .context("the work directory's path is not UTF-8")?;
    cmd.arg(format!("--customize-hook=sh {} \"$1\"", shell_quote(hook)))
        .arg(&recipe.suite)
        .arg(tar)
        .arg(&recipe.mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &plan.source_date_epoch {
        Some(s) => {
            cmd.env("SOURCE_DATE_EPOCH", s);
        }
        None => log::warn!("SOURCE_DATE_EPOCH is not set: the base's timestamps are today's"),
    }
    log::info!(
        "base: mmdebstrap {} {} ({} mode) with {}",
        recipe.suite,
        recipe.mirror,
        if as_root { "root" } else { "unshare" },
        plan.packages.join(" ")
    );
    let t = Instant::now();
    let mut child = cmd.spawn().context("start mmdebstrap")?;
    // Both streams are relayed line by line as progress; the tail is kept for the error.
    let stdout = child.stdout.take().expect("piped");
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            log::info!("mmdebstrap: {line}");
        }
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        log::info!("mmdebstrap: {line}");
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let _ = relay.join();
    let status = child.wait().context("wait for mmdebstrap")?;
    if !status.success() {
        let unshare_hint = if as_root {
            ""
        } else {
            " (unshare mode needs unprivileged user namespaces and subuid/subgid ranges for this user)"
        };
        bail!(
            "mmdebstrap failed ({status}){unshare_hint}; its last lines:\n{}",
            tail.join("\n")
        );
    }
    log::info!(
        "base: mmdebstrap took {:.1} s, {} MiB tarball",
        t.elapsed().as_secs_f64(),
        fs::metadata(tar)?.len() >> 20
    );
    Ok(())
}

/// Unpacks the base. /dev stays empty (devtmpfs is mounted there); without
/// root, owners are lost (the bundle makes every file 0:0).
fn unpack(tar: &Path, out: &Path, as_root: bool) -> Result<()> {
    let mut cmd = tools::command("tar")?;
    cmd.arg("-x").arg("-f").arg(tar).arg("-C").arg(out).args([
        "--numeric-owner",
        "--same-permissions",
        "--exclude=./dev/*",
    ]);
    if as_root {
        cmd.args(["--same-owner", "--xattrs", "--xattrs-include=*"]);
    } else {
        log::warn!("not running as root: the root's files are owned by this user, and the bundle makes them 0:0");
    }
    tools::run(&mut cmd).with_context(|| format!("unpack {}", tar.display()))?;
    Ok(())
}

/// What `os-image bundle` requires, checked now rather than there.
fn check_bundle_ready(root: &Path, version: &str) -> Result<()> {
    rootfs::check_version(root, version)?;
    let kernel = rootfs::find_kernel(root)?;
    let (release, _) = rootfs::find_modules(root)?;
    rootfs::check_kernel_release(&kernel, &release)?;
    let init = rootfs::resolve_in_root(root, Path::new("sbin/init"))?;
    if !init.is_file() {
        bail!("/sbin/init does not lead to a file in the root");
    }
    for entry in fs::read_dir(root.join("boot"))? {
        let name = entry?.file_name();
        if name.to_string_lossy().starts_with("initrd") {
            bail!(
                "/boot/{} exists: an initramfs generator ran in the root",
                name.to_string_lossy()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_the_hook() {
        assert_eq!(shell_quote("/a b/c.deb"), "'/a b/c.deb'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("$(id)'`x`\"")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"$(id)'`x`\"");
    }

    /// The cache key follows what goes into the base, and only that.
    #[test]
    fn the_cache_key_covers_the_base_inputs_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fake = d.join("mmdebstrap");
        fs::write(&fake, "#!/bin/sh\necho mmdebstrap 1.3.5\n").unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fs::create_dir(d.join("elsewhere")).unwrap();
        fs::write(d.join("k.deb"), "kernel 1").unwrap();
        fs::write(d.join("elsewhere/k.deb"), "kernel 1").unwrap();
        let key = |text: &str| {
            let r = recipe::parse(text, d).unwrap();
            Plan::new(&r, &fake).unwrap().key()
        };
        let base = key("kernel-deb = k.deb\n");
        assert_eq!(
            base,
            key("kernel-deb = k.deb\nhostname = other\nuser = u\nenable = x.service\n")
        );
        assert_eq!(
            base,
            key("kernel-deb = elsewhere/k.deb\n"),
            "the path does not matter"
        );
        assert_ne!(base, key("kernel-deb = k.deb\npackages = curl\n"));
        assert_ne!(
            base,
            key("kernel-deb = k.deb\nmirror = http://mirror.example/debian\n")
        );
        assert_ne!(base, key("kernel-deb = k.deb\nsuite = trixie\n"));
        assert_ne!(base, key("kernel-package = linux-image-amd64\n"));
        assert_ne!(
            key("kernel-package = linux-image-amd64\n"),
            key("kernel-package = linux-image-cloud-amd64\n")
        );
        // Package order and repeats do not matter.
        assert_eq!(
            key("kernel-deb = k.deb\npackages = jq curl\n"),
            key("kernel-deb = k.deb\npackages = curl\npackages = jq curl systemd\n")
        );
        fs::write(d.join("k.deb"), "kernel 2").unwrap();
        assert_ne!(
            base,
            key("kernel-deb = k.deb\n"),
            "the kernel's content matters"
        );
    }

    #[test]
    fn versions_and_output_directories() {
        check_version("1.2.3-rc1").unwrap();
        for bad in ["", "1 2", "a/b", "-1", ".x", "1\n2", "v\"1"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        check_out(&dir.path().join("new")).unwrap();
        check_out(dir.path()).unwrap();
        fs::write(dir.path().join("f"), "").unwrap();
        let e = check_out(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        let e = check_out(&dir.path().join("f")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
