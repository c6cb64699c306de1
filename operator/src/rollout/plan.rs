//! A spec checked once and reduced to what decisions need: the target, the node selection and
//! the time window. A spec that cannot be acted on is reported, never guessed at.

use std::fmt;

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    NoOsVersion,
    MaxUnavailableBelowOne(i64),
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
            SpecError::MaxUnavailableBelowOne(n) => {
                write!(f, "maxunavailable is {n}; it must be at least 1")
            }
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
        if spec.maxunavailable < 1 {
            return Err(SpecError::MaxUnavailableBelowOne(spec.maxunavailable));
        }
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
