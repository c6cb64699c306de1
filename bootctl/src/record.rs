//! Slot records on PERSIST: what each root slot holds, and whether it is known
//! to boot. Written by `os-image` (first install) and `os-agent` (upgrades),
//! read by `os-init` (trial sanity checks) and `os-agent` (rollback rule).
//!
//! One small text file per slot, `PERSIST/ab/slot-A` and `PERSIST/ab/slot-B`, of
//! `key=value` lines, so a shell in a rescue console can read it too. Records
//! live on an ordinary journaled ext4, so they are replaced atomically: write a
//! temp file, fsync, rename over, fsync the directory.

use crate::state::Slot;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// Directory of the records, relative to the PERSIST mount point.
pub const RECORD_DIR: &str = "ab";

/// What a slot holds, as far as anyone has verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing bootable (never written, or being rewritten right now).
    Empty,
    /// A verified image that has not yet completed a confirmed boot.
    Written,
    /// A verified image that booted and was confirmed at least once.
    Good,
    /// A verified image whose trial boot failed.
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
pub enum ConfirmPolicy {
    /// `os-init` confirms as soon as the root passes its sanity checks.
    Initramfs,
    /// `os-init` leaves the trial open; the agent's health gate confirms.
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
        }
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
        Ok(())
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
                _ => {}
            }
        }
        rec.slot = slot.ok_or("no slot= line")?;
        rec.state = state.ok_or("no state= line")?;
        Ok(rec)
    }
}

/// Path of `slot`'s record under the PERSIST mount point `persist`.
pub fn record_path(persist: &Path, slot: Slot) -> PathBuf {
    persist.join(RECORD_DIR).join(format!("slot-{slot}"))
}

#[derive(Debug)]
pub enum RecordError {
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    /// A record that would not read back as written (a field with a
    /// control character); nothing was written.
    Invalid {
        path: PathBuf,
        reason: String,
    },
    /// The file names a different slot than the path it was read from.
    WrongSlot {
        path: PathBuf,
        found: Slot,
    },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            RecordError::Corrupt { path, reason } => {
                write!(f, "slot record {} is corrupt: {reason}", path.display())
            }
            RecordError::Invalid { path, reason } => {
                write!(f, "not writing slot record {}: {reason}", path.display())
            }
            RecordError::WrongSlot { path, found } => {
                write!(f, "slot record {} describes slot {found}", path.display())
            }
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads `slot`'s record; a missing file reads as an empty slot.
pub fn read(persist: &Path, slot: Slot) -> Result<SlotRecord, RecordError> {
    let path = record_path(persist, slot);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SlotRecord::empty(slot)),
        Err(source) => {
            return Err(RecordError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let rec = SlotRecord::parse(&text).map_err(|reason| RecordError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    if rec.slot != slot {
        return Err(RecordError::WrongSlot {
            path,
            found: rec.slot,
        });
    }
    Ok(rec)
}

/// Replaces the record atomically (see [`write_atomic`]).
pub fn write(persist: &Path, rec: &SlotRecord) -> Result<(), RecordError> {
    let path = record_path(persist, rec.slot);
    rec.check().map_err(|reason| RecordError::Invalid {
        path: path.clone(),
        reason,
    })?;
    write_atomic(&path, rec.to_text().as_bytes())
}

/// Replaces `path` with `bytes` atomically on a journaled filesystem like
/// PERSIST: write `.NAME.tmp` beside it, fsync, rename over, fsync the
/// directory (STYLE.md §4). Parent directories are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordError::Io { op, path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename to", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Why os-init handed the boot to the other slot (its last resort when the
/// committed slot could not be used): written by os-init, shown by the
/// agent's `status`, removed by the agent when it rewrites the broken slot.
/// One file, `PERSIST/ab/rescue`, of `from=`, `to=`, `reason=` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescueNote {
    /// The committed slot that could not be used.
    pub from: Slot,
    /// The slot tried instead.
    pub to: Slot,
    pub reason: String,
}

/// File name of the [`RescueNote`] under [`RECORD_DIR`].
pub const RESCUE_FILE: &str = "rescue";

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

fn rescue_path(persist: &Path) -> PathBuf {
    persist.join(RECORD_DIR).join(RESCUE_FILE)
}

/// Writes the note atomically (see [`write_atomic`]).
pub fn write_rescue(persist: &Path, note: &RescueNote) -> Result<(), RecordError> {
    write_atomic(&rescue_path(persist), note.to_text().as_bytes())
}

/// The note, if os-init left one.
pub fn read_rescue(persist: &Path) -> Result<Option<RescueNote>, RecordError> {
    let path = rescue_path(persist);
    match fs::read_to_string(&path) {
        Ok(text) => RescueNote::parse(&text)
            .map(Some)
            .map_err(|reason| RecordError::Corrupt { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Removes the note once it no longer describes the node: `slot` (the one
/// that failed) is being rewritten. A missing note is fine.
pub fn clear_rescue_of(persist: &Path, slot: Slot) -> Result<(), RecordError> {
    match read_rescue(persist) {
        Ok(Some(note)) if note.from != slot => return Ok(()),
        Ok(None) => return Ok(()),
        // A corrupt note describes nothing: remove it too.
        Ok(Some(_)) | Err(RecordError::Corrupt { .. }) => {}
        Err(e) => return Err(e),
    }
    let path = rescue_path(persist);
    fs::remove_file(&path).map_err(|source| RecordError::Io {
        op: "remove",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path(), Slot::B).unwrap(),
            SlotRecord::empty(Slot::B)
        );
        let rec = SlotRecord {
            slot: Slot::B,
            state: SlotState::Written,
            version: "2".into(),
            digest: "blake3:ab".into(),
            size: 4096,
            written_at: 1_700_000_000,
            confirm: Some(ConfirmPolicy::Initramfs),
            source: String::new(),
        };
        write(dir.path(), &rec).unwrap();
        assert_eq!(read(dir.path(), Slot::B).unwrap(), rec);
        let text = fs::read_to_string(record_path(dir.path(), Slot::B)).unwrap();
        assert!(
            !text.contains("source="),
            "no source line when there is none"
        );
        let oci = SlotRecord {
            source: "oci://r.example/os@sha256:00".into(),
            ..rec
        };
        write(dir.path(), &oci).unwrap();
        assert_eq!(read(dir.path(), Slot::B).unwrap(), oci);
        assert!(!dir.path().join("ab/.slot-B.tmp").exists());
    }

    #[test]
    fn a_field_with_a_control_character_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let good = SlotRecord {
            state: SlotState::Written,
            version: "2".into(),
            ..SlotRecord::empty(Slot::B)
        };
        write(dir.path(), &good).unwrap();
        let before = fs::read(record_path(dir.path(), Slot::B)).unwrap();
        for bad in [
            SlotRecord {
                version: "2\nconfirm=initramfs".into(),
                ..good.clone()
            },
            SlotRecord {
                digest: "blake3:00\rstate=good".into(),
                ..good.clone()
            },
            SlotRecord {
                source: "oci://r/x@sha256:00\u{0}".into(),
                ..good.clone()
            },
        ] {
            let err = write(dir.path(), &bad).unwrap_err();
            assert!(matches!(err, RecordError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("control character"), "{err}");
            assert_eq!(fs::read(record_path(dir.path(), Slot::B)).unwrap(), before);
        }
    }

    #[test]
    fn a_repeated_key_makes_a_record_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ab")).unwrap();
        for text in [
            "slot=B\nstate=written\nversion=2\nstate=good\n",
            "slot=B\nstate=written\nversion=2\nconfirm=agent\nconfirm=initramfs\n",
            "slot=B\nstate=written\nversion=2\x1b[2J\n",
        ] {
            fs::write(record_path(dir.path(), Slot::B), text).unwrap();
            let err = read(dir.path(), Slot::B).unwrap_err();
            assert!(
                matches!(err, RecordError::Corrupt { .. }),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_and_misplaced_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ab")).unwrap();
        fs::write(record_path(dir.path(), Slot::A), "slot=A\nstate=bogus\n").unwrap();
        assert!(matches!(
            read(dir.path(), Slot::A),
            Err(RecordError::Corrupt { .. })
        ));
        fs::write(record_path(dir.path(), Slot::A), "slot=B\nstate=good\n").unwrap();
        assert!(matches!(
            read(dir.path(), Slot::A),
            Err(RecordError::WrongSlot { found: Slot::B, .. })
        ));
    }

    #[test]
    fn rescue_notes_round_trip_and_are_cleared_with_their_slot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_rescue(dir.path()).unwrap(), None);
        let note = RescueNote {
            from: Slot::A,
            to: Slot::B,
            reason: "cannot mount\n/dev/vda2".into(),
        };
        write_rescue(dir.path(), &note).unwrap();
        let back = read_rescue(dir.path()).unwrap().unwrap();
        assert_eq!((back.from, back.to), (Slot::A, Slot::B));
        assert_eq!(back.reason, "cannot mount /dev/vda2");
        clear_rescue_of(dir.path(), Slot::B).unwrap();
        assert!(read_rescue(dir.path()).unwrap().is_some(), "B did not fail");
        clear_rescue_of(dir.path(), Slot::A).unwrap();
        assert_eq!(read_rescue(dir.path()).unwrap(), None);
        clear_rescue_of(dir.path(), Slot::A).unwrap();
        assert!(RescueNote::parse("from=A\nto=B\nfrom=B\n").is_err());
    }
}
