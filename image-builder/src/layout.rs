//! Partition layout of an A/B disk (DESIGN.md §3), computed as a pure function
//! of the requested sizes, and written as a GPT with `sgdisk`.

use crate::tools;
use anyhow::{bail, Result};
use bootctl::partitions::{NAME_ESP, NAME_PERSIST, NAME_ROOT_A, NAME_ROOT_B};
use std::path::Path;

pub const MIB: u64 = 1 << 20;
/// ESP size from DESIGN.md §3.
pub const ESP_SIZE: u64 = 128 * MIB;
/// PERSIST size when the disk size is not given.
pub const DEFAULT_PERSIST_SIZE: u64 = 256 * MIB;
/// Smallest PERSIST worth having: /var, /etc uppers, agent state.
pub const MIN_PERSIST_SIZE: u64 = 32 * MIB;

/// One partition: GPT number, name, type code (sgdisk's short form) and extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub name: &'static str,
    pub type_code: &'static str,
    pub start: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub esp: Part,
    pub root_a: Part,
    pub root_b: Part,
    pub persist: Part,
    pub total: u64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

impl Layout {
    /// Partitions in disk order: ESP, ROOT-A, ROOT-B, PERSIST, each 1 MiB
    /// aligned; the first and last MiB hold the primary and backup GPT.
    /// `total` fixes the disk size (PERSIST takes the rest).
    pub fn compute(slot_size: u64, total: Option<u64>) -> Result<Layout> {
        let slot_size = round_up(slot_size, MIB);
        let esp = Part {
            number: 1,
            name: NAME_ESP,
            type_code: "ef00",
            start: MIB,
            size: ESP_SIZE,
        };
        let root_a = Part {
            number: 2,
            name: NAME_ROOT_A,
            type_code: "8304",
            start: esp.start + esp.size,
            size: slot_size,
        };
        let root_b = Part {
            number: 3,
            name: NAME_ROOT_B,
            type_code: "8304",
            start: root_a.start + slot_size,
            size: slot_size,
        };
        let persist_start = root_b.start + slot_size;
        let persist_size = match total {
            None => DEFAULT_PERSIST_SIZE,
            Some(t) => {
                let t = t / MIB * MIB;
                let room = t.saturating_sub(persist_start + MIB);
                if room < MIN_PERSIST_SIZE {
                    bail!(
                        "a {} MiB disk is too small: ESP and two {} MiB slots need {} MiB, plus at least {} MiB for PERSIST",
                        t / MIB,
                        slot_size / MIB,
                        (persist_start + MIB) / MIB,
                        MIN_PERSIST_SIZE / MIB
                    );
                }
                room
            }
        };
        let persist = Part {
            number: 4,
            name: NAME_PERSIST,
            type_code: "8300",
            start: persist_start,
            size: persist_size,
        };
        let total = persist.start + persist.size + MIB;
        Ok(Layout {
            esp,
            root_a,
            root_b,
            persist,
            total,
        })
    }

    pub fn parts(&self) -> [&Part; 4] {
        [&self.esp, &self.root_a, &self.root_b, &self.persist]
    }

    /// Writes the GPT onto `disk` (already `total` bytes long).
    /// `disk_guid` and `partition_guids` (by partition number, from 1) are
    /// given, not random, so the same inputs give the same table.
    pub fn write_gpt(
        &self,
        disk: &Path,
        disk_guid: &str,
        partition_guids: &[String; 4],
    ) -> Result<()> {
        let mut cmd = tools::command("sgdisk")?;
        cmd.arg("--clear").arg(format!("--disk-guid={disk_guid}"));
        for p in self.parts() {
            let first = p.start / 512;
            let last = (p.start + p.size) / 512 - 1;
            cmd.arg(format!("--new={}:{first}:{last}", p.number))
                .arg(format!("--typecode={}:{}", p.number, p.type_code))
                .arg(format!("--change-name={}:{}", p.number, p.name))
                .arg(format!(
                    "--partition-guid={}:{}",
                    p.number,
                    partition_guids[p.number as usize - 1]
                ));
        }
        // No -q: sgdisk 1.0.9 with -q exits 0 without writing the table.
        cmd.arg(disk);
        tools::run(&mut cmd)?;
        let out = tools::run(tools::command("sgdisk")?.arg("--verify").arg(disk))?;
        let report = String::from_utf8_lossy(&out.stdout);
        if !report.contains("No problems found") {
            bail!(
                "sgdisk --verify reports problems on {}: {}",
                disk.display(),
                report.trim()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_aligned_and_ordered() {
        let l = Layout::compute(100 * MIB + 1, None).unwrap();
        assert_eq!(l.root_a.size, 101 * MIB);
        let parts = l.parts();
        for w in parts.windows(2) {
            assert_eq!(w[0].start + w[0].size, w[1].start);
        }
        assert!(parts
            .iter()
            .all(|p| p.start % MIB == 0 && p.size % MIB == 0));
        assert_eq!(l.total, l.persist.start + l.persist.size + MIB);
    }

    #[test]
    fn fixed_total_gives_persist_the_rest_or_refuses() {
        let l = Layout::compute(64 * MIB, Some(1 << 30)).unwrap();
        assert_eq!(l.total, 1 << 30);
        let err = Layout::compute(512 * MIB, Some(1 << 30))
            .unwrap_err()
            .to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
