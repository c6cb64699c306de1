//! A writer of the cpio "newc" format, the one the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Deterministic by construction: inode numbers count up from 1 in the order
//! entries are added, every entry has the same mtime, owner 0:0 and one link,
//! so the same entries in the same order give the same bytes. File contents
//! stream through; nothing is buffered beyond the 110-byte header.

use std::io::{self, Read, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One header's variable fields.
struct Header<'a> {
    ino: u32,
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Every entry gets `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> CpioWriter<W> {
        CpioWriter {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory; `name` is relative to the archive root (`dev`, `modules`).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        let ino = self.next_ino();
        self.header(&Header {
            ino,
            name,
            mode: S_IFDIR | perm,
            nlink: 2,
            size: 0,
            rdev: (0, 0),
        })
    }

    /// A character device node, e.g. `dev/console` (5, 1): the kernel opens it
    /// as stdin/stdout/stderr of `/init` before any devtmpfs is mounted.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let ino = self.next_ino();
        self.header(&Header {
            ino,
            name,
            mode: S_IFCHR | perm,
            nlink: 1,
            size: 0,
            rdev: (major, minor),
        })
    }

    /// A regular file of exactly `len` bytes read from `data`.
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        len: u64,
        data: &mut impl Read,
    ) -> io::Result<()> {
        let size = u32::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB, beyond cpio newc"),
            )
        })?;
        let ino = self.next_ino();
        self.header(&Header {
            ino,
            name,
            mode: S_IFREG | perm,
            nlink: 1,
            size,
            rdev: (0, 0),
        })?;
        let copied = io::copy(&mut data.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: {copied} bytes read, {len} expected"),
            ));
        }
        self.written += len;
        self.pad()
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(&Header {
            ino: 0,
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        })?;
        Ok(self.out)
    }

    fn next_ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino - 1
    }

    fn header(&mut self, h: &Header) -> io::Result<()> {
        if h.name.is_empty() || h.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio name {:?}", h.name),
            ));
        }
        let namesize = h.name.len() + 1;
        let fields = [
            h.ino,
            h.mode,
            0,
            0,
            h.nlink,
            self.mtime,
            h.size,
            0,
            0,
            h.rdev.0,
            h.rdev.1,
            namesize as u32,
            0,
        ];
        let mut text = String::with_capacity(110 + namesize);
        text.push_str(MAGIC);
        for f in fields {
            text.push_str(&format!("{f:08X}"));
        }
        text.push_str(h.name);
        text.push('\0');
        self.out.write_all(text.as_bytes())?;
        self.written += text.len() as u64;
        self.pad()
    }

    /// Headers and file data each end on a 4-byte boundary.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.out.write_all(&[0u8; 3][..n as usize])?;
        self.written += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(header: &[u8], i: usize) -> u32 {
        let at = 6 + 8 * i;
        u32::from_str_radix(std::str::from_utf8(&header[at..at + 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn layout_and_padding() {
        let mut w = CpioWriter::new(Vec::new(), 7);
        w.dir("dev", 0o755).unwrap();
        w.file("init", 0o755, 5, &mut &b"hello"[..]).unwrap();
        let out = w.finish().unwrap();
        // "dev\0" after the 110-byte header: 114 bytes, padded to 116.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 0), 1);
        assert_eq!(field(&out, 1), 0o040755);
        assert_eq!(field(&out, 5), 7);
        assert_eq!(&out[110..116], b"dev\0\0\0");
        let f = &out[116..];
        assert_eq!(field(f, 0), 2);
        assert_eq!(field(f, 1), 0o100755);
        assert_eq!(field(f, 6), 5);
        assert_eq!(field(f, 11), 5);
        // 110 + "init\0" = 115, padded to 116; data 5 bytes padded to 8.
        assert_eq!(&f[110..116], b"init\0\0");
        assert_eq!(&f[116..124], b"hello\0\0\0");
        let t = &f[124..];
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn device_node_and_same_bytes_twice() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new(), 0);
            w.char_device("dev/console", 0o600, 5, 1).unwrap();
            w.finish().unwrap()
        };
        let out = build();
        assert_eq!(field(&out, 1), 0o020600);
        assert_eq!((field(&out, 9), field(&out, 10)), (5, 1));
        assert_eq!(out, build());
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        let err = w.file("x", 0o644, 10, &mut &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(w.dir("", 0o755).is_err());
    }
}
