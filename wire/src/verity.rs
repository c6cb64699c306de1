//! dm-verity parameters of a root image (docs/bundle.md, "Verity"): the
//! layout of the hash tree `os-image` appends to the image, and the kernel's
//! table line for it. One definition for the builder, the agent and os-init.
//!
//! Format 1 of the kernel's dm-verity (as `veritysetup format
//! --no-superblock` writes it): SHA-256, 4096-byte data and hash blocks, each
//! hash over `salt || block`; the tree's levels stored top level first,
//! right after the data. Levels are computed as cryptsetup does, so
//! `veritysetup verify` accepts the same tree.

use crate::digest::{hex, parse_hex32};

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// SHA-256 digests per hash block is 128 = 2^7: each level up divides by it.
const LEVEL_BITS: u32 = 7;

/// Where the tree of an image of `data_blocks` blocks sits and what its root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// Data blocks covered (the ext4 image; its size is a multiple of [`BLOCK`]).
    pub data_blocks: u64,
    /// Byte offset of the tree in the slot: right after the data.
    pub hash_offset: u64,
    pub salt: [u8; 32],
    pub root_hash: [u8; 32],
}

/// Hash blocks of each level, level 0 (hashes of data blocks) first.
pub fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = 0u32;
    while LEVEL_BITS * levels < 64 && (data_blocks.saturating_sub(1) >> (LEVEL_BITS * levels)) != 0
    {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = LEVEL_BITS * (i + 1);
            if shift >= 64 {
                1
            } else {
                data_blocks.div_ceil(1u64 << shift)
            }
        })
        .collect()
}

/// Bytes of the whole tree of an image of `data_blocks` blocks.
pub fn tree_bytes(data_blocks: u64) -> u64 {
    level_sizes(data_blocks).iter().sum::<u64>() * BLOCK
}

/// Byte offset of each level in the tree (top level at 0), level 0 first.
pub fn level_offsets(data_blocks: u64) -> Vec<u64> {
    let sizes = level_sizes(data_blocks);
    let mut offsets = vec![0; sizes.len()];
    let mut at = 0;
    for i in (0..sizes.len()).rev() {
        offsets[i] = at;
        at += sizes[i] * BLOCK;
    }
    offsets
}

impl Verity {
    /// The device-mapper table line for the root `dev` holding data and tree
    /// (`dev` is `MAJOR:MINOR` or a path), as os-init loads it.
    pub fn table(&self, dev: &str) -> String {
        format!("0 {} verity {}", self.sectors(), self.target_params(dev))
    }

    /// 512-byte sectors of the verity device: the data.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK / 512)
    }

    /// The `verity` target's parameters (the table line after `verity`).
    pub fn target_params(&self, dev: &str) -> String {
        format!(
            "1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {}",
            self.data_blocks,
            self.hash_offset / BLOCK,
            hex(&self.root_hash),
            hex(&self.salt)
        )
    }

    /// The compact form carried on the kernel command line and in slot
    /// records: `DATA_BLOCKS:HASH_OFFSET:ROOT_HEX:SALT_HEX`.
    pub fn to_arg(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.data_blocks,
            self.hash_offset,
            hex(&self.root_hash),
            hex(&self.salt)
        )
    }

    pub fn parse_arg(text: &str) -> Result<Verity, String> {
        let bad = || format!("{text:?} is not DATA_BLOCKS:HASH_OFFSET:ROOT_HEX:SALT_HEX");
        let mut parts = text.trim().split(':');
        let mut next = || parts.next().ok_or_else(bad);
        let data_blocks: u64 = next()?.parse().map_err(|_| bad())?;
        let hash_offset: u64 = next()?.parse().map_err(|_| bad())?;
        let root_hash = parse_hex32(next()?).ok_or_else(bad)?;
        let salt = parse_hex32(next()?).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        let v = Verity {
            data_blocks,
            hash_offset,
            salt,
            root_hash,
        };
        v.check()?;
        Ok(v)
    }

    /// The tree starts where the data ends, and there is data.
    pub fn check(&self) -> Result<(), String> {
        if self.data_blocks == 0 {
            return Err("verity covers no data".into());
        }
        if self.data_blocks.checked_mul(BLOCK) != Some(self.hash_offset) {
            return Err(format!(
                "verity tree at byte {} does not follow {} data blocks",
                self.hash_offset, self.data_blocks
            ));
        }
        // Data and tree must fit in a u64 of bytes: a sum that wrapped could
        // be made to equal any image_size.
        if self
            .hash_offset
            .checked_add(tree_bytes(self.data_blocks))
            .is_none()
        {
            return Err(format!(
                "{} data blocks and their verity tree exceed 2^64 bytes",
                self.data_blocks
            ));
        }
        Ok(())
    }

    /// Bytes of data plus tree: what the slot holds.
    pub fn total_bytes(&self) -> u64 {
        self.hash_offset
            .saturating_add(tree_bytes(self.data_blocks))
    }
}

/// The hash of one data or hash block in the tree: SHA-256 of the salt, then the block.
#[cfg(feature = "verity-hash")]
pub fn block_hash(salt: &[u8; 32], block: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

#[cfg(feature = "verity-hash")]
impl Verity {
    /// Checks that these parameters are those of the tree an image holds, by
    /// following the first and the last data block's hashes up through the
    /// tree to [`root_hash`](Self::root_hash). `read_at(offset, buf)` fills
    /// `buf` from the image. A wrong root hash, salt or offset fails here; a
    /// block elsewhere that does not match the tree is dm-verity's to find.
    pub fn check_paths(
        &self,
        read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        self.check()?;
        let offsets = level_offsets(self.data_blocks);
        let mut block = vec![0u8; BLOCK as usize];
        let last = self.data_blocks - 1;
        for first in [0, last].into_iter().take(if last == 0 { 1 } else { 2 }) {
            let mut at = first * BLOCK;
            read_at(at, &mut block).map_err(|e| format!("read the image at byte {at}: {e}"))?;
            let mut hash = block_hash(&self.salt, &block);
            let mut index = first;
            for (level, offset) in offsets.iter().enumerate() {
                let entry = (index % (1 << LEVEL_BITS)) as usize * 32;
                index >>= LEVEL_BITS;
                at = self.hash_offset + offset + index * BLOCK;
                read_at(at, &mut block)
                    .map_err(|e| format!("read the verity tree at byte {at}: {e}"))?;
                if block[entry..entry + 32] != hash {
                    return Err(format!(
                        "level {level} of the verity tree does not hold the hash of data block {first} \
                         under this salt"
                    ));
                }
                hash = block_hash(&self.salt, &block);
            }
            if hash != self.root_hash {
                return Err(format!(
                    "the verity tree's root is {}, not the root hash {}",
                    hex(&hash),
                    hex(&self.root_hash)
                ));
            }
        }
        Ok(())
    }
}

/// Where os-init leaves its [`BootCheck`] for os-agent: on /run, which the
/// booted system inherits from the initramfs.
pub const BOOT_CHECK_FILE: &str = "/run/os-init/verity";

/// What os-init found when it set up and read the booted slot's dm-verity
/// root: `slot=`, `state=`, `detail=` lines in [`BOOT_CHECK_FILE`], shown
/// by `os-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BootCheck {
    pub slot: crate::Slot,
    pub state: CheckState,
    /// Figures (bytes read, time) or the error, one line.
    pub detail: String,
}

/// The outcome of os-init's verity step for the booted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "miniserde",
    derive(miniserde::Serialize, miniserde::Deserialize)
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CheckState {
    /// The root is mounted through dm-verity and every block read back verified.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "verified")
    )]
    Verified,
    /// Some block does not match the tree: the slot's bytes changed after
    /// they were written. Reads of those blocks fail with EIO.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "corrupt")
    )]
    Corrupt,
    /// The slot record names a tree but dm-verity could not be set up; the
    /// committed slot was mounted without it.
    #[cfg_attr(
        any(feature = "serde", feature = "miniserde"),
        serde(rename = "unavailable")
    )]
    Unavailable,
    /// The slot's image has no tree (a bundle from before verity).
    #[cfg_attr(any(feature = "serde", feature = "miniserde"), serde(rename = "off"))]
    Off,
}

impl CheckState {
    pub const ALL: [CheckState; 4] = [
        CheckState::Verified,
        CheckState::Corrupt,
        CheckState::Unavailable,
        CheckState::Off,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Verified => "verified",
            CheckState::Corrupt => "corrupt",
            CheckState::Unavailable => "unavailable",
            CheckState::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<CheckState> {
        CheckState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Bound on the file: a few lines.
pub const MAX_BOOT_CHECK_BYTES: usize = 4096;

impl BootCheck {
    /// The file's text; the detail is kept to one line.
    pub fn to_text(&self) -> String {
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!(
            "slot={}\nstate={}\ndetail={detail}\n",
            self.slot,
            self.state.as_str()
        )
    }

    pub fn parse(text: &str) -> Result<BootCheck, String> {
        if text.len() > MAX_BOOT_CHECK_BYTES {
            return Err(format!(
                "{} bytes, more than {MAX_BOOT_CHECK_BYTES}",
                text.len()
            ));
        }
        let (mut slot, mut state, mut detail) = (None, None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            crate::record::check_text(line).map_err(|e| format!("line {e}"))?;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line without '=': {line:?}"))?;
            let bad = || format!("invalid {key}: {value:?}");
            let repeated = match key {
                "slot" => slot
                    .replace(crate::Slot::parse(value).ok_or_else(bad)?)
                    .is_some(),
                "state" => state
                    .replace(CheckState::parse(value).ok_or_else(bad)?)
                    .is_some(),
                "detail" => detail.replace(value.to_owned()).is_some(),
                _ => false,
            };
            if repeated {
                return Err(format!("{key}= appears more than once"));
            }
        }
        Ok(BootCheck {
            slot: slot.ok_or("no slot= line")?,
            state: state.ok_or("no state= line")?,
            detail: detail.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_cryptsetup() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128), vec![128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
        // 48 MiB: 12288 blocks, 96 + 1 hash blocks, the top one first.
        assert_eq!(level_sizes(12288), vec![96, 1]);
        assert_eq!(level_offsets(12288), vec![BLOCK, 0]);
        assert_eq!(tree_bytes(12288), 97 * BLOCK);
    }

    #[test]
    fn the_arg_form_round_trips_and_refuses_what_is_not_it() {
        // 2^52 - 1 data blocks end at 2^64 - 4096: the tree would wrap past 2^64
        // (and panicked in a debug build's sum before).
        let huge = format!(
            "4503599627370495:18446744073709547520:{}:{}",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        assert!(Verity::parse_arg(&huge)
            .unwrap_err()
            .contains("exceed 2^64"));
        let v = Verity {
            data_blocks: 12288,
            hash_offset: 12288 * BLOCK,
            salt: [7; 32],
            root_hash: [9; 32],
        };
        assert_eq!(Verity::parse_arg(&v.to_arg()).unwrap(), v);
        assert!(v
            .table("253:0")
            .starts_with("0 98304 verity 1 253:0 253:0 4096 4096 12288 12288 sha256 0909"));
        for bad in ["", "1:2:3:4", &format!("{}:extra", v.to_arg()), "0:0:aa:bb"] {
            assert!(Verity::parse_arg(bad).is_err(), "{bad}");
        }
        let shifted = Verity {
            hash_offset: 5,
            ..v
        };
        assert!(Verity::parse_arg(&shifted.to_arg()).is_err());
    }

    #[test]
    fn boot_checks_round_trip_and_hostile_files_are_refused() {
        for state in CheckState::ALL {
            let c = BootCheck {
                slot: crate::Slot::B,
                state,
                detail: "read 48 MiB\nin 1 s".into(),
            };
            let back = BootCheck::parse(&c.to_text()).unwrap();
            assert_eq!(back.state, state);
            assert_eq!(back.detail, "read 48 MiB in 1 s");
        }
        for bad in [
            "slot=A\n",
            "state=verified\n",
            "slot=C\nstate=verified\n",
            "slot=A\nstate=fine\n",
            "slot=A\nstate=verified\nstate=corrupt\n",
            "slot=A\nstate=verified\ndetail=\x1b[2J\n",
        ] {
            assert!(BootCheck::parse(bad).is_err(), "{bad:?}");
        }
        let huge = format!("slot=A\nstate=verified\ndetail={}\n", "x".repeat(5000));
        assert!(BootCheck::parse(&huge).is_err());
    }
}
