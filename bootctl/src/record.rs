//! Slot records on PERSIST: what each root slot holds, and whether it is known
//! to boot. Written by `os-image` (first install) and `os-agent` (upgrades),
//! read by `os-init` (trial sanity checks) and `os-agent` (rollback rule).
//!
//! One small text file per slot, `PERSIST/ab/slot-A` and `PERSIST/ab/slot-B`, of
//! `key=value` lines, so a shell in a rescue console can read it too. Records
//! live on an ordinary journaled ext4, so they are replaced atomically: write a
//! temp file, fsync, rename over, fsync the directory.

use crate::durable;
use crate::small_file;
use crate::state::Slot;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
pub use wire::record::{check_text, ConfirmPolicy, RescueNote, SlotRecord, SlotState};

/// A record or rescue note is a dozen short lines; a longer file is not one
/// (and is not read into memory whole).
pub const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Directory of the records, relative to the PERSIST mount point.
pub const RECORD_DIR: &str = "ab";

/// Path of `slot`'s record under the PERSIST mount point `persist`.
pub fn record_path(persist: &Path, slot: Slot) -> PathBuf {
    persist.join(RECORD_DIR).join(format!("slot-{slot}"))
}

/// Path of `slot`'s chunk index under `persist`: the bundle manifest of the
/// image its record names, kept so a delta download can look the slot's
/// chunks up instead of reading the slot (docs/bundle.md, "Delta").
/// Written by os-image for the slots of a new disk and by the agent once it
/// has verified an image; removed by the agent before it rewrites the slot.
pub fn index_path(persist: &Path, slot: Slot) -> PathBuf {
    persist
        .join(RECORD_DIR)
        .join(format!("slot-{slot}.manifest.json"))
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
    let text = match small_file::read(&path, MAX_RECORD_BYTES) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(SlotRecord::empty(slot)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(RecordError::Corrupt {
                path,
                reason: e.to_string(),
            })
        }
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
    durable::create_dirs(dir).map_err(io("create directory", dir))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    // PERSIST is not trusted: a symlink planted as the temp file must not be
    // written through (to a slot's or the ESP's device, by os-init as PID 1).
    // A leftover is removed (a link is removed, not what it names) and the
    // file made afresh with O_EXCL, which never follows a link.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove the leftover", &tmp)(e));
        }
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    durable::rename_over(&tmp, path).map_err(io("rename to", path))
}

/// File name of the [`RescueNote`] under [`RECORD_DIR`].
pub const RESCUE_FILE: &str = "rescue";

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
    match small_file::read(&path, MAX_RECORD_BYTES) {
        Ok(Some(text)) => RescueNote::parse(&text)
            .map(Some)
            .map_err(|reason| RecordError::Corrupt { path, reason }),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(RecordError::Corrupt {
            path,
            reason: e.to_string(),
        }),
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
    fn a_symlink_planted_as_the_temp_file_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "the device").unwrap();
        fs::create_dir_all(dir.path().join(RECORD_DIR)).unwrap();
        let tmp = dir.path().join(RECORD_DIR).join(".slot-A.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let rec = SlotRecord::empty(Slot::A);
        write(dir.path(), &rec).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "the device");
        assert_eq!(read(dir.path(), Slot::A).unwrap(), rec);
    }

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
            verity: None,
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
        let text = fs::read_to_string(record_path(dir.path(), Slot::B)).unwrap();
        assert!(
            !text.contains("verity="),
            "no verity line when there is none"
        );
    }

    #[test]
    fn verity_parameters_round_trip_and_malformed_ones_make_the_record_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let arg = format!(
            "12288:{}:{}:{}",
            12288 * 4096,
            "ab".repeat(32),
            "cd".repeat(32)
        );
        let rec = SlotRecord {
            state: SlotState::Written,
            version: "2".into(),
            verity: Some(arg.clone()),
            ..SlotRecord::empty(Slot::A)
        };
        write(dir.path(), &rec).unwrap();
        let back = read(dir.path(), Slot::A).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.verity().unwrap().unwrap().data_blocks, 12288);
        // A tree that does not follow the data, a short hash, trailing junk.
        for bad in [
            format!("12288:4096:{}:{}", "ab".repeat(32), "cd".repeat(32)),
            format!("12288:{}:abcd:{}", 12288 * 4096, "cd".repeat(32)),
            format!("{arg}:1"),
        ] {
            let invalid = SlotRecord {
                verity: Some(bad.clone()),
                ..rec.clone()
            };
            assert!(matches!(
                write(dir.path(), &invalid),
                Err(RecordError::Invalid { .. })
            ));
            fs::write(
                record_path(dir.path(), Slot::A),
                format!("slot=A\nstate=written\nverity={bad}\n"),
            )
            .unwrap();
            let err = read(dir.path(), Slot::A).unwrap_err();
            assert!(err.to_string().contains("invalid verity"), "{err}");
        }
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
    fn a_huge_record_or_rescue_note_is_corrupt_and_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ab")).unwrap();
        // A corrupt PERSIST: 64 GiB of zeros (sparse), which read whole would
        // exhaust memory; refused after its first 64 KiB.
        for path in [record_path(dir.path(), Slot::B), rescue_path(dir.path())] {
            fs::File::create(&path).unwrap().set_len(64 << 30).unwrap();
        }
        let e = read(dir.path(), Slot::B).unwrap_err();
        assert!(
            matches!(&e, RecordError::Corrupt { reason, .. } if reason.contains("larger than")),
            "{e}"
        );
        let e = read_rescue(dir.path()).unwrap_err();
        assert!(matches!(e, RecordError::Corrupt { .. }), "{e}");
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
