//! Where things are on this node. Everything is discovered from GPT partition
//! names and `/proc/cmdline` on a real node, and every item can be overridden
//! (flags or the config file) so tests run on plain files standing in for
//! block devices and directories standing in for mounts.
//!
//! Config file (`/etc/os-agent/agent.conf` by default): `key = value` lines,
//! `#` comments; the keys are the long flag names without `--`. Every
//! setting is declared once, in [`settings!`] below: `os-agent --help` lists
//! them from [`SETTINGS`]. Flags win over the file, the file over discovery
//! and the built-in values; repeatable settings from both add up.

use crate::configure::{self, AllowList};
use bootctl::partitions;
use bootctl::Slot;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/os-agent/agent.conf";
pub const DEFAULT_SOCKET: &str = "/run/os-agent/os-agent.sock";
pub const DEFAULT_ESP: &str = "/boot/efi";
pub const DEFAULT_STATE_DIR: &str = "/persist";
pub const DEFAULT_HEALTH_DIR: &str = "/etc/os-agent/health.d";
/// Where KubeOS keeps the certificates its `certs` fields name (its `CERTS_PATH`),
/// so an unchanged KubeOS node setup keeps working.
pub const DEFAULT_CERTS_DIR: &str = "/etc/KubeOS/certs";
/// Docker-style registry credentials (`{"auths": {HOST: {"auth": …}}}`), read
/// when it exists.
pub const DEFAULT_REGISTRY_AUTH: &str = "/etc/os-agent/registry-auth.json";
/// Bundle-signing keys shipped in the read-only image (docs/signing.md).
pub const DEFAULT_KEYS_DIR: &str = "/usr/share/os-agent/keys";

/// How this node reaches OCI registries (docs/oci.md). Node settings, never
/// from the custom resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Docker-style auth file; a missing file means anonymous access.
    pub auth_file: PathBuf,
    /// CA (PEM) for registries' certificates, else the request's CA or the
    /// built-in web roots.
    pub ca_cert: Option<PathBuf>,
    /// Per registry host, mirrors tried in order before it.
    pub mirrors: Vec<(String, Vec<String>)>,
    /// Registry hosts spoken to over plain HTTP.
    pub plain_http: Vec<String>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            auth_file: DEFAULT_REGISTRY_AUTH.into(),
            ca_cert: None,
            mirrors: Vec::new(),
            plain_http: Vec::new(),
        }
    }
}

impl RegistrySettings {
    /// Mirrors of `registry` then `registry` itself: where to look, in order.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .mirrors
            .iter()
            .filter(|(r, _)| r == registry)
            .flat_map(|(_, m)| m.iter().cloned())
            .collect();
        out.push(registry.to_owned());
        out
    }

    pub fn is_plain_http(&self, host: &str) -> bool {
        self.plain_http.iter().any(|h| h == host)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Block device (or file) of each root slot.
    pub root_a: PathBuf,
    pub root_b: PathBuf,
    /// Mounted ESP holding the A/B env copies.
    pub esp: PathBuf,
    /// Mounted PERSIST: slot records under `ab/`, agent state under `os-agent/`.
    pub state_dir: PathBuf,
    /// Slot the running system booted from.
    pub booted: Slot,
    /// Unix socket the JSON-RPC server listens on.
    pub socket: PathBuf,
    /// Directory of health-check executables run after a trial boot.
    pub health_dir: PathBuf,
    /// All health checks together must pass within this.
    pub health_deadline: Duration,
    /// Each health check must finish within this.
    pub check_timeout: Duration,
    /// Trial boots armed by `activate`.
    pub tries: u8,
    /// Peers (by uid) allowed on the socket besides root.
    pub allowed_uids: Vec<u32>,
    pub connect_timeout: Duration,
    /// A download that delivers no byte for this long is stalled.
    pub read_timeout: Duration,
    /// A JSON-RPC peer must send a whole request within this long.
    pub request_deadline: Duration,
    /// Directories a JSON-RPC request's `file://` image may be under (the
    /// command line, run by root on the node, is not limited).
    pub file_sources: Vec<PathBuf>,
    /// Directory the file names in a KubeOS request's `certs` are relative to.
    pub certs_dir: PathBuf,
    /// Whether `activate`, `rollback` and a failed health gate restart the
    /// machine. Off for test rigs and for operators who reboot themselves.
    pub reboot: bool,
    /// Copy chunks the local slots hold instead of downloading them.
    pub delta: bool,
    /// Refuse images without a dm-verity tree (their manifest names none).
    pub require_verity: bool,
    /// Node configuration (`configure`): root, allow-list, restarts.
    pub configure: configure::Settings,
    /// Where trusted bundle-signing keys are read from, image's first.
    pub keys_dirs: Vec<PathBuf>,
    /// os-init's dm-verity report ([`wire::verity::BootCheck`]).
    pub boot_check: PathBuf,
    /// OCI registries: credentials, CA, mirrors.
    pub registry: RegistrySettings,
}

impl Config {
    pub fn slot_device(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.root_a,
            Slot::B => &self.root_b,
        }
    }

    /// The slot an upgrade writes to.
    pub fn inactive(&self) -> Slot {
        self.booted.other()
    }
}

/// One setting as `--help` and the config file know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Flag name without `--`, and config file key.
    pub key: &'static str,
    /// What the value is (`PATH`, `SECS`, …).
    pub arg: &'static str,
    pub help: &'static str,
    /// The built-in value, parsed like any other (`None`: discovered or empty).
    pub default: Option<&'static str>,
    /// Given several times (flags and file lines add up).
    pub repeatable: bool,
}

/// Declares every setting once: its field, key, value name, built-in value,
/// parser and help. From it come [`Overrides`], [`Overrides::set`], the
/// merge of flags over the file, the built-in values and the `--help` text
/// ([`SETTINGS`]).
macro_rules! settings {
    ($( $kind:ident $field:ident : $ty:ty = $key:literal $arg:literal,
        default $default:expr, $parse:expr, $help:literal; )*) => {
        /// Explicit settings from flags or the config file; `None` means
        /// "discover" or "built-in".
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Overrides {
            $( pub $field: settings!(@type $kind $ty), )*
        }

        /// Every setting, in `--help` order.
        pub const SETTINGS: &[Setting] = &[
            $( Setting {
                key: $key,
                arg: $arg,
                help: $help,
                default: $default,
                repeatable: settings!(@many $kind),
            }, )*
        ];

        impl Overrides {
            /// Applies one `key`/`value` setting (a flag without `--`, or a
            /// config file line). Returns an error message for an unknown key
            /// or a bad value.
            pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
                match key {
                    $( $key => {
                        let parse: fn(&str) -> Result<settings!(@parsed $kind $ty), String> = $parse;
                        let v = parse(value.trim()).map_err(|e| format!("{key}: {e}"))?;
                        settings!(@store $kind self.$field, v);
                    } )*
                    _ => return Err(format!("unknown setting `{key}`")),
                }
                Ok(())
            }

            /// Takes `from`'s settings where none is set here; repeatable ones add up.
            fn fill(&mut self, from: Overrides) {
                $( settings!(@fill $kind self.$field, from.$field); )*
            }

            /// Sets every unset setting that has a built-in value to it.
            fn with_defaults(mut self) -> Overrides {
                $( if let Some(d) = $default {
                    if settings!(@unset $kind self.$field) {
                        self.set($key, d).expect("a built-in value parses");
                    }
                } )*
                self
            }
        }
    };
    (@type one $ty:ty) => { Option<$ty> };
    (@type many $ty:ty) => { Vec<$ty> };
    (@parsed one $ty:ty) => { $ty };
    (@parsed many $ty:ty) => { Vec<$ty> };
    (@store one $f:expr, $v:expr) => { $f = Some($v) };
    (@store many $f:expr, $v:expr) => { $f.extend($v) };
    (@fill one $f:expr, $o:expr) => { if $f.is_none() { $f = $o; } };
    (@fill many $f:expr, $o:expr) => { $f.extend($o) };
    (@unset one $f:expr) => { $f.is_none() };
    (@unset many $f:expr) => { $f.is_empty() };
    (@many one) => { false };
    (@many many) => { true };
}

fn path(v: &str) -> Result<PathBuf, String> {
    match v {
        "" => Err("empty path".into()),
        v => Ok(v.into()),
    }
}

fn secs(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{v}` is not a number of seconds"))
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err(format!("`{v}` is not yes or no")),
    }
}

/// A comma-separated list, blanks trimmed and empty items dropped.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

settings! {
    one root_a: PathBuf = "root-a" "PATH", default None, path,
        "device (or file) of slot A (default: the GPT partition named ROOT-A)";
    one root_b: PathBuf = "root-b" "PATH", default None, path,
        "device (or file) of slot B (default: the GPT partition named ROOT-B)";
    one esp: PathBuf = "esp" "DIR", default Some(DEFAULT_ESP), path,
        "mounted ESP with the A/B env";
    one state_dir: PathBuf = "state-dir" "DIR", default Some(DEFAULT_STATE_DIR), path,
        "mounted PERSIST: slot records, agent state";
    one booted: Slot = "booted" "A|B", default None,
        |v| Slot::parse(v).ok_or_else(|| format!("`{v}` is not A or B")),
        "running slot (default: os.slot= in /proc/cmdline)";
    one socket: PathBuf = "socket" "PATH", default Some(DEFAULT_SOCKET), path,
        "the JSON-RPC socket";
    many allowed_uids: u32 = "allow-uid" "UID", default None,
        |v| v.parse().map(|u| vec![u]).map_err(|_| format!("`{v}` is not a uid")),
        "let UID use the socket too";
    one health_dir: PathBuf = "health-dir" "DIR", default Some(DEFAULT_HEALTH_DIR), path,
        "health checks run after a trial boot";
    one health_deadline: Duration = "health-deadline" "SECS", default Some("300"), secs,
        "all health checks together";
    one check_timeout: Duration = "check-timeout" "SECS", default Some("60"), secs,
        "each health check";
    one tries: u8 = "tries" "N", default Some("3"),
        |v| match v.parse::<u8>() {
            Ok(n @ 1..=9) => Ok(n),
            Ok(n) => Err(format!("{n} is not between 1 and 9")),
            Err(_) => Err(format!("`{v}` is not a number")),
        },
        "trial boots armed, 1-9";
    one certs_dir: PathBuf = "certs-dir" "DIR", default Some(DEFAULT_CERTS_DIR), path,
        "where KubeOS cert names point";
    one connect_timeout: Duration = "connect-timeout" "SECS", default Some("10"), secs,
        "download connect timeout";
    one read_timeout: Duration = "read-timeout" "SECS", default Some("30"), secs,
        "a download that sends nothing this long is stalled";
    many file_sources: PathBuf = "file-sources" "DIR[,DIR..]", default None,
        |v| list(v)
            .map(|d| match d.starts_with('/') && !d.split('/').any(|c| c == "..") {
                true => Ok(PathBuf::from(d)),
                false => Err(format!("`{d}` is not an absolute path without `..`")),
            })
            .collect(),
        "directories a socket request's file:// image may be under (default none: socket \
         requests cannot name local files)";
    one request_deadline: Duration = "request-deadline" "SECS", default Some("30"),
        |v| match secs(v)? {
            Duration::ZERO => Err("0 would refuse every request".into()),
            d => Ok(d),
        },
        "a socket peer sends a whole request within this long of connecting or of its last \
         answer";
    one reboot: bool = "reboot" "yes|no", default Some("yes"), yes_no,
        "whether upgrade, rollback and a failed health gate restart the machine \
         (--no-reboot: no)";
    one delta: bool = "delta" "yes|no", default Some("yes"), yes_no,
        "whether prepare copies the chunks the local slots already hold and downloads \
         only the others (docs/bundle.md, \"Delta\")";
    one require_verity: bool = "require-verity" "yes|no", default Some("no"), yes_no,
        "refuse an image whose manifest names no dm-verity tree (a --no-verity bundle, or an \
         unsigned manifest with its tree left out), before a byte is written";
    one config_root: PathBuf = "config-root" "DIR", default Some("/"), path,
        "prefix of the files node configuration edits";
    one proc_dir: PathBuf = "proc-dir" "DIR", default Some("/proc"), path,
        "where kernel.sysctl writes sys/...";
    many config_allow: String = "config-allow" "MODEL:PATH[,PATH..]", default None,
        |v| AllowList::default().add(v).map(|()| vec![v.to_owned()]),
        "files a model may edit (`*` within one path component; default: the model's \
         default file)";
    many cmdline_allow: String = "cmdline-allow" "NAME[,NAME..]", default None,
        |v| list(v)
            .map(|n| configure::check_cmdline_allow(n)
                .map(|()| n.to_owned())
                .map_err(|e| format!("`{n}` {e}")))
            .collect(),
        "kernel arguments grub.cmdline.* may set although denied by default (init, shells, \
         systemd.*, rd.*, security switches; `PREFIX*` allowed)";
    one config_restart: Vec<String> = "config-restart" "CMD", default Some("systemctl restart"),
        |v| match v.split_whitespace().map(str::to_owned).collect::<Vec<_>>() {
            words if words.is_empty() => Err("empty command".into()),
            words => Ok(words),
        },
        "restarts a unit, its name appended";
    one config_restart_timeout: Duration = "config-restart-timeout" "SECS", default Some("120"),
        secs, "each unit restart";
    one registry_auth: PathBuf = "registry-auth" "FILE", default Some(DEFAULT_REGISTRY_AUTH), path,
        "registry credentials in docker's format ({\"auths\":{\"HOST\":{\"auth\": \
         \"base64(user:pw)\"}}}), if present";
    one registry_ca: PathBuf = "registry-ca" "FILE", default None, path,
        "CA (PEM) for registries (default: the request's CA, else the built-in roots)";
    many registry_mirrors: (String, Vec<String>) = "registry-mirror" "REGISTRY=MIRROR[,MIRROR..]",
        default None,
        |v| {
            let bad = || format!("`{v}` is not REGISTRY=MIRROR[,MIRROR..]");
            let (registry, mirrors) = v.split_once('=').ok_or_else(bad)?;
            let mirrors: Vec<String> = list(mirrors).map(str::to_owned).collect();
            match (registry.trim(), mirrors.is_empty()) {
                ("", _) | (_, true) => Err(bad()),
                (r, false) => Ok(vec![(r.to_owned(), mirrors)]),
            }
        },
        "mirrors tried in order before REGISTRY";
    one keys_dir: PathBuf = "keys-dir" "DIR", default Some(DEFAULT_KEYS_DIR), path,
        "bundle-signing keys (*.pub) of the read-only image; with a key here or in \
         node-keys-dir, only bundles signed by one of them are written";
    one node_keys_dir: PathBuf = "node-keys-dir" "DIR", default None, path,
        "more trusted keys kept on the node (rotation; default none)";
    one boot_check: PathBuf = "boot-check" "FILE", default Some(wire::verity::BOOT_CHECK_FILE), path,
        "os-init's dm-verity report on the booted root, shown by status";
    many registry_plain_http: String = "registry-plain-http" "HOST[:PORT]", default None,
        |v| match v.is_empty() || v.contains(['/', ' ']) {
            true => Err(format!("`{v}` is not a host[:port]")),
            false => Ok(vec![v.to_owned()]),
        },
        "speak plain HTTP to this registry";
}

impl Overrides {
    /// Reads a config file's settings (under flags already set: a flag wins).
    pub fn merge_file(&mut self, text: &str) -> Result<(), String> {
        let mut from_file = Overrides::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
            from_file
                .set(k.trim(), v.trim())
                .map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        self.fill(from_file);
        Ok(())
    }

    /// Fills what is not overridden: slot devices by GPT name under `sys`/`dev`,
    /// the booted slot from `os.slot=` in `cmdline`, the rest from defaults.
    pub fn resolve(self, sys: &Path, dev: &Path, cmdline: &str) -> Result<Config, String> {
        let o = self.with_defaults();
        let parts = if o.root_a.is_none() || o.root_b.is_none() {
            Some(partitions::discover(sys, dev).map_err(|e| {
                format!("finding the slot partitions: {e}; set root-a/root-b to override")
            })?)
        } else {
            None
        };
        let booted = match o.booted {
            Some(s) => s,
            None => booted_from_cmdline(cmdline)
                .ok_or("the kernel command line has no os.slot=A|B (not booted by the A/B GRUB?); set booted to override")?,
        };
        let mut allow = AllowList::default();
        for setting in &o.config_allow {
            allow.add(setting)?;
        }
        // Every setting below has a built-in value (`with_defaults`).
        let set = "a built-in value";
        Ok(Config {
            root_a: o
                .root_a
                .unwrap_or_else(|| parts.as_ref().unwrap().root_a.clone()),
            root_b: o
                .root_b
                .unwrap_or_else(|| parts.as_ref().unwrap().root_b.clone()),
            esp: o.esp.expect(set),
            state_dir: o.state_dir.expect(set),
            booted,
            socket: o.socket.expect(set),
            health_dir: o.health_dir.expect(set),
            health_deadline: o.health_deadline.expect(set),
            check_timeout: o.check_timeout.expect(set),
            tries: o.tries.expect(set),
            allowed_uids: o.allowed_uids,
            connect_timeout: o.connect_timeout.expect(set),
            read_timeout: o.read_timeout.expect(set),
            request_deadline: o.request_deadline.expect(set),
            file_sources: o.file_sources,
            certs_dir: o.certs_dir.expect(set),
            reboot: o.reboot.expect(set),
            delta: o.delta.expect(set),
            require_verity: o.require_verity.expect(set),
            keys_dirs: [o.keys_dir, o.node_keys_dir]
                .into_iter()
                .flatten()
                .collect(),
            boot_check: o.boot_check.expect(set),
            configure: configure::Settings {
                root: o.config_root.expect(set),
                proc_dir: o.proc_dir.expect(set),
                allow,
                restart: o.config_restart.expect(set),
                restart_timeout: o.config_restart_timeout.expect(set),
                cmdline_allow: o.cmdline_allow,
            },
            registry: RegistrySettings {
                auth_file: o.registry_auth.expect(set),
                ca_cert: o.registry_ca,
                mirrors: o.registry_mirrors,
                plain_http: o.registry_plain_http,
            },
        })
    }
}

/// `os.slot=X` from a kernel command line.
pub fn booted_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("os.slot="))
        .and_then(Slot::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(o: Overrides) -> Config {
        let mut o = o;
        o.set("booted", "A").unwrap();
        o.set("root-a", "/a").unwrap();
        o.set("root-b", "/b").unwrap();
        o.resolve(Path::new("/x"), Path::new("/dev"), "").unwrap()
    }

    #[test]
    fn built_in_values_agree_with_the_parts_that_define_them() {
        let c = resolved(Overrides::default());
        assert_eq!(c.tries, bootctl::state::DEFAULT_TRIES);
        let d = configure::Settings::default();
        let s = &c.configure;
        assert_eq!(
            (&s.root, &s.proc_dir, &s.restart, s.restart_timeout),
            (&d.root, &d.proc_dir, &d.restart, d.restart_timeout)
        );
        assert_eq!(c.request_deadline, Duration::from_secs(30));
        assert_eq!(c.registry, RegistrySettings::default());
        // Every setting is documented and every key is known to `set`.
        for s in SETTINGS {
            assert!(!s.help.is_empty(), "{}", s.key);
            let err = Overrides::default().set(s.key, "\u{0}bad").err();
            assert!(
                err.as_deref()
                    .is_none_or(|e| !e.starts_with("unknown setting")),
                "{}",
                s.key
            );
        }
    }

    #[test]
    fn flags_win_over_file_and_overrides_skip_discovery() {
        let mut o = Overrides::default();
        o.set("root-a", "/tmp/a").unwrap();
        o.set("booted", "B").unwrap();
        o.merge_file("# comment\nroot-a = /file/a\nroot-b=/file/b\ntries = 5\nallow-uid = 1000\n")
            .unwrap();
        let c = o
            .resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
            .unwrap();
        assert_eq!(
            (c.root_a, c.root_b),
            (PathBuf::from("/tmp/a"), PathBuf::from("/file/b"))
        );
        assert_eq!(
            (c.booted, c.tries, c.allowed_uids.clone()),
            (Slot::B, 5, vec![1000])
        );
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.reboot, "rebooting is the default on a node");
    }

    #[test]
    fn reboot_and_certs_dir_settings() {
        let mut o = Overrides::default();
        o.set("reboot", "no").unwrap();
        assert!(o.set("reboot", "maybe").is_err());
        o.merge_file("reboot = yes\ncerts-dir = /etc/certs\n")
            .unwrap();
        o.set("booted", "A").unwrap();
        o.set("root-a", "/a").unwrap();
        o.set("root-b", "/b").unwrap();
        let c = o.resolve(Path::new("/x"), Path::new("/dev"), "").unwrap();
        assert!(!c.reboot, "the flag wins over the file");
        assert_eq!(c.certs_dir, PathBuf::from("/etc/certs"));
    }

    #[test]
    fn configure_settings() {
        let mut o = Overrides::default();
        o.set("config-allow", "pam.limits:/etc/security/limits.d/*.conf")
            .unwrap();
        o.merge_file(
            "config-root = /tmp/root\nconfig-allow = kernel.sysctl.persist:/etc/sysctl.d/*.conf\n\
             config-restart = /bin/echo restart\nconfig-restart-timeout = 7\n",
        )
        .unwrap();
        assert!(o.set("config-allow", "kernel.sysctl:/x").is_err());
        assert!(o.set("config-restart", " ").is_err());
        o.set("booted", "A").unwrap();
        o.set("root-a", "/a").unwrap();
        o.set("root-b", "/b").unwrap();
        let c = o.resolve(Path::new("/x"), Path::new("/dev"), "").unwrap();
        let s = &c.configure;
        assert_eq!(s.root, PathBuf::from("/tmp/root"));
        assert_eq!(s.proc_dir, PathBuf::from("/proc"));
        assert_eq!(s.restart, ["/bin/echo", "restart"]);
        assert_eq!(s.restart_timeout, Duration::from_secs(7));
        use crate::configure::Model;
        assert!(s
            .allow
            .allows(Model::PamLimits, "/etc/security/limits.d/k8s.conf"));
        assert!(s
            .allow
            .allows(Model::SysctlPersist, "/etc/sysctl.d/k8s.conf"));
        assert!(!s.allow.allows(Model::SysctlPersist, "/etc/sysctl.conf"));
        assert!(s
            .allow
            .allows(Model::Kubelet, "/var/lib/kubelet/config.yaml"));
    }

    #[test]
    fn registry_settings() {
        let mut o = Overrides::default();
        o.set("registry-mirror", "r.example=m1.local:5000, m2.local")
            .unwrap();
        o.merge_file(
            "registry-auth = /etc/auth.json\nregistry-plain-http = m1.local:5000\n\
             registry-mirror = other.example=m3\nregistry-ca = /etc/ca.pem\n",
        )
        .unwrap();
        assert!(o.set("registry-mirror", "r.example").is_err());
        assert!(o.set("registry-mirror", "r.example=").is_err());
        assert!(o.set("registry-plain-http", "http://x").is_err());
        o.set("booted", "A").unwrap();
        o.set("root-a", "/a").unwrap();
        o.set("root-b", "/b").unwrap();
        let r = o
            .resolve(Path::new("/x"), Path::new("/dev"), "")
            .unwrap()
            .registry;
        assert_eq!(r.auth_file, PathBuf::from("/etc/auth.json"));
        assert_eq!(r.ca_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            r.endpoints("r.example"),
            ["m1.local:5000", "m2.local", "r.example"]
        );
        assert_eq!(r.endpoints("x.example"), ["x.example"]);
        assert!(r.is_plain_http("m1.local:5000"));
        assert!(!r.is_plain_http("r.example"));
        let d = Overrides::default();
        let mut d2 = d.clone();
        d2.set("booted", "A").unwrap();
        d2.set("root-a", "/a").unwrap();
        d2.set("root-b", "/b").unwrap();
        let r = d2
            .resolve(Path::new("/x"), Path::new("/dev"), "")
            .unwrap()
            .registry;
        assert_eq!(r, RegistrySettings::default());
    }

    #[test]
    fn bad_settings_and_missing_slot_are_errors() {
        let mut o = Overrides::default();
        assert!(o.set("tries", "0").is_err());
        assert!(o.set("bogus", "1").is_err());
        assert!(o.merge_file("root-a\n").unwrap_err().contains("line 1"));
        o.set("root-a", "/a").unwrap();
        o.set("root-b", "/b").unwrap();
        let err = o
            .resolve(Path::new("/x"), Path::new("/dev"), "quiet")
            .unwrap_err();
        assert!(err.contains("os.slot"), "{err}");
        assert_eq!(booted_from_cmdline("x os.slot=A y"), Some(Slot::A));
    }
}
