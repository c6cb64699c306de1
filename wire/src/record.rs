//! Slot states, slot records and os-init's rescue note, as the `key=value`
//! text files on PERSIST spell them (`PERSIST/ab/slot-A`, `slot-B`, `rescue`).
//! Written by `os-image` (first install), `os-agent` (upgrades) and `os-init`
//! (its last resort); read by all three and shown in `os-agent status`. The
//! files themselves (paths, atomic replace) are bootctl's `record` module.

use crate::Slot;

/// Refuses text that cannot be one value of a line-based file: any control
/// character (C0 including newline and CR, DEL, C1). A version such as
/// `2\nstate=good` would otherwise add a line that changes os-init's and
/// rollback's decisions. Every field of a record, a trial file or a GRUB
/// env block that comes from a request or a manifest goes through this.
pub fn check_text(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{value:?} holds a control character ({:?}); one line of printable text is needed",
            c
        )),
        None => Ok(()),
    }
}

/// `value` for one line of a log or a status field: as it is, or, when it
/// holds a control character, escaped whole as Rust's `escape_debug` does.
pub fn one_line(value: &str) -> std::borrow::Cow<'_, str> {
    match check_text(value) {
        Ok(()) => value.into(),
        Err(_) => value.escape_debug().to_string().into(),
    }
}

/// What a slot holds, as far as anyone has verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SlotState {
    /// Nothing bootable (never written, or being rewritten right now).
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "empty"))]
    Empty,
    /// A verified image that has not yet completed a confirmed boot.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "written")
    )]
    Written,
    /// A verified image that booted and was confirmed at least once.
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "good"))]
    Good,
    /// A verified image whose trial boot failed.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "failed")
    )]
    Failed,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Written => "written",
            SlotState::Good => "good",
            SlotState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SlotState> {
        Some(match s {
            "empty" => SlotState::Empty,
            "written" => SlotState::Written,
            "good" => SlotState::Good,
            "failed" => SlotState::Failed,
            _ => return None,
        })
    }
}

/// Who confirms a trial boot of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConfirmPolicy {
    /// `os-init` confirms as soon as the root passes its sanity checks.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "initramfs")
    )]
    Initramfs,
    /// `os-init` leaves the trial open; the agent's health gate confirms.
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "agent"))]
    Agent,
}

impl ConfirmPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmPolicy::Initramfs => "initramfs",
            ConfirmPolicy::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<ConfirmPolicy> {
        match s {
            "initramfs" => Some(ConfirmPolicy::Initramfs),
            "agent" => Some(ConfirmPolicy::Agent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotRecord {
    pub slot: Slot,
    pub state: SlotState,
    /// OS version of the image (`VERSION_ID` in its /etc/os-release).
    pub version: String,
    /// `blake3:<hex>` of the whole root image as written.
    pub digest: String,
    /// Bytes of the root image (the slot may be larger).
    pub size: u64,
    /// When the image was written, seconds since the Unix epoch.
    pub written_at: u64,
    /// Confirmation policy for trial boots of this slot; `None`: the default.
    pub confirm: Option<ConfirmPolicy>,
    /// Where the image came from, pinned, when that is not `digest` itself:
    /// `oci://REGISTRY/REPO@sha256:<manifest>` for an image from a registry
    /// (so a request pinned by the manifest digest recognises it); empty
    /// otherwise.
    pub source: String,
    /// The dm-verity tree at the end of the image, in
    /// [`Verity::to_arg`](crate::verity::Verity::to_arg) form, from the
    /// manifest the image was verified against; os-init mounts the slot
    /// through dm-verity when it is there. `None`: a bundle without a tree.
    pub verity: Option<String>,
}

impl SlotRecord {
    /// The record of a slot that holds nothing usable.
    pub fn empty(slot: Slot) -> SlotRecord {
        SlotRecord {
            slot,
            state: SlotState::Empty,
            version: String::new(),
            digest: String::new(),
            size: 0,
            written_at: 0,
            confirm: None,
            source: String::new(),
            verity: None,
        }
    }

    /// The verity parameters, checked; `None` when the record has none.
    pub fn verity(&self) -> Result<Option<crate::verity::Verity>, String> {
        self.verity
            .as_deref()
            .map(|v| crate::verity::Verity::parse_arg(v).map_err(|e| format!("verity {e}")))
            .transpose()
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "slot={}\nstate={}\nversion={}\ndigest={}\nsize={}\nwritten_at={}\n",
            self.slot,
            self.state.as_str(),
            self.version,
            self.digest,
            self.size,
            self.written_at
        );
        if let Some(c) = self.confirm {
            s.push_str(&format!("confirm={}\n", c.as_str()));
        }
        if !self.source.is_empty() {
            s.push_str(&format!("source={}\n", self.source));
        }
        if let Some(v) = &self.verity {
            s.push_str(&format!("verity={v}\n"));
        }
        s
    }

    /// The fields that are free text, each one line of printable text.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("version", &self.version),
            ("digest", &self.digest),
            ("source", &self.source),
        ] {
            check_text(value).map_err(|e| format!("{name} {e}"))?;
        }
        self.verity().map(drop)
    }

    /// Parses a record; unknown keys are ignored so newer writers stay
    /// readable. A key given twice, or a control character in a line, makes
    /// the record corrupt: either is what an injected line looks like, and
    /// no single reading of it can be trusted.
    pub fn parse(text: &str) -> Result<SlotRecord, String> {
        let mut rec = SlotRecord::empty(Slot::A);
        let mut slot = None;
        let mut state = None;
        let mut seen: Vec<&str> = vec![];
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line without '=': {line:?}"))?;
            if seen.contains(&key) {
                return Err(format!("{key}= appears more than once"));
            }
            seen.push(key);
            check_text(line).map_err(|e| format!("line {e}"))?;
            let bad = || format!("invalid {key}: {value:?}");
            match key {
                "slot" => slot = Some(Slot::parse(value).ok_or_else(bad)?),
                "state" => state = Some(SlotState::parse(value).ok_or_else(bad)?),
                "version" => rec.version = value.to_owned(),
                "digest" => rec.digest = value.to_owned(),
                "size" => rec.size = value.parse().map_err(|_| bad())?,
                "written_at" => rec.written_at = value.parse().map_err(|_| bad())?,
                "confirm" => rec.confirm = Some(ConfirmPolicy::parse(value).ok_or_else(bad)?),
                "source" => rec.source = value.to_owned(),
                "verity" => {
                    crate::verity::Verity::parse_arg(value)
                        .map_err(|e| format!("{} ({e})", bad()))?;
                    rec.verity = Some(value.to_owned());
                }
                _ => {}
            }
        }
        rec.slot = slot.ok_or("no slot= line")?;
        rec.state = state.ok_or("no state= line")?;
        Ok(rec)
    }
}

/// Why os-init handed the boot to the other slot (its last resort when the
/// committed slot could not be used): written by os-init, shown by the
/// agent's `status`, removed by the agent when it rewrites the broken slot.
/// One file, `PERSIST/ab/rescue`, of `from=`, `to=`, `reason=` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RescueNote {
    /// The committed slot that could not be used.
    pub from: Slot,
    /// The slot tried instead.
    pub to: Slot,
    pub reason: String,
}

impl RescueNote {
    /// The note's text; the reason is kept to one line.
    pub fn to_text(&self) -> String {
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("from={}\nto={}\nreason={reason}\n", self.from, self.to)
    }

    pub fn parse(text: &str) -> Result<RescueNote, String> {
        let (mut from, mut to, mut reason) = (None, None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line without '=': {line:?}"))?;
            let slot = || Slot::parse(value).ok_or_else(|| format!("invalid {key}: {value:?}"));
            let field = match key {
                "from" => from.replace(slot()?).is_some(),
                "to" => to.replace(slot()?).is_some(),
                "reason" => reason.replace(value.to_owned()).is_some(),
                _ => false,
            };
            if field {
                return Err(format!("{key}= appears more than once"));
            }
        }
        Ok(RescueNote {
            from: from.ok_or("no from= line")?,
            to: to.ok_or("no to= line")?,
            reason: reason.unwrap_or_default(),
        })
    }
}
