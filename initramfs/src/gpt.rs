//! Growing PERSIST into a disk larger than the image it was written from
//! (docs/decisions.md, "PERSIST fills the disk"): the disk image `os-image
//! disk` makes is as small as its contents; written to a bigger disk, the
//! GPT's backup copy sits in the middle and the space after PERSIST is
//! unused. On boot, before PERSIST is mounted, os-init moves the backup GPT
//! to the disk's end and extends PERSIST (the last partition) to the new
//! last usable sector, aligned to 1 MiB; after mounting it grows the ext4
//! file system online (`EXT4_IOC_RESIZE_FS`).
//!
//! Crash-safe order: the new backup entries and header are written and
//! synced where nothing points yet; then the protective MBR, the primary
//! entries and header. A power cut before the primary header is written
//! leaves the old, valid table (its backup still where it was); after it,
//! the new one, whose backup is already in place. Every header and entry
//! array is checked (signature, sizes, CRCs) before anything is written,
//! and the new table is parsed back before it is.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes per sector this code handles (the GPT's LBA size); other disks
/// are left alone.
pub const SECTOR: u64 = 512;
/// Partitions end on a 1 MiB boundary, as sgdisk aligns them.
const ALIGN: u64 = (1 << 20) / SECTOR;
/// Growth smaller than this is not worth a partition table write.
pub const MIN_GROWTH: u64 = (16 << 20) / SECTOR;
const HEADER_SIZE: usize = 92;
/// Entry arrays larger than this are not a disk `os-image` made.
const MAX_ENTRY_BYTES: usize = 1 << 20;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A GPT header's fields this code reads or changes, and its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    raw: Vec<u8>,
    current: u64,
    backup: u64,
    last_usable: u64,
    entries_lba: u64,
    entries: usize,
    entry_size: usize,
}

impl Header {
    fn parse(sector: &[u8]) -> Result<Header, String> {
        if &sector[..8] != b"EFI PART" {
            return Err("no GPT signature".into());
        }
        let size = u32_at(sector, 12) as usize;
        if size < HEADER_SIZE || size > sector.len() {
            return Err(format!("GPT header size {size}"));
        }
        let mut raw = sector[..size].to_vec();
        let crc = u32_at(&raw, 16);
        raw[16..20].fill(0);
        if crc32(&raw) != crc {
            return Err("GPT header CRC mismatch".into());
        }
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        let (entries, entry_size) = (u32_at(&raw, 80) as usize, u32_at(&raw, 84) as usize);
        if entry_size < 128
            || !entries
                .checked_mul(entry_size)
                .is_some_and(|n| n <= MAX_ENTRY_BYTES)
        {
            return Err(format!("{entries} GPT entries of {entry_size} bytes"));
        }
        Ok(Header {
            current: u64_at(&raw, 24),
            backup: u64_at(&raw, 32),
            last_usable: u64_at(&raw, 48),
            entries_lba: u64_at(&raw, 72),
            entries,
            entry_size,
            raw,
        })
    }

    fn entry_sectors(&self) -> u64 {
        ((self.entries * self.entry_size) as u64).div_ceil(SECTOR)
    }

    /// The header with these fields, its CRC recomputed.
    fn with(
        &self,
        current: u64,
        backup: u64,
        last_usable: u64,
        entries_lba: u64,
        crc: u32,
    ) -> Vec<u8> {
        let mut raw = self.raw.clone();
        raw[24..32].copy_from_slice(&current.to_le_bytes());
        raw[32..40].copy_from_slice(&backup.to_le_bytes());
        raw[48..56].copy_from_slice(&last_usable.to_le_bytes());
        raw[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        raw[88..92].copy_from_slice(&crc.to_le_bytes());
        raw[16..20].fill(0);
        let c = crc32(&raw);
        raw[16..20].copy_from_slice(&c.to_le_bytes());
        raw
    }
}

/// The partition named `name` (UTF-16LE in the entry) and the highest last
/// sector of any partition.
fn find(entries: &[u8], size: usize, name: &str) -> Option<(usize, u64)> {
    let want: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut found = None;
    let mut highest = 0;
    for (i, e) in entries.chunks(size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        highest = highest.max(u64_at(e, 40));
        let label = &e[56..128];
        if label.starts_with(&want) && label[want.len()..].iter().take(2).all(|&b| b == 0) {
            found = Some(i);
        }
    }
    found.map(|i| (i, highest))
}

/// What a growth changed, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// 1-based partition number (as the kernel counts).
    pub number: u32,
    pub first: u64,
    pub old_last: u64,
    pub new_last: u64,
}

impl Grown {
    pub fn bytes(&self) -> u64 {
        (self.new_last - self.first + 1) * SECTOR
    }
}

/// Extends the partition named `name` to the end of a disk of
/// `disk_sectors` sectors when it is the last one and at least
/// [`MIN_GROWTH`] would be gained; moves the backup GPT to the end.
/// `Ok(None)`: nothing to do.
pub fn grow(disk: &File, disk_sectors: u64, name: &str) -> Result<Option<Grown>, String> {
    let read = |lba: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        disk.read_exact_at(&mut b, lba * SECTOR)
            .map_err(|e| format!("read sector {lba}: {e}"))?;
        Ok(b)
    };
    let primary =
        Header::parse(&read(1, SECTOR as usize)?).map_err(|e| format!("primary GPT: {e}"))?;
    if primary.current != 1 {
        return Err(format!(
            "primary GPT says it is at sector {}",
            primary.current
        ));
    }
    let mut entries = read(primary.entries_lba, primary.entries * primary.entry_size)?;
    if crc32(&entries) != u32_at(&primary.raw, 88) {
        return Err("primary GPT entries CRC mismatch".into());
    }
    let Some((index, highest)) = find(&entries, primary.entry_size, name) else {
        return Err(format!("no partition named {name}"));
    };
    let at = index * primary.entry_size;
    let (first, old_last) = (u64_at(&entries, at + 32), u64_at(&entries, at + 40));
    if old_last != highest {
        return Ok(None);
    }
    let backup = disk_sectors - 1;
    let backup_entries = backup - primary.entry_sectors();
    let last_usable = backup_entries - 1;
    let new_last = (last_usable + 1) / ALIGN * ALIGN - 1;
    if new_last < old_last + MIN_GROWTH || backup <= primary.backup {
        return Ok(None);
    }
    entries[at + 40..at + 48].copy_from_slice(&new_last.to_le_bytes());
    let crc = crc32(&entries);
    let new_backup = primary.with(backup, 1, last_usable, backup_entries, crc);
    let new_primary = primary.with(1, backup, last_usable, primary.entries_lba, crc);
    for (what, h) in [("backup", &new_backup), ("primary", &new_primary)] {
        let mut sector = h.clone();
        sector.resize(SECTOR as usize, 0);
        Header::parse(&sector).map_err(|e| format!("new {what} GPT: {e}"))?;
    }
    let write = |lba: u64, bytes: &[u8]| -> Result<(), String> {
        disk.write_all_at(bytes, lba * SECTOR)
            .map_err(|e| format!("write sector {lba}: {e}"))
    };
    let sync = || disk.sync_all().map_err(|e| format!("sync the disk: {e}"));
    write(backup_entries, &entries)?;
    write(backup, &sector_of(&new_backup))?;
    sync()?;
    // The protective MBR's partition covers the disk (up to its 32-bit limit).
    let mut mbr = read(0, SECTOR as usize)?;
    if mbr[510..512] == [0x55, 0xaa] && mbr[450] == 0xee {
        let size = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
        mbr[458..462].copy_from_slice(&size.to_le_bytes());
        write(0, &mbr)?;
    }
    write(primary.entries_lba, &entries)?;
    write(1, &sector_of(&new_primary))?;
    sync()?;
    Ok(Some(Grown {
        number: index as u32 + 1,
        first,
        old_last,
        new_last,
    }))
}

fn sector_of(header: &[u8]) -> Vec<u8> {
    let mut s = header.to_vec();
    s.resize(SECTOR as usize, 0);
    s
}

/// The block count and block size of the ext4 file system on `dev`.
pub fn ext4_blocks(dev: &File) -> Result<(u64, u64), String> {
    let mut sb = vec![0u8; 1024];
    dev.read_exact_at(&mut sb, 1024)
        .map_err(|e| format!("read the ext4 superblock: {e}"))?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err("no ext4 superblock".into());
    }
    let log = u32_at(&sb, 24);
    if log > 6 {
        return Err(format!("ext4 block size 2^{}", 10 + log));
    }
    let mut blocks = u64::from(u32_at(&sb, 4));
    // INCOMPAT_64BIT: the high half of the count.
    if u32_at(&sb, 0x60) & 0x80 != 0 {
        blocks |= u64::from(u32_at(&sb, 0x150)) << 32;
    }
    Ok((blocks, 1024 << log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
