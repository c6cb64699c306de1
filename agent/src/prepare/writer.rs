//! Slot writes on their own thread, so decompressing and hashing the next
//! buffer overlaps writing the previous one (what `zstd -dc | dd` gets from
//! being two processes).
//!
//! Two reusable buffers circulate between the download thread, which fills
//! them (the decoder writes each frame straight into one, see
//! [`Writer::block`]), and this thread, which writes them and hands them
//! back; memory stays at `BUFFERS * BUF` whatever the image size. Buffers are written in the
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

/// Image bytes per buffer: large writes keep an `O_DIRECT` queue busy.
const BUF: usize = 4 << 20;
/// One being filled while the other is written. A frame decodes straight
/// into its buffer, so this is all the image data in memory on the way to
/// the slot (a third buffer, queued, bought no measurable speed and cost
/// 4 MiB of the agent's peak RSS: docs/decisions.md, "Write path memory").
const BUFFERS: usize = 2;

struct Block {
    storage: Box<[u8]>,
    /// Index of the first `ALIGN`-aligned byte of `storage`.
    base: usize,
    /// Slot offset of the first data byte.
    offset: u64,
    len: usize,
    /// Tell the read-back about everything up to the end of this block.
    commit: bool,
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
    fn new() -> Block {
        let storage = vec![0; BUF + ALIGN as usize].into_boxed_slice();
        let base = storage.as_ptr().align_offset(ALIGN as usize);
        Block {
            storage,
            base,
            offset: 0,
            len: 0,
            commit: false,
            save: None,
        }
    }

    fn reset(&mut self, offset: u64) {
        (self.offset, self.len, self.commit, self.save) = (offset, 0, false, None);
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
        &mut self.storage[from..self.base + BUF]
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
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        device: &'scope SlotDevice,
        commits: Commits,
    ) -> Writer<'scope> {
        let (full, queued) = mpsc::sync_channel::<Block>(BUFFERS);
        let (give_back, empty) = mpsc::sync_channel::<Block>(BUFFERS);
        for _ in 1..BUFFERS {
            // Cannot fail: the receiver is alive and the channel has room.
            let _ = give_back.send(Block::new());
        }
        let thread = scope.spawn(move || {
            for mut block in queued {
                device.write_aligned(block.data(), block.offset)?;
                if block.commit {
                    commits.commit(block.end_offset());
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
            current: Block::new(),
            full: Some(full),
            empty,
            thread: Some(thread),
        }
    }

    /// Drops what is not sent yet and continues at slot offset `pos` (the
    /// start, or a retry's checkpoint).
    pub fn restart(&mut self, pos: u64) {
        self.current.reset(pos);
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
        (&mut b.storage[start..b.base + BUF], len)
    }

    /// `n` bytes of [`space`](Self::space) were filled.
    pub fn filled(&mut self, n: usize) {
        self.current.len += n;
    }

    /// Writes the block once it is full.
    pub fn send_if_full(&mut self) -> Result<(), PrepareError> {
        if self.current.space().is_empty() {
            return self.send(false);
        }
        Ok(())
    }

    /// Everything so far is final: write it, then let the read-back have
    /// it; with `save`, once written, sync the slot and save that checkpoint.
    pub fn commit_saving(&mut self, save: Option<Save>) -> Result<(), PrepareError> {
        self.current.save = save;
        self.send(true)
    }

    /// Writes the rest and waits for every write to return.
    pub fn finish(mut self) -> Result<(), PrepareError> {
        if self.current.len > 0 {
            self.send(false)?;
        }
        self.full = None;
        self.join()
    }

    fn send(&mut self, commit: bool) -> Result<(), PrepareError> {
        let Ok(mut next) = self.empty.recv() else {
            return self.stopped();
        };
        next.reset(self.current.end_offset());
        let mut block = std::mem::replace(&mut self.current, next);
        block.commit = commit;
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
            let mut w = Writer::spawn(s, &device, rb.commits());
            fill(&mut w, &data[..1_000_001], 0, &commits);
            // A failed attempt leaves garbage past the first checkpoint...
            let garbage = vec![0xEE; len];
            fill(&mut w, &garbage[..BUF + 50], 1_000_001, &[]);
            // ...which the retry, queued behind it, overwrites.
            w.restart(1_000_001);
            fill(&mut w, &data, 1_000_001, &commits);
            w.finish().unwrap();
            device.sync().unwrap();
            rb.finish(len as u64).unwrap()
        });
        assert_eq!(hash, blake3::hash(&data));
        assert_eq!(std::fs::read(&path).unwrap()[..len], data[..]);
    }
}
