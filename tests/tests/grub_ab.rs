//! Real GRUB (the script from `bootctl grub-cfg`) on real OVMF firmware with a
//! Debian kernel, under QEMU TCG, for each A/B scenario of DESIGN.md §4. Before
//! every boot the env copies are read off the disk and fed to
//! `bootctl::grub_boot`; the slot and trial flag the kernel got, and the bytes
//! GRUB left in both copies, must be exactly what the model predicted.

use bootctl::envblk;
use bootctl::grubcfg::{self, GrubConfig};
use bootctl::{grub_boot, AbState, GrubBoot, Slot, Source};
use e2e::disk::Disk;
use e2e::qemu::{Console, Machine};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const ENV1: &str = "ab1/env";
const ENV2: &str = "ab2/env";
/// The guest's view of the ESP, mounted read-write by the per-boot command.
const MOUNT_ESP: &str = "mount -t vfat /dev/vda1 /mnt";

struct Node {
    machine: Machine,
    disk: Disk,
    default: Slot,
    _dir: tempfile::TempDir,
}

fn node(name: &str, env1: &[u8], env2: &[u8], default: Slot) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GrubConfig {
        cmdline: "console=ttyS0 panic=-1".into(),
        timeout: 0,
        default,
        ..Default::default()
    };
    let disk = Disk::build(
        &dir.path().join("disk.img"),
        &grubcfg::render(&cfg).unwrap(),
        e2e::test_initramfs(),
        &[(ENV1, env1), (ENV2, env2)],
    );
    let machine = Machine::new(&disk.path, &format!("grub_ab-{name}"));
    Node {
        machine,
        disk,
        default,
        _dir: dir,
    }
}

fn armed(slot: Slot, tries: u8) -> [u8; 1024] {
    let mut s = AbState::new(slot.other());
    s.arm_trial(slot, tries).unwrap();
    s.to_block()
}

impl Node {
    fn copies(&self) -> (Vec<u8>, Vec<u8>) {
        (self.disk.read_esp(ENV1), self.disk.read_esp(ENV2))
    }

    /// Boots once and checks the kernel got the slot and trial flag the model
    /// predicts. Returns the console, the prediction, and the copies as the
    /// model says GRUB leaves them.
    fn boot(&mut self, command: &str) -> (Console, GrubBoot, Vec<u8>, Vec<u8>) {
        let (mut c1, mut c2) = self.copies();
        let predicted = grub_boot(&mut c1, &mut c2, self.default);
        let console = self.machine.boot(command, BOOT_TIMEOUT);
        eprintln!(
            "boot {}: {} in {:.1}s (predicted slot {} trial {})",
            console.log.display(),
            console.cmdline(),
            console.elapsed.as_secs_f64(),
            predicted.slot,
            predicted.trial
        );
        assert_eq!(
            console.param("os.slot"),
            Some(predicted.slot.as_str()),
            "slot differs from the model"
        );
        assert_eq!(
            console.param("os.trial").is_some(),
            predicted.trial,
            "trial flag differs from the model"
        );
        (console, predicted, c1, c2)
    }

    /// A boot without guest-side writes: the copies on disk afterwards must be
    /// byte-identical to the model's.
    fn boot_plain(&mut self) -> GrubBoot {
        let (_, predicted, c1, c2) = self.boot("");
        let (d1, d2) = self.copies();
        assert!(d1 == c1, "copy 1 after boot differs from the model");
        assert!(d2 == c2, "copy 2 after boot differs from the model");
        predicted
    }
}

/// Guest command printing both copies as GRUB left them (hex), so a boot whose
/// command then writes can still be checked against the model.
fn dump_copies() -> String {
    format!(
        "echo ENV1=$(od -An -tx1 -v /mnt/{ENV1} | tr -d ' \\n'); echo ENV2=$(od -An -tx1 -v /mnt/{ENV2} | tr -d ' \\n')"
    )
}

fn dumped(output: &str, key: &str) -> Vec<u8> {
    let hex = output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in guest output:\n{output}"));
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn no_trial_boots_the_committed_slot() {
    let block = AbState::new(Slot::B).to_block();
    let mut n = node("no-trial", &block, &block, Slot::A);
    let b = n.boot_plain();
    assert_eq!(
        (b.slot, b.trial, b.source, b.wrote),
        (Slot::B, false, Source::Copy1, [false, false])
    );
}

#[test]
fn unconfirmed_trial_boots_b_three_times_then_falls_back_to_a() {
    let block = armed(Slot::B, 3);
    let mut n = node("unconfirmed", &block, &block, Slot::A);
    for left in [2, 1, 0] {
        let b = n.boot_plain();
        assert_eq!(
            (b.slot, b.trial, b.fallback),
            (Slot::B, true, Some(Slot::A))
        );
        assert_eq!(
            AbState::decode_strict(&n.disk.read_esp(ENV1))
                .unwrap()
                .tries,
            left
        );
    }
    let b = n.boot_plain();
    assert_eq!((b.slot, b.trial), (Slot::A, false));
    let expected = AbState {
        active: Slot::A,
        trial: None,
        tries: 0,
        fail: Some(Slot::B),
    };
    assert_eq!(AbState::decode_strict(&n.disk.read_esp(ENV1)), Ok(expected));
    assert_eq!(AbState::decode_strict(&n.disk.read_esp(ENV2)), Ok(expected));
}

#[test]
fn trial_confirmed_in_guest_stays_on_b_and_commit_is_in_place_on_fat() {
    let block = armed(Slot::B, 3);
    let mut n = node("confirmed", &block, &block, Slot::A);
    let placement = [n.disk.esp_placement(ENV1), n.disk.esp_placement(ENV2)];
    let command = format!(
        "{MOUNT_ESP} && {} && bootctl --esp /mnt confirm B && umount /mnt",
        dump_copies()
    );
    let (console, predicted, c1, c2) = n.boot(&command);
    let (output, rc) = console.command_output();
    assert_eq!(rc, 0, "guest command failed:\n{output}");
    assert_eq!((predicted.slot, predicted.trial), (Slot::B, true));
    assert!(
        dumped(&output, "ENV1=") == c1 && dumped(&output, "ENV2=") == c2,
        "GRUB's writes differ from the model"
    );
    assert_eq!(
        AbState::decode_strict(&n.disk.read_esp(ENV1)),
        Ok(AbState::new(Slot::B))
    );
    assert_eq!(n.disk.read_esp(ENV1), n.disk.read_esp(ENV2));
    // GRUB's save_env and the guest's bootctl commit both rewrote the files
    // where they were: same clusters, same size.
    assert_eq!(
        [n.disk.esp_placement(ENV1), n.disk.esp_placement(ENV2)],
        placement
    );

    let b = n.boot_plain();
    assert_eq!((b.slot, b.trial, b.wrote), (Slot::B, false, [false, false]));
}

#[test]
fn zeroed_copy1_boots_from_copy2_and_next_write_repairs_it() {
    let mut n = node("zeroed-copy1", &[0u8; 1024], &armed(Slot::B, 3), Slot::A);
    let placement = n.disk.esp_placement(ENV1);
    let command = format!(
        "{MOUNT_ESP} && {} && bootctl --esp /mnt status --json --no-repair && bootctl --esp /mnt confirm B && umount /mnt",
        dump_copies()
    );
    let (console, predicted, c1, c2) = n.boot(&command);
    let (output, rc) = console.command_output();
    assert_eq!(rc, 0, "guest command failed:\n{output}");
    assert_eq!(
        (predicted.slot, predicted.trial, predicted.source),
        (Slot::B, true, Source::Copy2)
    );
    assert_eq!(predicted.wrote, [false, true]);
    assert_eq!(
        dumped(&output, "ENV1="),
        vec![0u8; 1024],
        "GRUB wrote into the zeroed copy"
    );
    assert!(
        dumped(&output, "ENV1=") == c1 && dumped(&output, "ENV2=") == c2,
        "GRUB's writes differ from the model"
    );
    assert!(
        output.contains(r#""trial":"B","tries":2,"fail":null,"source":"2","repaired":false"#),
        "{output}"
    );
    // The guest's confirm was the next write: it rebuilt copy 1 from copy 2, in place.
    assert_eq!(
        AbState::decode_strict(&n.disk.read_esp(ENV1)),
        Ok(AbState::new(Slot::B))
    );
    assert_eq!(n.disk.read_esp(ENV1), n.disk.read_esp(ENV2));
    assert_eq!(n.disk.esp_placement(ENV1), placement);
}

#[test]
fn both_copies_broken_boot_the_build_time_default_and_write_nothing() {
    let mut bad = armed(Slot::A, 3);
    envblk::set(&mut bad, b"ab_tries", b"Q").unwrap();
    let mut n = node("both-broken", &[0u8; 1024], &bad, Slot::B);
    let b = n.boot_plain();
    assert_eq!(
        (b.slot, b.trial, b.source, b.wrote),
        (Slot::B, false, Source::Default, [false, false])
    );
}
