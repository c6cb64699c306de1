//! A spec checked once and reduced to what decisions need: the target, the node selection and
//! the time window. A spec that cannot be acted on is reported, never guessed at.

use std::fmt;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::NodeSelection;
use super::window::{Window, WindowError};
use crate::crd::{ImageType, OpsType, OsSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub operation: OpsType,
    /// The OS version for upgrade/rollback, the `sysconfigs.version` for config (KubeOS
    /// compares versions, and an empty one is a version too).
    pub target: String,
    pub selection: NodeSelection,
    pub window: Window,
    pub max_unavailable: MaxUnavailable,
}

/// `maxunavailable` checked: a node count, or a percentage of the selected nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    Nodes(u32),
    Percent(u8),
}

impl MaxUnavailable {
    /// Digits and one `%`, as Kubernetes writes `maxUnavailable: 20%`; 1% to 100%.
    pub fn parse(value: &IntOrString) -> Result<MaxUnavailable, SpecError> {
        let invalid = || SpecError::MaxUnavailable(int_or_string_text(value));
        match value {
            IntOrString::Int(n) if *n >= 1 => Ok(MaxUnavailable::Nodes(*n as u32)),
            IntOrString::Int(_) => Err(invalid()),
            IntOrString::String(text) => {
                let digits = text.strip_suffix('%').ok_or_else(invalid)?;
                if digits.is_empty()
                    || digits.len() > 3
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(invalid());
                }
                match digits.parse::<u8>() {
                    Ok(p @ 1..=100) => Ok(MaxUnavailable::Percent(p)),
                    _ => Err(invalid()),
                }
            }
        }
    }

    /// Nodes that may be unavailable at once among `selected`: a percentage rounds down (as
    /// a Deployment's maxUnavailable does) but is at least one node, or nothing would ever
    /// start; never more than `selected`.
    pub fn limit(self, selected: u32) -> u32 {
        let n = match self {
            MaxUnavailable::Nodes(n) => n,
            MaxUnavailable::Percent(p) => {
                ((u64::from(selected) * u64::from(p)) / 100).max(1) as u32
            }
        };
        n.min(selected)
    }
}

fn int_or_string_text(value: &IntOrString) -> String {
    match value {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => format!("{s:?}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    NoOsVersion,
    MaxUnavailable(String),
    NegativeTimeInterval(i64),
    ZeroFailureBudget,
    ZeroNodeTimeout,
    Window(WindowError),
    NoImageType,
    NoImageUrl,
    NoContainerImage,
    NoChecksum,
    MtlsWithoutClientCert,
    ConfigWithoutSysconfigs,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::NoOsVersion => write!(f, "osversion is empty"),
            SpecError::MaxUnavailable(v) => write!(
                f,
                "maxunavailable is {v}; it must be a number of nodes (at least 1) or a \
                 percentage from \"1%\" to \"100%\""
            ),
            SpecError::NegativeTimeInterval(n) => write!(f, "timeinterval is {n}; it must be >= 0"),
            SpecError::ZeroFailureBudget => write!(f, "failureBudget must be at least 1"),
            SpecError::ZeroNodeTimeout => write!(f, "nodeTimeoutSeconds must be at least 1"),
            SpecError::Window(e) => write!(f, "{e}"),
            SpecError::NoImageType => {
                write!(
                    f,
                    "opstype upgrade needs imagetype disk, docker or containerd"
                )
            }
            SpecError::NoImageUrl => write!(f, "imagetype disk needs imageurl"),
            SpecError::NoContainerImage => {
                write!(f, "imagetype docker/containerd needs containerimage")
            }
            SpecError::NoChecksum => write!(
                f,
                "opstype upgrade needs checksum (or a containerimage pinned with @sha256:)"
            ),
            SpecError::MtlsWithoutClientCert => write!(f, "mtls needs clientcert and clientkey"),
            SpecError::ConfigWithoutSysconfigs => write!(f, "opstype config needs sysconfigs"),
        }
    }
}

impl std::error::Error for SpecError {}

impl Plan {
    pub fn from_spec(spec: &OsSpec) -> Result<Plan, SpecError> {
        if spec.osversion.is_empty() {
            return Err(SpecError::NoOsVersion);
        }
        let max_unavailable = MaxUnavailable::parse(&spec.maxunavailable)?;
        if spec.timeinterval < 0 {
            return Err(SpecError::NegativeTimeInterval(spec.timeinterval));
        }
        if spec.failure_budget == 0 {
            return Err(SpecError::ZeroFailureBudget);
        }
        if spec.node_timeout_seconds == 0 {
            return Err(SpecError::ZeroNodeTimeout);
        }
        let window = Window::parse(spec.timewindow.as_ref()).map_err(SpecError::Window)?;
        let target = match spec.opstype {
            OpsType::Upgrade => {
                check_image_source(spec)?;
                spec.osversion.clone()
            }
            OpsType::Rollback => spec.osversion.clone(),
            OpsType::Config => spec
                .sysconfigs
                .as_ref()
                .ok_or(SpecError::ConfigWithoutSysconfigs)?
                .version
                .clone()
                .unwrap_or_default(),
        };
        Ok(Plan {
            operation: spec.opstype,
            target,
            selection: NodeSelection::parse(&spec.nodeselector),
            window,
            max_unavailable,
        })
    }
}

fn check_image_source(spec: &OsSpec) -> Result<(), SpecError> {
    match spec.imagetype {
        ImageType::Unset => return Err(SpecError::NoImageType),
        ImageType::Disk if spec.imageurl.is_empty() => return Err(SpecError::NoImageUrl),
        ImageType::Docker | ImageType::Containerd if spec.containerimage.is_empty() => {
            return Err(SpecError::NoContainerImage)
        }
        _ => {}
    }
    // A container image pinned by digest carries its own checksum.
    let pinned_image = matches!(spec.imagetype, ImageType::Docker | ImageType::Containerd)
        && spec.containerimage.contains("@sha256:");
    if spec.checksum.is_empty() && !pinned_image {
        return Err(SpecError::NoChecksum);
    }
    // KubeOS's container-image samples set `mtls: true`; it only means something for a disk
    // image fetched over https.
    let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let https_disk = spec.imagetype == ImageType::Disk && spec.imageurl.starts_with("https://");
    if spec.mtls && https_disk && !(has(&spec.clientcert) && has(&spec.clientkey)) {
        return Err(SpecError::MtlsWithoutClientCert);
    }
    Ok(())
}
