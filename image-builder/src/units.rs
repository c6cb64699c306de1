//! `systemctl enable` for a root directory that is not running: reads the
//! unit's `[Install]` section and makes the same symlinks under
//! `/etc/systemd/system` (`WantedBy=`/`RequiredBy=` → `T.wants/`/`T.requires/`,
//! `Alias=`, `Also=`, `DefaultInstance=` for templates). No systemctl of the
//! build host or of the root runs; unit files are input like the recipe, so
//! every name read from them is checked before it becomes a path.

use crate::recipe::is_unit_name;
use crate::rootfs::resolve_in_root;
use crate::rootwrite;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

/// Unit directories in systemd's order (the first that has the unit wins).
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// What the `[Install]` section asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

/// Parses the `[Install]` section of unit file text (comments, continuation
/// lines and repeated keys as systemd reads them; an empty value resets the list).
pub fn parse_install(text: &str) -> Install {
    let mut install = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if logical.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let l = std::mem::take(&mut logical);
        let l = l.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let words: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
        let list = match k.trim() {
            "WantedBy" => &mut install.wanted_by,
            "RequiredBy" => &mut install.required_by,
            "Alias" => &mut install.alias,
            "Also" => &mut install.also,
            "DefaultInstance" => {
                install.default_instance = words.first().cloned();
                continue;
            }
            _ => continue,
        };
        if words.is_empty() {
            list.clear();
        } else {
            list.extend(words);
        }
    }
    install
}

/// `foo@bar.service` → `foo@.service`; `None` for a unit that is no instance.
fn template_of(unit: &str) -> Option<String> {
    let (stem, kind) = unit.rsplit_once('.')?;
    let (name, instance) = stem.split_once('@')?;
    (!instance.is_empty()).then(|| format!("{name}@.{kind}"))
}

/// The unit file for `name`: its path as the booted system sees it
/// (`/usr/lib/systemd/system/x.service`) and its text.
fn find_unit(root: &Path, name: &str) -> Result<Option<(String, String)>> {
    for dir in UNIT_DIRS {
        let rel = format!("{dir}/{name}");
        let entry = root.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&entry) else {
            continue;
        };
        let resolved = resolve_in_root(root, Path::new(&rel))?;
        if meta.file_type().is_symlink() && resolved == root.join("dev/null") {
            bail!("{name} is masked (/{rel} links to /dev/null)");
        }
        if !resolved.is_file() {
            continue;
        }
        let text = fs::read_to_string(&resolved)
            .with_context(|| format!("read unit {}", resolved.display()))?;
        return Ok(Some((format!("/{rel}"), text)));
    }
    Ok(None)
}

/// Enables `unit` in `root`; returns the links made (relative to the root).
pub fn enable(root: &Path, unit: &str) -> Result<Vec<String>> {
    let mut links = Vec::new();
    let mut done = Vec::new();
    enable_one(root, unit, &mut links, &mut done)?;
    Ok(links)
}

fn enable_one(
    root: &Path,
    unit: &str,
    links: &mut Vec<String>,
    done: &mut Vec<String>,
) -> Result<()> {
    if done.iter().any(|d| d == unit) {
        return Ok(());
    }
    done.push(unit.to_string());
    if !is_unit_name(unit) {
        bail!("cannot enable {unit:?}: not a unit name");
    }
    let found = match find_unit(root, unit)? {
        Some(f) => Some(f),
        None => match template_of(unit) {
            Some(t) => find_unit(root, &t)?,
            None => None,
        },
    };
    let Some((path, text)) = found else {
        bail!(
            "cannot enable {unit}: no such unit in the root (looked in /{})",
            UNIT_DIRS.join(", /")
        );
    };
    let install = parse_install(&text);
    if install == Install::default() {
        bail!("cannot enable {unit}: {path} has no [Install] section (a static unit is started by what needs it)");
    }
    let (_, kind) = unit.rsplit_once('.').unwrap_or_default();
    let mut name = unit.to_string();
    if unit.contains("@.") {
        match &install.default_instance {
            Some(i) => name = unit.replacen("@.", &format!("@{i}."), 1),
            None => bail!("cannot enable the template {unit} without an instance (name it as {}: NAME@INSTANCE.{kind})", unit),
        }
    }
    for (targets, dir) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
    ] {
        for target in targets {
            if !is_unit_name(target) || target.contains('%') {
                bail!("{path}: cannot enable {unit}: {target:?} is not a unit name");
            }
            let rel = format!("etc/systemd/system/{target}.{dir}/{name}");
            rootwrite::link(root, &rel, &path)?;
            links.push(rel);
        }
    }
    for alias in &install.alias {
        if !is_unit_name(alias) || !alias.ends_with(&format!(".{kind}")) || alias.contains('%') {
            bail!("{path}: cannot enable {unit}: alias {alias:?} is not a {kind} unit name");
        }
        let rel = format!("etc/systemd/system/{alias}");
        rootwrite::link(root, &rel, &path)?;
        links.push(rel);
    }
    for also in &install.also {
        enable_one(root, also, links, done)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn install_sections() {
        let text = "[Unit]\nWantedBy=nope.target\n[Install]\n# c\nWantedBy=multi-user.target \\\n  graphical.target\nAlias=x.service\nAlso=y.socket\nWantedBy=\nWantedBy=a.target\nDefaultInstance=ttyS0\n";
        let i = parse_install(text);
        assert_eq!(i.wanted_by, ["a.target"]);
        assert_eq!(i.alias, ["x.service"]);
        assert_eq!(i.also, ["y.socket"]);
        assert_eq!(i.default_instance.as_deref(), Some("ttyS0"));
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
    }

    #[test]
    fn enabling_makes_the_links_systemctl_makes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let units = root.join("usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        fs::write(units.join("a.service"), "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\nAlias=b.service\nAlso=a.socket\n").unwrap();
        fs::write(
            units.join("a.socket"),
            "[Install]\nWantedBy=sockets.target\n",
        )
        .unwrap();
        fs::write(
            units.join("getty@.service"),
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        )
        .unwrap();
        fs::write(units.join("static.service"), "[Service]\nExecStart=/x\n").unwrap();
        fs::write(
            units.join("evil.service"),
            "[Install]\nWantedBy=../../../tmp/x.target\n",
        )
        .unwrap();
        fs::write(
            units.join("evil2.service"),
            "[Install]\nAlias=../../x.service\n",
        )
        .unwrap();
        let links = enable(root, "a.service").unwrap();
        assert_eq!(
            links,
            [
                "etc/systemd/system/multi-user.target.wants/a.service",
                "etc/systemd/system/b.service",
                "etc/systemd/system/sockets.target.wants/a.socket"
            ]
        );
        assert_eq!(
            fs::read_link(root.join(&links[0])).unwrap(),
            Path::new("/usr/lib/systemd/system/a.service")
        );
        let links = enable(root, "getty@ttyS0.service").unwrap();
        assert_eq!(
            links,
            ["etc/systemd/system/getty.target.wants/getty@ttyS0.service"]
        );
        assert_eq!(
            fs::read_link(root.join(&links[0])).unwrap(),
            Path::new("/usr/lib/systemd/system/getty@.service")
        );
        let links = enable(root, "getty@.service").unwrap();
        assert_eq!(
            links,
            ["etc/systemd/system/getty.target.wants/getty@tty1.service"]
        );
        let e = enable(root, "static.service").unwrap_err().to_string();
        assert!(e.contains("no [Install] section"), "{e}");
        let e = enable(root, "nope.service").unwrap_err().to_string();
        assert!(e.contains("no such unit"), "{e}");
        assert!(enable(root, "evil.service").is_err());
        assert!(enable(root, "evil2.service").is_err());
        assert!(!root.join("tmp").exists());
        symlink("/dev/null", root.join("etc/systemd/system/masked.service")).unwrap();
        fs::write(
            units.join("masked.service"),
            "[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        let e = enable(root, "masked.service").unwrap_err().to_string();
        assert!(e.contains("masked"), "{e}");
    }
}
