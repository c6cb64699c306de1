//! The slot's root through dm-verity (docs/bundle.md, "Verity"): a
//! read-only device-mapper device over the slot partition, set up with the
//! kernel's device-mapper ioctls (no veritysetup in the initramfs), and a
//! read of every block through it, so a block that changed after the image
//! was written is found at boot and not first by whatever reads it later.
//!
//! The requests are built here as bytes (pure, tested); [`sys::dm_ioctl`]
//! sends them.

use crate::sys;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};
use wire::verity::Verity;

/// `DM_DEV_CREATE_CMD`, `DM_DEV_REMOVE_CMD`, `DM_DEV_SUSPEND_CMD`,
/// `DM_TABLE_LOAD_CMD` (linux/dm-ioctl.h).
const DEV_CREATE: u8 = 3;
const DEV_REMOVE: u8 = 4;
const DEV_SUSPEND: u8 = 6;
const TABLE_LOAD: u8 = 9;
/// The interface version this code speaks; the kernel checks the major.
const VERSION: [u32; 3] = [4, 0, 0];
/// `DM_READONLY_FLAG`.
const READONLY: u32 = 1;
const NAME_LEN: usize = 128;
/// `struct dm_target_spec`: sector_start, length, status, next, target_type[16].
const TARGET_SPEC_SIZE: usize = 40;
/// Reads of the whole device go in pieces of this size; a failed piece is
/// read again block by block to find the corrupt blocks.
const SCAN_PIECE: usize = 1 << 20;
const BLOCK: usize = wire::verity::BLOCK as usize;
/// How long to wait for devtmpfs to show the new device's node.
const NODE_WAIT: Duration = Duration::from_secs(2);

/// A `struct dm_ioctl` for device `name` followed by `payload`, with room
/// for the kernel's answer.
pub fn request(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains(['\0', '/']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a device-mapper name"),
        ));
    }
    let size = (sys::DM_IOCTL_SIZE + payload.len()).next_multiple_of(8) + 1024;
    let mut buf = vec![0u8; size];
    let mut put = |at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(0, VERSION[0]);
    put(4, VERSION[1]);
    put(8, VERSION[2]);
    put(12, size as u32); // data_size
    put(16, sys::DM_IOCTL_SIZE as u32); // data_start
    put(20, target_count);
    put(28, flags);
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    buf[sys::DM_IOCTL_SIZE..sys::DM_IOCTL_SIZE + payload.len()].copy_from_slice(payload);
    Ok(buf)
}

/// One `verity` target over the data device `dev` (`MAJOR:MINOR`): a
/// `struct dm_target_spec` and its NUL-terminated parameters, padded to 8.
pub fn verity_target(v: &Verity, dev: &str) -> Vec<u8> {
    let params = v.target_params(dev);
    let len = (TARGET_SPEC_SIZE + params.len() + 1).next_multiple_of(8);
    let mut t = vec![0u8; len];
    t[0..8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
    t[8..16].copy_from_slice(&v.sectors().to_ne_bytes()); // length
    t[20..24].copy_from_slice(&(len as u32).to_ne_bytes()); // next
    t[24..30].copy_from_slice(b"verity");
    t[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
    t
}

/// `(major, minor)` of the `dev` field the kernel answers with
/// (huge_encode_dev: minor's low byte, major, minor's high bits).
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// A verity device set up and resumed, ready to read and mount.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub path: PathBuf,
}

/// Creates the read-only verity device `name` over the block device
/// `data` (holding data and tree) through `dev_dir/mapper/control`.
pub fn activate(dev_dir: &Path, name: &str, data: &Path, v: &Verity) -> io::Result<Device> {
    let control_path = dev_dir.join("mapper/control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&control_path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (is the dm_mod module in the initramfs?)",
                    control_path.display()
                ),
            )
        })?;
    let rdev = fs::metadata(data)?.rdev();
    let data_dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));

    let mut create = request(name, 0, 0, &[])?;
    sys::dm_ioctl(&control, DEV_CREATE, &mut create).map_err(|e| {
        io::Error::new(e.kind(), format!("create device-mapper device {name}: {e}"))
    })?;
    let (major, minor) = decode_dev(u64::from_ne_bytes(create[40..48].try_into().unwrap()));
    let loaded = request(name, READONLY, 1, &verity_target(v, &data_dev)).and_then(|mut load| {
        sys::dm_ioctl(&control, TABLE_LOAD, &mut load).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("load the verity table of {name} over {data_dev}: {e} (is dm_verity loaded? the kernel log says more)"),
            )
        })?;
        let mut resume = request(name, 0, 0, &[])?;
        sys::dm_ioctl(&control, DEV_SUSPEND, &mut resume)
            .map_err(|e| io::Error::new(e.kind(), format!("resume {name}: {e}")))
    });
    if let Err(e) = loaded {
        if let Ok(mut remove) = request(name, 0, 0, &[]) {
            let _ = sys::dm_ioctl(&control, DEV_REMOVE, &mut remove);
        }
        return Err(e);
    }
    let path = node(dev_dir, name, major, minor)?;
    Ok(Device {
        name: name.to_owned(),
        path,
    })
}

/// `/dev/dm-MINOR` once devtmpfs shows it, else a node made by hand.
fn node(dev_dir: &Path, name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
    let is_it = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| {
            let r = m.rdev();
            libc::major(r) == major && libc::minor(r) == minor
        })
    };
    let dm = dev_dir.join(format!("dm-{minor}"));
    let start = Instant::now();
    while start.elapsed() < NODE_WAIT {
        if is_it(&dm) {
            return Ok(dm);
        }
        sleep(Duration::from_millis(20));
    }
    let own = dev_dir.join("mapper").join(name);
    let _ = fs::remove_file(&own);
    sys::mknod_block(&own, major, minor)
        .map_err(|e| io::Error::new(e.kind(), format!("mknod {}: {e}", own.display())))?;
    Ok(own)
}

/// What reading the whole verity device found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub bytes: u64,
    /// Blocks whose read failed verification (EIO).
    pub corrupt_blocks: u64,
    /// Byte offset of the first of them.
    pub first_corrupt: Option<u64>,
    pub elapsed: Duration,
}

/// Reads `size` bytes of `path` through the page cache; an EIO is a block
/// that does not match the tree (dm-verity's answer to a corrupt block).
pub fn scan(path: &Path, size: u64) -> io::Result<Scan> {
    let start = Instant::now();
    let file = File::open(path)?;
    let mut buf = vec![0u8; SCAN_PIECE];
    let mut scan = Scan {
        bytes: 0,
        corrupt_blocks: 0,
        first_corrupt: None,
        elapsed: Duration::ZERO,
    };
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(SCAN_PIECE as u64) as usize;
        match file.read_exact_at(&mut buf[..n], at) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                for off in (0..n).step_by(BLOCK) {
                    let len = BLOCK.min(n - off);
                    let pos = at + off as u64;
                    match file.read_exact_at(&mut buf[..len], pos) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                            scan.corrupt_blocks += 1;
                            scan.first_corrupt.get_or_insert(pos);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        at += n as u64;
        scan.bytes = at;
    }
    scan.elapsed = start.elapsed();
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verity() -> Verity {
        Verity {
            data_blocks: 12288,
            hash_offset: 12288 * 4096,
            salt: [0x11; 32],
            root_hash: [0x22; 32],
        }
    }

    #[test]
    fn the_header_is_a_dm_ioctl_of_version_4() {
        let b = request("os-root-A", READONLY, 1, &[1, 2, 3]).unwrap();
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        assert_eq!([u32_at(0), u32_at(4), u32_at(8)], [4, 0, 0]);
        assert_eq!(u32_at(12) as usize, b.len(), "data_size covers the buffer");
        assert_eq!(u32_at(16), 312, "payload right after the header");
        assert_eq!(u32_at(20), 1);
        assert_eq!(u32_at(28), READONLY);
        assert_eq!(&b[48..57], b"os-root-A");
        assert_eq!(b[57], 0, "NUL-terminated name");
        assert_eq!(&b[312..315], &[1, 2, 3]);
        assert_eq!(b.len() % 8, 0);
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_here() {
        for bad in ["", "a/b", "a\0b", &"x".repeat(128)] {
            assert!(request(bad, 0, 0, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_target_is_a_spec_with_the_table_parameters() {
        let t = verity_target(&verity(), "254:3");
        let u64_at = |i: usize| u64::from_ne_bytes(t[i..i + 8].try_into().unwrap());
        assert_eq!(u64_at(0), 0);
        assert_eq!(u64_at(8), 12288 * 8, "length in sectors");
        assert_eq!(
            u32::from_ne_bytes(t[20..24].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(&t[24..31], b"verity\0");
        let params = std::str::from_utf8(&t[40..])
            .unwrap()
            .trim_end_matches('\0');
        assert_eq!(
            format!("0 {} verity {params}", 12288 * 8),
            verity().table("254:3")
        );
        assert!(params.starts_with("1 254:3 254:3 4096 4096 12288 12288 sha256 2222"));
        assert_eq!(t.len() % 8, 0);
    }

    #[test]
    fn device_numbers_decode_as_the_kernel_encodes_them() {
        // new_encode_dev(MKDEV(254, 0)) and MKDEV(259, 300).
        assert_eq!(decode_dev(254 << 8), (254, 0));
        let enc = |major: u64, minor: u64| (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(decode_dev(enc(259, 300)), (259, 300));
        assert_eq!(decode_dev(enc(253, 1 << 19)), (253, 1 << 19));
    }

    #[test]
    fn a_scan_reads_everything_and_counts_no_corruption_on_a_good_file() {
        let dir = crate::testutil::TempDir::new();
        let f = dir.path().join("img");
        fs::write(&f, vec![5u8; 3 * SCAN_PIECE + 4096]).unwrap();
        let s = scan(&f, 3 * SCAN_PIECE as u64 + 4096).unwrap();
        assert_eq!(s.bytes, 3 * SCAN_PIECE as u64 + 4096);
        assert_eq!((s.corrupt_blocks, s.first_corrupt), (0, None));
        // Shorter than claimed: an error, not a pass.
        assert!(scan(&f, 4 * SCAN_PIECE as u64).is_err());
    }
}
