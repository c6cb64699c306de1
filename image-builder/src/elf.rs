//! Just enough of ELF64 (little-endian, x86_64) to read a kernel module's
//! `.modinfo` section and to tell whether a program needs a dynamic loader.
//! Reads headers with seeks, never the whole file, so a large module or binary
//! costs a few kilobytes.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const HEADER_LEN: usize = 64;
const SECTION_HEADER_LEN: usize = 64;
const PROGRAM_HEADER_LEN: usize = 56;
/// Program header type of the dynamic loader path.
const PT_INTERP: u32 = 3;

/// The fields of the ELF file header this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    phoff: u64,
    phnum: u16,
    shoff: u64,
    shnum: u16,
    shstrndx: u16,
}

/// A section header's name offset, file offset and size.
#[derive(Debug, Clone, Copy)]
struct Section {
    name: u32,
    offset: u64,
    size: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn parse_header(b: &[u8; HEADER_LEN]) -> Result<Header> {
    if &b[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if b[4] != 2 || b[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let header = Header {
        phoff: u64_at(b, 0x20),
        shoff: u64_at(b, 0x28),
        phnum: u16_at(b, 0x38),
        shnum: u16_at(b, 0x3c),
        shstrndx: u16_at(b, 0x3e),
    };
    if header.phnum > 0 && usize::from(u16_at(b, 0x36)) != PROGRAM_HEADER_LEN
        || header.shnum > 0 && usize::from(u16_at(b, 0x3a)) != SECTION_HEADER_LEN
    {
        bail!("unexpected ELF header entry sizes");
    }
    Ok(header)
}

/// `len` bytes at `offset`; a range past the file's end is an error before
/// anything is allocated (sizes come from the file: 2^40 would abort).
fn read_at(file: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    if !matches!(offset.checked_add(len as u64), Some(end) if end <= size) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes at offset {offset} lie past the end of the {size}-byte file"),
        ));
    }
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

fn open(path: &Path) -> Result<(File, Header)> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut b = [0u8; HEADER_LEN];
    file.read_exact(&mut b)
        .with_context(|| format!("read the ELF header of {}", path.display()))?;
    let header = parse_header(&b).with_context(|| path.display().to_string())?;
    Ok((file, header))
}

fn sections(file: &mut File, h: &Header) -> std::io::Result<Vec<Section>> {
    let table = read_at(file, h.shoff, usize::from(h.shnum) * SECTION_HEADER_LEN)?;
    Ok(table
        .chunks_exact(SECTION_HEADER_LEN)
        .map(|s| Section {
            name: u32_at(s, 0),
            offset: u64_at(s, 0x18),
            size: u64_at(s, 0x20),
        })
        .collect())
}

/// The NUL-terminated name at `offset` in a string table.
fn name_at(strtab: &[u8], offset: u32) -> &[u8] {
    let rest = strtab.get(offset as usize..).unwrap_or_default();
    &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
}

/// The contents of section `name`, or `None` when the file has no such section.
pub fn section(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let (mut file, h) = open(path)?;
    let read = |file: &mut File| -> std::io::Result<Option<Vec<u8>>> {
        let all = sections(file, &h)?;
        let Some(names) = all.get(usize::from(h.shstrndx)) else {
            return Ok(None);
        };
        let strtab = read_at(file, names.offset, names.size as usize)?;
        match all
            .iter()
            .find(|s| name_at(&strtab, s.name) == name.as_bytes())
        {
            Some(s) => read_at(file, s.offset, s.size as usize).map(Some),
            None => Ok(None),
        }
    };
    read(&mut file).with_context(|| format!("read ELF sections of {}", path.display()))
}

/// Whether the program names a dynamic loader (`PT_INTERP`), i.e. cannot run
/// where there is no libc, such as an initramfs.
pub fn is_dynamic(path: &Path) -> Result<bool> {
    let (mut file, h) = open(path)?;
    let table = read_at(
        &mut file,
        h.phoff,
        usize::from(h.phnum) * PROGRAM_HEADER_LEN,
    )
    .with_context(|| format!("read ELF program headers of {}", path.display()))?;
    Ok(table
        .chunks_exact(PROGRAM_HEADER_LEN)
        .any(|p| u32_at(p, 0) == PT_INTERP))
}

/// Refuses a program that cannot run on a node without a C library: not an
/// ELF executable, or one that names a dynamic loader. `what` names the
/// program (`os-init`, `os-agent`) for the message, which says how to build
/// the static one.
pub fn require_static(path: &Path, what: &str) -> Result<()> {
    let how = format!(
        "build the static {what} with `make bins` (target/bin/{what}), or `cargo build --profile \
         node --target x86_64-unknown-linux-musl`; a plain `cargo build --release` links it \
         against glibc"
    );
    match is_dynamic(path) {
        Ok(false) => Ok(()),
        Ok(true) => bail!(
            "{} is dynamically linked: {what} runs where there is no dynamic loader or C \
             library, and a node built with it does not boot; {how}",
            path.display()
        ),
        Err(e) => bail!(
            "{} is not an x86_64 ELF executable ({e:#}); {how}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_32_bit() {
        let mut b = [0u8; HEADER_LEN];
        assert!(parse_header(&b).is_err());
        b[..6].copy_from_slice(b"\x7fELF\x01\x01");
        assert!(parse_header(&b).is_err());
    }

    #[test]
    fn string_table_names() {
        let strtab = b"\0.text\0.modinfo\0";
        assert_eq!(name_at(strtab, 1), b".text");
        assert_eq!(name_at(strtab, 7), b".modinfo");
        assert_eq!(name_at(strtab, 99), b"");
    }

    #[test]
    fn a_section_size_past_the_end_of_the_file_is_an_error_not_an_abort() {
        // The test binary with its section-name table claiming 2^40 bytes.
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let h = parse_header(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        let at = h.shoff as usize + usize::from(h.shstrndx) * SECTION_HEADER_LEN + 0x20;
        bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("evil.ko");
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", section(&path, ".modinfo").unwrap_err());
        assert!(err.contains("past the end"), "{err}");
    }

    #[test]
    fn reads_sections_and_interpreter_of_a_real_binary() {
        // The test binary itself: a dynamically linked x86_64 ELF with a .text section.
        let exe = std::env::current_exe().unwrap();
        assert!(section(&exe, ".text")
            .unwrap()
            .is_some_and(|t| !t.is_empty()));
        assert!(section(&exe, ".no-such-section").unwrap().is_none());
        assert!(is_dynamic(&exe).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let not_elf = dir.path().join("x");
        std::fs::write(&not_elf, [0u8; 100]).unwrap();
        let err = format!("{:#}", section(&not_elf, ".text").unwrap_err());
        assert!(
            err.contains("not an ELF file") && err.contains("/x"),
            "{err}"
        );
    }
}
