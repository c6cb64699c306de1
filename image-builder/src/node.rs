//! The node's own files on top of the Debian base (debian.rs): os-release,
//! an empty machine-id, hostname, the ESP mount, os-agent with its unit,
//! config and health checks, networking, the serial console, users and keys,
//! the recipe's extra files and enabled units. Every write goes through
//! [`rootwrite`], so nothing lands outside the root or through a symlink.

use crate::recipe::{ExtraFile, Network, Recipe};
use crate::{rootwrite, units};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The agent's unit, enabled in multi-user.target.
pub const AGENT_UNIT: &str = "os-agent.service";
const AGENT_UNIT_TEXT: &str = "\
# Written by os-image rootfs (docs/node-image.md).
[Unit]
Description=os-agent: A/B upgrades and the trial boot's health gate
# The A/B env lives on the ESP; PERSIST is mounted by os-init before systemd.
Wants=boot-efi.mount
After=boot-efi.mount local-fs.target

[Service]
Type=simple
ExecStart=/usr/bin/os-agent serve
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
";

/// Health checks in /etc/os-agent/health.d (the agent runs them in name
/// order after a trial boot; all must exit 0). `@BOOT_TIMEOUT@` is the
/// recipe's boot-timeout.
pub const HEALTH_CHECKS: &[(&str, &str)] = &[
    (
        "10-systemd-running",
        r#"#!/bin/sh
# systemd finished booting and is `running`; `degraded` passes only when every
# failed unit is listed in the allow-list (one unit per line).
allowed=${OS_AGENT_ALLOW_FAILED:-/etc/os-agent/allow-failed}
wait=@BOOT_TIMEOUT@
state=$(timeout "$wait" systemctl is-system-running --wait 2>/dev/null)
case $state in
running) exit 0 ;;
degraded) ;;
'') echo "systemd did not finish booting within ${wait}s" >&2; exit 1 ;;
*) echo "systemd is $state, not running" >&2; exit 1 ;;
esac
failed=$(systemctl list-units --state=failed --plain --no-legend --no-pager |
    while read -r unit _; do
        grep -qxF -- "$unit" "$allowed" 2>/dev/null || printf ' %s' "$unit"
    done)
if [ -n "$failed" ]; then
    echo "systemd is degraded; failed units not in $allowed:$failed" >&2
    exit 1
fi
echo "systemd is degraded; every failed unit is allowed"
"#,
    ),
    (
        "15-no-restart-loops",
        r#"#!/bin/sh
# No service is crash-looping. With Restart=always, systemd restarts a service
# that keeps dying without ever marking it failed (unless it hits its start
# limit), so the system still says `running`. Watch systemd's restart counts
# over a window: a service restarted twice or more within it fails the gate,
# and so does one that ended failed meanwhile (a fast loop hits the start
# limit). Units in the allow-list are ignored here too.
allowed=${OS_AGENT_ALLOW_FAILED:-/etc/os-agent/allow-failed}
window=@RESTART_WINDOW@
restarts() {
    systemctl show --property=Id --property=NRestarts --no-pager '*.service' |
        awk 'BEGIN { RS = ""; FS = "\n" }
             { id = ""; n = 0
               for (i = 1; i <= NF; i++) {
                   if ($i ~ /^Id=/) id = substr($i, 4)
                   if ($i ~ /^NRestarts=/) n = substr($i, 11) + 0
               }
               if (id != "") print id, n }'
}
not_allowed() {
    ! grep -qxF -- "$1" "$allowed" 2>/dev/null
}
before=$(restarts)
sleep "$window"
looping=$(restarts | while read -r unit n; do
    was=$(printf '%s\n' "$before" | awk -v u="$unit" '$1 == u { print $2 }')
    if [ $((n - ${was:-0})) -ge 2 ] && not_allowed "$unit"; then
        printf ' %s (%s restarts in %ss)' "$unit" $((n - ${was:-0})) "$window"
    fi
done)
failed=$(systemctl list-units --state=failed --plain --no-legend --no-pager |
    while read -r unit _; do
        not_allowed "$unit" && printf ' %s' "$unit"
    done)
if [ -n "$looping" ]; then
    echo "services restarting over and over:$looping" >&2
fi
if [ -n "$failed" ]; then
    echo "units failed within ${window}s of the boot's end:$failed" >&2
fi
[ -z "$looping$failed" ]
"#,
    ),
    (
        "20-containerd",
        r#"#!/bin/sh
# containerd answers on its socket (`ctr version` asks the daemon).
i=0
until out=$(timeout 15 ctr version 2>&1); do
    i=$((i + 1))
    if [ "$i" -ge 6 ]; then
        echo "containerd does not answer: $out" >&2
        exit 1
    fi
    sleep 5
done
"#,
    ),
    (
        "30-os-agent-socket",
        r#"#!/bin/sh
# The agent's own JSON-RPC socket answers a `status` request.
conf=/etc/os-agent/agent.conf
sock=$(sed -n 's/^[[:space:]]*socket[[:space:]]*=[[:space:]]*//p' "$conf" 2>/dev/null | tail -n 1)
sock=${sock:-/run/os-agent/os-agent.sock}
answer=$(timeout 20 perl -MIO::Socket::UNIX -e '
    my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "cannot connect to $ARGV[0]: $!\n";
    print $s "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}\n";
    my $line = <$s>;
    defined $line or die "no answer from $ARGV[0]\n";
    print $line;' "$sock" 2>&1) || { echo "os-agent socket: $answer" >&2; exit 1; }
case $answer in
*'"result"'*) exit 0 ;;
esac
echo "os-agent socket answered with an error: $answer" >&2
exit 1
"#,
    ),
];

/// Seconds the restart-loop check watches systemd's restart counts. A
/// Debian containerd (Restart=always, RestartSec=5) that cannot start is
/// restarted three or four times in it; the check-timeout leaves room
/// (boot-timeout + 30 s).
const RESTART_WINDOW: u32 = 20;

/// What the node part needs beyond the recipe.
pub struct NodeInputs<'a> {
    pub version: &'a str,
    pub agent: &'a Path,
    /// Owners can be set (the build runs as root).
    pub as_root: bool,
}

pub fn configure(root: &Path, recipe: &Recipe, inputs: &NodeInputs) -> Result<()> {
    // The recipe's files first: what the builder writes after them wins.
    for f in &recipe.files {
        copy_extra_file(root, f).with_context(|| format!("recipe line {}: file", f.line))?;
    }
    write_identity(root, recipe, inputs.version)?;
    write_fstab(root)?;
    install_agent(root, recipe, inputs.agent)?;
    if recipe.network == Network::Dhcp {
        rootwrite::write(
            root,
            "etc/systemd/network/80-node-dhcp.network",
            b"# Written by os-image rootfs: DHCP on every wired interface.\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
            0o644,
        )?;
        units::enable(root, "systemd-networkd.service")?;
    }
    if recipe.serial_autologin {
        // For tests: a root shell on the serial console without a password.
        rootwrite::write(
            root,
            "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
            b"# Written by os-image rootfs (recipe: serial-autologin = yes).\n[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
            0o644,
        )?;
        units::enable(root, "serial-getty@ttyS0.service")?;
    }
    add_users(root, recipe, inputs.as_root)?;
    for unit in &recipe.enable {
        units::enable(root, unit).with_context(|| format!("enable {unit} (recipe)"))?;
    }
    Ok(())
}

/// os-release (VERSION_ID), empty machine-id, hostname, hosts, resolv.conf.
fn write_identity(root: &Path, recipe: &Recipe, version: &str) -> Result<()> {
    let base = rootwrite::read(root, "usr/lib/os-release").unwrap_or_default();
    let debian = crate::rootfs::os_release_value(&base, "VERSION_ID").unwrap_or_default();
    // The values are checked: version by the caller, debian by this filter.
    let debian: String = debian
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let text = format!(
        "PRETTY_NAME=\"ab-os node {version} (Debian {debian})\"\nNAME=\"ab-os node\"\nID=ab-os-node\nID_LIKE=debian\nVERSION=\"{version}\"\nVERSION_ID=\"{version}\"\nDEBIAN_VERSION_ID=\"{debian}\"\n"
    );
    rootwrite::write(root, "usr/lib/os-release", text.as_bytes(), 0o644)?;
    rootwrite::link(root, "etc/os-release", "../usr/lib/os-release")?;
    // Zero-length: systemd treats the boot as the first one and writes the
    // machine's id into /etc, i.e. the /etc overlay's upper on PERSIST.
    rootwrite::write(root, "etc/machine-id", b"", 0o444)?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok() {
        fs::remove_file(&dbus_id).with_context(|| format!("remove {}", dbus_id.display()))?;
    }
    let host = &recipe.hostname;
    rootwrite::write(root, "etc/hostname", format!("{host}\n").as_bytes(), 0o644)?;
    rootwrite::write(
        root,
        "etc/hosts",
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n").as_bytes(),
        0o644,
    )?;
    // mmdebstrap copies the build host's resolv.conf in; it is no business of the node.
    if !recipe.files.iter().any(|f| f.dest == "etc/resolv.conf") {
        rootwrite::write(
            root,
            "etc/resolv.conf",
            b"# No name servers configured by the image (docs/node-image.md).\n",
            0o644,
        )?;
    }
    Ok(())
}

fn write_fstab(root: &Path) -> Result<()> {
    rootwrite::ensure_dir(root, "boot/efi")?;
    rootwrite::write(
        root,
        "etc/fstab",
        b"# Written by os-image rootfs. / is the read-only slot, /var and /etc come from\n\
          # PERSIST (mounted by os-init); the ESP holds the A/B boot state os-agent writes.\n\
          # <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n\
          PARTLABEL=ESP\t/boot/efi\tvfat\tumask=0077,nofail,x-systemd.device-timeout=30s\t0\t0\n\
          # The root is read-only; programs (ctr, for one) need a writable /tmp.\n\
          tmpfs\t/tmp\ttmpfs\tmode=1777,nosuid,nodev,size=50%,nr_inodes=1m\t0\t0\n",
        0o644,
    )?;
    // os-init owns the disk's layout. Left on, systemd's GPT generator takes
    // the root for a discoverable partition and asks systemd-remount-fs to
    // make it writable, which fails on the verity device and leaves every
    // boot degraded (seen on the first QEMU boot of a Debian node).
    rootwrite::link(
        root,
        "etc/systemd/system-generators/systemd-gpt-auto-generator",
        "/dev/null",
    )
}

fn install_agent(root: &Path, recipe: &Recipe, agent: &Path) -> Result<()> {
    let bytes = fs::read(agent).with_context(|| format!("read os-agent {}", agent.display()))?;
    rootwrite::write(root, "usr/bin/os-agent", &bytes, 0o755)?;
    rootwrite::write(
        root,
        "usr/lib/systemd/system/os-agent.service",
        AGENT_UNIT_TEXT.as_bytes(),
        0o644,
    )?;
    units::enable(root, AGENT_UNIT)?;
    // Each check within check-timeout; the systemd check may wait boot-timeout.
    let check = recipe.boot_timeout + 30;
    let deadline = check + 150;
    let conf = format!(
        "# os-agent settings (`os-agent --help` lists them); written by os-image rootfs.\n\
         # The systemd health check waits up to {} s for the boot to finish.\n\
         check-timeout = {check}\nhealth-deadline = {deadline}\n\
         # This image's kernel has dm-verity: an update without a verity tree (a\n\
         # --no-verity bundle, or an unsigned manifest with the tree left out) is refused.\n\
         require-verity = yes\n",
        recipe.boot_timeout
    );
    rootwrite::write(root, "etc/os-agent/agent.conf", conf.as_bytes(), 0o644)?;
    rootwrite::ensure_dir(root, "etc/os-agent/health.d")?;
    for (name, text) in HEALTH_CHECKS {
        let text = text
            .replace("@BOOT_TIMEOUT@", &recipe.boot_timeout.to_string())
            .replace("@RESTART_WINDOW@", &RESTART_WINDOW.to_string());
        rootwrite::write(
            root,
            &format!("etc/os-agent/health.d/{name}"),
            text.as_bytes(),
            0o755,
        )?;
    }
    let mut allowed =
        String::from("# Failed units that do not fail the health gate (recipe: allow-failed).\n");
    for unit in &recipe.allow_failed {
        allowed.push_str(unit);
        allowed.push('\n');
    }
    rootwrite::write(root, "etc/os-agent/allow-failed", allowed.as_bytes(), 0o644)?;
    Ok(())
}

/// The recipe's `file` source: a regular file inside the recipe's
/// directory (a symlink is followed only when it stays there).
fn copy_extra_file(root: &Path, f: &ExtraFile) -> Result<()> {
    let base = f
        .base
        .canonicalize()
        .with_context(|| format!("recipe directory {}", f.base.display()))?;
    let src = f.base.join(&f.src);
    let real = src
        .canonicalize()
        .with_context(|| format!("source {}", src.display()))?;
    if !real.starts_with(&base) {
        bail!(
            "source {} leads out of the recipe's directory (to {})",
            src.display(),
            real.display()
        );
    }
    let meta = fs::metadata(&real).with_context(|| format!("stat {}", real.display()))?;
    if !meta.is_file() {
        bail!("source {} is not a regular file", src.display());
    }
    // Permission bits only: no set-uid, set-gid or sticky bits from the source.
    let mode = meta.mode() & 0o755;
    let bytes = fs::read(&real).with_context(|| format!("read {}", real.display()))?;
    rootwrite::write(root, &f.dest, &bytes, mode)?;
    log::info!("file {} -> /{}", src.display(), f.dest);
    Ok(())
}

/// Users (uids from 1000 unless given), their home in the image, and
/// authorized_keys. Homes are read-only at run time like the rest of the root.
fn add_users(root: &Path, recipe: &Recipe, as_root: bool) -> Result<()> {
    if recipe.users.is_empty() && recipe.authorized_keys.is_empty() {
        return Ok(());
    }
    let passwd = rootwrite::read(root, "etc/passwd")?;
    let group = rootwrite::read(root, "etc/group")?;
    let taken = |text: &str, name: &str, id: u32| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.first() == Some(&name) || f.get(2).and_then(|s| s.parse::<u32>().ok()) == Some(id)
        })
    };
    let mut next = 1000;
    for u in &recipe.users {
        let exists = passwd
            .lines()
            .any(|l| l.split(':').next() == Some(u.name.as_str()));
        if exists {
            bail!(
                "recipe line {}: user {} exists in the Debian base already",
                u.line,
                u.name
            );
        }
        let uid = match u.uid {
            Some(uid) => {
                if taken(&passwd, "", uid) || taken(&group, "", uid) {
                    bail!("recipe line {}: uid {uid} is taken", u.line);
                }
                uid
            }
            None => {
                while taken(&passwd, "", next)
                    || taken(&group, "", next)
                    || recipe.users.iter().any(|o| o.uid == Some(next))
                {
                    next += 1;
                }
                next += 1;
                next - 1
            }
        };
        let name = &u.name;
        rootwrite::append(
            root,
            "etc/passwd",
            &format!("{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"),
        )?;
        rootwrite::append(root, "etc/group", &format!("{name}:x:{uid}:\n"))?;
        // `*`: no password login; SSH keys work.
        rootwrite::append(root, "etc/shadow", &format!("{name}:*::0:99999:7:::\n"))?;
        if fs::symlink_metadata(root.join("etc/gshadow")).is_ok() {
            rootwrite::append(root, "etc/gshadow", &format!("{name}:!::\n"))?;
        }
        let home = rootwrite::ensure_dir(root, &format!("home/{name}"))?;
        chown(&home, uid, as_root)?;
        log::info!("user {name} (uid {uid})");
    }
    let passwd = rootwrite::read(root, "etc/passwd")?;
    for user in recipe
        .authorized_keys
        .iter()
        .map(|k| k.user.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&user) && f.len() >= 7)
            .with_context(|| format!("no passwd entry for {user}"))?;
        let (uid, home) = (entry[2].parse::<u32>().unwrap_or(0), entry[5]);
        let home = home
            .strip_prefix('/')
            .filter(|h| !h.is_empty())
            .with_context(|| format!("{user}'s home {home:?} is not an absolute path"))?;
        let mut keys = String::new();
        for k in recipe.authorized_keys.iter().filter(|k| k.user == user) {
            keys.push_str(&k.key);
            keys.push('\n');
        }
        let ssh = rootwrite::ensure_dir(root, &format!("{home}/.ssh"))?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
        let file = rootwrite::write(
            root,
            &format!("{home}/.ssh/authorized_keys"),
            keys.as_bytes(),
            0o600,
        )?;
        chown(&ssh, uid, as_root)?;
        chown(&file, uid, as_root)?;
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, as_root: bool) -> Result<()> {
    if as_root {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The systemd check with stand-ins for `systemctl` and `timeout`.
    fn systemd_check(state: &str, failed: &[&str], allowed: &[&str]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let lines: String = failed
            .iter()
            .map(|u| format!("{u} loaded failed failed Some unit\n"))
            .collect();
        fs::write(dir.path().join("failed"), lines).unwrap();
        let fake = format!(
            "#!/bin/sh\ncase $1 in is-system-running) echo {state} ;; list-units) cat {} ;; esac\n",
            dir.path().join("failed").display()
        );
        let sh = |name: &str, text: &str| {
            let p = bin.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        sh("systemctl", &fake);
        sh("timeout", "#!/bin/sh\nshift\nexec \"$@\"\n");
        let allow = dir.path().join("allow");
        fs::write(&allow, format!("# comment\n{}\n", allowed.join("\n"))).unwrap();
        let script = dir.path().join("check");
        fs::write(&script, HEALTH_CHECKS[0].1.replace("@BOOT_TIMEOUT@", "5")).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let out = Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .env("OS_AGENT_ALLOW_FAILED", &allow)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The restart-loop check with a stand-in `systemctl` whose restart counts
    /// are `before` on the first `show` and `after` on the next, and `sleep`
    /// that returns at once.
    fn restart_check(
        before: &[(&str, u32)],
        after: &[(&str, u32)],
        failed: &[&str],
        allowed: &[&str],
    ) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        // `systemctl show` prints one block per unit, properties in its own order.
        let show = |counts: &[(&str, u32)]| -> String {
            counts
                .iter()
                .map(|(u, n)| format!("NRestarts={n}\nId={u}\n\n"))
                .collect()
        };
        fs::write(dir.path().join("show1"), show(before)).unwrap();
        fs::write(dir.path().join("show2"), show(after)).unwrap();
        let lines: String = failed
            .iter()
            .map(|u| format!("{u} loaded failed failed Some unit\n"))
            .collect();
        fs::write(dir.path().join("failed"), lines).unwrap();
        let d = dir.path().display();
        let fake = format!(
            "#!/bin/sh\ncase $1 in\nshow) if [ -e {d}/shown ]; then cat {d}/show2; else touch {d}/shown; cat {d}/show1; fi ;;\nlist-units) cat {d}/failed ;;\nesac\n"
        );
        let sh = |name: &str, text: &str| {
            let p = bin.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        sh("systemctl", &fake);
        sh("sleep", "#!/bin/sh\nexit 0\n");
        let allow = dir.path().join("allow");
        fs::write(&allow, format!("{}\n", allowed.join("\n"))).unwrap();
        let script = dir.path().join("check");
        let text = HEALTH_CHECKS
            .iter()
            .find(|(name, _)| *name == "15-no-restart-loops")
            .unwrap()
            .1
            .replace("@RESTART_WINDOW@", "20");
        fs::write(&script, text).unwrap();
        let out = Command::new("sh")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("OS_AGENT_ALLOW_FAILED", &allow)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn the_restart_check_fails_a_crash_looping_service_only() {
        let quiet = [("containerd.service", 0), ("ssh.service", 1)];
        assert!(restart_check(&quiet, &quiet, &[], &[]).0);
        // Restarted at boot, then settled: not a loop.
        let settled = [("containerd.service", 3), ("ssh.service", 1)];
        assert!(restart_check(&settled, &settled, &[], &[]).0);
        // One restart in the window is not a loop yet.
        let once = [("containerd.service", 4), ("ssh.service", 1)];
        assert!(restart_check(&settled, &once, &[], &[]).0);
        // containerd restarted three times while watched: a loop.
        let looping = [("containerd.service", 6), ("ssh.service", 1)];
        let (ok, err) = restart_check(&settled, &looping, &[], &[]);
        assert!(!ok, "{err}");
        assert!(
            err.contains("containerd.service (3 restarts in 20s)") && !err.contains("ssh"),
            "{err}"
        );
        // A unit that appears during the window counts from zero.
        let (ok, err) = restart_check(&[], &[("late.service", 2)], &[], &[]);
        assert!(!ok && err.contains("late.service (2 restarts"), "{err}");
        // The allow-list covers loops too.
        assert!(restart_check(&settled, &looping, &[], &["containerd.service"]).0);
        // A fast loop ends failed by the start limit.
        let (ok, err) = restart_check(&quiet, &quiet, &["fast.service"], &[]);
        assert!(
            !ok && err.contains("failed within 20s of the boot's end: fast.service"),
            "{err}"
        );
        assert!(restart_check(&quiet, &quiet, &["fast.service"], &["fast.service"]).0);
    }

    #[test]
    fn fstab_mounts_the_esp_and_tmp_and_the_gpt_generator_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        write_fstab(dir.path()).unwrap();
        let fstab = fs::read_to_string(dir.path().join("etc/fstab")).unwrap();
        assert!(fstab.contains("PARTLABEL=ESP\t/boot/efi\tvfat"), "{fstab}");
        assert!(fstab.contains("tmpfs\t/tmp\ttmpfs\tmode=1777"), "{fstab}");
        let masked = dir
            .path()
            .join("etc/systemd/system-generators/systemd-gpt-auto-generator");
        assert_eq!(fs::read_link(masked).unwrap(), Path::new("/dev/null"));
    }

    #[test]
    fn the_systemd_check_allows_only_listed_failures() {
        assert!(systemd_check("running", &[], &[]).0);
        let (ok, err) = systemd_check("starting", &[], &[]);
        assert!(!ok && err.contains("systemd is starting"), "{err}");
        let (ok, err) = systemd_check("", &[], &[]);
        assert!(
            !ok && err.contains("did not finish booting within 5s"),
            "{err}"
        );
        let allowed = ["systemd-networkd-wait-online.service"];
        assert!(systemd_check("degraded", &allowed, &allowed).0);
        let (ok, err) = systemd_check("degraded", &["containerd.service", allowed[0]], &allowed);
        assert!(!ok, "{err}");
        assert!(
            err.contains(": containerd.service") && !err.contains("wait-online"),
            "{err}"
        );
        // A prefix of an allowed name is not allowed.
        assert!(
            !systemd_check(
                "degraded",
                &["systemd-networkd.service"],
                &["systemd-networkd.service.d"]
            )
            .0
        );
    }
}
