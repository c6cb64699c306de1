//! The recipe of `os-image rootfs --from debian` (docs/node-image.md): a
//! small `key = value` file, one setting per line, `#` comment lines.
//! Parsing is pure: text in, [`Recipe`] or an error naming the line out.
//! Everything in a recipe is treated as hostile: every value that ends up in
//! a line-based file, a path or a shell word is checked here, and the writers
//! (node.rs) check paths again against the root they write into.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Default Debian mirror and suite.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_HOSTNAME: &str = "node";
/// Seconds the health check waits for systemd to finish booting.
pub const DEFAULT_BOOT_TIMEOUT: u32 = 180;

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// A local `linux-image-*.deb` (absolute, or relative to the recipe).
    Deb(PathBuf),
    /// A package from the mirror: `linux-image-amd64` (the metapackage is
    /// resolved to the versioned package it depends on) or a versioned name.
    Package(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// systemd-networkd with DHCP on every `en*`/`eth*` interface.
    Dhcp,
    /// No network configuration.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Fixed uid, else the first free one from 1000.
    pub uid: Option<u32>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    pub user: String,
    /// `TYPE BASE64 [COMMENT]`, one line of authorized_keys.
    pub key: String,
    pub line: usize,
}

/// `file = SRC -> DEST`: SRC relative to the recipe's directory, DEST an
/// absolute path in the root (checked: [`check_dest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// The recipe's directory.
    pub base: PathBuf,
    /// Relative to `base`, plain components only.
    pub src: PathBuf,
    /// Relative to the root, e.g. `etc/motd`.
    pub dest: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub suite: String,
    pub mirror: String,
    /// Extra packages, in recipe order.
    pub packages: Vec<String>,
    pub kernel: Kernel,
    /// os-agent binary (absolute, or relative to the recipe).
    pub agent: Option<PathBuf>,
    pub hostname: String,
    pub enable: Vec<String>,
    pub serial_autologin: bool,
    pub allow_failed: Vec<String>,
    pub boot_timeout: u32,
    pub network: Network,
    pub users: Vec<User>,
    pub authorized_keys: Vec<AuthorizedKey>,
    pub files: Vec<ExtraFile>,
}

/// A recipe error: the line (1-based) it is about, when it is about one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "line {n}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RecipeError {}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, RecipeError> {
    Err(RecipeError {
        line: Some(line),
        message: message.into(),
    })
}

/// Keys that may appear once, and those that may repeat.
const SINGLE: &[&str] = &[
    "suite",
    "mirror",
    "kernel-deb",
    "kernel-package",
    "agent",
    "hostname",
    "serial-autologin",
    "boot-timeout",
    "network",
];
const REPEATED: &[&str] = &[
    "packages",
    "enable",
    "allow-failed",
    "user",
    "authorized-key",
    "file",
];

/// Destinations a `file` may not write: covered at run time by a mount
/// (PERSIST's /var, the kernel's filesystems, the ESP), or owned by the
/// builder (what the boot protocol and the health gate rely on).
const RESERVED_DEST: &[&str] = &[
    "var",
    "persist",
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "boot",
    "usr/lib/modules",
    "etc/os-release",
    "usr/lib/os-release",
    "etc/machine-id",
    "usr/bin/os-agent",
    "etc/os-agent/health.d",
    "etc/os-agent/allow-failed",
    "usr/lib/systemd/system/os-agent.service",
    "etc/systemd/system/os-agent.service",
    "sbin",
    "bin",
    "lib",
    "lib64",
];

/// Parses a recipe; `base` is its directory (relative paths are taken from there).
pub fn parse(text: &str, base: &Path) -> Result<Recipe, RecipeError> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut r = Recipe {
        suite: DEFAULT_SUITE.into(),
        mirror: DEFAULT_MIRROR.into(),
        packages: Vec::new(),
        kernel: Kernel::Package(String::new()),
        agent: None,
        hostname: DEFAULT_HOSTNAME.into(),
        enable: Vec::new(),
        serial_autologin: false,
        allow_failed: Vec::new(),
        boot_timeout: DEFAULT_BOOT_TIMEOUT,
        network: Network::Dhcp,
        users: Vec::new(),
        authorized_keys: Vec::new(),
        files: Vec::new(),
    };
    let mut kernel_line = None;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        if let Some(c) = raw.chars().find(|c| c.is_control() && *c != '\t') {
            return err(
                n,
                match c {
                    '\r' => "carriage return in the line (CRLF line ends? use LF)".to_string(),
                    c => format!("control character {:?} in the line", c),
                },
            );
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return err(n, format!("expected `key = value`, found {line:?}"));
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(&key) = SINGLE.iter().chain(REPEATED).find(|k| **k == key) else {
            return err(
                n,
                format!(
                    "unknown key {key:?} (known: {})",
                    SINGLE
                        .iter()
                        .chain(REPEATED)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        if value.is_empty() {
            return err(n, format!("{key} needs a value"));
        }
        if SINGLE.contains(&key) {
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                return err(n, format!("{key} is set twice (first on line {first})"));
            }
            seen.push((key, n));
        }
        match key {
            "suite" => r.suite = check_suite(n, value)?,
            "mirror" => r.mirror = check_mirror(n, value)?,
            "kernel-deb" | "kernel-package" => {
                if let Some(first) = kernel_line {
                    return err(
                        n,
                        format!("the kernel is given twice (first on line {first}): use kernel-deb or kernel-package, once"),
                    );
                }
                kernel_line = Some(n);
                r.kernel = if key == "kernel-deb" {
                    let p = local_path(n, key, value, base)?;
                    if p.extension() != Some(std::ffi::OsStr::new("deb")) {
                        return err(n, format!("kernel-deb {value:?} is not a .deb file name"));
                    }
                    Kernel::Deb(p)
                } else {
                    let name = check_package(n, value)?;
                    if !name.starts_with("linux-image-") {
                        return err(
                            n,
                            format!("kernel-package {name:?} is not a linux-image-* package"),
                        );
                    }
                    Kernel::Package(name)
                };
            }
            "agent" => r.agent = Some(local_path(n, key, value, base)?),
            "hostname" => r.hostname = check_hostname(n, value)?,
            "serial-autologin" => r.serial_autologin = check_bool(n, key, value)?,
            "boot-timeout" => {
                r.boot_timeout = match value.parse::<u32>() {
                    Ok(s @ 10..=3600) => s,
                    _ => {
                        return err(
                            n,
                            format!("boot-timeout {value:?} is not 10 to 3600 seconds"),
                        )
                    }
                }
            }
            "network" => {
                r.network = match value {
                    "dhcp" => Network::Dhcp,
                    "none" => Network::None,
                    _ => return err(n, format!("network {value:?} is not dhcp or none")),
                }
            }
            "packages" => {
                for p in value.split_whitespace() {
                    r.packages.push(check_package(n, p)?);
                }
            }
            "enable" => {
                for u in value.split_whitespace() {
                    r.enable.push(check_unit(n, u)?);
                }
            }
            "allow-failed" => {
                for u in value.split_whitespace() {
                    r.allow_failed.push(check_unit(n, u)?);
                }
            }
            "user" => r.users.push(parse_user(n, value)?),
            "authorized-key" => r.authorized_keys.push(parse_key(n, value)?),
            "file" => r.files.push(parse_file(n, value, base)?),
            _ => unreachable!("every known key is handled"),
        }
    }
    if kernel_line.is_none() {
        return Err(RecipeError {
            line: None,
            message: "no kernel: set kernel-deb = PATH (a linux-image-*.deb) or kernel-package = linux-image-amd64".into(),
        });
    }
    check_cross(&r)?;
    Ok(r)
}

/// Checks between lines: users once, keys for known users, files once.
fn check_cross(r: &Recipe) -> Result<(), RecipeError> {
    for (i, u) in r.users.iter().enumerate() {
        if let Some(first) = r.users[..i].iter().find(|o| o.name == u.name) {
            return err(
                u.line,
                format!(
                    "user {} is declared twice (first on line {})",
                    u.name, first.line
                ),
            );
        }
        if let Some(uid) = u.uid {
            if let Some(other) = r.users[..i].iter().find(|o| o.uid == Some(uid)) {
                return err(
                    u.line,
                    format!("uid {uid} is given twice (first on line {})", other.line),
                );
            }
        }
    }
    for k in &r.authorized_keys {
        if k.user != "root" && !r.users.iter().any(|u| u.name == k.user) {
            return err(
                k.line,
                format!(
                    "authorized-key for {}, who is neither root nor a `user` of this recipe",
                    k.user
                ),
            );
        }
    }
    for (i, f) in r.files.iter().enumerate() {
        if let Some(first) = r.files[..i].iter().find(|o| o.dest == f.dest) {
            return err(
                f.line,
                format!(
                    "/{} is written twice (first on line {})",
                    f.dest, first.line
                ),
            );
        }
    }
    Ok(())
}

fn check_bool(n: usize, key: &str, v: &str) -> Result<bool, RecipeError> {
    match v {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => err(n, format!("{key} {v:?} is not yes or no")),
    }
}

fn check_suite(n: usize, v: &str) -> Result<String, RecipeError> {
    let ok = v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return err(
            n,
            format!("suite {v:?} is not a Debian suite name (e.g. bookworm)"),
        );
    }
    Ok(v.into())
}

fn check_mirror(n: usize, v: &str) -> Result<String, RecipeError> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && r.chars()
                .all(|c| c.is_ascii_graphic() && !"'\"\\`$;&|<>(){}*?[]!#".contains(c))
    });
    if !ok {
        return err(
            n,
            format!("mirror {v:?} is not an http:// or https:// URL of plain characters"),
        );
    }
    Ok(v.trim_end_matches('/').into())
}

/// Debian policy: lower case letters, digits, `+ - .`, at least two
/// characters, starting with a letter or digit.
pub fn check_package(n: usize, v: &str) -> Result<String, RecipeError> {
    let ok = v.len() >= 2
        && v.len() <= 100
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !ok {
        return err(n, format!("{v:?} is not a Debian package name"));
    }
    Ok(v.into())
}

/// Unit suffixes `enable` and `allow-failed` accept.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
];

/// A systemd unit name (`name.type`, `name@instance.type`).
pub fn is_unit_name(v: &str) -> bool {
    let Some((stem, kind)) = v.rsplit_once('.') else {
        return false;
    };
    v.len() <= 255
        && UNIT_TYPES.contains(&kind)
        && !stem.is_empty()
        && !stem.starts_with(['.', '-', '@'])
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
        && stem.matches('@').count() <= 1
}

fn check_unit(n: usize, v: &str) -> Result<String, RecipeError> {
    if !is_unit_name(v) {
        return err(
            n,
            format!(
                "{v:?} is not a systemd unit name (NAME.TYPE, TYPE one of {})",
                UNIT_TYPES.join(", ")
            ),
        );
    }
    Ok(v.into())
}

fn check_hostname(n: usize, v: &str) -> Result<String, RecipeError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if v.len() > 64 || !v.split('.').all(label_ok) {
        return err(
            n,
            format!("hostname {v:?} is not a host name (lower case letters, digits, `-`, dots; at most 64)"),
        );
    }
    Ok(v.into())
}

fn check_user_name(n: usize, v: &str) -> Result<String, RecipeError> {
    let ok = v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return err(
            n,
            format!("{v:?} is not a user name (lower case letters, digits, `_`, `-`; at most 32)"),
        );
    }
    Ok(v.into())
}

/// `user = NAME [UID]`.
fn parse_user(n: usize, v: &str) -> Result<User, RecipeError> {
    let mut words = v.split_whitespace();
    let name = check_user_name(n, words.next().unwrap_or_default())?;
    if name == "root" {
        return err(
            n,
            "root exists already; give root keys with authorized-key = root ...",
        );
    }
    let uid = match words.next() {
        None => None,
        Some(u) => match u.parse::<u32>() {
            Ok(uid @ 1000..=59999) => Some(uid),
            _ => {
                return err(
                    n,
                    format!("uid {u:?} is not 1000 to 59999 (Debian's range for users)"),
                )
            }
        },
    };
    if let Some(extra) = words.next() {
        return err(
            n,
            format!("unexpected {extra:?} after user {name} (user = NAME [UID])"),
        );
    }
    Ok(User { name, uid, line: n })
}

/// Key types OpenSSH accepts in authorized_keys.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// `authorized-key = USER TYPE BASE64 [COMMENT]`; no options (`command=`,
/// `from=`): a key from the recipe grants plain access or nothing.
fn parse_key(n: usize, v: &str) -> Result<AuthorizedKey, RecipeError> {
    let mut words = v.split_whitespace();
    let user = words.next().unwrap_or_default();
    let user = if user == "root" {
        user.to_string()
    } else {
        check_user_name(n, user)?
    };
    let kind = words.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return err(
            n,
            format!(
                "authorized-key: {kind:?} is not an SSH key type (authorized-key = USER TYPE BASE64 [COMMENT]; TYPE one of {})",
                KEY_TYPES.join(", ")
            ),
        );
    }
    let blob = words.next().unwrap_or_default();
    let base64 = |s: &str| {
        s.len() >= 16
            && s.trim_end_matches('=')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    };
    if !base64(blob) {
        return err(n, "authorized-key: the key is not base64");
    }
    let comment: Vec<&str> = words.collect();
    let mut key = format!("{kind} {blob}");
    if !comment.is_empty() {
        key.push(' ');
        key.push_str(&comment.join(" "));
    }
    Ok(AuthorizedKey { user, key, line: n })
}

/// `file = SRC -> DEST`.
fn parse_file(n: usize, v: &str, base: &Path) -> Result<ExtraFile, RecipeError> {
    let Some((src, dest)) = v.split_once("->") else {
        return err(n, "file needs `SRC -> DEST`");
    };
    let (src, dest) = (src.trim(), dest.trim());
    if src.is_empty() || dest.is_empty() {
        return err(n, "file needs `SRC -> DEST`");
    }
    let src_path = Path::new(src);
    if src_path.is_absolute()
        || !src_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return err(
            n,
            format!("file source {src:?} must be a path inside the recipe's directory (relative, no `..`)"),
        );
    }
    let dest = check_dest(dest).map_err(|m| RecipeError {
        line: Some(n),
        message: m,
    })?;
    Ok(ExtraFile {
        base: base.to_path_buf(),
        src: src_path.to_path_buf(),
        dest,
        line: n,
    })
}

/// An absolute destination in the root: plain components only (no `.`,
/// `..`, empty), not under a reserved place. Returns it relative (`etc/motd`).
pub fn check_dest(dest: &str) -> Result<String, String> {
    let Some(rel) = dest.strip_prefix('/') else {
        return Err(format!(
            "file destination {dest:?} must be an absolute path"
        ));
    };
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.len() > 255)
    {
        return Err(format!(
            "file destination {dest:?} must name a file with plain components (no `.`, `..`, `//`, trailing `/`)"
        ));
    }
    if let Some(r) = RESERVED_DEST
        .iter()
        .find(|r| rel == **r || rel.starts_with(&format!("{r}/")))
    {
        return Err(format!(
            "file destination {dest:?} is under /{r}, which os-image manages or a mount covers at run time"
        ));
    }
    Ok(rel.to_string())
}

/// A build input named by the recipe: absolute, or relative to the recipe.
fn local_path(n: usize, key: &str, v: &str, base: &Path) -> Result<PathBuf, RecipeError> {
    let p = Path::new(v);
    if p.components().any(|c| c == Component::ParentDir) {
        return err(n, format!("{key} {v:?}: `..` is not allowed"));
    }
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# a node
suite = bookworm
mirror = http://deb.debian.org/debian/
kernel-deb = kernels/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb
packages = openssh-server  curl
packages = jq
hostname = node-1.example
serial-autologin = yes
boot-timeout = 90
enable = ssh.service serial-getty@ttyS0.service
allow-failed = systemd-networkd-wait-online.service
user = alice
user = bob 1500
authorized-key = alice ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGU= alice@laptop
authorized-key = root ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB
file = files/motd -> /etc/motd
	file = files/ntp.conf->/etc/systemd/timesyncd.conf.d/ntp.conf
";

    fn parse_err(text: &str) -> RecipeError {
        parse(text, Path::new("/r")).unwrap_err()
    }

    #[test]
    fn a_full_recipe() {
        let r = parse(GOOD, Path::new("/recipes")).unwrap();
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.mirror, "http://deb.debian.org/debian");
        assert_eq!(
            r.kernel,
            Kernel::Deb("/recipes/kernels/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb".into())
        );
        assert_eq!(r.packages, ["openssh-server", "curl", "jq"]);
        assert_eq!(r.hostname, "node-1.example");
        assert!(r.serial_autologin);
        assert_eq!(r.boot_timeout, 90);
        assert_eq!(r.enable, ["ssh.service", "serial-getty@ttyS0.service"]);
        assert_eq!(r.allow_failed, ["systemd-networkd-wait-online.service"]);
        assert_eq!(r.users[1].uid, Some(1500));
        assert_eq!(r.users[0].uid, None);
        assert_eq!(r.authorized_keys[0].user, "alice");
        assert_eq!(
            r.authorized_keys[0].key,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGU= alice@laptop"
        );
        assert_eq!(
            r.files[0].base.join(&r.files[0].src),
            PathBuf::from("/recipes/files/motd")
        );
        assert_eq!(r.files[0].dest, "etc/motd");
        assert_eq!(r.files[1].dest, "etc/systemd/timesyncd.conf.d/ntp.conf");
        assert_eq!(r.network, Network::Dhcp);
    }

    #[test]
    fn defaults_and_the_kernel_package() {
        let r = parse("kernel-package = linux-image-amd64\n", Path::new("/")).unwrap();
        assert_eq!(r.kernel, Kernel::Package("linux-image-amd64".into()));
        assert_eq!(r.mirror, DEFAULT_MIRROR);
        assert_eq!(r.hostname, DEFAULT_HOSTNAME);
        assert!(!r.serial_autologin);
        assert_eq!(r.boot_timeout, DEFAULT_BOOT_TIMEOUT);
    }

    /// Each malformed line is reported with its line number and what is wrong.
    #[test]
    fn malformed_lines_name_their_line() {
        let k = "kernel-package = linux-image-amd64\n";
        let cases: &[(&str, usize, &str)] = &[
            ("no equals sign\n", 1, "expected `key = value`"),
            ("# c\n\ncolour = blue\n", 3, "unknown key \"colour\""),
            ("hostname =\n", 1, "hostname needs a value"),
            (
                "hostname = a\nhostname = b\n",
                2,
                "set twice (first on line 1)",
            ),
            ("hostname = Node_1\n", 1, "not a host name"),
            ("hostname = a\r\n", 1, "carriage return"),
            ("hostname = a\u{1b}[1m\n", 1, "control character"),
            (
                "packages = curl Foo\n",
                1,
                "\"Foo\" is not a Debian package name",
            ),
            ("packages = curl;rm\n", 1, "not a Debian package name"),
            (
                "mirror = ftp://x/debian\n",
                1,
                "not an http:// or https:// URL",
            ),
            ("mirror = http://x/de bian\n", 1, "not an http://"),
            ("mirror = http://x/$(id)\n", 1, "not an http://"),
            ("enable = ssh\n", 1, "not a systemd unit name"),
            ("enable = ../x.service\n", 1, "not a systemd unit name"),
            ("allow-failed = a/b.service\n", 1, "not a systemd unit name"),
            ("serial-autologin = maybe\n", 1, "not yes or no"),
            ("boot-timeout = 5\n", 1, "not 10 to 3600"),
            ("network = static\n", 1, "not dhcp or none"),
            ("user = Root\n", 1, "not a user name"),
            ("user = root\n", 1, "root exists already"),
            ("user = a 99\n", 1, "not 1000 to 59999"),
            ("user = a 1000 x\n", 1, "unexpected \"x\""),
            (
                "user = a\nuser = a\n",
                2,
                "declared twice (first on line 1)",
            ),
            (
                "user = a 1001\nuser = b 1001\n",
                2,
                "uid 1001 is given twice",
            ),
            (
                "authorized-key = root ssh-dss AAAAB3NzaC1yc2EAAAADAQAB\n",
                1,
                "not an SSH key type",
            ),
            (
                "authorized-key = root ssh-rsa AAAA!!!!AAAAAAAAAAAA\n",
                1,
                "not base64",
            ),
            (
                "authorized-key = root command=\"x\" ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\n",
                1,
                "not an SSH key type",
            ),
            (
                "authorized-key = eve ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\n",
                1,
                "neither root nor a `user`",
            ),
            ("file = motd\n", 1, "SRC -> DEST"),
            ("file = motd -> \n", 1, "SRC -> DEST"),
            (
                "file = ../secret -> /etc/x\n",
                1,
                "inside the recipe's directory",
            ),
            (
                "file = /etc/shadow -> /etc/x\n",
                1,
                "inside the recipe's directory",
            ),
            ("file = a -> etc/x\n", 1, "must be an absolute path"),
            ("file = a -> /etc/../x\n", 1, "plain components"),
            ("file = a -> /etc//x\n", 1, "plain components"),
            ("file = a -> /etc/\n", 1, "plain components"),
            ("file = a -> /var/lib/x\n", 1, "under /var"),
            ("file = a -> /etc/os-release\n", 1, "under /etc/os-release"),
            (
                "file = a -> /usr/lib/modules/x.ko\n",
                1,
                "under /usr/lib/modules",
            ),
            ("file = a -> /lib/x\n", 1, "under /lib"),
            (
                "file = a -> /etc/x\nfile = b -> /etc/x\n",
                2,
                "written twice (first on line 1)",
            ),
            ("kernel-deb = k.tar\n", 1, "not a .deb"),
            ("kernel-deb = ../k.deb\n", 1, "`..` is not allowed"),
            ("kernel-package = vim\n", 1, "not a linux-image-* package"),
            ("agent = ../../os-agent\n", 1, "`..` is not allowed"),
            ("suite = Bookworm\n", 1, "not a Debian suite name"),
        ];
        for (text, line, want) in cases {
            // The kernel line comes after the case so its line numbers hold.
            let e = parse_err(&format!("{text}{k}"));
            assert_eq!(e.line, Some(*line), "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
        let e = parse_err(&format!("{k}kernel-deb = /k.deb\n"));
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("given twice (first on line 1)"), "{e}");
    }

    #[test]
    fn a_recipe_without_a_kernel_is_refused() {
        let e = parse_err("hostname = n\n");
        assert_eq!(e.line, None);
        assert!(e.message.contains("kernel-deb"), "{e}");
        let e = parse_err("");
        assert!(e.message.contains("no kernel"), "{e}");
    }

    #[test]
    fn unit_names() {
        for good in [
            "ssh.service",
            "serial-getty@ttyS0.service",
            "a:b\\x2d.mount",
            "x.timer",
        ] {
            assert!(is_unit_name(good), "{good}");
        }
        for bad in [
            "ssh",
            ".service",
            "-x.service",
            "a/b.service",
            "a b.service",
            "x.exe",
            "a@b@c.service",
            "@x.service",
        ] {
            assert!(!is_unit_name(bad), "{bad}");
        }
    }
}
