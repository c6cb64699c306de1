//! The target slot: opened in place (never created, never truncated), sized,
//! written at offsets, and read back from the medium.
//!
//! Writes go to the device with `O_DIRECT` where the filesystem or device
//! allows it (aligned parts only): no copy into the page cache, no dirty
//! pages for the kernel to write back, and no cached copy of the image for a
//! read to return instead of the device's. The unaligned edges, and
//! everything on a filesystem without `O_DIRECT`, go through the page cache.
//!
//! The read-back runs on its own thread, trailing the download: every range
//! the download commits (a verified chunk, or a complete zstd frame) is
//! written back to the device (`sync_file_range`), dropped from the page
//! cache and read again (`O_DIRECT` where the writes were), so the hash
//! covers what the device returns rather than what is still in memory. Committed ranges are never rewritten (a
//! resumed download restarts at the last commit), so each byte is read back
//! once, in order, after its final write. After the final fsync the tail is
//! read back the same way. Hiding the read-back behind the download is what
//! keeps verification from doubling the time a prepare takes.

use super::blockdev;
use super::PrepareError;
use crate::progress::Progress;
use bootctl::Slot;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes written back and re-read per step.
const WINDOW: u64 = 8 << 20;
/// Read size of the read-back: each read waits for the device, behind the
/// download's writes, so fewer, larger ones help it keep up. 1.5 and 2 MiB
/// left the read-back 0.2-0.8 s behind at the end of a 1 GiB image on the
/// bench machine; 3 MiB kept up once the hash moved off the reading thread
/// (docs/decisions.md, "Write path memory" and "Write path speed").
const BLOCK: usize = 3 << 20;
/// One buffer being read while the other is hashed.
const READ_BUFFERS: usize = 2;

#[derive(Debug)]
pub struct SlotDevice {
    pub slot: Slot,
    pub path: PathBuf,
    pub size: u64,
    block: bool,
    file: File,
    /// An `O_DIRECT` descriptor for aligned writes, when the path allows one.
    direct: Option<File>,
}

impl SlotDevice {
    /// Opens `path` read-write without creating it: a mistyped device path
    /// must fail, not create a file. A block device is opened `O_EXCL`, which
    /// the kernel refuses while the device is mounted.
    pub fn open(slot: Slot, path: &Path) -> Result<SlotDevice, PrepareError> {
        let io = |op, e| slot_io(slot, path, op, None, e);
        let meta = std::fs::metadata(path).map_err(|e| io("stat", e))?;
        let block = meta.file_type().is_block_device();
        if !block && !meta.is_file() {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a block device or regular file",
            );
            return Err(io("open", e));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if block {
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(path).map_err(|e| {
            io(
                if block {
                    "open exclusively (mounted?)"
                } else {
                    "open"
                },
                e,
            )
        })?;
        let size = if block {
            blockdev::block_device_size(&file).map_err(|e| io("get size of", e))?
        } else {
            meta.len()
        };
        // Without O_EXCL: `file` already holds the exclusive claim.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(SlotDevice {
            slot,
            path: path.to_path_buf(),
            size,
            block,
            file,
            direct,
        })
    }

    /// Reads through the page cache (the delta scan; the read-back has its
    /// own reader).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), PrepareError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("write", Some(offset), e))?;
        #[cfg(debug_assertions)]
        fault::after_write(self, offset, buf.len() as u64);
        Ok(())
    }

    /// Writes `data` at `offset`, its aligned middle with `O_DIRECT` when
    /// `data` sits at an address congruent to `offset` modulo [`ALIGN`] (as
    /// the writer's buffers do). Falls back to the page cache where the
    /// descriptor refuses the direct write (`EINVAL`: alignment the device
    /// does not accept).
    pub fn write_aligned(&self, data: &[u8], offset: u64) -> Result<(), PrepareError> {
        let Some(direct) = &self.direct else {
            return self.write_at(data, offset);
        };
        let end = offset + data.len() as u64;
        let head = offset.next_multiple_of(ALIGN).min(end);
        let tail = (end / ALIGN * ALIGN).max(head);
        let (first, rest) = data.split_at((head - offset) as usize);
        let (middle, last) = rest.split_at((tail - head) as usize);
        self.write_at(first, offset)?;
        if middle.as_ptr() as u64 % ALIGN == 0 {
            match direct.write_all_at(middle, head) {
                #[cfg(debug_assertions)]
                Ok(()) => fault::after_write(self, head, middle.len() as u64),
                #[cfg(not(debug_assertions))]
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.write_at(middle, head)?,
                Err(e) => return Err(self.io_error("write", Some(head), e)),
            }
        } else {
            self.write_at(middle, head)?;
        }
        self.write_at(last, tail)
    }

    /// fsync: the data on the medium, and for a block device the device's
    /// write cache flushed.
    pub fn sync(&self) -> Result<(), PrepareError> {
        self.file
            .sync_all()
            .map_err(|e| self.io_error("fsync", None, e))
    }

    pub fn io_error(&self, op: &'static str, offset: Option<u64>, e: io::Error) -> PrepareError {
        slot_io(self.slot, &self.path, op, offset, e)
    }
}

fn slot_io(
    slot: Slot,
    path: &Path,
    op: &'static str,
    offset: Option<u64>,
    source: io::Error,
) -> PrepareError {
    PrepareError::Slot {
        slot,
        path: path.to_path_buf(),
        op,
        offset,
        source,
    }
}

/// State shared with the read-back thread.
#[derive(Debug, Default)]
pub struct Flags {
    /// Publish the position as the progress's byte count.
    pub report: AtomicBool,
    /// Give up without reading the rest.
    stop: AtomicBool,
    /// Bytes read back so far.
    done: AtomicU64,
}

/// Tells the read-back thread how far the slot is final; the writer thread
/// holds one.
pub struct Commits(Sender<u64>);

impl Commits {
    /// Everything before `pos` is final and may be read back.
    pub fn commit(&self, pos: u64) {
        // A send fails only when the thread has stopped on an error, which
        // `ReadBack::finish` reports.
        let _ = self.0.send(pos);
    }
}

/// Handle of the read-back thread.
pub struct ReadBack<'scope> {
    commits: Commits,
    thread: ScopedJoinHandle<'scope, Result<blake3::Hasher, PrepareError>>,
    stop: &'scope AtomicBool,
    done: &'scope AtomicU64,
}

impl<'scope> ReadBack<'scope> {
    /// Starts the thread. While `report` is set it publishes its position as
    /// the progress's byte count (the final "verifying" phase).
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        device: &'scope SlotDevice,
        progress: &'scope Progress,
        flags: &'scope Flags,
    ) -> ReadBack<'scope> {
        let (commits, rx) = mpsc::channel();
        let thread = scope.spawn(move || read_back(device, rx, progress, flags));
        ReadBack {
            commits: Commits(commits),
            thread,
            stop: &flags.stop,
            done: &flags.done,
        }
    }

    /// Everything before `pos` is final and may be read back.
    pub fn commit(&self, pos: u64) {
        self.commits.commit(pos);
    }

    /// Another handle for committing, for the thread that writes.
    pub fn commits(&self) -> Commits {
        Commits(self.commits.0.clone())
    }

    /// Reads back up to `size` (call after the final fsync, once every other
    /// [`Commits`] is dropped) and returns the hash of everything read back.
    pub fn finish(self, size: u64) -> Result<blake3::Hash, PrepareError> {
        self.commit(size);
        drop(self.commits);
        match self.thread.join() {
            Ok(result) => result.map(|h| h.finalize()),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Bytes read back so far.
    pub fn position(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the thread without waiting for the rest of the read-back.
    pub fn abort(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_back(
    device: &SlotDevice,
    commits: Receiver<u64>,
    progress: &Progress,
    flags: &Flags,
) -> Result<blake3::Hasher, PrepareError> {
    let mut reader = Reader::new(device);
    let mut target = 0;
    loop {
        let Ok(commit) = commits.recv() else {
            // `finish` closed the channel: read the unaligned tail too.
            reader.read_to(target, progress, flags)?;
            return Ok(reader.finish());
        };
        // Only the latest commit matters.
        target = commits.try_iter().last().unwrap_or(commit);
        reader.read_to(target / ALIGN * ALIGN, progress, flags)?;
    }
}

/// A fault seam for tests (debug builds only): the medium garbles one byte
/// after the write path wrote it, as a failing disk or a controller that
/// loses a write would, so a test can check that the read-back catches it.
#[cfg(debug_assertions)]
#[doc(hidden)]
pub mod fault {
    use super::SlotDevice;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Offset in the slot of the byte to flip once it has been written;
    /// `u64::MAX`: none. One shot: reset when it fires.
    pub static FLIP_AFTER_WRITE: AtomicU64 = AtomicU64::new(u64::MAX);

    pub(super) fn after_write(device: &SlotDevice, offset: u64, len: u64) {
        let at = FLIP_AFTER_WRITE.load(Ordering::Relaxed);
        if at < offset || at >= offset + len {
            return;
        }
        if FLIP_AFTER_WRITE
            .compare_exchange(at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Behind the write path's back.
        flip_byte(&device.path, at, device.slot);
    }

    /// Flips one bit of the byte at `at` of `path` through a descriptor of its own (the
    /// agent's may be read-only), as a medium that garbles it would.
    pub(in crate::prepare) fn flip_byte(path: &std::path::Path, at: u64, slot: bootctl::Slot) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("fault seam: open the slot");
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).expect("fault seam: read");
        file.write_all_at(&[b[0] ^ 0x40], at)
            .expect("fault seam: write");
        log::warn!("fault seam: flipped the byte at {at} of slot {slot}");
    }
}

/// BLAKE3 of the slot's first `size` bytes, read from the medium as the
/// read-back reads them: what a slot recorded as verified holds now.
pub fn hash_from_medium(
    device: &SlotDevice,
    size: u64,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<blake3::Hash, PrepareError> {
    let flags = Flags::default();
    flags.report.store(true, Ordering::Relaxed);
    let mut reader = Reader::new(device);
    while reader.done < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(PrepareError::Cancelled { slot: device.slot });
        }
        let end = (reader.done + WINDOW).min(size);
        reader.read_to(end, progress, &flags)?;
    }
    Ok(reader.finish().finalize())
}

/// O_DIRECT alignment of offsets, lengths and the buffer; covers 512- and
/// 4096-byte logical blocks.
pub const ALIGN: u64 = 4096;

/// Reads the slot back in order, hashing on a thread of its own: while one
/// buffer is hashed the next is read, so the device wait and the hash
/// overlap (hashed in line, BLAKE3 took a quarter of the read-back's time on
/// the bench machine, and the read-back is what a prepare waits for at the
/// end: docs/decisions.md, "Write path speed").
struct Reader<'a> {
    device: &'a SlotDevice,
    /// For a block device, or a file written with `O_DIRECT`, an `O_DIRECT`
    /// descriptor: the read goes to the device without the copy through the
    /// page cache. Not for a regular file written through the page cache:
    /// there a direct read takes the inode lock that every buffered write of
    /// the download needs, and stalls it.
    direct: Option<File>,
    /// Buffers not with the hashing thread.
    free: Vec<Box<[u8]>>,
    hashing: Hashing,
    done: u64,
}

/// A buffer and the range of it that was read into.
type Filled = (Box<[u8]>, usize, usize);

/// The hashing thread: takes filled buffers in read order, hashes them and
/// hands them back.
struct Hashing {
    fill: Option<SyncSender<Filled>>,
    back: Receiver<Box<[u8]>>,
    thread: Option<std::thread::JoinHandle<blake3::Hasher>>,
}

impl Hashing {
    fn spawn() -> Hashing {
        let (fill, filled) = mpsc::sync_channel::<Filled>(READ_BUFFERS);
        let (give_back, back) = mpsc::sync_channel(READ_BUFFERS);
        let thread = std::thread::spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for (buf, from, len) in filled {
                hasher.update(&buf[from..from + len]);
                // The reader is gone when this fails: nothing to give back to.
                let _ = give_back.send(buf);
            }
            hasher
        });
        Hashing {
            fill: Some(fill),
            back,
            thread: Some(thread),
        }
    }

    /// A buffer back from the thread, once it has hashed one.
    fn take(&mut self) -> Box<[u8]> {
        match self.back.recv() {
            Ok(buf) => buf,
            Err(_) => self.join_panicked(),
        }
    }

    fn hash(&mut self, buf: Box<[u8]>, from: usize, len: usize) {
        let sent = self.fill.as_ref().map(|f| f.send((buf, from, len)));
        if !matches!(sent, Some(Ok(()))) {
            self.join_panicked();
        }
    }

    /// Everything sent is hashed: the hash.
    fn finish(mut self) -> blake3::Hasher {
        self.fill = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(hasher)) => hasher,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("finish runs once"),
        }
    }

    /// The thread stopped without being told to: only a panic does that.
    fn join_panicked(&mut self) -> ! {
        self.fill = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => panic!("the read-back's hashing thread stopped"),
        }
    }
}

impl<'a> Reader<'a> {
    fn new(device: &'a SlotDevice) -> Reader<'a> {
        let direct = (device.block || device.direct.is_some())
            .then(|| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&device.path)
                    .ok()
            })
            .flatten();
        Reader {
            device,
            direct,
            free: (0..READ_BUFFERS)
                .map(|_| vec![0; BLOCK + ALIGN as usize].into_boxed_slice())
                .collect(),
            hashing: Hashing::spawn(),
            done: 0,
        }
    }

    /// The hash of everything read, once the hashing thread has caught up.
    fn finish(self) -> blake3::Hasher {
        self.hashing.finish()
    }

    fn read_to(
        &mut self,
        end: u64,
        progress: &Progress,
        flags: &Flags,
    ) -> Result<(), PrepareError> {
        while self.done < end {
            if flags.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let len = WINDOW.min(end - self.done);
            self.read_window(self.done, len)?;
            self.done += len;
            flags.done.store(self.done, Ordering::Relaxed);
            if flags.report.load(Ordering::Relaxed) {
                progress.set_bytes(self.done);
            }
        }
        Ok(())
    }

    fn read_window(&mut self, offset: u64, len: u64) -> Result<(), PrepareError> {
        let device = self.device;
        let io = |op, at, e| slot_io(device.slot, &device.path, op, Some(at), e);
        blockdev::write_back(&device.file, offset, len).map_err(|e| io("write back", offset, e))?;
        blockdev::drop_cache(&device.file, offset, len)
            .map_err(|e| io("drop cached pages of", offset, e))?;
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(BLOCK as u64) as usize;
            let file = match &self.direct {
                Some(direct) if at % ALIGN == 0 && n as u64 % ALIGN == 0 => direct,
                _ => &device.file,
            };
            let mut buf = match self.free.pop() {
                Some(buf) => buf,
                None => self.hashing.take(),
            };
            let skip = buf.as_ptr().align_offset(ALIGN as usize);
            let read = file.read_exact_at(&mut buf[skip..skip + n], at);
            // Back to the pool whatever happened: the next read needs it.
            if let Err(e) = read {
                self.free.push(buf);
                return Err(io("read back", at, e));
            }
            self.hashing.hash(buf, skip, n);
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_exactly_the_committed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let data: Vec<u8> = (0..(WINDOW as usize * 2 + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, vec![0u8; data.len() + 100]).unwrap();
        let device = SlotDevice::open(Slot::B, &path).unwrap();
        assert_eq!(device.size, data.len() as u64 + 100);
        let (progress, flags) = (Progress::default(), Flags::default());
        flags.report.store(true, Ordering::Relaxed);
        let hash = std::thread::scope(|s| {
            let rb = ReadBack::spawn(s, &device, &progress, &flags);
            device.write_at(&data[..1000], 0).unwrap();
            rb.commit(1000);
            device.write_at(&data[1000..], 1000).unwrap();
            device.sync().unwrap();
            rb.finish(data.len() as u64).unwrap()
        });
        assert_eq!(hash, blake3::hash(&data));
        assert_eq!(progress.snapshot().bytes, data.len() as u64);
    }

    #[test]
    fn aligned_writes_put_every_byte_in_place_around_unaligned_edges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0u8; 5 * ALIGN as usize]).unwrap();
        let device = SlotDevice::open(Slot::B, &path).unwrap();
        let mut storage = vec![0u8; 6 * ALIGN as usize];
        let base = storage.as_ptr().align_offset(ALIGN as usize);
        let (offset, len) = (1000u64, 3 * ALIGN as usize + 17);
        let data = &mut storage[base + offset as usize..base + offset as usize + len];
        data.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
        device.write_aligned(data, offset).unwrap();
        device.write_aligned(&data[..10], 1).unwrap();
        let mut want = vec![0u8; 5 * ALIGN as usize];
        want[offset as usize..offset as usize + len].copy_from_slice(data);
        want[1..11].copy_from_slice(&data[..10]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn refuses_to_create_or_to_write_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = SlotDevice::open(Slot::A, &missing).unwrap_err().to_string();
        assert!(err.contains("slot A") && err.contains("nope"), "{err}");
        assert!(!missing.exists());
        assert!(SlotDevice::open(Slot::A, dir.path()).is_err());
    }
}
