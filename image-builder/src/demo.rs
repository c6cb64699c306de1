//! `os-image demo-rootfs`: the smallest root filesystem that shows the A/B
//! machinery working: busybox, a Debian kernel with the few modules the demo
//! needs, an `/sbin/init` that prints `OS-DEMO version=V slot=X ...` and stays up
//! (or powers off with `os.demo=poweroff`), and os-agent when it is built.

use crate::{kmod, tools};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub version: String,
    pub kernel_deb: PathBuf,
    pub out: PathBuf,
    pub agent: Option<PathBuf>,
    pub broken: bool,
}

/// Modules the demo root carries beyond what the bundle puts in the initramfs
/// ([`kmod::WANTED`], copied from the rootfs): virtio_net for the agent's
/// downloads.
const DEMO_EXTRA_MODULES: &[&str] = &["virtio_net"];

/// The demo's PID 1. `@BROKEN@` is `1` for a broken release: its service
/// never comes up, so the health gate fails the trial (and the agent falls back)
/// before anything could confirm it.
const INIT: &str = r#"#!/bin/sh
# Demo OS init: a real distribution would start systemd here.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
broken=@BROKEN@
# os-init has moved /proc, /sys, /dev and /run here already; mount what is missing.
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
. /etc/os-release
slot=$(sed -n 's/.*os\.slot=\([AB]\).*/\1/p' /proc/cmdline)
# /var and /etc live on PERSIST: a boot log there shows what survives reboots
# and upgrades.
mkdir -p /var/lib/demo /var/log
echo "$VERSION_ID ${slot:-?}" >>/var/lib/demo/boots
[ -s /etc/demo-first-version ] || echo "$VERSION_ID" >/etc/demo-first-version
sync
# The root slot is mounted read-only by os-init: a write to / must fail.
if touch /.os-demo-rw-probe 2>/dev/null; then rm -f /.os-demo-rw-probe; root=rw; else root=ro; fi
echo "OS-DEMO version=$VERSION_ID slot=${slot:-?} boots=$(wc -l </var/lib/demo/boots) etc-first=$(cat /etc/demo-first-version) root=$root"
# The ESP (GPT name ESP; there is no udev) carries the A/B env the agent writes.
esp=$(grep -l '^PARTNAME=ESP$' /sys/class/block/*/uevent 2>/dev/null | head -n 1)
if [ -n "$esp" ]; then
    mount -t vfat "/dev/$(sed -n 's/^DEVNAME=//p' "$esp")" /boot/efi ||
        echo "OS-DEMO cannot mount the ESP at /boot/efi"
fi
# QEMU user networking: fixed address, the host's loopback is 10.0.2.2.
modprobe virtio_net 2>/dev/null
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
# The demo's "service": the health gate checks that it came up.
mkdir -p /run/demo
if [ "$broken" = 1 ]; then
    echo "OS-DEMO version=$VERSION_ID BROKEN: the demo service fails to start"
else
    echo "$VERSION_ID" >/run/demo/ready
fi
if [ -x /usr/bin/os-agent ]; then
    # Log to PERSIST and to the console, where the demo reads it.
    (/usr/bin/os-agent serve 2>&1 | tee -a /var/log/os-agent.log) &
fi
if grep -q 'os\.demo=poweroff' /proc/cmdline; then
    sync
    poweroff -f
fi
# Stay up with a shell on the console; respawn it if it exits.
while true; do
    setsid sh -c 'exec sh </dev/console >/dev/console 2>&1'
    sleep 1
done
"#;

/// The agent's health gate on the demo node (`/etc/os-agent/health.d`).
const HEALTH_CHECKS: &[(&str, &str)] = &[
    (
        "10-network",
        "#!/bin/sh\n# The node reaches its image server's network: address and default route.\n\
         ip -4 addr show dev eth0 | grep -q 'inet 10.0.2.15/' || { echo 'eth0 has no address' >&2; exit 1; }\n\
         ip route | grep -q '^default via 10.0.2.2' || { echo 'no default route' >&2; exit 1; }\n",
    ),
    (
        "20-var",
        "#!/bin/sh\n# /var (PERSIST) is mounted and writable.\n\
         f=/var/lib/demo/.health-probe\n\
         echo ok >$f && sync && rm -f $f || { echo '/var is not writable' >&2; exit 1; }\n",
    ),
    (
        "30-demo-service",
        "#!/bin/sh\n# The demo's service came up.\n\
         [ -s /run/demo/ready ] || { echo 'the demo service is not running' >&2; exit 1; }\n",
    ),
];

pub fn run(opts: &DemoOptions) -> Result<()> {
    let out = &opts.out;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    let agent = agent_binary(opts)?;
    for dir in [
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "persist",
        "root",
        "usr/bin",
        "boot/efi",
        "etc/os-agent/health.d",
    ] {
        std::fs::create_dir_all(out.join(dir))
            .with_context(|| format!("create {}", out.join(dir).display()))?;
    }
    install_busybox(out)?;
    install_kernel(&opts.kernel_deb, out)?;
    write_etc(out, &opts.version)?;
    // Factory content under /var: os-init copies what PERSIST's /var lacks
    // on the first boot of each image (`first` stays as v1 wrote it).
    let factory = out.join("var/lib/demo-factory");
    std::fs::create_dir_all(&factory)?;
    std::fs::write(factory.join("first"), format!("{}\n", opts.version))?;
    std::fs::write(
        factory.join(format!("from-v{}", opts.version)),
        format!("{}\n", opts.version),
    )?;
    // /opt/cni is writable through PERSIST, seeded like /var (a CNI
    // DaemonSet installs its plugins there).
    std::fs::create_dir_all(out.join("opt/cni/bin"))?;
    std::fs::write(out.join("opt/cni/bin/demo-plugin"), "#!/bin/sh\n")?;
    let init = INIT.replace("@BROKEN@", if opts.broken { "1" } else { "0" });
    write_exec(&out.join("sbin/init"), init.as_bytes())?;
    for (name, script) in HEALTH_CHECKS {
        write_exec(
            &out.join("etc/os-agent/health.d").join(name),
            script.as_bytes(),
        )?;
    }
    if let Some(agent) = agent {
        std::fs::copy(&agent, out.join("usr/bin/os-agent"))
            .with_context(|| format!("copy {}", agent.display()))?;
        log::info!("included os-agent from {}", agent.display());
    }
    log::info!(
        "demo root filesystem for version {} in {}",
        opts.version,
        out.display()
    );
    Ok(())
}

/// `--agent`, or os-agent beside the running os-image when it exists.
fn agent_binary(opts: &DemoOptions) -> Result<Option<PathBuf>> {
    let agent = match &opts.agent {
        Some(a) if !a.is_file() => bail!("--agent {}: no such file", a.display()),
        Some(a) => a.clone(),
        None => {
            let beside = std::env::current_exe()?.with_file_name("os-agent");
            if !beside.is_file() {
                return Ok(None);
            }
            beside
        }
    };
    // The demo root has busybox and no C library.
    crate::elf::require_static(&agent, "os-agent")?;
    Ok(Some(agent))
}

fn install_busybox(out: &Path) -> Result<()> {
    let busybox = tools::find("busybox")?;
    let target = out.join("bin/busybox");
    std::fs::copy(&busybox, &target).with_context(|| format!("copy {}", busybox.display()))?;
    let list = tools::run(std::process::Command::new(&busybox).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = out.join(applet);
        // The demo brings its own init; busybox's would replace it.
        if applet.is_empty()
            || ["bin/busybox", "sbin/init", "linuxrc"].contains(&applet)
            || link.exists()
        {
            continue;
        }
        std::fs::create_dir_all(link.parent().unwrap())?;
        let depth = applet.matches('/').count();
        symlink(format!("{}bin/busybox", "../".repeat(depth)), &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    Ok(())
}

/// Unpacks the kernel package and keeps vmlinuz plus the demo's modules.
fn install_kernel(deb: &Path, out: &Path) -> Result<()> {
    let unpacked = tempfile::tempdir()?;
    tools::run(
        tools::command("dpkg-deb")?
            .arg("-x")
            .arg(deb)
            .arg(unpacked.path()),
    )
    .with_context(|| format!("unpack kernel package {}", deb.display()))?;
    let modules_root = unpacked.path().join("lib/modules");
    let release = single_dir(&modules_root)
        .with_context(|| format!("{} holds no kernel modules", deb.display()))?;
    let vmlinuz = unpacked.path().join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    std::fs::copy(&vmlinuz, out.join(format!("boot/vmlinuz-{release}")))?;
    let src = modules_root.join(&release);
    let dst = out.join("lib/modules").join(&release);
    let names: Vec<&str> = kmod::WANTED
        .iter()
        .chain(DEMO_EXTRA_MODULES)
        .copied()
        .collect();
    let wanted = kmod::resolve(&src, &names)?;
    for rel in wanted.iter().chain(&[
        PathBuf::from("modules.builtin"),
        PathBuf::from("modules.order"),
    ]) {
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(src.join(rel), &to)
            .with_context(|| format!("copy module {}", rel.display()))?;
    }
    // busybox modprobe in the running demo reads modules.dep.
    tools::run(
        tools::command("busybox")?
            .arg("depmod")
            .arg("-b")
            .arg(out)
            .arg(&release),
    )?;
    log::info!("kernel {release} with {} modules", wanted.len());
    Ok(())
}

fn single_dir(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => bail!(
            "expected one kernel release in {}, found {n}",
            dir.display()
        ),
    }
}

fn write_etc(out: &Path, version: &str) -> Result<()> {
    let files: [(&str, String); 5] = [
        (
            "etc/os-release",
            format!(
                "NAME=\"ab-os demo\"\nID=ab-os-demo\nVERSION_ID={version}\nPRETTY_NAME=\"ab-os demo {version}\"\n"
            ),
        ),
        ("etc/hostname", "ab-os-demo\n".into()),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n".into()),
        ("etc/group", "root:x:0:\n".into()),
        ("etc/profile", "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='demo-\\h:\\w# '\n".into()),
    ];
    for (path, text) in files {
        std::fs::write(out.join(path), text).with_context(|| format!("write {path}"))?;
    }
    Ok(())
}

fn write_exec(path: &Path, bytes: &[u8]) -> Result<()> {
    // Never write through a symlink left at this path (it would hit its target).
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
