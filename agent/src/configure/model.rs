//! The configuration models (KubeOS's names, `manager/src/sys_mgmt/values.rs`)
//! and the per-model allow-list of files, set on the node and never by the
//! request.

use std::path::{Component, Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Model {
    /// Runtime sysctl values, `/proc/sys/...`.
    Sysctl,
    /// `key=value` lines of a sysctl file.
    SysctlPersist,
    /// Extra kernel arguments of the running slot (effective at its next boot).
    GrubCurrent,
    /// Extra kernel arguments of the other slot.
    GrubNext,
    /// `domain type item value` lines of limits.conf.
    PamLimits,
    /// The kubelet's YAML config; kubelet restarts after a change.
    Kubelet,
    /// containerd's TOML config; containerd restarts after a change.
    Containerd,
}

impl Model {
    pub const ALL: [Model; 7] = [
        Model::Sysctl,
        Model::SysctlPersist,
        Model::GrubCurrent,
        Model::GrubNext,
        Model::PamLimits,
        Model::Kubelet,
        Model::Containerd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Model::Sysctl => "kernel.sysctl",
            Model::SysctlPersist => "kernel.sysctl.persist",
            Model::GrubCurrent => "grub.cmdline.current",
            Model::GrubNext => "grub.cmdline.next",
            Model::PamLimits => "pam.limits",
            Model::Kubelet => "kubernetes.kubelet",
            Model::Containerd => "container.containerd",
        }
    }

    pub fn parse(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The file a model edits when the request names none; `None` for the
    /// models whose target is not a file the request could choose.
    pub fn default_path(self) -> Option<&'static str> {
        match self {
            Model::SysctlPersist => Some("/etc/sysctl.conf"),
            Model::PamLimits => Some("/etc/security/limits.conf"),
            Model::Kubelet => Some("/var/lib/kubelet/config.yaml"),
            Model::Containerd => Some("/etc/containerd/config.toml"),
            Model::Sysctl | Model::GrubCurrent | Model::GrubNext => None,
        }
    }

    /// The systemd unit restarted after this model's file changed.
    pub fn unit(self) -> Option<&'static str> {
        match self {
            Model::Kubelet => Some("kubelet"),
            Model::Containerd => Some("containerd"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which files each file model may write: absolute paths, `*` matching
/// within one path component. A model not named keeps its default file only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    overrides: Vec<(Model, Vec<String>)>,
}

impl AllowList {
    /// Adds one `MODEL:PATTERN[,PATTERN..]` setting (`config-allow`). A model
    /// named twice gets the patterns of both.
    pub fn add(&mut self, setting: &str) -> Result<(), String> {
        let (model, patterns) = setting
            .split_once(':')
            .ok_or_else(|| format!("`{setting}` is not MODEL:PATH[,PATH..]"))?;
        let model = model.trim();
        let m = Model::parse(model)
            .filter(|m| m.default_path().is_some())
            .ok_or_else(|| format!("`{model}` is not a model that edits files"))?;
        let mut list = vec![];
        for p in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let norm = normalize(p).ok_or_else(|| {
                format!("`{p}` is not an absolute path without `.` or `..` components")
            })?;
            list.push(norm);
        }
        match self.overrides.iter_mut().find(|(o, _)| *o == m) {
            Some((_, l)) => l.extend(list),
            None => self.overrides.push((m, list)),
        }
        Ok(())
    }

    /// Adds `other`'s settings (the config file's, under the flags').
    pub fn merge(&mut self, other: AllowList) {
        for (model, list) in other.overrides {
            match self.overrides.iter_mut().find(|(m, _)| *m == model) {
                Some((_, l)) => l.extend(list),
                None => self.overrides.push((model, list)),
            }
        }
    }

    /// The patterns in force for `model`.
    pub fn patterns(&self, model: Model) -> Vec<String> {
        match self.overrides.iter().find(|(m, _)| *m == model) {
            Some((_, list)) => list.clone(),
            None => model
                .default_path()
                .map(str::to_owned)
                .into_iter()
                .collect(),
        }
    }

    /// Whether `path` (normalized) may be written for `model`.
    pub fn allows(&self, model: Model, path: &str) -> bool {
        self.patterns(model).iter().any(|p| glob(p, path))
    }
}

/// `/a/b` from an absolute path without `..` (`.` and doubled `/` dropped);
/// `None` when it is relative, climbs, or names the root itself.
pub fn normalize(path: &str) -> Option<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(n.to_str()?);
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Matches a normalized path against a pattern whose `*` stays within one
/// component.
fn glob(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len()
        && p.iter()
            .zip(&s)
            .all(|(p, s)| wildcard(p.as_bytes(), s.as_bytes()))
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wildcard(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && wildcard(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Model::ALL {
            assert_eq!(Model::parse(m.name()), Some(m));
        }
        assert_eq!(Model::parse("kernel.sysctl.nope"), None);
    }

    #[test]
    fn defaults_and_overrides() {
        let mut a = AllowList::default();
        assert!(a.allows(Model::SysctlPersist, "/etc/sysctl.conf"));
        assert!(!a.allows(Model::SysctlPersist, "/etc/passwd"));
        a.add("kernel.sysctl.persist: /etc/sysctl.conf, /etc/sysctl.d/*.conf")
            .unwrap();
        assert!(a.allows(Model::SysctlPersist, "/etc/sysctl.d/90-k8s.conf"));
        assert!(!a.allows(Model::SysctlPersist, "/etc/sysctl.d/x/y.conf"));
        assert!(!a.allows(Model::SysctlPersist, "/etc/sysctl.d/90.conf.bak"));
        a.add("pam.limits:/etc/security/limits.d/*.conf").unwrap();
        assert!(!a.allows(Model::PamLimits, "/etc/security/limits.conf"));
        assert!(a.add("kernel.sysctl:/proc/x").is_err());
        assert!(a.add("pam.limits:etc/x").is_err());
        assert!(a.add("pam.limits:/etc/../x").is_err());
        assert!(a.add("nonsense").is_err());
    }

    #[test]
    fn normalizing() {
        assert_eq!(
            normalize("/etc//./sysctl.conf"),
            Some("/etc/sysctl.conf".into())
        );
        assert_eq!(normalize("/etc/../x"), None);
        assert_eq!(normalize("etc/x"), None);
        assert_eq!(normalize("/"), None);
    }
}
