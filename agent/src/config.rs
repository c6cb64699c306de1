//! Where things are on this node. Everything is discovered from GPT partition
//! names and `/proc/cmdline` on a real node, and every item can be overridden
//! (flags or the config file) so tests run on plain files standing in for
//! block devices and directories standing in for mounts.
//!
//! Config file (`/etc/os-agent/agent.conf` by default): `key = value` lines,
//! `#` comments; keys are the long flag names without `--` (`root-a`, `esp`,
//! `state-dir`, `booted`, `socket`, `health-dir`, `health-deadline`,
//! `check-timeout`, `tries`, `allow-uid`, `connect-timeout`, `read-timeout`,
//! `request-deadline`, `file-sources` (repeatable),
//! `certs-dir`, `reboot`, and for node configuration `config-root`, `proc-dir`,
//! `config-allow` (repeatable), `config-restart`, `config-restart-timeout`,
//! `cmdline-allow` (repeatable: kernel arguments denied by default that
//! `grub.cmdline.*` may set here),
//! and for OCI registries `registry-auth`, `registry-ca`, `registry-mirror`
//! and `registry-plain-http` (both repeatable)).
//! Flags win over the file, the file over discovery; `config-allow`, `cmdline-allow`,
//! `registry-mirror` and `registry-plain-http` lines from both add up.

use crate::configure::{self, AllowList};
use bootctl::partitions;
use bootctl::state::DEFAULT_TRIES;
use bootctl::Slot;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a JSON-RPC peer has to send a whole request, from its
/// connection or its previous answer (KubeOS's client sends at once).
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(30);
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
    /// Node configuration (`configure`): root, allow-list, restarts.
    pub configure: configure::Settings,
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

/// Explicit settings from flags or the config file; `None` means "discover".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub root_a: Option<PathBuf>,
    pub root_b: Option<PathBuf>,
    pub esp: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub booted: Option<Slot>,
    pub socket: Option<PathBuf>,
    pub health_dir: Option<PathBuf>,
    pub health_deadline: Option<Duration>,
    pub check_timeout: Option<Duration>,
    pub tries: Option<u8>,
    pub allowed_uids: Vec<u32>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub certs_dir: Option<PathBuf>,
    pub reboot: Option<bool>,
    pub config_root: Option<PathBuf>,
    pub proc_dir: Option<PathBuf>,
    pub config_allow: AllowList,
    pub config_restart: Option<Vec<String>>,
    pub config_restart_timeout: Option<Duration>,
    pub registry_auth: Option<PathBuf>,
    pub registry_ca: Option<PathBuf>,
    pub registry_mirrors: Vec<(String, Vec<String>)>,
    pub registry_plain_http: Vec<String>,
    pub cmdline_allow: Vec<String>,
    pub request_deadline: Option<Duration>,
    pub file_sources: Vec<PathBuf>,
}

impl Overrides {
    /// Applies one `key`/`value` setting (a flag without `--`, or a config
    /// file line). Returns an error message for an unknown key or bad value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let path = || Some(PathBuf::from(value));
        let secs = || -> Result<Option<Duration>, String> {
            value
                .parse::<u64>()
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| format!("{key}: `{value}` is not a number of seconds"))
        };
        match key {
            "root-a" => self.root_a = path(),
            "root-b" => self.root_b = path(),
            "esp" => self.esp = path(),
            "state-dir" => self.state_dir = path(),
            "socket" => self.socket = path(),
            "health-dir" => self.health_dir = path(),
            "certs-dir" => self.certs_dir = path(),
            "config-root" => self.config_root = path(),
            "proc-dir" => self.proc_dir = path(),
            "config-allow" => self
                .config_allow
                .add(value)
                .map_err(|e| format!("config-allow: {e}"))?,
            "config-restart" => {
                let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
                if words.is_empty() {
                    return Err("config-restart: empty command".into());
                }
                self.config_restart = Some(words);
            }
            "config-restart-timeout" => self.config_restart_timeout = secs()?,
            "registry-auth" => self.registry_auth = path(),
            "registry-ca" => self.registry_ca = path(),
            "registry-mirror" => {
                let bad =
                    || format!("registry-mirror: `{value}` is not REGISTRY=MIRROR[,MIRROR..]");
                let (registry, mirrors) = value.split_once('=').ok_or_else(bad)?;
                let mirrors: Vec<String> = mirrors
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                if registry.trim().is_empty() || mirrors.is_empty() {
                    return Err(bad());
                }
                self.registry_mirrors
                    .push((registry.trim().to_owned(), mirrors));
            }
            "registry-plain-http" => {
                if value.is_empty() || value.contains(['/', ' ']) {
                    return Err(format!(
                        "registry-plain-http: `{value}` is not a host[:port]"
                    ));
                }
                self.registry_plain_http.push(value.to_owned());
            }
            "file-sources" => {
                for dir in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                    if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
                        return Err(format!(
                            "file-sources: `{dir}` is not an absolute path without `..`"
                        ));
                    }
                    self.file_sources.push(dir.into());
                }
            }
            "cmdline-allow" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    configure::check_cmdline_allow(name)
                        .map_err(|e| format!("cmdline-allow: `{name}` {e}"))?;
                    self.cmdline_allow.push(name.to_owned());
                }
            }
            "reboot" => {
                self.reboot = Some(match value {
                    "yes" | "true" | "1" => true,
                    "no" | "false" | "0" => false,
                    _ => return Err(format!("reboot: `{value}` is not yes or no")),
                })
            }
            "booted" => {
                self.booted = Some(
                    Slot::parse(value).ok_or_else(|| format!("booted: `{value}` is not A or B"))?,
                )
            }
            "health-deadline" => self.health_deadline = secs()?,
            "check-timeout" => self.check_timeout = secs()?,
            "connect-timeout" => self.connect_timeout = secs()?,
            "read-timeout" => self.read_timeout = secs()?,
            "request-deadline" => {
                self.request_deadline = secs()?;
                if self.request_deadline == Some(Duration::ZERO) {
                    return Err("request-deadline: 0 would refuse every request".into());
                }
            }
            "tries" => {
                let n: u8 = value
                    .parse()
                    .map_err(|_| format!("tries: `{value}` is not a number"))?;
                if !(1..=9).contains(&n) {
                    return Err(format!("tries: {n} is not between 1 and 9"));
                }
                self.tries = Some(n);
            }
            "allow-uid" => self.allowed_uids.push(
                value
                    .parse()
                    .map_err(|_| format!("allow-uid: `{value}` is not a uid"))?,
            ),
            _ => return Err(format!("unknown setting `{key}`")),
        }
        Ok(())
    }

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
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = from_file.$f.take(); } )* };
        }
        fill!(
            root_a,
            root_b,
            esp,
            state_dir,
            booted,
            socket,
            health_dir,
            health_deadline,
            check_timeout,
            tries,
            connect_timeout,
            read_timeout,
            certs_dir,
            reboot,
            request_deadline,
            config_root,
            proc_dir,
            config_restart,
            config_restart_timeout,
            registry_auth,
            registry_ca
        );
        self.registry_mirrors.extend(from_file.registry_mirrors);
        self.registry_plain_http
            .extend(from_file.registry_plain_http);
        self.allowed_uids.extend(from_file.allowed_uids);
        self.cmdline_allow.extend(from_file.cmdline_allow);
        self.file_sources.extend(from_file.file_sources);
        self.config_allow.merge(from_file.config_allow);
        Ok(())
    }

    /// Fills what is not overridden: slot devices by GPT name under `sys`/`dev`,
    /// the booted slot from `os.slot=` in `cmdline`, the rest from defaults.
    pub fn resolve(self, sys: &Path, dev: &Path, cmdline: &str) -> Result<Config, String> {
        let configure = self.configure_settings();
        let parts = if self.root_a.is_none() || self.root_b.is_none() {
            Some(partitions::discover(sys, dev).map_err(|e| {
                format!("finding the slot partitions: {e}; set root-a/root-b to override")
            })?)
        } else {
            None
        };
        let booted = match self.booted {
            Some(s) => s,
            None => booted_from_cmdline(cmdline)
                .ok_or("the kernel command line has no os.slot=A|B (not booted by the A/B GRUB?); set booted to override")?,
        };
        Ok(Config {
            root_a: self
                .root_a
                .unwrap_or_else(|| parts.as_ref().unwrap().root_a.clone()),
            root_b: self
                .root_b
                .unwrap_or_else(|| parts.as_ref().unwrap().root_b.clone()),
            esp: self.esp.unwrap_or_else(|| DEFAULT_ESP.into()),
            state_dir: self.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            booted,
            socket: self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            health_dir: self.health_dir.unwrap_or_else(|| DEFAULT_HEALTH_DIR.into()),
            health_deadline: self.health_deadline.unwrap_or(Duration::from_secs(300)),
            check_timeout: self.check_timeout.unwrap_or(Duration::from_secs(60)),
            tries: self.tries.unwrap_or(DEFAULT_TRIES),
            allowed_uids: self.allowed_uids,
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(10)),
            read_timeout: self.read_timeout.unwrap_or(Duration::from_secs(30)),
            request_deadline: self.request_deadline.unwrap_or(DEFAULT_REQUEST_DEADLINE),
            file_sources: self.file_sources,
            certs_dir: self.certs_dir.unwrap_or_else(|| DEFAULT_CERTS_DIR.into()),
            reboot: self.reboot.unwrap_or(true),
            configure,
            registry: RegistrySettings {
                auth_file: self
                    .registry_auth
                    .unwrap_or_else(|| DEFAULT_REGISTRY_AUTH.into()),
                ca_cert: self.registry_ca,
                mirrors: self.registry_mirrors,
                plain_http: self.registry_plain_http,
            },
        })
    }
}

impl Overrides {
    fn configure_settings(&self) -> configure::Settings {
        let d = configure::Settings::default();
        configure::Settings {
            root: self.config_root.clone().unwrap_or(d.root),
            proc_dir: self.proc_dir.clone().unwrap_or(d.proc_dir),
            allow: self.config_allow.clone(),
            restart: self.config_restart.clone().unwrap_or(d.restart),
            restart_timeout: self.config_restart_timeout.unwrap_or(d.restart_timeout),
            cmdline_allow: self.cmdline_allow.clone(),
        }
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
