//! The two A/B env copies on a mounted ESP: load, repair, and commit.
//!
//! Crash-safe ordering (DESIGN.md §4): GRUB rewrites these files as raw sectors,
//! ignoring any filesystem journal, so Linux must never move them either. A
//! commit therefore opens each existing file read-write (no truncate, no rename,
//! never a size change), writes the new block at offset 0, fsyncs, reads it back
//! and compares, and does copy 1 completely before touching copy 2. A power cut
//! at any point leaves at least one copy holding either the old or the new state,
//! and GRUB prefers copy 1, which is always written first.
//!
//! All operations hold an exclusive flock on the ESP directory, so two writers
//! (agent and CLI, say) cannot interleave their copy-1/copy-2 sequences.

use crate::durable;
use crate::envblk;
use crate::grub_model::Source;
use crate::small_file;
use crate::state::{AbState, Slot, StateError, TransitionError};
use crate::sys;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the copies live, relative to the ESP root (the grub.cfg uses the same).
pub const COPY_PATHS: [&str; 2] = ["ab1/env", "ab2/env"];

/// Largest copy read: 64 times the 1 KiB block `grub-editenv` (and `bootctl init`) creates.
/// A larger file is not taken for an env block and never read whole: it is unreadable, GRUB
/// and readers use the other copy, and a write refuses until it is removed (it cannot be
/// rewritten in place at a block's size).
pub const MAX_COPY_SIZE: u64 = 64 << 10;

/// Smallest block a repair may rebuild in place: signature, warning line and
/// room for the four variables.
const MIN_REPAIR_SIZE: usize = envblk::SIGNATURE.len() + envblk::WARNING.len() + 64;

#[derive(Debug)]
pub enum StoreError {
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Neither copy holds a usable state; GRUB boots the build-time default.
    BothInvalid {
        dir: PathBuf,
        problems: [CopyProblem; 2],
    },
    /// `init` found a usable state and was not forced.
    AlreadyInitialized { dir: PathBuf, state: AbState },
    /// The state machine refused the change.
    Transition(TransitionError),
    /// The file cannot be rewritten in place (wrong size, would grow).
    NotInPlace { path: PathBuf, reason: String },
    /// What was read back after the write is not what was written.
    VerifyFailed { path: PathBuf },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            StoreError::BothInvalid { dir, problems } => write!(
                f,
                "no usable A/B state in {}: copy 1: {}; copy 2: {} (GRUB boots its build-time \
                 default; `bootctl --esp {} init --force --active SLOT` rewrites both copies)",
                dir.display(),
                problems[0],
                problems[1],
                dir.display()
            ),
            StoreError::AlreadyInitialized { dir, state } => write!(
                f,
                "{} already holds a valid A/B state (active {}); use --force to overwrite it",
                dir.display(),
                state.active
            ),
            StoreError::Transition(e) => write!(f, "{e}"),
            StoreError::NotInPlace { path, reason } => {
                write!(f, "cannot rewrite {} in place: {reason}", path.display())
            }
            StoreError::VerifyFailed { path } => write!(
                f,
                "read-back of {} differs from what was written (failing medium?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<TransitionError> for StoreError {
    fn from(e: TransitionError) -> Self {
        StoreError::Transition(e)
    }
}

/// Why one copy is not usable as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyProblem {
    Missing,
    Unreadable(String),
    Invalid(StateError),
}

impl std::fmt::Display for CopyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyProblem::Missing => f.write_str("missing"),
            CopyProblem::Unreadable(e) => write!(f, "unreadable ({e})"),
            CopyProblem::Invalid(e) => write!(f, "invalid ({e})"),
        }
    }
}

/// One copy as read from disk.
#[derive(Debug, Clone)]
pub struct CopyRead {
    pub path: PathBuf,
    pub bytes: Option<Vec<u8>>,
    /// The state GRUB would load from it.
    pub grub: Result<AbState, CopyProblem>,
    /// Whether a writer can update it in place (each variable exactly once).
    pub strict: bool,
}

/// Both copies, read under the lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub copies: [CopyRead; 2],
}

impl Snapshot {
    /// The state GRUB boots from: copy 1 if usable, else copy 2.
    pub fn chosen(&self) -> Option<(AbState, Source)> {
        match (&self.copies[0].grub, &self.copies[1].grub) {
            (Ok(s), _) => Some((*s, Source::Copy1)),
            (Err(_), Ok(s)) => Some((*s, Source::Copy2)),
            _ => None,
        }
    }

    /// True when both copies hold `state` in rewritable form.
    pub fn is_clean(&self, state: &AbState) -> bool {
        self.copies
            .iter()
            .all(|c| c.strict && c.grub.as_ref() == Ok(state))
    }

    fn problems(&self) -> [CopyProblem; 2] {
        [0, 1].map(|i| {
            self.copies[i]
                .grub
                .clone()
                .err()
                .unwrap_or(CopyProblem::Missing)
        })
    }
}

/// What `status` found (and fixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: AbState,
    pub source: Source,
    /// A copy was invalid or stale and has been rewritten from the chosen state.
    pub repaired: bool,
}

/// A mounted ESP holding the two copies.
#[derive(Debug, Clone)]
pub struct Esp {
    dir: PathBuf,
}

impl Esp {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Esp { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn copy_path(&self, index: usize) -> PathBuf {
        self.dir.join(COPY_PATHS[index])
    }

    fn lock(&self) -> Result<File, StoreError> {
        let dir = File::open(&self.dir).map_err(|e| io_err("open ESP directory", &self.dir, e))?;
        sys::flock_exclusive(&dir).map_err(|e| io_err("lock ESP directory", &self.dir, e))?;
        Ok(dir)
    }

    /// Reads both copies without locking; for callers that only look.
    pub fn read(&self) -> Snapshot {
        Snapshot {
            copies: [0, 1].map(|i| read_copy(self.copy_path(i))),
        }
    }

    /// Creates (or, with `force`, overwrites) both copies holding a committed
    /// `active` slot. Existing files keep their size and place on disk.
    pub fn init(&self, active: Slot, force: bool) -> Result<AbState, StoreError> {
        let _lock = self.lock()?;
        let snap = self.read();
        if let (Some((state, _)), false) = (snap.chosen(), force) {
            return Err(StoreError::AlreadyInitialized {
                dir: self.dir.clone(),
                state,
            });
        }
        let state = AbState::new(active);
        self.write_both(&snap, &state, true)?;
        Ok(state)
    }

    /// Loads the state GRUB would boot from. With `repair`, a copy that is
    /// invalid or disagrees is rewritten from it; a failed repair (a read-only
    /// ESP, say) is returned as the error.
    pub fn status(&self, repair: bool, default: Slot) -> Result<Status, StoreError> {
        let _lock = self.lock()?;
        let snap = self.read();
        let Some((state, source)) = snap.chosen() else {
            return Ok(Status {
                state: AbState::new(default),
                source: Source::Default,
                repaired: false,
            });
        };
        let repaired = repair && !snap.is_clean(&state);
        if repaired {
            self.write_both(&snap, &state, false)?;
        }
        Ok(Status {
            state,
            source,
            repaired,
        })
    }

    /// Applies `change` to the current state and commits the result to both
    /// copies (copy 1, then copy 2). Nothing is written when the change is
    /// refused, or when it changes nothing and both copies are already clean.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut AbState) -> Result<T, TransitionError>,
    ) -> Result<(T, AbState), StoreError> {
        let _lock = self.lock()?;
        let snap = self.read();
        let Some((mut state, _)) = snap.chosen() else {
            return Err(StoreError::BothInvalid {
                dir: self.dir.clone(),
                problems: snap.problems(),
            });
        };
        let out = change(&mut state)?;
        if !snap.is_clean(&state) {
            self.write_both(&snap, &state, false)?;
        }
        Ok((out, state))
    }

    fn write_both(&self, snap: &Snapshot, state: &AbState, fresh: bool) -> Result<(), StoreError> {
        for i in 0..2 {
            let bytes = build_copy(snap, i, state, fresh)?;
            let path = &snap.copies[i].path;
            match (&snap.copies[i].bytes, &snap.copies[i].grub) {
                (Some(_), _) => write_in_place(path, &bytes, state)?,
                // There, but not read (too large, an I/O error): neither rewritten in place
                // at an unknown size nor replaced behind GRUB's back.
                (None, Err(CopyProblem::Unreadable(why))) => {
                    return Err(StoreError::NotInPlace {
                        path: path.clone(),
                        reason: format!(
                            "it cannot be read ({why}); remove it and the next write creates it \
                             afresh"
                        ),
                    })
                }
                (None, _) => create_copy(path, &bytes)?,
            }
        }
        Ok(())
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn read_copy(path: PathBuf) -> CopyRead {
    let (bytes, grub, strict) = match small_file::read_bytes(&path, MAX_COPY_SIZE) {
        Ok(Some(bytes)) => {
            let grub = AbState::decode_grub(&bytes).map_err(CopyProblem::Invalid);
            let strict = AbState::decode_strict(&bytes).is_ok();
            (Some(bytes), grub, strict)
        }
        Ok(None) => (None, Err(CopyProblem::Missing), false),
        Err(e) => (None, Err(CopyProblem::Unreadable(e.to_string())), false),
    };
    CopyRead {
        path,
        bytes,
        grub,
        strict,
    }
}

/// The new bytes for copy `i`: its own block with the values replaced when it
/// is rewritable, else the other copy's block (repair from the valid one), else
/// a fresh block of the file's current size.
fn build_copy(
    snap: &Snapshot,
    i: usize,
    state: &AbState,
    fresh: bool,
) -> Result<Vec<u8>, StoreError> {
    let this = &snap.copies[i];
    let other = &snap.copies[1 - i];
    let size = this.bytes.as_ref().map_or(envblk::DEFAULT_SIZE, Vec::len);
    let base = match (&this.bytes, &other.bytes) {
        (Some(own), _) if this.strict && !fresh => own.clone(),
        (_, Some(theirs)) if other.strict && !fresh && theirs.len() == size => theirs.clone(),
        _ => fresh_block(size, &this.path)?,
    };
    let mut block = base;
    state
        .encode_into(&mut block)
        .map_err(|e| StoreError::NotInPlace {
            path: this.path.clone(),
            reason: e.to_string(),
        })?;
    Ok(block)
}

/// A `grub-editenv create` block stretched or kept to `size` bytes.
fn fresh_block(size: usize, path: &Path) -> Result<Vec<u8>, StoreError> {
    if size < MIN_REPAIR_SIZE {
        return Err(StoreError::NotInPlace {
            path: path.to_path_buf(),
            reason: format!("the file is {size} bytes, too small for an env block"),
        });
    }
    let mut block = vec![b'#'; size];
    let header = envblk::create();
    let keep = envblk::SIGNATURE.len() + envblk::WARNING.len();
    block[..keep].copy_from_slice(&header[..keep]);
    Ok(block)
}

/// Rewrites an existing copy in place: same inode, same size, same blocks.
fn write_in_place(path: &Path, bytes: &[u8], state: &AbState) -> Result<(), StoreError> {
    // The block must carry exactly the state we mean to commit, in a form the
    // next writer can update in place again.
    if AbState::decode_strict(bytes).as_ref() != Ok(state) {
        return Err(StoreError::NotInPlace {
            path: path.to_path_buf(),
            reason: "the new block does not decode to the intended state".into(),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open for update", path, e))?;
    let len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    if len != bytes.len() as u64 {
        return Err(StoreError::NotInPlace {
            path: path.to_path_buf(),
            reason: format!("it is {len} bytes now, the new block is {}", bytes.len()),
        });
    }
    file.write_all_at(bytes, 0)
        .map_err(|e| io_err("write", path, e))?;
    file.sync_all().map_err(|e| io_err("fsync", path, e))?;
    verify(&file, path, bytes)
}

/// Creates a missing copy: write, fsync the file, fsync its directory.
fn create_copy(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    durable::create_dirs(dir).map_err(|e| io_err("create directory", dir, e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err("create", path, e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| io_err("write", path, e))?;
    file.sync_all().map_err(|e| io_err("fsync", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))?;
    verify(&file, path, bytes)
}

fn verify(file: &File, path: &Path, expected: &[u8]) -> Result<(), StoreError> {
    let mut back = vec![0u8; expected.len()];
    file.read_exact_at(&mut back, 0)
        .map_err(|e| io_err("read back", path, e))?;
    if back != expected {
        return Err(StoreError::VerifyFailed {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}
