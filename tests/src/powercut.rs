//! Power-cut campaign (issue 5): on one demo node, upgrade after upgrade, kill
//! QEMU (SIGKILL) at a random point of prepare, arm, the reboot, the trial
//! slot's first boot or a `configure` transaction; then check the disk, boot
//! again and check the node. The
//! disk is served by a forgetful NBD server (`nbd.rs`, issue 18): a cut loses
//! the writes the guest had not flushed, all of them or a seeded random subset.
//!
//! After each cut: at least one env copy is valid (bootctl writes copy 1, then
//! copy 2), every slot recorded `written` or `good` holds exactly the recorded
//! image (BLAKE3 of the partition), the next boot runs a slot whose record says
//! it holds that version and is not `failed`/`empty`, and the agent's after-boot
//! check completes; after the campaign both env copies are valid and one more
//! upgrade, uncut, is confirmed. Failures name the seed and the cut.
//!
//! A `configure` cut sets 300 sysctl lines in /etc/sysctl.conf (PERSIST's /etc
//! overlay, two filesystem blocks) and a kernel argument of the running slot
//! (`args-<slot>` on the FAT ESP), all to the cut's number. After it each file
//! holds the old values or the new ones, whole; both new if the command had
//! answered before the cut; and the kernel booted with the argument the ESP
//! file holds. (A cut between the two files may leave one old and one new:
//! a transaction is all-or-nothing on errors, not across a power cut.)

use crate::console::{Interactive, BOOT_MARKER};
use crate::demo::{Artifacts, Bundle};
use crate::disk::{self, Disk};
use crate::http::FileServer;
use crate::nbd::{ForgetfulDisk, Loss};
use bootctl::record::{SlotRecord, SlotState};
use bootctl::state::AbState;
use bootctl::Slot;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Where in the upgrade the power goes: after `marker`, plus a delay drawn
/// below `max_delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Download and write of the inactive slot.
    Prepare,
    /// Seeding /etc and arming the trial (after the verified write).
    Arm,
    /// From the agent's reboot through firmware and GRUB.
    Reboot,
    /// The trial slot's first boot: kernel, os-init, health gate, confirm.
    TrialBoot,
    /// `os-agent configure` replacing a file on PERSIST and one on the ESP.
    Configure,
    /// Up to 2 s after `os-agent configure` answered success: inside the
    /// kernel's writeback delay, so only what the agent flushed survives.
    Configured,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Prepare,
        Phase::Arm,
        Phase::Reboot,
        Phase::TrialBoot,
        Phase::Configure,
        Phase::Configured,
    ];

    /// The phase named `name` (`prepare`, `arm`, `reboot`, `trial`,
    /// `configure`, `configured`).
    pub fn named(name: &str) -> Option<Phase> {
        Some(match name.trim() {
            "prepare" => Phase::Prepare,
            "arm" => Phase::Arm,
            "reboot" => Phase::Reboot,
            "trial" => Phase::TrialBoot,
            "configure" => Phase::Configure,
            "configured" => Phase::Configured,
            _ => return None,
        })
    }

    /// What the console shows when the phase of cut `index` begins.
    fn marker(self, index: usize) -> String {
        match self {
            Phase::Prepare => "agent::job] prepare: http".into(),
            Phase::Arm => "agent::job] prepare: slot".into(),
            Phase::Reboot => "rebooting: upgrade".into(),
            Phase::TrialBoot => BOOT_MARKER.into(),
            Phase::Configure => "configure: kernel.sysctl.persist writes".into(),
            // The shell's answer; its echo of the command line shows `$?`.
            Phase::Configured => format!("{}0", answer_prefix(index)),
        }
    }

    fn max_delay_ms(self) -> u64 {
        match self {
            // The write of a 48 MiB image takes 3-6 s here; the seed and the
            // arm take milliseconds after the verified write is logged.
            Phase::Prepare => 4_000,
            Phase::Arm => 40,
            Phase::Reboot => 4_000,
            Phase::TrialBoot => 15_000,
            // Two small files replaced and fsynced: tens of milliseconds.
            Phase::Configure => 80,
            Phase::Configured => 2_000,
        }
    }
}

/// splitmix64: a seeded, replayable sequence without a crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

#[derive(Debug, Clone)]
pub struct Cut {
    pub index: usize,
    pub phase: Phase,
    pub delay_ms: u64,
    /// Slot and version running after the cut and the recovery boot.
    pub recovered: (String, String),
    /// Whether the node runs the version the cut upgrade was for.
    pub upgraded: bool,
    /// What the cut did to the disk's write cache (`None`: a plain file,
    /// which keeps every write QEMU was handed).
    pub loss: Option<Loss>,
    pub duration: Duration,
}

/// What a campaign does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cuts: usize,
    /// Draws each cut's phase, delay and loss.
    pub seed: u64,
    /// Where cuts may fall.
    pub phases: Vec<Phase>,
    /// Every cut loses every unflushed write (otherwise half the cuts lose a
    /// random subset).
    pub lose_all: bool,
}

/// Runs `plan` on a fresh disk at `dir/node.img`.
pub fn campaign(
    art: &Artifacts,
    dir: &Path,
    plan: &Plan,
    narrate: &mut dyn FnMut(&str),
) -> Result<Vec<Cut>, String> {
    let Plan {
        cuts,
        seed,
        ref phases,
        lose_all,
    } = *plan;
    if phases.is_empty() {
        return Err("no phase to cut in".into());
    }
    let image = dir.join("node.img");
    art.build_disk(&image);
    let server = FileServer::start(&art.dir.join("bundles"))
        .map_err(|e| format!("start the HTTP server: {e}"))?;
    let mut rng = Rng::new(seed);
    // The guest's disk: behind a forgetful NBD server (unflushed writes are
    // lost at a cut), unless POWERCUT_DISK=file (every write QEMU got survives).
    // The socket in a short temp path: a Unix socket path has at most 107 bytes.
    let sockets = tempfile::tempdir().map_err(|e| e.to_string())?;
    let nbd = match std::env::var("POWERCUT_DISK").as_deref() {
        Ok("file") => None,
        _ => Some(
            ForgetfulDisk::serve(&image, &sockets.path().join("node.sock"))
                .map_err(|e| format!("start the NBD server: {e}"))?,
        ),
    };
    let boot_disk = nbd.as_ref().map_or(image.clone(), |d| d.socket.clone());
    let mut m = Interactive::start(&boot_disk, &dir.join("logs/cut-0"));
    let mut running = wait_boot(&mut m)?;
    if nbd.is_some() {
        // The guest must see a volatile write cache, or it would never flush.
        let (mode, _) = m.run(
            "cat /sys/block/vda/queue/write_cache",
            Duration::from_secs(60),
        )?;
        if !mode.contains("write back") {
            return Err(format!("the guest's disk is not write-back: {mode:?}"));
        }
    }
    let mut done = vec![];
    for index in 1..=cuts {
        let phase = phases[rng.below(phases.len() as u64) as usize];
        let delay_ms = rng.below(phase.max_delay_ms());
        let loss = nbd.as_ref().map(|d| {
            let loss = match rng.below(2) {
                _ if lose_all => Loss::All,
                0 => Loss::All,
                _ => Loss::Subset(rng.below(u64::MAX)),
            };
            d.set_loss(loss);
            loss
        });
        let at = format!("seed {seed}, cut {index}: {phase:?} + {delay_ms} ms, {loss:?}");
        let start = Instant::now();
        let context = |e: String| format!("{at}: {e}");
        let target = next_bundle(art, &running);
        let before = match phase {
            Phase::Configure | Phase::Configured => {
                let before = read_configured(&mut m, &running.0).map_err(context)?;
                m.run(&configure_request(index), Duration::from_secs(60))
                    .map_err(context)?;
                m.send_line(&format!(
                    "os-agent configure --file /tmp/powercut.json; echo {}$?",
                    answer_prefix(index)
                ))
                .map_err(context)?;
                Some(before)
            }
            _ => {
                m.send_line(&upgrade_cmd(&server, target))
                    .map_err(context)?;
                None
            }
        };
        m.wait_for(&phase.marker(index), TIMEOUT).map_err(context)?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        let console = m.dir.join("console.log");
        m.close();
        if let Some(d) = &nbd {
            d.wait_idle();
        }
        check_disk(&image).map_err(context)?;
        let was_running = running.clone();
        m = Interactive::start(&boot_disk, &dir.join(format!("logs/cut-{index}")));
        running = wait_boot(&mut m).map_err(context)?;
        check_running(&mut m, &running).map_err(context)?;
        if let Some(before) = before {
            // What the console showed before the power went (the log is
            // complete once `close` returned).
            let shown =
                String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
            let answered = shown
                .lines()
                .filter_map(|l| l.trim().strip_prefix(&answer_prefix(index)))
                // Not the echo of the command line (`$?`): the shell's answer.
                .find(|rc| !rc.is_empty() && rc.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_owned);
            if running.0 != was_running.0 {
                return Err(context(format!(
                    "slot {} runs after a configure cut on slot {}",
                    running.0, was_running.0
                )));
            }
            let after = read_configured(&mut m, &running.0).map_err(context)?;
            check_configured(&before, &after, index, answered.as_deref()).map_err(context)?;
        }
        narrate(&format!(
            "{at}: recovered, v{} runs from slot {} ({:.0} s)",
            running.1,
            running.0,
            start.elapsed().as_secs_f64()
        ));
        done.push(Cut {
            index,
            phase,
            delay_ms,
            recovered: running.clone(),
            upgraded: running.1 == target.version,
            loss,
            duration: start.elapsed(),
        });
    }
    let at = format!("seed {seed}, after {cuts} cuts: the fresh upgrade");
    let target = next_bundle(art, &running);
    m.send_line(&upgrade_cmd(&server, target))
        .map_err(|e| format!("{at}: {e}"))?;
    m.wait_for("rebooting: upgrade", TIMEOUT)
        .map_err(|e| format!("{at}: {e}"))?;
    let after = wait_boot(&mut m).map_err(|e| format!("{at}: {e}"))?;
    m.close();
    if let Some(d) = &nbd {
        d.wait_idle();
        narrate(&format!("disk: {:?}", d.stats()));
    }
    if after.1 != target.version {
        return Err(format!("{at}: v{} runs, not v{}", after.1, target.version));
    }
    check_disk(&image).map_err(|e| format!("{at}: {e}"))?;
    for copy in ["ab1/env", "ab2/env"] {
        let bytes = Disk::open(&image).read_esp(copy);
        AbState::decode_strict(&bytes)
            .map_err(|e| format!("{at}: env copy {copy} invalid after the upgrade: {e:?}"))?;
    }
    Ok(done)
}

fn next_bundle<'a>(art: &'a Artifacts, running: &(String, String)) -> &'a Bundle {
    // Alternate between v1 and v2: both are good images.
    if running.1 == "1" {
        &art.bundles[1]
    } else {
        &art.bundles[0]
    }
}

fn upgrade_cmd(server: &FileServer, b: &Bundle) -> String {
    let name = b.image.file_name().unwrap().to_string_lossy();
    format!(
        "os-agent upgrade --url http://10.0.2.2:{}/{name} --digest {} --version {} --allow-http",
        server.port, b.digest, b.version
    )
}

/// Waits for a boot's demo line and the agent's after-boot verdict; returns
/// (slot, version). A trial that fails its gate reboots; the next boot counts.
fn wait_boot(m: &mut Interactive) -> Result<(String, String), String> {
    loop {
        let line = m.wait_for("OS-DEMO version=", TIMEOUT)?;
        let verdict = m.wait_for("after boot: ", TIMEOUT)?;
        let field = |k: &str| {
            line.lines()
                .rev()
                .find(|l| l.contains("OS-DEMO version="))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(k)))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        if verdict.contains("after boot: Failed") {
            continue;
        }
        if !verdict.contains("after boot: NoTrial") && !verdict.contains("after boot: Confirmed") {
            return Err(format!("unexpected after-boot verdict: {verdict}"));
        }
        return Ok((field("slot="), field("version=")));
    }
}

/// What the configure cuts set, as the running node sees it: the value of
/// every `powercut.kNNN` line of /etc/sysctl.conf, of `powercut.gen` in the
/// ESP's `ab/args-<slot>` and on the kernel command line (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Configured {
    sysctl: Option<String>,
    args: Option<String>,
    cmdline: Option<String>,
}

const CONFIGURE_KEYS: usize = 300;

/// What the shell prints before `os-agent configure`'s exit status in cut `index`.
fn answer_prefix(index: usize) -> String {
    format!("CONFIGURE-DONE-{index}-RC=")
}

/// A shell command writing /tmp/powercut.json: a KubeOS ConfigureRequest
/// setting every sysctl line and the kernel argument to `gen`. Built in the
/// guest: the request is longer than a terminal line may be.
fn configure_request(gen: usize) -> String {
    format!(
        "{{ printf '[{{\"configs\":[{{\"model\":\"kernel.sysctl.persist\",\"config_path\":\"/etc/sysctl.conf\",\"contents\":{{'; \
         i=0; while [ $i -lt {CONFIGURE_KEYS} ]; do [ $i -gt 0 ] && printf ','; \
         printf '\"powercut.k%03d\":{{\"value\":\"{gen}\",\"operation\":\"update\"}}' $i; i=$((i+1)); done; \
         printf '}}}},{{\"model\":\"grub.cmdline.current\",\"config_path\":\"\",\"contents\":{{\"powercut.gen\":{{\"value\":\"{gen}\",\"operation\":\"update\"}}}}}}]}}]'; }} >/tmp/powercut.json"
    )
}

fn read_configured(m: &mut Interactive, slot: &str) -> Result<Configured, String> {
    // The sysctl file: absent, or its line count, the lines that are not
    // `powercut.kNNN = VALUE` and each value's count.
    let (out, _) = m.run(
        "f=/etc/sysctl.conf; if [ -e $f ]; then echo SYSCTL-LINES $(wc -l <$f); \
         echo SYSCTL-OTHER $(grep -avc '^powercut[.]k[0-9][0-9][0-9] *= *[0-9][0-9]*$' $f); \
         sed -n 's/^powercut[.]k[0-9]* *= *//p' $f | sort | uniq -c | sed 's/^/SYSCTL-VALUE /'; \
         else echo SYSCTL-ABSENT; fi",
        Duration::from_secs(60),
    )?;
    let field = |tag: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(tag).map(|v| v.trim().to_owned()))
    };
    let sysctl = if field("SYSCTL-ABSENT").is_some() {
        None
    } else {
        let lines = field("SYSCTL-LINES ").unwrap_or_default();
        let other = field("SYSCTL-OTHER ").unwrap_or_default();
        let values: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("SYSCTL-VALUE "))
            .filter_map(|v| {
                let mut w = v.split_whitespace();
                Some((w.next()?.to_owned(), w.next()?.to_owned()))
            })
            .collect();
        let whole = lines == CONFIGURE_KEYS.to_string()
            && other == "0"
            && values.len() == 1
            && values[0].0 == CONFIGURE_KEYS.to_string();
        if !whole {
            return Err(format!(
                "/etc/sysctl.conf is neither absent nor {CONFIGURE_KEYS} lines of one value:\n{out}"
            ));
        }
        Some(values[0].1.clone())
    };
    // A word of the command line, or of the env block's `os_args=` line.
    let gen = |text: &str| {
        text.split_whitespace()
            .find_map(|w| {
                w.strip_prefix("os_args=")
                    .unwrap_or(w)
                    .strip_prefix("powercut.gen=")
            })
            .map(str::to_owned)
    };
    let (args, rc) = m.run(
        &format!("cat /boot/efi/ab/args-{slot}"),
        Duration::from_secs(60),
    )?;
    // Absent is a value (before the first configure); present, it must hold
    // the argument: only the campaign writes this file.
    let args = match (rc, gen(&args)) {
        (0, None) => return Err(format!("ab/args-{slot} exists but holds {args:?}")),
        (0, g) => g,
        _ if args.contains("No such file") => None,
        _ => return Err(format!("cannot read ab/args-{slot}: {args}")),
    };
    let (cmdline, _) = m.run("cat /proc/cmdline", Duration::from_secs(60))?;
    Ok(Configured {
        sysctl,
        args,
        cmdline: gen(&cmdline),
    })
}

/// After a configure cut: each file holds its old value or `gen`, both `gen`
/// if the command had answered success; the kernel got the ESP file's value.
fn check_configured(
    before: &Configured,
    after: &Configured,
    gen: usize,
    answered: Option<&str>,
) -> Result<(), String> {
    let new = Some(gen.to_string());
    let what = format!("before the cut {before:?}, after {after:?}");
    if after.sysctl != before.sysctl && after.sysctl != new {
        return Err(format!("/etc/sysctl.conf is neither old nor new: {what}"));
    }
    if after.args != before.args && after.args != new {
        return Err(format!(
            "the ESP's args file is neither old nor new: {what}"
        ));
    }
    match answered {
        Some("0") if after.sysctl != new || after.args != new => {
            return Err(format!(
                "configure answered success but a file is old: {what}"
            ))
        }
        Some(rc) if rc != "0" => return Err(format!("configure failed (status {rc}): {what}")),
        _ => {}
    }
    if after.cmdline != after.args {
        return Err(format!(
            "the kernel booted with powercut.gen={:?} but the ESP holds {:?}",
            after.cmdline, after.args
        ));
    }
    Ok(())
}

fn read_record(part: &Path, slot: Slot) -> Result<SlotRecord, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /ab/slot-{slot}"))
        .arg(part)
        .output()
        .map_err(|e| format!("debugfs: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(SlotRecord::empty(slot));
    }
    SlotRecord::parse(&text).map_err(|e| format!("slot record {slot}: {e}"))
}

/// The disk after a cut: one env copy valid at least, and every `written` or
/// `good` record matching the bytes of its partition.
fn check_disk(image: &Path) -> Result<(), String> {
    let esp = Disk::open(image);
    let valid = ["ab1/env", "ab2/env"]
        .iter()
        .filter(|c| AbState::decode_strict(&esp.read_esp(c)).is_ok())
        .count();
    if valid == 0 {
        return Err("neither env copy is valid".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let persist = tmp.path().join("persist.img");
    disk::extract_partition(image, 4, &persist);
    // After a cut PERSIST's journal may hold committed metadata not yet in
    // place (the filesystem says needs_recovery); the node's kernel replays
    // it at mount. Replay it on the copy before reading: debugfs alone would
    // read stale inodes (campaign seed 20261204, cut 154: a record inode
    // pointing at another file's old block).
    let replay = Command::new("e2fsck")
        .args(["-E", "journal_only", "-y"])
        .arg(&persist)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    if !matches!(replay.status.code(), Some(0..=2)) {
        return Err(format!(
            "PERSIST's journal cannot be recovered after the cut: {}",
            String::from_utf8_lossy(&replay.stdout)
        ));
    }
    for (slot, part) in [(Slot::A, 2), (Slot::B, 3)] {
        let rec = read_record(&persist, slot)?;
        if !matches!(rec.state, SlotState::Written | SlotState::Good) {
            continue;
        }
        let (offset, _) = disk::partition(image, part);
        let mut f = std::fs::File::open(image).map_err(|e| e.to_string())?;
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut f.take(rec.size), &mut hasher).map_err(|e| e.to_string())?;
        let digest = format!("blake3:{}", hasher.finalize().to_hex());
        if digest != rec.digest {
            return Err(format!(
                "slot {slot} is recorded {} with {} but holds {digest}",
                rec.state.as_str(),
                rec.digest
            ));
        }
    }
    Ok(())
}

/// The recovered node runs a version its record vouches for.
fn check_running(m: &mut Interactive, running: &(String, String)) -> Result<(), String> {
    let (status, rc) = m.run("os-agent status", Duration::from_secs(60))?;
    if rc != 0 {
        return Err(format!("os-agent status failed: {status}"));
    }
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("slot {}:", running.0)))
        .ok_or_else(|| format!("no record line for slot {} in:\n{status}", running.0))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (state, version) = (fields.get(2).copied(), fields.get(4).copied());
    if state != Some("good") || version != Some(running.1.as_str()) {
        return Err(format!(
            "slot {} runs v{} but its record says {line}",
            running.0, running.1
        ));
    }
    Ok(())
}
