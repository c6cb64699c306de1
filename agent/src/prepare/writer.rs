//! Slot writes on their own thread, so decompressing and hashing the next
//! buffer overlaps writing the previous one (what `zstd -dc | dd` gets from
//! being two processes).
//!
//! Two reusable buffers circulate between the download thread, which fills
//! them (the decoder writes each frame straight into one, see
//! [`Writer::block`]), and this thread, which writes them and hands them
//! back; memory stays at `BUFFERS` blocks whatever the image size. Buffers are written in the
//! order they were filled, and a read-back commit travels with the buffer that
//! completes the committed range: the read-back is told about a range only
//! after every write in it has returned, and a resumed download's rewrites
//! queue behind what the failed attempt left in flight.
//!
//! Each buffer holds its data at a memory address congruent to its slot
//! offset modulo [`ALIGN`], so the aligned middle of every write can go to
//! the device with `O_DIRECT` (see [`SlotDevice::write_aligned`]).

use super::slot::{Commits, SlotDevice, ALIGN};
use super::PrepareError;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

/// Image bytes per buffer, at least: two 1 MiB frames (os-image's default
/// chunk) to a write. Larger writes are faster on an `O_DIRECT` queue, but
/// every byte of a block is touched once the block fills, so this is most
/// of the agent's memory: 2 MiB blocks and the read-back's 2 x 3 MiB keep a
/// prepare under 16 MiB RSS (docs/decisions.md, "Write path speed").
const MIN_BUF: usize = 2 << 20;
/// At most: a chunk up to this size decodes straight into a block; a
/// larger one goes through the decoder's window.
const MAX_BUF: usize = 4 << 20;
/// One being filled while the other is written. A frame decodes straight
/// into its buffer, so this is all the image data in memory on the way to
/// the slot (a third buffer, queued, bought no measurable speed and cost
/// a block of the agent's peak RSS: docs/decisions.md, "Write path memory").
const BUFFERS: usize = 2;

/// Block size for a bundle of `chunk_size` chunks (`None`: no manifest):
/// room for a whole frame, so it decodes in place.
pub fn block_size(chunk_size: Option<u64>) -> usize {
    let chunk = chunk_size.unwrap_or(0).min(MAX_BUF as u64) as usize;
    let align = ALIGN as usize;
    (chunk.div_ceil(align) * align).clamp(MIN_BUF, MAX_BUF)
}

struct Block {
    storage: Box<[u8]>,
    /// Data bytes it holds when full.
    cap: usize,
    /// Index of the first `ALIGN`-aligned byte of `storage`.
    base: usize,
    /// Slot offset of the first data byte.
    offset: u64,
    len: usize,
    /// Once this block is written, tell the read-back that everything
    /// before this slot offset is final (at most the block's end).
    commit: Option<u64>,
    /// Once this block is written: sync the slot, then save this checkpoint.
    save: Option<Save>,
}

/// A download checkpoint to save once everything before it is on the medium
/// (resume.rs): the file and its text.
pub struct Save {
    pub path: PathBuf,
    pub text: String,
}

impl Block {
    fn new(cap: usize) -> Block {
        let storage = vec![0; cap + ALIGN as usize].into_boxed_slice();
        let base = storage.as_ptr().align_offset(ALIGN as usize);
        Block {
            storage,
            cap,
            base,
            offset: 0,
            len: 0,
            commit: None,
            save: None,
        }
    }

    fn reset(&mut self, offset: u64) {
        (self.offset, self.len, self.commit, self.save) = (offset, 0, None, None);
    }

    fn start(&self) -> usize {
        self.base + (self.offset % ALIGN) as usize
    }

    fn end_offset(&self) -> u64 {
        self.offset + self.len as u64
    }

    fn data(&self) -> &[u8] {
        &self.storage[self.start()..self.start() + self.len]
    }

    /// Free room; a full block ends at an aligned slot offset.
    fn space(&mut self) -> &mut [u8] {
        let from = self.start() + self.len;
        &mut self.storage[from..self.base + self.cap]
    }
}

/// The download thread's end: the block being filled, and the queues.
pub struct Writer<'scope> {
    device: &'scope SlotDevice,
    current: Block,
    full: Option<SyncSender<Block>>,
    empty: Receiver<Block>,
    thread: Option<ScopedJoinHandle<'scope, Result<(), PrepareError>>>,
}

impl<'scope> Writer<'scope> {
    /// Starts the writing thread with blocks of `block_size` bytes
    /// ([`block_size`]).
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        device: &'scope SlotDevice,
        commits: Commits,
        block_size: usize,
    ) -> Writer<'scope> {
        let (full, queued) = mpsc::sync_channel::<Block>(BUFFERS);
        let (give_back, empty) = mpsc::sync_channel::<Block>(BUFFERS);
        for _ in 1..BUFFERS {
            // Cannot fail: the receiver is alive and the channel has room.
            let _ = give_back.send(Block::new(block_size));
        }
        let thread = scope.spawn(move || {
            for mut block in queued {
                device.write_aligned(block.data(), block.offset)?;
                if let Some(pos) = block.commit {
                    commits.commit(pos);
                }
                if let Some(save) = block.save.take() {
                    // The checkpoint claims everything before it is on the
                    // medium: sync first. A checkpoint that cannot be saved
                    // costs a longer download after a restart, nothing else.
                    device.sync()?;
                    if let Err(e) = bootctl::record::write_atomic(&save.path, save.text.as_bytes())
                    {
                        log::warn!("download checkpoint not saved: {e}");
                    }
                }
                // Fails only once the download thread has stopped.
                let _ = give_back.send(block);
            }
            Ok(())
        });
        Writer {
            device,
            current: Block::new(block_size),
            full: Some(full),
            empty,
            thread: Some(thread),
        }
    }

    /// Drops what is not committed yet and continues at slot offset `pos`
    /// (a retry's checkpoint, which is the last commit, or a later chunk the
    /// download skips). Committed bytes are never dropped: they are written
    /// with the block they are in, which goes on filling when `pos` is where
    /// they end.
    pub fn restart(&mut self, pos: u64) -> Result<(), PrepareError> {
        let b = &mut self.current;
        let Some(commit) = b.commit else {
            b.reset(pos);
            return Ok(());
        };
        debug_assert!(
            pos >= commit,
            "restart at {pos} before the commit at {commit}"
        );
        b.len = commit.saturating_sub(b.offset) as usize;
        if b.end_offset() == pos {
            return Ok(());
        }
        if b.len == 0 {
            // Nothing to write before `pos`: the commit waits in the
            // block until one that starts there is written.
            b.offset = pos;
            return Ok(());
        }
        self.send()?;
        self.current.reset(pos);
        Ok(())
    }

    /// Room to decompress into, at the current slot offset.
    pub fn space(&mut self) -> &mut [u8] {
        self.current.space()
    }

    /// The block being filled, from its first byte to its end, and how much
    /// of it is filled: a frame decodes straight into it (the block holds
    /// the frame so far, as zstd's stable output buffer must).
    pub fn block(&mut self) -> (&mut [u8], usize) {
        let b = &mut self.current;
        let (start, len) = (b.start(), b.len);
        (&mut b.storage[start..b.base + b.cap], len)
    }

    /// `n` bytes of [`space`](Self::space) were filled.
    pub fn filled(&mut self, n: usize) {
        self.current.len += n;
    }

    /// Writes the block once it is full.
    pub fn send_if_full(&mut self) -> Result<(), PrepareError> {
        if self.current.space().is_empty() {
            return self.send();
        }
        Ok(())
    }

    /// Everything so far is final: once written, the read-back may have it.
    /// The block goes on filling until it is full (several 1 MiB frames to
    /// one 4 MiB write), unless there is a `save`: then it is written now,
    /// the slot synced and that checkpoint saved.
    pub fn commit_saving(&mut self, save: Option<Save>) -> Result<(), PrepareError> {
        self.current.commit = Some(self.current.end_offset());
        if save.is_some() || self.current.space().is_empty() {
            self.current.save = save;
            return self.send();
        }
        Ok(())
    }

    /// Writes the rest and waits for every write to return.
    pub fn finish(mut self) -> Result<(), PrepareError> {
        if self.current.len > 0 || self.current.commit.is_some() {
            self.send()?;
        }
        self.full = None;
        self.join()
    }

    fn send(&mut self) -> Result<(), PrepareError> {
        let Ok(mut next) = self.empty.recv() else {
            return self.stopped();
        };
        next.reset(self.current.end_offset());
        let block = std::mem::replace(&mut self.current, next);
        let sent = self.full.as_ref().map(|full| full.send(block).is_ok());
        match sent {
            Some(true) => Ok(()),
            _ => self.stopped(),
        }
    }

    /// The thread is gone: its error, which is never `Ok` here because the
    /// thread only ends early on a failed write.
    fn stopped(&mut self) -> Result<(), PrepareError> {
        self.join()?;
        let e = io::Error::other("the writer thread has stopped");
        Err(self.device.io_error("write", Some(self.current.offset), e))
    }

    /// The thread's result; it has stopped (or is told to by a closed queue).
    fn join(&mut self) -> Result<(), PrepareError> {
        self.full = None;
        match self.thread.take().map(ScopedJoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::slot::{Flags, ReadBack};
    use super::*;
    use crate::progress::Progress;
    use bootctl::Slot;

    /// Fills the writer from `data` (slot offsets `from..`), committing at
    /// every offset in `commits`.
    fn fill(w: &mut Writer, data: &[u8], from: usize, commits: &[usize]) {
        let mut pos = from;
        while pos < data.len() {
            let stop = commits.iter().copied().find(|&c| c > pos);
            let end = stop.unwrap_or(data.len()).min(data.len());
            let space = w.space();
            let n = space.len().min(end - pos);
            space[..n].copy_from_slice(&data[pos..pos + n]);
            w.filled(n);
            pos += n;
            if Some(pos) == stop {
                w.commit_saving(None).unwrap();
            } else {
                w.send_if_full().unwrap();
            }
        }
    }

    const BUF: usize = MIN_BUF;

    #[test]
    fn block_sizes_hold_a_whole_chunk_within_bounds() {
        assert_eq!(block_size(None), MIN_BUF);
        assert_eq!(block_size(Some(1 << 20)), MIN_BUF);
        assert_eq!(block_size(Some(3 << 20)), 3 << 20);
        assert_eq!(block_size(Some((3 << 20) + 1)), (3 << 20) + 4096);
        assert_eq!(block_size(Some(4 << 20)), MAX_BUF);
        assert_eq!(block_size(Some(8 << 20)), MAX_BUF);
    }

    #[test]
    fn writes_in_order_across_a_restart_and_reads_back_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let len = 2 * BUF + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
        std::fs::write(&path, vec![0u8; len + 100]).unwrap();
        let device = SlotDevice::open(Slot::B, &path).unwrap();
        let (progress, flags) = (Progress::default(), Flags::default());
        let commits = [1_000_001, BUF + 3, len];
        let hash = std::thread::scope(|s| {
            let rb = ReadBack::spawn(s, &device, &progress, &flags);
            let mut w = Writer::spawn(s, &device, rb.commits(), BUF);
            fill(&mut w, &data[..1_000_001], 0, &commits);
            // A failed attempt leaves garbage past the first checkpoint...
            let garbage = vec![0xEE; len];
            fill(&mut w, &garbage[..BUF + 50], 1_000_001, &[]);
            // ...which the retry, queued behind it, overwrites.
            w.restart(1_000_001).unwrap();
            fill(&mut w, &data, 1_000_001, &commits);
            w.finish().unwrap();
            device.sync().unwrap();
            rb.finish(len as u64).unwrap()
        });
        assert_eq!(hash, blake3::hash(&data));
        assert_eq!(std::fs::read(&path).unwrap()[..len], data[..]);
    }

    #[test]
    fn committed_bytes_survive_a_restart_and_a_skip_and_garbage_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let len = BUF + 3 * 4096 + 777;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // What a delta finds in place at 9000..20000 is already there.
        let mut medium = vec![0u8; len + 100];
        medium[9000..20_000].copy_from_slice(&data[9000..20_000]);
        std::fs::write(&path, &medium).unwrap();
        let device = SlotDevice::open(Slot::B, &path).unwrap();
        let (progress, flags) = (Progress::default(), Flags::default());
        let hash = std::thread::scope(|s| {
            let rb = ReadBack::spawn(s, &device, &progress, &flags);
            let mut w = Writer::spawn(s, &device, rb.commits(), BUF);
            // Two frames committed, neither filling the block: not written yet.
            fill(&mut w, &data[..5000], 0, &[1000, 5000]);
            // A failed attempt's bytes after the commit...
            fill(&mut w, &[0xEE; 3000], 5000, &[]);
            // ...are dropped by the retry at the commit; the committed ones stay.
            w.restart(5000).unwrap();
            fill(&mut w, &data[..9000], 5000, &[9000]);
            // The chunk at 9000..20000 is in place: skipped, only committed.
            w.restart(20_000).unwrap();
            w.commit_saving(None).unwrap();
            fill(&mut w, &data, 20_000, &[len]);
            w.finish().unwrap();
            device.sync().unwrap();
            rb.finish(len as u64).unwrap()
        });
        assert_eq!(std::fs::read(&path).unwrap()[..len], data[..]);
        assert_eq!(hash, blake3::hash(&data));
    }
}
