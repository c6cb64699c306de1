//! The boot sequence of `os-init` as PID 1: the I/O shell around
//! [`classify`](crate::decide::classify) and [`decide`](crate::decide::decide).
//!
//! Order (DESIGN.md §4 step 4):
//! 1. /proc, /sys, /dev, /run; kernel command line; modules; wait for the disk.
//! 2. ESP read-only at /run/os-init/esp: the A/B state GRUB booted from.
//!    PERSIST read-write at /run/os-init/persist: the slot records.
//! 3. Classify the boot, mount the slot read-only at /sysroot and layer PERSIST,
//!    /var and /etc on it, so a trial is judged on the root exactly as it will
//!    run; then check init, os-release and the slot record.
//! 4. Write the decided change. Crash-safe order: the env first (it is what
//!    GRUB acts on), then the slot record, and the record only once the env
//!    write succeeded. A power cut in between leaves a committed slot whose
//!    record still says `written` (treated as fine), or a failed trial whose
//!    record still says `written` (the env's `ab_fail` tells the agent).
//! 5. Unmount the ESP; switch root, or unmount everything and reboot.

use crate::checks::{self, CheckFailure};
use crate::cmdline::{parse_cmdline, BootParams};
use crate::decide::{self, choose_policy, Boot, LastResort, Next, Write};
use crate::disk;
use crate::gpt;
use crate::modules;
use crate::mounts::{self, Mounts};
use crate::seed;
use crate::switch_root::switch_root;
use crate::sys;
use crate::verity;
use bootctl::partitions::{self, Partitions};
use bootctl::record::{self, ConfirmPolicy, SlotRecord, SlotState};
use bootctl::store::Esp;
use bootctl::{AbState, Slot};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;
use wire::verity::{BootCheck, CheckState, BOOT_CHECK_FILE};

/// Directories of the new root kept on PERSIST: the path in the image, the
/// directory on PERSIST, and whether the image must have it (otherwise it is
/// bound only when the image has the directory to mount on).
const PERSISTENT_DIRS: [(&str, &str, bool); 2] =
    [("var", "var", true), ("opt/cni", "opt-cni", false)];
/// Directory on PERSIST for os-init's seed markers.
const SEED_MARKERS: &str = "os-init";

/// How often a stopped boot repeats its message on the console.
const HALT_REPEAT: Duration = Duration::from_secs(60);

/// Where things are; the defaults are the initramfs contract with `os-image`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the initramfs, where /proc, /sys, /dev and /run are mounted.
    pub root: PathBuf,
    /// The `.ko` files and their `load-order` list.
    pub modules: PathBuf,
    /// Mount point of the new root.
    pub sysroot: PathBuf,
    pub esp_mount: PathBuf,
    /// PERSIST before it moves to `<sysroot>/persist`.
    pub persist_mount: PathBuf,
    pub init: PathBuf,
    pub disk_timeout: Duration,
    /// Pause before rebooting on an unrecoverable error, so the console can be read.
    pub give_up_pause: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/".into(),
            modules: "/modules".into(),
            sysroot: "/sysroot".into(),
            esp_mount: "/run/os-init/esp".into(),
            persist_mount: "/run/os-init/persist".into(),
            init: "/sbin/init".into(),
            disk_timeout: Duration::from_secs(30),
            give_up_pause: Duration::from_secs(5),
        }
    }
}

/// Turns a bug (a panic) into a logged reboot instead of a kernel panic: with
/// panic=abort the hook still runs before the process dies.
pub fn install_panic_hook(pause: Duration) {
    std::panic::set_hook(Box::new(move |info| {
        eprintln!(
            "os-init: error: internal error: {info}; rebooting in {} s",
            pause.as_secs()
        );
        sleep(pause);
        reboot_now();
    }));
}

/// Syncs and reboots. If the kernel refuses, exits: the kernel then panics
/// and `panic=N` reboots, which beats hanging.
fn reboot_now() -> ! {
    sys::sync();
    let e = sys::reboot();
    eprintln!("os-init: error: reboot failed: {e}");
    std::process::exit(1)
}

struct Shell<'a> {
    cfg: &'a Config,
    mounts: Mounts,
    /// Where PERSIST is mounted right now.
    persist: PathBuf,
}

/// Runs the whole boot; ends in the new root's init or in a reboot.
pub fn run(cfg: &Config, init_args: &[OsString]) -> ! {
    let mut sh = Shell {
        cfg,
        mounts: Mounts::default(),
        persist: cfg.persist_mount.clone(),
    };
    if let Err(e) = mounts::mount_api_filesystems(&cfg.root) {
        sh.give_up(&format!("cannot mount the kernel's filesystems: {e}"));
    }
    let params = read_params(&cfg.root.join("proc/cmdline"));
    modules::load_all(&cfg.modules);
    let (sys_dir, dev_dir) = (cfg.root.join("sys"), cfg.root.join("dev"));
    log::info!(
        "waiting up to {} s for the A/B disk",
        cfg.disk_timeout.as_secs()
    );
    let parts = match disk::wait_for_partitions(&sys_dir, &dev_dir, cfg.disk_timeout) {
        Ok(p) => p,
        Err(e) => sh.give_up(&e.to_string()),
    };
    log::info!(
        "A/B disk {}: ESP {}, ROOT-A {}, ROOT-B {}, PERSIST {}",
        parts.disk,
        parts.esp.display(),
        parts.root_a.display(),
        parts.root_b.display(),
        parts.persist.display()
    );
    let env = sh.read_env(&parts.esp);
    grow_persist(&sys_dir, &dev_dir, &parts);
    sh.mount_persist(&parts.persist);
    sh.grow_persist_fs(&parts.persist);
    let boot = match decide::classify(&params, env.as_ref()) {
        Ok(b) => b,
        Err(e) => sh.give_up(&e.to_string()),
    };
    log_boot(&boot);
    let init = params.init.clone().unwrap_or_else(|| cfg.init.clone());
    sh.finish(
        &boot,
        env.as_ref(),
        &params,
        parts.root(boot.slot()),
        &init,
        init_args,
    )
}

/// Extends PERSIST to the end of a disk bigger than the image it was
/// written from ([`gpt`]). Anything odd is logged and left alone.
fn grow_persist(sys_dir: &Path, dev_dir: &Path, parts: &Partitions) {
    let block = sys_dir.join("block").join(&parts.disk);
    let read = |name: &str| -> Option<u64> {
        fs::read_to_string(block.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    match read("queue/logical_block_size") {
        Some(gpt::SECTOR) => {}
        other => {
            log::info!("not growing PERSIST: logical block size {other:?}, only 512 is handled");
            return;
        }
    }
    // In 512-byte sectors, whatever the device's own size.
    let Some(sectors) = read("size") else {
        log::warn!("not growing PERSIST: no size in {}", block.display());
        return;
    };
    let path = dev_dir.join(&parts.disk);
    let disk = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("not growing PERSIST: open {}: {e}", path.display());
            return;
        }
    };
    match gpt::grow(&disk, sectors, partitions::NAME_PERSIST) {
        Ok(None) => {}
        Ok(Some(g)) => {
            log::info!(
                "grew PERSIST (partition {}) from {} to {} MiB: the disk is larger than the image \
                 it was written from",
                g.number,
                ((g.old_last - g.first + 1) * gpt::SECTOR) >> 20,
                g.bytes() >> 20
            );
            if let Err(e) = sys::resize_partition(&disk, g.number, g.first * gpt::SECTOR, g.bytes())
            {
                log::warn!(
                    "the kernel did not take PERSIST's new size now ({e}); it will after a reboot"
                );
            }
        }
        Err(e) => log::warn!("not growing PERSIST: {e}"),
    }
}

fn read_params(path: &Path) -> BootParams {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        log::warn!("cannot read {}: {e}", path.display());
        String::new()
    });
    let params = parse_cmdline(&text);
    for w in &params.warnings {
        log::warn!("{w}");
    }
    let slot = params.slot.map_or("none", Slot::as_str);
    log::info!(
        "kernel command line: os.slot={slot} os.trial={}",
        u8::from(params.trial)
    );
    params
}

fn log_boot(boot: &Boot) {
    match *boot {
        Boot::Normal { slot } => log::info!("normal boot of committed slot {slot}"),
        Boot::Trial { slot, tries_left } => {
            log::info!("trial boot of slot {slot} ({tries_left} more tries after this one)")
        }
        Boot::Fallback { slot, failed } => log::warn!(
            "slot {failed} is on trial but GRUB booted the committed slot {slot} without \
             os.trial=1: slot {failed}'s kernel could not be loaded; marking {failed} failed"
        ),
        Boot::Unmanaged { slot, why } => {
            log::warn!("booting slot {slot} as GRUB chose, changing nothing: {why}")
        }
    }
}

/// A short description of an A/B state for the log.
fn describe(s: &AbState) -> String {
    let trial = match s.trial {
        Some(t) => format!("slot {t} on trial with {} tries left", s.tries),
        None => "nothing on trial".into(),
    };
    let fail = s.fail.map_or("none", Slot::as_str);
    format!(
        "committed slot {}, {trial}, last failed trial: {fail}",
        s.active
    )
}

impl Shell<'_> {
    /// Mounts the ESP read-only and loads the state GRUB booted from.
    fn read_env(&mut self, esp: &Path) -> Option<AbState> {
        let at = &self.cfg.esp_mount;
        let mounted = self.mounts.mount(
            esp,
            at,
            "vfat",
            mounts::ESP_RO_FLAGS,
            Some(mounts::ESP_OPTIONS),
        );
        if let Err(e) = mounted {
            log::error!(
                "cannot mount the ESP {} at {}: {e}",
                esp.display(),
                at.display()
            );
            return None;
        }
        log::info!(
            "mounted the ESP {} read-only at {}",
            esp.display(),
            at.display()
        );
        let snap = Esp::new(at).read();
        match snap.chosen() {
            Some((state, source)) => {
                log::info!("A/B state (copy {}): {}", source.as_str(), describe(&state));
                Some(state)
            }
            None => {
                let why = |i: usize| match &snap.copies[i].grub {
                    Err(e) => e.to_string(),
                    Ok(_) => "valid".into(),
                };
                log::error!(
                    "no usable A/B state on the ESP (copy 1: {}; copy 2: {})",
                    why(0),
                    why(1)
                );
                None
            }
        }
    }

    fn mount_persist(&mut self, device: &Path) {
        let at = self.cfg.persist_mount.clone();
        log::info!(
            "mounting PERSIST {} read-write at {}",
            device.display(),
            at.display()
        );
        if let Err(e) = self.mounts.mount(device, &at, "ext4", 0, None) {
            // Without PERSIST there are no records to choose another slot by,
            // and a reboot would meet the same partition: stop here.
            self.halt(&format!(
                "cannot mount PERSIST {} (ext4) at {}: {e}",
                device.display(),
                at.display()
            ));
        }
    }

    /// The device to mount the slot from: through dm-verity when its record
    /// names a tree, after reading every block through it. On a trial, a
    /// tree that cannot be set up or a corrupt block fails the trial; on
    /// other boots both are reported (console, [`BOOT_CHECK_FILE`] for
    /// `os-agent status`) and the slot boots: through dm-verity when it is
    /// set up (a corrupt block reads as an I/O error, never as wrong data),
    /// else from the partition.
    fn open_root(
        &mut self,
        slot: Slot,
        trial: bool,
        device: &Path,
        record: &Result<SlotRecord, String>,
    ) -> Result<PathBuf, CheckFailure> {
        let report = |state: CheckState, detail: String| {
            self.report_verity(BootCheck {
                slot,
                state,
                detail,
            })
        };
        let params = match record
            .as_ref()
            .map_err(String::clone)
            .and_then(SlotRecord::verity)
        {
            Ok(Some(v)) => v,
            Ok(None) => {
                log::info!("slot {slot}: its image has no dm-verity tree; mounting it as it is");
                report(
                    CheckState::Off,
                    "the slot's image has no verity tree".into(),
                );
                return Ok(device.to_path_buf());
            }
            // The record check below reports an unusable record.
            Err(e) => {
                report(CheckState::Off, format!("no usable slot record: {e}"));
                return Ok(device.to_path_buf());
            }
        };
        let name = format!("os-root-{slot}");
        let dev = match verity::activate(&self.cfg.root.join("dev"), &name, device, &params) {
            Ok(d) => d,
            Err(e) => {
                let problem = format!("cannot set up dm-verity for {}: {e}", device.display());
                report(CheckState::Unavailable, problem.clone());
                if trial {
                    return Err(CheckFailure::Verity { problem });
                }
                log::error!(
                    "slot {slot}: {problem}; booting the committed slot from {} WITHOUT \
                     integrity checking",
                    device.display()
                );
                return Ok(device.to_path_buf());
            }
        };
        let size = params.hash_offset;
        log::info!(
            "slot {slot}: dm-verity device {} over {}, root hash {}; reading all {} MiB",
            dev.path.display(),
            device.display(),
            wire::digest::hex(&params.root_hash),
            size >> 20
        );
        let problem = match verity::scan(&dev.path, size) {
            Ok(s) if s.corrupt_blocks == 0 => {
                let secs = s.elapsed.as_secs_f64();
                let detail = format!(
                    "{} MiB read and verified in {secs:.1} s ({:.0} MiB/s)",
                    s.bytes >> 20,
                    s.bytes as f64 / f64::from(1 << 20) / secs.max(1e-3)
                );
                log::info!("slot {slot}: verity: {detail}");
                report(CheckState::Verified, detail);
                return Ok(dev.path);
            }
            Ok(s) => format!(
                "{} block(s) of the root do not match its verity tree, the first at byte {} \
                 (its bytes changed after the image was written)",
                s.corrupt_blocks,
                s.first_corrupt.unwrap_or(0)
            ),
            Err(e) => format!("reading {} failed: {e}", dev.path.display()),
        };
        report(CheckState::Corrupt, problem.clone());
        if trial {
            return Err(CheckFailure::Verity { problem });
        }
        log::error!("slot {slot}: CORRUPT ROOT: {problem}");
        log::error!(
            "slot {slot}: booting it through dm-verity: a corrupt block reads as an I/O error, \
             never as wrong data. Write a good image to this node (upgrade, or rollback to a \
             good slot) soon."
        );
        Ok(dev.path)
    }

    /// Leaves the verity outcome where `os-agent status` reads it.
    fn report_verity(&self, check: BootCheck) {
        let path = self.cfg.root.join(BOOT_CHECK_FILE.trim_start_matches('/'));
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, check.to_text()));
        if let Err(e) = written {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// Grows the mounted PERSIST file system to its partition (after
    /// [`grow_persist`], or a power cut between the two on an earlier boot).
    fn grow_persist_fs(&self, device: &Path) {
        let sizes = File::open(device)
            .map_err(|e| e.to_string())
            .and_then(|mut f| {
                let (blocks, size) = gpt::ext4_blocks(&f)?;
                let bytes = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
                Ok((blocks, size, bytes))
            });
        let (blocks, size, bytes) = match sizes {
            Ok(s) => s,
            Err(e) => {
                log::warn!("not growing the PERSIST file system: {e}");
                return;
            }
        };
        let want = bytes / size;
        if want < blocks + gpt::MIN_GROWTH * gpt::SECTOR / size {
            return;
        }
        let start = std::time::Instant::now();
        let resized = File::open(&self.persist).and_then(|dir| sys::ext4_resize(&dir, want));
        match resized {
            Ok(()) => log::info!(
                "grew the PERSIST file system from {} to {} MiB in {:.1} s",
                (blocks * size) >> 20,
                (want * size) >> 20,
                start.elapsed().as_secs_f64()
            ),
            Err(e) => log::warn!("cannot grow the PERSIST file system: {e}"),
        }
    }

    /// Mounts the slot read-only at the sysroot.
    fn mount_slot(&mut self, device: &Path, slot: Slot) -> Result<(), CheckFailure> {
        let at = self.cfg.sysroot.clone();
        log::info!(
            "mounting {} (slot {slot}) read-only at {}",
            device.display(),
            at.display()
        );
        self.mounts
            .mount(device, &at, "ext4", sys::MS_RDONLY, None)
            .map_err(|e| CheckFailure::Mount {
                what: format!(
                    "{} (slot {slot}, ext4) at {}",
                    device.display(),
                    at.display()
                ),
                error: e.to_string(),
            })
    }

    /// Layers PERSIST on the mounted slot: PERSIST at /persist, its `var` bound
    /// on /var (and `opt-cni` on /opt/cni when the image has that directory),
    /// each seeded from the image's own copy on the first boot of `image`,
    /// and /etc as an overlay with this slot's upper layer on PERSIST.
    fn layer_persist(&mut self, slot: Slot, image: &str) -> Result<(), CheckFailure> {
        let root = self.cfg.sysroot.clone();
        let fail = |what: String| {
            move |e: std::io::Error| CheckFailure::Mount {
                what,
                error: e.to_string(),
            }
        };
        let target = root.join("persist");
        log::info!("moving PERSIST to {}", target.display());
        self.mounts
            .move_mount(&self.persist.clone(), &target)
            .map_err(fail(format!("PERSIST at {}", target.display())))?;
        self.persist = target.clone();

        for (dir, on_persist, required) in PERSISTENT_DIRS {
            let resolved = checks::resolve_in_root(&root, Path::new(dir));
            let present = resolved
                .as_ref()
                .is_ok_and(|at| fs::symlink_metadata(at).is_ok_and(|m| m.is_dir()));
            if !required && !present {
                continue;
            }
            let at = resolved.map_err(fail(format!("/{dir} in slot {slot}")))?;
            let src = target.join(on_persist);
            seed::ensure_dir_below(&target, Path::new(on_persist))
                .map_err(fail(format!("{} on PERSIST", src.display())))?;
            self.seed_once(dir, &at, &src, image);
            log::info!("binding {} onto {}", src.display(), at.display());
            self.mounts.bind(&src, &at).map_err(fail(format!(
                "{} on {}",
                src.display(),
                at.display()
            )))?;
        }

        let etc = root.join("etc");
        let layer = target.join("etc-overlay").join(slot.as_str());
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        log::info!("overlaying {} with {}", etc.display(), upper.display());
        let below = |dir: &str| {
            let rel = Path::new("etc-overlay").join(slot.as_str()).join(dir);
            seed::ensure_dir_below(&target, &rel)
        };
        below("upper")
            .and_then(|()| below("work"))
            .and_then(|()| self.mounts.overlay(&etc, &upper, &work, &etc))
            .map_err(fail(format!("the /etc overlay on {}", etc.display())))
    }

    /// Copies what PERSIST's copy of `/dir` lacks from the image's (`at`,
    /// before the bind hides it), once per image: the marker
    /// `PERSIST/os-init/seeded-<dir>` names the image last seeded from. A
    /// failure is logged, not fatal: the directory works, maybe incomplete.
    fn seed_once(&self, dir: &str, at: &Path, on_persist: &Path, image: &str) {
        let marker = self
            .persist
            .join(SEED_MARKERS)
            .join(format!("seeded-{}", dir.replace('/', "-")));
        let seeded = bootctl::small_file::read(&marker, 4096).ok().flatten();
        if !image.is_empty() && seeded.is_some_and(|m| m.trim() == image) {
            return;
        }
        match seed::seed(at, on_persist) {
            Ok(done) => {
                log::info!(
                    "seeded /{dir} on PERSIST from the image: {} entries added ({} KiB), {} kept, \
                     {} special files skipped",
                    done.created,
                    done.bytes >> 10,
                    done.kept,
                    done.skipped
                );
                // Atomically and never through a link planted on PERSIST.
                if let Err(e) =
                    bootctl::record::write_atomic(&marker, format!("{image}\n").as_bytes())
                {
                    log::warn!("cannot write {}: {e}", marker.display());
                }
            }
            Err(e) => log::error!(
                "seeding /{dir} on PERSIST from {} failed: {e}; it may lack files the image ships",
                at.display()
            ),
        }
    }

    /// Everything after classification: mount, check, decide, write, leave.
    fn finish(
        &mut self,
        boot: &Boot,
        env: Option<&AbState>,
        params: &BootParams,
        device: &Path,
        init: &Path,
        init_args: &[OsString],
    ) -> ! {
        let slot = boot.slot();
        let record = self.read_record(slot);
        let sysroot = self.cfg.sysroot.clone();
        let trial = matches!(boot, Boot::Trial { .. });
        // What the image is, for "first boot of this image" (seeding).
        let image = record.as_ref().map_or(String::new(), |r| r.digest.clone());
        let checks = self
            .open_root(slot, trial, device, &record)
            .and_then(|root| self.mount_slot(&root, slot))
            .and_then(|()| self.layer_persist(slot, &image))
            .and_then(|()| checks::check_slot(&sysroot, init, &record));
        let policy = self.report_checks(boot, params, &record, &checks);
        let plan = decide::decide(boot, &checks, policy);
        if let Some(write) = plan.write {
            self.apply(write);
        }
        let esp = self.cfg.esp_mount.clone();
        let reason = checks.err().map(|f| format!("slot {slot}: {f}"));
        if plan.next != Next::GiveUp {
            // The last resort may still have to write the env.
            self.mounts.unmount(&esp);
        }
        match plan.next {
            Next::SwitchRoot => self.switch(slot, init, init_args),
            Next::RebootToCommitted => {
                log::info!("rebooting now; GRUB boots the committed slot");
                self.mounts.unmount_all();
                reboot_now()
            }
            Next::GiveUp => self.last_resort(boot, env, reason.as_deref().unwrap_or("cannot boot")),
        }
    }

    /// The booted slot cannot be used: try the other slot once if its record
    /// says it booted good, else stop (DESIGN.md §4: never a reboot loop).
    /// Order: the env first (arm the one-try trial), then the broken slot's
    /// record (`failed`) and the note; a power cut in between leaves the
    /// trial armed, which is what matters.
    fn last_resort(&mut self, boot: &Boot, env: Option<&AbState>, reason: &str) -> ! {
        log::error!("{reason}");
        let broken = boot.slot();
        let other = record::read(&self.persist, broken.other()).ok();
        let LastResort::TryOther { slot } = decide::last_resort(boot, env, other.as_ref()) else {
            self.halt(&format!(
                "{reason}; slot {} is not recorded as booting good, so there is nothing else to try",
                broken.other()
            ));
        };
        log::warn!(
            "slot {slot} is recorded as booting good: trying it once (a trial with one try)"
        );
        let esp_dir = self.cfg.esp_mount.clone();
        if let Err(e) = self.mounts.remount_esp_rw(&esp_dir) {
            log::error!("cannot remount the ESP read-write: {e}");
        }
        match Esp::new(&esp_dir).update(|st| st.arm_trial(slot, 1)) {
            Ok(((), state)) => log::info!("A/B state written: {}", describe(&state)),
            Err(e) => self.halt(&format!(
                "{reason}; arming a trial of slot {slot} failed: {e}"
            )),
        }
        self.set_record_state(broken, SlotState::Failed);
        let note = record::RescueNote {
            from: broken,
            to: slot,
            reason: reason.to_owned(),
        };
        match record::write_rescue(&self.persist, &note) {
            Ok(()) => log::info!(
                "recorded why in {}/{}/{}",
                self.persist.display(),
                record::RECORD_DIR,
                record::RESCUE_FILE
            ),
            Err(e) => log::error!("cannot record why: {e}"),
        }
        self.mounts.unmount(&esp_dir);
        self.mounts.unmount_all();
        log::info!("rebooting now; GRUB boots slot {slot} on trial");
        reboot_now()
    }

    /// Stops the boot for good: a person has to act. PID 1 must not exit (the
    /// kernel would panic and `panic=N` reboot into the same failure), so it
    /// repeats the message now and then for whoever attaches a console.
    fn halt(&mut self, reason: &str) -> ! {
        self.mounts.unmount_all();
        sys::sync();
        loop {
            log::error!("{reason}");
            log::error!(
                "stopped, not rebooting: no slot is known to boot. Pick the other \
                 slot in the GRUB menu, or repair or reinstall the disk from a rescue system."
            );
            sleep(HALT_REPEAT);
        }
    }

    fn read_record(&self, slot: Slot) -> Result<SlotRecord, String> {
        let rec = record::read(&self.persist, slot).map_err(|e| e.to_string());
        match &rec {
            Ok(r) => log::info!(
                "slot record {slot}: state {}, version {:?}",
                r.state.as_str(),
                r.version
            ),
            Err(e) => log::warn!("{e}"),
        }
        rec
    }

    /// Logs the checks' outcome and, for a trial, picks the confirm policy.
    fn report_checks(
        &self,
        boot: &Boot,
        params: &BootParams,
        record: &Result<SlotRecord, String>,
        checks: &Result<(), CheckFailure>,
    ) -> ConfirmPolicy {
        let slot = boot.slot();
        let record_policy = record.as_ref().ok().and_then(|r| r.confirm);
        let agent = checks.is_ok() && checks::agent_installed(&self.cfg.sysroot);
        let (policy, source) = choose_policy(params.confirm, record_policy, agent);
        match (boot, checks) {
            (Boot::Trial { .. }, Ok(())) => {
                log::info!("trial of slot {slot} passed the initramfs checks");
                log::info!("confirm policy: {} ({})", policy.as_str(), source.as_str());
                match policy {
                    ConfirmPolicy::Initramfs => log::info!("confirming slot {slot} now"),
                    ConfirmPolicy::Agent => log::info!(
                        "leaving the trial of slot {slot} open for os-agent's health gate"
                    ),
                }
            }
            (Boot::Trial { .. }, Err(f)) => log::error!("trial of slot {slot} failed: {f}"),
            (_, Err(f)) if !f.prevents_boot() => log::warn!("slot {slot}: {f}; booting it anyway"),
            _ => {}
        }
        policy
    }

    /// Writes the env change, then the record (only if the env write worked).
    fn apply(&mut self, write: Write) {
        let (slot, new_state) = match write {
            Write::Confirm(s) => (s, SlotState::Good),
            Write::MarkFailed(s) => (s, SlotState::Failed),
        };
        let esp_dir = self.cfg.esp_mount.clone();
        log::info!("remounting the ESP read-write at {}", esp_dir.display());
        if let Err(e) = self.mounts.remount_esp_rw(&esp_dir) {
            log::error!("cannot remount the ESP read-write: {e}");
        }
        let esp = Esp::new(&esp_dir);
        let result = match write {
            Write::Confirm(s) => esp.update(|st| st.confirm(s).map(drop)),
            Write::MarkFailed(s) => esp.update(|st| st.mark_failed(s)),
        };
        match result {
            Ok(((), state)) => log::info!("A/B state written: {}", describe(&state)),
            Err(e) => {
                log::error!("cannot write the A/B state: {e}; slot record {slot} left as it is");
                return;
            }
        }
        self.set_record_state(slot, new_state);
    }

    fn set_record_state(&self, slot: Slot, state: SlotState) {
        let mut rec = match record::read(&self.persist, slot) {
            Ok(r) if r.state != SlotState::Empty => r,
            Ok(_) => {
                log::warn!(
                    "slot {slot} has no record; not recording it as {}",
                    state.as_str()
                );
                return;
            }
            Err(e) => {
                log::warn!("{e}; not recording slot {slot} as {}", state.as_str());
                return;
            }
        };
        let old = rec.state;
        rec.state = state;
        match record::write(&self.persist, &rec) {
            Ok(()) => log::info!("slot record {slot}: {} -> {}", old.as_str(), state.as_str()),
            Err(e) => log::error!("cannot update slot record {slot}: {e}"),
        }
    }

    fn switch(&mut self, slot: Slot, init: &Path, init_args: &[OsString]) -> ! {
        let root = self.cfg.sysroot.clone();
        log::info!(
            "switching root to {} (slot {slot}), init {}",
            root.display(),
            init.display()
        );
        // The mounts travel with the new root from here on.
        self.mounts = Mounts::default();
        let e = switch_root(&root, init, init_args);
        self.give_up(&format!("switch root to {} failed: {e}", root.display()))
    }

    /// Reports an unrecoverable error, pauses, unmounts and reboots.
    fn give_up(&mut self, reason: &str) -> ! {
        log::error!("{reason}");
        log::error!(
            "cannot continue the boot; rebooting in {} s",
            self.cfg.give_up_pause.as_secs()
        );
        sleep(self.cfg.give_up_pause);
        self.mounts.unmount_all();
        reboot_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_description() {
        let mut s = AbState::new(Slot::A);
        assert_eq!(
            describe(&s),
            "committed slot A, nothing on trial, last failed trial: none"
        );
        s.arm_trial(Slot::B, 2).unwrap();
        assert_eq!(
            describe(&s),
            "committed slot A, slot B on trial with 2 tries left, last failed trial: none"
        );
        s.mark_failed(Slot::B).unwrap();
        assert!(describe(&s).ends_with("last failed trial: B"));
    }
}
