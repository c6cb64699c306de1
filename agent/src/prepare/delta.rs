//! Delta downloads (docs/bundle.md, "Delta"): before anything is fetched,
//! find the chunks of the new image that the node already holds, so only
//! the others travel over the network.
//!
//! - The target slot (the inactive one) is hashed chunk by chunk at the new
//!   image's chunk offsets: a chunk that already reads as the manifest's is
//!   kept in place (a download that stopped, the same image prepared again,
//!   or a previous image sharing the chunk).
//! - The running slot is hashed at every `chunk_size` stride of its
//!   recorded image: a stride whose BLAKE3 is a chunk the new image needs is
//!   copied from there. It is opened read-only, never exclusively (it is
//!   mounted), and never written; the raw partition is read, the same bytes
//!   dm-verity checks at boot.
//! - Everything else is fetched, in runs of consecutive frames, each run one
//!   HTTP Range (or registry blob Range) request; runs separated by local
//!   chunks whose frames total at most [`GAP`] are fetched as one.
//!
//! Nothing local is trusted: a copied chunk is hashed again as it is copied
//! and fetched instead when it no longer matches, and the whole slot is read
//! back from the medium and compared with the image digest at the end, as
//! for a full download. Memory: one [`READ`] buffer while scanning, and a
//! few bytes per chunk of the plan.

use super::slot::SlotDevice;
use super::writer::Writer;
use super::PrepareError;
use crate::progress::{Phase, Progress};
use bootctl::Slot;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use wire::manifest::{Chunk, Manifest};

/// Local chunks between two runs to fetch whose frames total at most this
/// many bytes are fetched too, so the two runs become one request: a
/// request costs a round trip, a few hundred KiB cost less on most links.
pub const GAP: u64 = 256 << 10;
/// Bytes read at a time while scanning.
const READ: usize = 1 << 20;

/// Where chunk k of the new image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The target slot holds it at its own offset already.
    InPlace,
    /// The running slot holds it at this offset.
    Copy(u64),
    Fetch,
}

/// One [`From`] per chunk of the manifest, from the first chunk not yet
/// done on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    first: usize,
    from: Vec<From>,
}

/// What a plan saves, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub in_place: usize,
    pub copied: usize,
    pub fetched: usize,
    /// Compressed bytes of the frames to fetch.
    pub fetch_bytes: u64,
    /// Range requests the fetched runs take (before any retry).
    pub requests: usize,
}

impl Plan {
    /// The plan for chunks `first..` of `m`: `in_place[k - first]` says the
    /// target holds chunk k, `found` maps a chunk digest to an offset of the
    /// running slot that holds it.
    pub fn new(
        m: &Manifest,
        first: usize,
        in_place: &[bool],
        found: &HashMap<[u8; 32], u64>,
    ) -> Plan {
        let from = m.chunks[first.min(m.chunks.len())..]
            .iter()
            .zip(in_place.iter().chain(std::iter::repeat(&false)))
            .map(|(c, &here)| match found.get(&c.digest) {
                _ if here => From::InPlace,
                Some(&at) => From::Copy(at),
                None => From::Fetch,
            })
            .collect();
        let mut plan = Plan { first, from };
        plan.coalesce(m);
        plan
    }

    /// Fetches the local chunks between two runs to fetch when their frames
    /// are small ([`GAP`]).
    fn coalesce(&mut self, m: &Manifest) {
        let mut last_fetch: Option<usize> = None;
        for i in 0..self.from.len() {
            if self.from[i] != From::Fetch {
                continue;
            }
            if let Some(prev) = last_fetch.filter(|&p| p + 1 < i) {
                let gap: u64 = (prev + 1..i).map(|j| m.chunks[self.first + j].zsize).sum();
                if gap <= GAP {
                    self.from[prev + 1..i].fill(From::Fetch);
                }
            }
            last_fetch = Some(i);
        }
    }

    /// Where chunk `k` comes from; `None` past the last chunk.
    pub fn get(&self, k: usize) -> Option<From> {
        self.from.get(k.checked_sub(self.first)?).copied()
    }

    /// Chunk `k` turned out not to be usable locally.
    pub fn fetch_instead(&mut self, k: usize) {
        if let Some(f) = k.checked_sub(self.first).and_then(|i| self.from.get_mut(i)) {
            *f = From::Fetch;
        }
    }

    /// End (exclusive) of the run of chunks to fetch that starts at `k`.
    pub fn run_end(&self, k: usize) -> usize {
        let start = k.saturating_sub(self.first);
        let len = self.from[start..]
            .iter()
            .take_while(|f| **f == From::Fetch)
            .count();
        k + len
    }

    /// Whether anything comes from the local slots.
    pub fn uses_local(&self) -> bool {
        self.from.iter().any(|f| *f != From::Fetch)
    }

    pub fn summary(&self, m: &Manifest) -> Summary {
        let mut s = Summary::default();
        for (i, f) in self.from.iter().enumerate() {
            match f {
                From::InPlace => s.in_place += 1,
                From::Copy(_) => s.copied += 1,
                From::Fetch => {
                    s.fetched += 1;
                    s.fetch_bytes += m.chunks[self.first + i].zsize;
                    if i == 0 || self.from[i - 1] != From::Fetch {
                        s.requests += 1;
                    }
                }
            }
        }
        s
    }
}

/// The running slot, read-only: where chunks are copied from.
#[derive(Debug)]
pub struct LocalSlot {
    pub slot: Slot,
    pub path: PathBuf,
    file: File,
    /// Bytes worth scanning: its recorded image, within the device.
    pub size: u64,
    /// The chunks of the image its record names, from the manifest saved
    /// when that image was verified ([`load_index`]): the scan looks them
    /// up instead of reading the slot.
    pub index: Option<Vec<Chunk>>,
}

impl LocalSlot {
    /// Opens `path` read-only; `image_size` is the size of the image its
    /// record names (else the size of the image about to be written).
    pub fn open(slot: Slot, path: &Path, image_size: u64) -> io::Result<LocalSlot> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let device = if meta.file_type().is_block_device() {
            super::blockdev::block_device_size(&file)?
        } else {
            meta.len()
        };
        Ok(LocalSlot {
            slot,
            path: path.to_path_buf(),
            file,
            size: image_size.min(device),
            index: None,
        })
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// What a delta-capable download has besides the target: the running slot
/// (when it can be read).
#[derive(Debug)]
pub struct Delta {
    pub running: Option<LocalSlot>,
}

/// Where the manifest of the image a slot holds is kept, beside its record.
pub use bootctl::record::index_path;

/// Saves `m`, the manifest of the image just verified in `slot`, so the next
/// delta can look the slot's chunks up instead of reading it. A failure
/// costs the next delta a scan of the slot, nothing else.
pub fn save_index(persist: &Path, slot: Slot, m: &Manifest) {
    let path = index_path(persist, slot);
    if let Err(e) = bootctl::record::write_atomic(&path, m.to_json().as_bytes()) {
        log::warn!("slot {slot}: its chunk index was not saved ({e}); the next delta reads the slot instead");
    }
}

/// Forgets `slot`'s index: the slot is about to be rewritten.
pub fn forget_index(persist: &Path, slot: Slot) -> Result<(), PrepareError> {
    let path = index_path(persist, slot);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // A stale index left behind would describe the old image: refuse to
        // go on rather than leave it (the slot is not touched yet).
        Err(source) => Err(PrepareError::Record {
            slot,
            source: bootctl::record::RecordError::Io {
                op: "remove",
                path,
                source,
            },
        }),
    }
}

/// The chunks of the image `rec` says its slot holds, from the saved
/// manifest; `None` (the slot is scanned) when there is none, it cannot be
/// read or parsed, or it describes another image than the record does.
pub fn load_index(persist: &Path, rec: &bootctl::record::SlotRecord) -> Option<Vec<Chunk>> {
    let slot = rec.slot;
    if rec.digest.is_empty() {
        return None;
    }
    let path = index_path(persist, slot);
    let text = match bootctl::small_file::read(&path, wire::manifest::MAX_MANIFEST_BYTES) {
        Ok(text) => text?,
        Err(e) => {
            log::warn!("{}: {e}; scanning slot {slot}", path.display());
            return None;
        }
    };
    let m = match Manifest::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("{}: {e}; scanning slot {slot}", path.display());
            return None;
        }
    };
    if m.image_digest.to_string() != rec.digest || m.image_size != rec.size {
        log::warn!(
            "{}: describes {} ({} bytes), the slot's record {} ({} bytes); scanning slot {slot}",
            path.display(),
            m.image_digest,
            m.image_size,
            rec.digest,
            rec.size
        );
        return None;
    }
    Some(m.chunks)
}

/// Hashes the target's chunks `first..` at their offsets and the running
/// slot at every chunk stride, and plans where each chunk comes from.
pub fn scan(
    m: &Manifest,
    first: usize,
    target: &SlotDevice,
    delta: &Delta,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Plan, PrepareError> {
    let chunks = &m.chunks[first.min(m.chunks.len())..];
    let target_bytes: u64 = chunks
        .iter()
        .filter(|c| c.offset + c.len <= target.size)
        .map(|c| c.len)
        .sum();
    let running_bytes = delta
        .running
        .as_ref()
        .filter(|r| r.index.is_none())
        .map_or(0, |r| r.size);
    progress.start_phase(Phase::Scanning, target_bytes + running_bytes);
    let mut buf = vec![0; READ];
    let mut in_place = Vec::with_capacity(chunks.len());
    for c in chunks {
        if c.offset + c.len > target.size {
            in_place.push(false);
            continue;
        }
        let read = |b: &mut [u8], at| target.read_exact_at(b, at);
        let digest = hash_range(read, &mut buf, c.offset, c.len, progress, cancel)
            .map_err(|e| target.io_error("read", Some(c.offset), e))?
            .ok_or(PrepareError::Cancelled { slot: target.slot })?;
        in_place.push(digest == c.digest);
    }
    let wanted: HashMap<[u8; 32], ()> = chunks
        .iter()
        .zip(&in_place)
        .filter(|(_, here)| !**here)
        .map(|(c, _)| (c.digest, ()))
        .collect();
    let mut found = HashMap::new();
    let running = delta.running.as_ref().filter(|_| !wanted.is_empty());
    if let Some((r, chunks)) = running.and_then(|r| Some((r, r.index.as_ref()?))) {
        // Its chunks as verified when it was written: nothing to read. A
        // chunk that no longer reads as its digest is caught by the copy's
        // own hash and fetched.
        for c in chunks.iter().filter(|c| c.offset + c.len <= r.size) {
            if wanted.contains_key(&c.digest) {
                found.entry(c.digest).or_insert(c.offset);
            }
        }
    } else if let Some(r) = running {
        #[cfg(debug_assertions)]
        fault::scanned(r);
        let mut at = 0;
        while at < r.size {
            let len = m.chunk_size.min(r.size - at);
            let read = |b: &mut [u8], off| r.read_exact_at(b, off);
            match hash_range(read, &mut buf, at, len, progress, cancel) {
                Ok(Some(d)) if wanted.contains_key(&d) => {
                    found.entry(d).or_insert(at);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(PrepareError::Cancelled { slot: target.slot }),
                // The running slot is only a source of chunks: what cannot
                // be read is downloaded.
                Err(e) => {
                    log::warn!(
                        "slot {} ({}): read at byte {at} failed ({e}); the rest of it is not used",
                        r.slot,
                        r.path.display()
                    );
                    break;
                }
            }
            at += len;
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(PrepareError::Cancelled { slot: target.slot });
    }
    #[cfg(debug_assertions)]
    if let Some(r) = &delta.running {
        fault::after_scan(r);
    }
    Ok(Plan::new(m, first, &in_place, &found))
}

/// Copies chunk `c` from byte `at` of the running slot into the slot
/// through `writer`, hashing what it copies. `Ok(false)`: the bytes are not
/// the chunk (or cannot be read), and the writer is back at the chunk's
/// start for the chunk to be fetched instead; what was already handed to
/// the writer is overwritten then, and was never committed.
pub fn copy_chunk(
    running: &LocalSlot,
    c: &Chunk,
    at: u64,
    writer: &mut Writer,
) -> Result<bool, PrepareError> {
    writer.restart(c.offset)?;
    let mut hasher = blake3::Hasher::new();
    let mut done = 0;
    while done < c.len {
        let space = writer.space();
        let n = (c.len - done).min(space.len() as u64) as usize;
        if let Err(e) = running.read_exact_at(&mut space[..n], at + done) {
            log::warn!(
                "slot {} ({}): read at byte {} failed: {e}",
                running.slot,
                running.path.display(),
                at + done
            );
            writer.restart(c.offset)?;
            return Ok(false);
        }
        hasher.update(&space[..n]);
        writer.filled(n);
        writer.send_if_full()?;
        done += n as u64;
    }
    if *hasher.finalize().as_bytes() != c.digest {
        writer.restart(c.offset)?;
        return Ok(false);
    }
    Ok(true)
}

/// BLAKE3 of `len` bytes at `offset`, read through `read` in `buf`-sized
/// pieces; `None` when cancelled.
fn hash_range(
    read: impl Fn(&mut [u8], u64) -> io::Result<()>,
    buf: &mut [u8],
    offset: u64,
    len: u64,
    progress: &Progress,
    cancel: &AtomicBool,
) -> io::Result<Option<[u8; 32]>> {
    let mut hasher = blake3::Hasher::new();
    let mut done = 0;
    while done < len {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = (len - done).min(buf.len() as u64) as usize;
        read(&mut buf[..n], offset + done)?;
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.add_bytes(n as u64);
    }
    Ok(Some(*hasher.finalize().as_bytes()))
}

/// A fault seam for tests (debug builds only): the running slot's medium
/// garbles one byte after the scan has hashed it, as a disk that rots or a
/// stale chunk index would, so a test can check that the copy's own hash
/// catches it.
#[cfg(debug_assertions)]
#[doc(hidden)]
pub mod fault {
    use super::LocalSlot;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// The running slot file and the offset of the byte to flip once it has
    /// been scanned. One shot: taken when it fires. Keyed by path, so tests
    /// running in parallel do not meet it.
    pub static FLIP_AFTER_SCAN: Mutex<Option<(PathBuf, u64)>> = Mutex::new(None);

    /// Every running slot the scan read through, by path.
    pub static SCANNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn scanned(running: &LocalSlot) {
        let mut scanned = SCANNED.lock().unwrap_or_else(|p| p.into_inner());
        scanned.push(running.path.clone());
    }

    pub(super) fn after_scan(running: &LocalSlot) {
        let mut armed = FLIP_AFTER_SCAN.lock().unwrap_or_else(|p| p.into_inner());
        let Some(at) = armed
            .as_ref()
            .filter(|(path, _)| *path == running.path)
            .map(|(_, at)| *at)
        else {
            return;
        };
        *armed = None;
        crate::prepare::slot::fault::flip_byte(&running.path, at, running.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::manifest::Manifest;

    /// A manifest of `n` chunks of 100 bytes, chunk k's content `[k; 100]`,
    /// each frame `zsize[k]` bytes.
    fn manifest(zsizes: &[u64]) -> Manifest {
        let frames = zsizes
            .iter()
            .enumerate()
            .map(|(k, &z)| (*blake3::hash(&[k as u8; 100]).as_bytes(), z));
        let size = zsizes.len() as u64 * 100;
        Manifest::from_chunks(
            "os-2",
            "2",
            "os-2.img.zst",
            size,
            wire::Digest::blake3([0; 32]),
            100,
            frames,
        )
    }

    fn digest(k: u8) -> [u8; 32] {
        *blake3::hash(&[k; 100]).as_bytes()
    }

    #[test]
    fn in_place_wins_over_copy_and_the_rest_is_fetched_in_runs() {
        let m = manifest(&[GAP + 1; 6]);
        let found = HashMap::from([(digest(1), 700), (digest(2), 0), (digest(4), 100)]);
        let plan = Plan::new(&m, 0, &[false, true, false, false, false, false], &found);
        let want = [
            From::Fetch,
            From::InPlace,
            From::Copy(0),
            From::Fetch,
            From::Copy(100),
            From::Fetch,
        ];
        assert_eq!(
            (0..6).map(|k| plan.get(k).unwrap()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(plan.get(6), None);
        assert_eq!(
            (plan.run_end(0), plan.run_end(3), plan.run_end(5)),
            (1, 4, 6)
        );
        let s = plan.summary(&m);
        assert_eq!((s.in_place, s.copied, s.fetched, s.requests), (1, 2, 3, 3));
        assert_eq!(s.fetch_bytes, 3 * (GAP + 1));
        assert!(plan.uses_local());
    }

    #[test]
    fn small_local_gaps_between_fetched_runs_are_fetched_into_one_request() {
        // Chunks 1 and 2 are in place but their frames are small: fetched
        // with 0 and 3. Chunk 4 is local with a large frame and stays a gap;
        // chunk 6, local, is after the last run.
        let m = manifest(&[10, GAP / 2, GAP / 2, 10, GAP + 1, 10, 10]);
        let found: HashMap<_, _> = [4, 6].into_iter().map(|k| (digest(k), 0)).collect();
        let in_place = [false, true, true, false, false, false, false];
        let mut plan = Plan::new(&m, 0, &in_place, &found);
        assert_eq!(plan.run_end(0), 4, "{plan:?}");
        assert_eq!(plan.get(4), Some(From::Copy(0)));
        assert_eq!(plan.run_end(5), 6);
        assert_eq!(plan.get(6), Some(From::Copy(0)));
        assert_eq!(plan.summary(&m).requests, 2);
        // A copy that fails its check joins the run before it.
        plan.fetch_instead(4);
        assert_eq!(plan.run_end(0), 6);
    }

    #[test]
    fn a_plan_starts_at_the_first_chunk_not_done() {
        let m = manifest(&[5; 4]);
        let plan = Plan::new(&m, 2, &[true], &HashMap::new());
        assert_eq!(
            (plan.get(1), plan.get(2), plan.get(3)),
            (None, Some(From::InPlace), Some(From::Fetch))
        );
        let mut all_fetched = Plan::new(&m, 0, &[], &HashMap::new());
        assert!(!all_fetched.uses_local());
        all_fetched.fetch_instead(9);
        assert_eq!(all_fetched.run_end(0), 4);
    }
}
