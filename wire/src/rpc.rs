//! os-agent's JSON-RPC 2.0 messages (DESIGN.md §6): method names, the
//! requests and results, the status report, the error codes and the error
//! kinds a client decides on. The agent encodes and decodes them with
//! miniserde, the proxy with serde, both from these types.
//!
//! Errors: every error answer carries `data` = `{"kind", "reason"}` (plus
//! `detail` where there is more to say): `kind` is what a client does about
//! it ([`ErrorKind`]), `reason` a stable identifier ([`Reason`]) that never
//! changes with the wording of `message`. The code follows from the reason
//! ([`Reason::code`]); KubeOS clients, which look only at "is it an error",
//! are not affected.

use crate::record::{RescueNote, SlotRecord};
use crate::Slot;

/// The longest message either side reads, request or answer (bytes): the agent refuses a
/// longer request, the proxy a longer answer, and `os-agent configure --file` a longer file.
pub const MAX_MESSAGE: usize = 1 << 20;

pub const PREPARE_UPGRADE: &str = "prepare_upgrade";
pub const UPGRADE: &str = "upgrade";
pub const ROLLBACK: &str = "rollback";
pub const CONFIGURE: &str = "configure";
pub const STATUS: &str = "status";
pub const CONFIRM: &str = "confirm";
pub const CANCEL: &str = "cancel";
/// Every method, in the order `Method not found` lists them.
pub const METHODS: [&str; 7] = [
    PREPARE_UPGRADE,
    UPGRADE,
    ROLLBACK,
    CONFIGURE,
    STATUS,
    CONFIRM,
    CANCEL,
];

/// KubeOS's `{"status": …}` results.
pub const UPGRADE_READY: &str = "UpgradeReady";
pub const UPGRADED: &str = "Upgraded";
pub const ROLLBACKED: &str = "Rollbacked";
pub const CONFIGURED: &str = "Configured";

/// Error codes. The JSON-RPC ones, KubeOS's `RPC_OP_ERROR` (-1) for an
/// operation that was tried and failed, and this agent's own in the
/// server-defined range.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// Tried and failed (KubeOS's `RPC_OP_ERROR`).
    pub const FAILED: i64 = -1;
    /// Another job runs; the message names it.
    pub const BUSY: i64 = -32000;
    pub const NOT_SUPPORTED: i64 = -32001;
    /// The peer's uid may not use the agent.
    pub const FORBIDDEN: i64 = -32002;
    /// Refused: the request or the node's state does not allow it.
    pub const REFUSED: i64 = -32003;
    /// Could not be done now (network, server); the same request may work later.
    pub const RETRY_LATER: i64 = -32004;
}

/// What a client does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ErrorKind {
    /// A bad request, or one the node's state does not allow: the same
    /// request will be refused again. Never retry it as it is.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "refused")
    )]
    Refused,
    /// Not now (busy, network, server trouble): nothing was lost, ask again later.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "retryable")
    )]
    Retryable,
    /// The node tried and it did not work (the image is corrupt, a write
    /// failed, a configuration was rolled back).
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "failed")
    )]
    Failed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Failed => "failed",
        }
    }

    /// The kind of an error code, for an answer without `data.kind` (an
    /// older agent, KubeOS's): busy is retryable, the protocol errors and
    /// refusals are refused, anything else failed.
    pub fn of_code(code: i64) -> ErrorKind {
        match code {
            code::BUSY | code::RETRY_LATER => ErrorKind::Retryable,
            code::REFUSED | code::NOT_SUPPORTED | code::FORBIDDEN => ErrorKind::Refused,
            -32768..=-32600 => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

macro_rules! reasons {
    ($($variant:ident = $text:literal, $kind:ident;)*) => {
        /// Why an operation did not happen: a stable identifier, sent as
        /// `data.reason`. Each reason has one kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }

            pub fn kind(self) -> ErrorKind {
                match self {
                    $(Reason::$variant => ErrorKind::$kind,)*
                }
            }

            pub fn parse(s: &str) -> Option<Reason> {
                match s {
                    $($text => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // The protocol.
    ParseError = "parse-error", Refused;
    InvalidRequest = "invalid-request", Refused;
    MethodNotFound = "method-not-found", Refused;
    InvalidParams = "invalid-params", Refused;
    Forbidden = "forbidden", Refused;
    NotSupported = "not-supported", Refused;
    // Not now.
    Busy = "busy", Retryable;
    Network = "network", Retryable;
    ServerError = "server-error", Retryable;
    // The request.
    BadRequest = "bad-request", Refused;
    FileSource = "file-source", Refused;
    PlainHttp = "plain-http", Refused;
    TlsFiles = "tls-files", Refused;
    TooLarge = "too-large", Refused;
    // The node's A/B state.
    SlotInUse = "slot-in-use", Refused;
    TrialArmed = "trial-armed", Refused;
    BootedOnTrial = "booted-on-trial", Refused;
    NotInactive = "not-inactive", Refused;
    NotGood = "not-good", Refused;
    NothingPrepared = "nothing-prepared", Refused;
    NoBootState = "no-boot-state", Refused;
    // The source.
    NotFound = "not-found", Failed;
    HttpRefused = "http-refused", Failed;
    Tls = "tls", Failed;
    Registry = "registry", Failed;
    // The content.
    BadManifest = "bad-manifest", Failed;
    ManifestMismatch = "manifest-mismatch", Failed;
    Unsigned = "unsigned", Refused;
    UntrustedKey = "untrusted-key", Refused;
    BadSignature = "bad-signature", Refused;
    Corrupt = "corrupt", Failed;
    DigestMismatch = "digest-mismatch", Failed;
    VerifyFailed = "verify-failed", Failed;
    // The node.
    Cancelled = "cancelled", Failed;
    SlotIo = "slot-io", Failed;
    RecordIo = "record-io", Failed;
    BootState = "boot-state", Failed;
    Lock = "lock", Failed;
    Reboot = "reboot", Failed;
    ConfigureRefused = "configure-refused", Refused;
    ConfigureFailed = "configure-failed", Failed;
}

impl Reason {
    /// The error code an answer with this reason carries.
    pub fn code(self) -> i64 {
        match self {
            Reason::ParseError => code::PARSE_ERROR,
            Reason::InvalidRequest => code::INVALID_REQUEST,
            Reason::MethodNotFound => code::METHOD_NOT_FOUND,
            Reason::InvalidParams => code::INVALID_PARAMS,
            Reason::Forbidden => code::FORBIDDEN,
            Reason::NotSupported => code::NOT_SUPPORTED,
            Reason::Busy => code::BUSY,
            r => match r.kind() {
                ErrorKind::Refused => code::REFUSED,
                ErrorKind::Retryable => code::RETRY_LATER,
                ErrorKind::Failed => code::FAILED,
            },
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ErrorData {
    pub kind: ErrorKind,
    /// A [`Reason`], spelled as [`Reason::as_str`].
    pub reason: String,
    pub detail: Option<String>,
}

impl ErrorData {
    pub fn of(reason: Reason) -> ErrorData {
        ErrorData {
            kind: reason.kind(),
            reason: reason.as_str().to_owned(),
            detail: None,
        }
    }
}

/// KubeOS's `CertsInfo`: file names under the agent's certs directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "miniserde", derive(miniserde::Serialize))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CertsInfo {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
}

/// KubeOS's `UpgradeRequest`, field for field: the one parameter of
/// `prepare_upgrade`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "miniserde", derive(miniserde::Serialize))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UpgradeRequest {
    pub version: String,
    pub check_sum: String,
    pub image_type: String,
    pub container_image: String,
    pub image_url: String,
    pub flag_safe: bool,
    pub mtls: bool,
    pub certs: CertsInfo,
}

#[cfg(feature = "miniserde")]
mod parse {
    use super::{CertsInfo, UpgradeRequest};
    use crate::json::{get_bool, get_str};
    use miniserde::json::{Object, Value};

    /// The one object of a method's params: `[obj]` as KubeOS's client sends
    /// positional params, or `obj` by name.
    pub fn single_param<'a>(params: Option<&'a Value>, what: &str) -> Result<&'a Object, String> {
        match params {
            Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
                Value::Object(o) => Ok(o),
                _ => Err(format!(
                    "params must be [{what}], an array holding one object"
                )),
            },
            Some(Value::Object(o)) => Ok(o),
            _ => Err(format!(
                "params must be [{what}], an array holding one object"
            )),
        }
    }

    impl UpgradeRequest {
        /// Reads the request from a method's params, with an error naming
        /// the field. `check_sum` and `image_url` are required (KubeOS sends
        /// every field); the others default to empty or false.
        pub fn from_params(params: Option<&Value>) -> Result<UpgradeRequest, String> {
            let o = single_param(params, "UpgradeRequest")?;
            let required = |key: &str| {
                get_str(o, key)?.ok_or_else(|| format!("UpgradeRequest lacks field `{key}`"))
            };
            let certs = match o.get("certs") {
                None | Some(Value::Null) => CertsInfo::default(),
                Some(Value::Object(c)) => CertsInfo {
                    ca_cert: get_str(c, "ca_cert")?.unwrap_or_default(),
                    client_cert: get_str(c, "client_cert")?.unwrap_or_default(),
                    client_key: get_str(c, "client_key")?.unwrap_or_default(),
                },
                Some(_) => return Err("field `certs` must be an object".into()),
            };
            Ok(UpgradeRequest {
                version: get_str(o, "version")?.unwrap_or_default(),
                check_sum: required("check_sum")?,
                image_type: get_str(o, "image_type")?.unwrap_or_default(),
                container_image: get_str(o, "container_image")?.unwrap_or_default(),
                image_url: required("image_url")?,
                flag_safe: get_bool(o, "flag_safe")?,
                mtls: get_bool(o, "mtls")?,
                certs,
            })
        }
    }
}
#[cfg(feature = "miniserde")]
pub use parse::single_param;

/// KubeOS's result of prepare_upgrade, upgrade, rollback and configure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OpStatus {
    pub status: String,
}

/// The result of `configure`: KubeOS's `{"status":"Configured"}`, plus
/// `warnings` when part of the request had nothing to do (KubeOS logs those).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Configured {
    pub status: String,
    pub warnings: Option<Vec<String>>,
}

/// The result of `confirm`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Confirmed {
    pub confirmed: Slot,
    /// Whether the call committed anything (false: it was committed already).
    pub changed: bool,
}

/// The result of `cancel`: the kind of job cancelled, `null` when none ran.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Cancelled {
    pub cancelled: Option<String>,
}

/// Both slot records, by slot name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Slots {
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "A"))]
    pub a: SlotRecord,
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "B"))]
    pub b: SlotRecord,
}

/// A trial that fell back: which slot, the version that failed (when the
/// agent knows) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LastFailure {
    pub slot: Slot,
    pub version: Option<String>,
    pub reason: String,
}

/// The running job and its progress.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct JobStatus {
    /// `prepare`, `activate`, `upgrade`, `rollback`, `confirm`, `boot-check`, `configure`.
    pub kind: String,
    /// What it works on: a URL, a slot.
    pub detail: String,
    /// What it does right now, beyond its phase (a health check's name).
    pub step: String,
    pub elapsed_s: u64,
    /// `connecting`, `downloading`, `verifying`, `recording`, `done`, `failed`, …
    pub phase: String,
    /// Bytes done and expected in this phase (0: unknown).
    pub bytes: u64,
    pub total: u64,
    /// Compressed bytes fetched so far.
    pub fetched: u64,
    pub percent: Option<f64>,
    /// Bytes per second over the last seconds.
    pub rate: f64,
}

/// Which bundle signatures the node requires (docs/signing.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Trust {
    /// Only signed bundles are written: some key file is installed.
    pub signatures_required: bool,
    /// Ids of the trusted keys.
    pub keys: Vec<String>,
    /// Key files that could not be used, with the reason.
    pub unusable: Vec<String>,
}

/// The `status` result.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Status {
    pub booted: Slot,
    /// The committed slot.
    pub active: Slot,
    pub trial: Option<Slot>,
    pub tries: u8,
    /// The slot whose trial failed last, as GRUB recorded it.
    pub fail: Option<Slot>,
    /// Whether the booted slot is on trial.
    pub on_trial: bool,
    /// Which env copy the state came from: `1`, `2`, or `default` (neither usable).
    pub source: String,
    pub slots: Slots,
    pub last_failure: Option<LastFailure>,
    /// os-init's last resort, while its note stands.
    pub rescue: Option<RescueNote>,
    pub job: Option<JobStatus>,
    /// The lock holder's line when another process runs a job.
    pub other_job: Option<String>,
    /// Signature policy (absent from agents before signing).
    pub trust: Option<Trust>,
    /// What os-init found checking the booted root with dm-verity (absent
    /// when os-init left no report: an older os-init, or a test rig).
    pub verity: Option<crate::verity::BootCheck>,
}

impl Status {
    pub fn record(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::A => &self.slots.a,
            Slot::B => &self.slots.b,
        }
    }

    /// The record of the slot that runs now.
    pub fn booted_record(&self) -> &SlotRecord {
        self.record(self.booted)
    }

    /// The slot the next image goes to: the one not running.
    pub fn inactive(&self) -> Slot {
        self.booted.other()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_spelling_and_a_code_of_its_kind() {
        for &r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(ErrorKind::of_code(r.code()), r.kind(), "{r}");
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::Busy.code(), code::BUSY);
        assert_eq!(Reason::DigestMismatch.code(), code::FAILED);
        assert_eq!(Reason::Network.code(), code::RETRY_LATER);
        assert_eq!(Reason::TrialArmed.code(), code::REFUSED);
    }
}
