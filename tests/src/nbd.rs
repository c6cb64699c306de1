//! A disk that forgets like real hardware: an NBD server (fixed newstyle
//! handshake, simple replies) on a Unix socket, in front of a disk image file.
//!
//! Writes are held in a volatile write cache, per 512-byte sector, and reach
//! the file only on FLUSH, or for a FUA write its own sectors; reads see the
//! cache over the file, as a guest reads its own writes. When the connection
//! ends without a disconnect request (QEMU killed: a power cut), the cache is
//! lost: all of it, or a random subset of its sectors (seeded, replayable), as
//! a drive may have destaged any part of its cache before the power went. An
//! orderly disconnect (QEMU flushes before it) writes the cache out.
//!
//! QEMU connects with `-drive if=virtio,format=raw,file=nbd+unix:///?socket=PATH`
//! and, with its default writeback cache, shows the guest a virtio disk with a
//! volatile write cache (`/sys/block/vda/queue/write_cache`: `write back`), so
//! the guest's kernel sends flushes for fsync and journal commits.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

const SECTOR: u64 = 512;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const INFO_EXPORT: u16 = 0;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_SEND_FUA: u16 = 8;
const TRANSMISSION: u16 = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_FLAG_FUA: u16 = 1;

const EINVAL: u32 = 22;
const EIO: u32 = 5;
/// Largest request accepted (QEMU sends at most 32 MiB).
const MAX_REQUEST: u32 = 64 << 20;

/// What a power cut does to the write cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every unflushed sector is lost.
    All,
    /// Each unflushed sector reached the medium or not, drawn from this seed.
    Subset(u64),
}

/// What the disk saw, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub flushes: u64,
    pub fua_writes: u64,
    /// Power cuts (connections that ended without a disconnect request).
    pub cuts: u64,
    /// Unflushed sectors a cut dropped, and kept.
    pub sectors_lost: u64,
    pub sectors_kept: u64,
}

#[derive(Default)]
struct State {
    connected: bool,
    /// How the next cut loses the cache.
    loss: Option<Loss>,
    stats: Stats,
}

/// The server: one connection at a time, for as long as it lives.
pub struct ForgetfulDisk {
    pub socket: PathBuf,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl ForgetfulDisk {
    /// Serves `image` on a new Unix socket at `socket`.
    pub fn serve(image: &Path, socket: &Path) -> io::Result<ForgetfulDisk> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let file = OpenOptions::new().read(true).write(true).open(image)?;
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                set(&shared, |s| {
                    s.connected = true;
                    s.stats.connections += 1;
                });
                let mut cache = Cache::default();
                let orderly = serve_connection(conn, &file, &mut cache, &shared);
                let loss = lock(&shared).loss.unwrap_or(Loss::All);
                match orderly {
                    Ok(true) => {
                        let _ = cache.flush(&file);
                    }
                    _ => {
                        let (lost, kept) = cache.cut(&file, loss);
                        set(&shared, |s| {
                            s.stats.cuts += 1;
                            s.stats.sectors_lost += lost;
                            s.stats.sectors_kept += kept;
                        });
                    }
                }
                set(&shared, |s| s.connected = false);
            }
        });
        Ok(ForgetfulDisk {
            socket: socket.to_path_buf(),
            state,
        })
    }

    /// How the next power cut loses the write cache.
    pub fn set_loss(&self, loss: Loss) {
        set(&self.state, |s| s.loss = Some(loss));
    }

    /// Waits until no guest is connected (after QEMU was killed, the cut has
    /// been applied to the file when this returns).
    pub fn wait_idle(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        while s.connected {
            s = cv.wait(s).unwrap();
        }
    }

    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }
}

fn lock(state: &(Mutex<State>, Condvar)) -> std::sync::MutexGuard<'_, State> {
    state.0.lock().unwrap_or_else(|p| p.into_inner())
}

fn set(state: &(Mutex<State>, Condvar), f: impl FnOnce(&mut State)) {
    f(&mut lock(state));
    state.1.notify_all();
}

/// The volatile write cache: the latest unflushed contents of each sector.
#[derive(Default)]
struct Cache {
    sectors: BTreeMap<u64, Box<[u8]>>,
}

impl Cache {
    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, s) in data.chunks(SECTOR as usize).enumerate() {
            self.sectors
                .insert(offset / SECTOR + i as u64, s.to_vec().into_boxed_slice());
        }
    }

    /// The file's bytes with the cache over them.
    fn read(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        file.read_exact_at(buf, offset)?;
        let first = offset / SECTOR;
        let last = (offset + buf.len() as u64).div_ceil(SECTOR);
        for (&n, data) in self.sectors.range(first..last) {
            let at = (n * SECTOR - offset) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
        }
        Ok(())
    }

    /// Writes these sectors through and forgets them.
    fn write_through(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let first = offset / SECTOR;
        let last = (offset + len).div_ceil(SECTOR);
        let done: Vec<u64> = self.sectors.range(first..last).map(|(&n, _)| n).collect();
        for n in done {
            if let Some(data) = self.sectors.remove(&n) {
                file.write_all_at(&data, n * SECTOR)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, file: &File) -> io::Result<()> {
        for (n, data) in std::mem::take(&mut self.sectors) {
            file.write_all_at(&data, n * SECTOR)?;
        }
        Ok(())
    }

    /// A power cut: returns (sectors lost, sectors kept).
    fn cut(&mut self, file: &File, loss: Loss) -> (u64, u64) {
        let sectors = std::mem::take(&mut self.sectors);
        let mut rng = match loss {
            Loss::All => return (sectors.len() as u64, 0),
            Loss::Subset(seed) => crate::powercut::Rng::new(seed),
        };
        let (mut lost, mut kept) = (0, 0);
        for (n, data) in sectors {
            if rng.below(2) == 0 {
                lost += 1;
            } else if file.write_all_at(&data, n * SECTOR).is_ok() {
                kept += 1;
            }
        }
        (lost, kept)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn option_reply(conn: &mut UnixStream, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut reply = Vec::with_capacity(20 + data.len());
    reply.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&option.to_be_bytes());
    reply.extend_from_slice(&kind.to_be_bytes());
    reply.extend_from_slice(&(data.len() as u32).to_be_bytes());
    reply.extend_from_slice(data);
    conn.write_all(&reply)
}

/// The handshake; `Ok(false)` when the client gave up before transmission.
fn handshake(conn: &mut UnixStream, size: u64) -> io::Result<bool> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.write_all(&hello)?;
    let mut flags = [0u8; 4];
    conn.read_exact(&mut flags)?;
    let no_zeroes = u32::from_be_bytes(flags) & CLIENT_NO_ZEROES != 0;
    loop {
        let mut head = [0u8; 16];
        conn.read_exact(&mut head)?;
        if u64_at(&head, 0) != IHAVEOPT {
            return Err(io::Error::other("bad option magic"));
        }
        let (option, len) = (u32_at(&head, 8), u32_at(&head, 12));
        if len > 4096 {
            return Err(io::Error::other("option too long"));
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                let mut reply = size.to_be_bytes().to_vec();
                reply.extend_from_slice(&TRANSMISSION.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                conn.write_all(&reply)?;
                return Ok(true);
            }
            OPT_GO | OPT_INFO => {
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&TRANSMISSION.to_be_bytes());
                option_reply(conn, option, REP_INFO, &info)?;
                option_reply(conn, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(true);
                }
            }
            OPT_ABORT => {
                let _ = option_reply(conn, option, REP_ACK, &[]);
                return Ok(false);
            }
            // Structured replies, meta contexts, TLS, extended headers: no.
            _ => option_reply(conn, option, REP_ERR_UNSUP, &[])?,
        }
    }
}

fn simple_reply(conn: &mut UnixStream, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    let mut reply = Vec::with_capacity(16 + data.len());
    reply.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&error.to_be_bytes());
    reply.extend_from_slice(&handle.to_be_bytes());
    reply.extend_from_slice(data);
    conn.write_all(&reply)
}

/// Serves one connection; `Ok(true)` when it ended with a disconnect request
/// (orderly), `Ok(false)`/`Err` when it just ended (a cut).
fn serve_connection(
    mut conn: UnixStream,
    file: &File,
    cache: &mut Cache,
    state: &(Mutex<State>, Condvar),
) -> io::Result<bool> {
    let size = file.metadata()?.len();
    if !handshake(&mut conn, size)? {
        return Ok(true);
    }
    loop {
        let mut head = [0u8; 28];
        match conn.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if u32_at(&head, 0) != REQUEST_MAGIC {
            return Err(io::Error::other("bad request magic"));
        }
        let (flags, kind) = (u16_at(&head, 4), u16_at(&head, 6));
        let (handle, offset, len) = (u64_at(&head, 8), u64_at(&head, 16), u32_at(&head, 24));
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= size);
        match kind {
            CMD_READ => {
                if !in_range || len > MAX_REQUEST {
                    simple_reply(&mut conn, EINVAL, handle, &[])?;
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                match cache.read(file, offset, &mut buf) {
                    Ok(()) => simple_reply(&mut conn, 0, handle, &buf)?,
                    Err(_) => simple_reply(&mut conn, EIO, handle, &[])?,
                }
            }
            CMD_WRITE => {
                if len > MAX_REQUEST {
                    return Err(io::Error::other("write too large"));
                }
                let mut data = vec![0u8; len as usize];
                conn.read_exact(&mut data)?;
                if !in_range {
                    simple_reply(&mut conn, EINVAL, handle, &[])?;
                    continue;
                }
                cache.write(offset, &data);
                let mut error = 0;
                if flags & CMD_FLAG_FUA != 0 {
                    if cache.write_through(file, offset, u64::from(len)).is_err() {
                        error = EIO;
                    }
                    set(state, |s| s.stats.fua_writes += 1);
                }
                simple_reply(&mut conn, error, handle, &[])?;
            }
            CMD_FLUSH => {
                let error = if cache.flush(file).is_ok() { 0 } else { EIO };
                set(state, |s| s.stats.flushes += 1);
                simple_reply(&mut conn, error, handle, &[])?;
            }
            CMD_DISC => return Ok(true),
            _ => simple_reply(&mut conn, EINVAL, handle, &[])?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("disk"))
            .unwrap();
        f.set_len(len).unwrap();
        (dir, f)
    }

    #[test]
    fn reads_see_the_cache_and_only_flushed_sectors_reach_the_file() {
        let (_d, f) = file(8 * SECTOR);
        let mut c = Cache::default();
        c.write(SECTOR, &[1u8; 1024]);
        let mut buf = vec![0u8; 4 * SECTOR as usize];
        c.read(&f, 0, &mut buf).unwrap();
        assert_eq!(&buf[512..1536], &[1u8; 1024][..]);
        let mut on_disk = vec![0u8; 1024];
        f.read_exact_at(&mut on_disk, SECTOR).unwrap();
        assert_eq!(
            on_disk,
            vec![0u8; 1024],
            "unflushed writes stay in the cache"
        );
        c.write_through(&f, SECTOR, SECTOR).unwrap();
        f.read_exact_at(&mut on_disk, SECTOR).unwrap();
        assert_eq!(&on_disk[..512], &[1u8; 512][..], "FUA wrote its sector");
        assert_eq!(&on_disk[512..], &[0u8; 512][..], "and only its sector");
        assert_eq!(c.cut(&f, Loss::All), (1, 0));
        f.read_exact_at(&mut on_disk, SECTOR).unwrap();
        assert_eq!(&on_disk[512..], &[0u8; 512][..], "the cut lost it");
    }

    #[test]
    fn a_subset_cut_is_replayable_from_its_seed() {
        let run = |seed| {
            let (_d, f) = file(64 * SECTOR);
            let mut c = Cache::default();
            c.write(0, &[7u8; 64 * 512]);
            let counts = c.cut(&f, Loss::Subset(seed));
            let mut all = vec![0u8; 64 * 512];
            f.read_exact_at(&mut all, 0).unwrap();
            (counts, all)
        };
        let (counts, bytes) = run(9);
        assert_eq!(counts.0 + counts.1, 64);
        assert!(counts.0 > 0 && counts.1 > 0, "{counts:?}");
        assert_eq!(run(9), (counts, bytes));
    }
}
