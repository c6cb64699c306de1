//! The demo scenario (issue 5), as a library the `ab-demo` binary and the
//! end-to-end tests share: demo bundles v1, v2 and a broken v3, a disk with v1,
//! one QEMU machine driven over its serial console, and a loopback HTTP server
//! the guest reaches as 10.0.2.2.
//!
//! Steps: boot v1 from A; upgrade to v2 (download, verify, trial boot, health
//! gate, confirm); manual rollback to v1; upgrade to the broken v3, whose trial
//! fails its health gate so the node falls back to v1 by itself; a further
//! rollback is refused. Every step's boot is read from the node's own console
//! (`OS-DEMO version=V slot=X`) and `os-agent status`.

use crate::console::Interactive;
use crate::http::FileServer;
use crate::run;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A boot under TCG takes 10-20 s; downloads and writes of a 48 MiB image
/// under emulation take longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(600);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the guest writes on v1 and expects on every later boot.
pub const ETC_NOTE: &str = "written-on-v1-under-etc";
pub const VAR_NOTE: &str = "written-on-v1-under-var";

#[derive(Debug, Clone)]
pub struct Bundle {
    pub version: String,
    pub image: PathBuf,
    pub digest: String,
    /// Uncompressed image size.
    pub size: u64,
}

/// Everything the scenario needs, in one directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub os_image: PathBuf,
    /// v1, v2 and the broken v3.
    pub bundles: Vec<Bundle>,
}

/// Builds the demo root filesystems and bundles (v3 with `--broken`) under
/// `dir/bundles`, with this workspace's os-image, os-init and os-agent.
pub fn build_bundles(dir: &Path) -> Artifacts {
    let os_image = crate::host_binary("image-builder", "os-image");
    let out = dir.join("bundles");
    let _ = std::fs::remove_dir_all(&out);
    let bundles = ["1", "2", "3"]
        .iter()
        .map(|v| build_bundle(dir, &out, v, *v == "3"))
        .collect();
    Artifacts {
        dir: dir.to_path_buf(),
        os_image,
        bundles,
    }
}

/// One demo bundle `out/os-VERSION.{img.zst,manifest.json}`, its root filesystem built under
/// `dir` (and removed); `broken`: its demo service never starts, so its health gate fails.
pub fn build_bundle(dir: &Path, out: &Path, version: &str, broken: bool) -> Bundle {
    let os_image = crate::host_binary("image-builder", "os-image");
    let os_init = crate::musl_binary("initramfs", "os-init");
    let os_agent = crate::musl_binary("agent", "os-agent");
    let kernel = crate::kernel_deb();
    let rootfs = dir.join(format!("rootfs-v{version}"));
    let _ = std::fs::remove_dir_all(&rootfs);
    let mut cmd = Command::new(&os_image);
    cmd.args(["demo-rootfs", "--version", version, "--kernel-deb"])
        .arg(&kernel)
        .arg("--agent")
        .arg(&os_agent)
        .arg("--out")
        .arg(&rootfs);
    if broken {
        cmd.arg("--broken");
    }
    run(&mut cmd);
    run(Command::new(&os_image)
        .args(["bundle", "--version", version, "--rootfs"])
        .arg(&rootfs)
        .arg("--out")
        .arg(out)
        .arg("--os-init")
        .arg(&os_init));
    let _ = std::fs::remove_dir_all(&rootfs);
    let manifest =
        std::fs::read_to_string(out.join(format!("os-{version}.manifest.json"))).unwrap();
    Bundle {
        version: version.into(),
        image: out.join(format!("os-{version}.img.zst")),
        digest: json_string(&manifest, "image_digest").expect("manifest without image_digest"),
        size: json_u64(&manifest, "image_size").expect("manifest without image_size"),
    }
}

fn json_u64(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{key}\""))?..];
    let value = rest.split_once(':')?.1.trim_start();
    let end = value.find(|c: char| !c.is_ascii_digit())?;
    value[..end].parse().ok()
}

fn json_string(json: &str, key: &str) -> Option<String> {
    let rest = &json[json.find(&format!("\"{key}\""))?..];
    let value = rest.split_once(':')?.1.trim_start().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

impl Artifacts {
    /// A fresh disk with v1 committed in slot A and B empty.
    pub fn build_disk(&self, out: &Path) {
        let _ = std::fs::remove_file(out);
        run(Command::new(&self.os_image)
            .arg("disk")
            .arg("--bundle")
            .arg(
                self.bundles[0]
                    .image
                    .with_extension("")
                    .with_extension("manifest.json"),
            )
            .arg("--out")
            .arg(out));
    }
}

/// One step of the timeline.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub duration: Duration,
    /// Boots the step took.
    pub boots: usize,
    /// Slot and version running at the end of the step.
    pub slot: String,
    pub version: String,
    /// Bytes the HTTP server sent during the step.
    pub downloaded: u64,
    /// What the step showed: console lines and command output.
    pub shown: Vec<String>,
}

/// What the scenario observed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<Step>,
    /// `os-agent status` after each step, by step name.
    pub statuses: Vec<(String, String)>,
    /// stdout+stderr and exit status of the refused rollback.
    pub refused: (String, i32),
    /// `cat` of the /etc and /var notes after each step, by step name.
    pub notes: Vec<(String, String)>,
}

/// Console lines worth showing: the demo's own line, os-init's decisions and
/// the agent's log.
pub fn interesting(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("OS-DEMO")
        || l.contains(" agent::")
        || l.starts_with("os-init: A/B state")
        || l.starts_with("os-init: trial")
        || l.starts_with("os-init: confirm")
        || l.starts_with("os-init: executing")
}

struct Driver<'a> {
    m: Interactive,
    server: FileServer,
    report: Report,
    narrate: &'a mut dyn FnMut(&str),
}

/// Where the demo booted, from its `OS-DEMO version=V slot=X` line.
fn booted(text: &str) -> Option<(String, String)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("OS-DEMO version=") && l.contains(" slot="))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    Some((field("version=")?, field("slot=")?))
}

impl Driver<'_> {
    /// Waits for the next boot's demo line, then for the agent's after-boot
    /// verdict (`after_boot`, when given). Returns (version, slot) and the text.
    fn wait_boot(&mut self, after_boot: Option<&str>) -> Result<(String, String, String), String> {
        let mut text = self.m.wait_for(crate::console::BOOT_MARKER, BOOT_TIMEOUT)?;
        text += &self.m.wait_for("OS-DEMO version=", BOOT_TIMEOUT)?;
        if let Some(marker) = after_boot {
            text += &self.m.wait_for(marker, BOOT_TIMEOUT)?;
        }
        let (version, slot) =
            booted(&text).ok_or_else(|| format!("no OS-DEMO line in:\n{text}"))?;
        Ok((version, slot, text))
    }

    fn shell(&mut self, cmd: &str) -> Result<(String, i32), String> {
        // The console shell starts with the agent; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        self.m.run(cmd, COMMAND_TIMEOUT)
    }

    fn step(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Self) -> Result<(String, String, String), String>,
    ) -> Result<(), String> {
        (self.narrate)(&format!("\n=== {name} ==="));
        let (start, boots, (_, bytes)) = (Instant::now(), self.m.boots(), self.server.served());
        let (version, slot, text) = body(self)?;
        let shown: Vec<String> = text
            .lines()
            .filter(|l| interesting(l))
            // The console shell's prompt may precede a log line.
            .map(|l| l.trim_start_matches("/ # ").to_owned())
            .collect();
        for l in &shown {
            (self.narrate)(&format!("  console| {l}"));
        }
        let (status, _) = self.shell("os-agent status")?;
        (self.narrate)("  $ os-agent status");
        for l in status.lines().filter(|l| !l.trim().is_empty()) {
            (self.narrate)(&format!("  | {l}"));
        }
        let (notes, _) = self.shell("cat /etc/demo-note /var/lib/demo/note 2>&1 | tr '\\n' ' '")?;
        (self.narrate)(&format!(
            "  data written on v1 (/etc, /var): {}",
            notes.trim()
        ));
        self.report.statuses.push((name.into(), status));
        self.report.notes.push((name.into(), notes));
        self.report.steps.push(Step {
            name: name.into(),
            duration: start.elapsed(),
            boots: self.m.boots() - boots,
            slot,
            version,
            downloaded: self.server.served().1 - bytes,
            shown,
        });
        Ok(())
    }

    fn upgrade_cmd(&self, b: &Bundle) -> String {
        let name = b.image.file_name().unwrap().to_string_lossy();
        format!(
            "os-agent upgrade --url http://10.0.2.2:{}/{name} --digest {} --version {} --allow-http",
            self.server.port, b.digest, b.version
        )
    }
}

/// Runs the scenario on a fresh disk at `disk`, logging each boot's console
/// into `logs`. `narrate` hears what happens, line by line.
pub fn run_scenario(
    art: &Artifacts,
    disk: &Path,
    logs: &Path,
    narrate: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    art.build_disk(disk);
    let server = FileServer::start(&art.dir.join("bundles"))
        .map_err(|e| format!("start the HTTP server on 127.0.0.1: {e}"))?;
    narrate(&format!(
        "serving {} on http://127.0.0.1:{} (the guest's http://10.0.2.2:{})",
        art.dir.join("bundles").display(),
        server.port,
        server.port
    ));
    let m = Interactive::start(disk, logs);
    let mut d = Driver {
        m,
        server,
        report: Report::default(),
        narrate,
    };
    let result = scenario(&mut d, art);
    d.m.close();
    result.map(|()| d.report)
}

fn scenario(d: &mut Driver, art: &Artifacts) -> Result<(), String> {
    let [_, v2, v3] = &art.bundles[..] else {
        return Err("expected bundles v1, v2 and v3".into());
    };
    d.step("boot v1 (slot A)", |d| {
        let (v, s, t) = d.wait_boot(Some("after boot: "))?;
        d.shell(&format!(
            "echo {ETC_NOTE} >/etc/demo-note; mkdir -p /var/lib/demo; \
             echo {VAR_NOTE} >/var/lib/demo/note; sync"
        ))?;
        Ok((v, s, t))
    })?;
    d.step(
        "upgrade to v2: download, verify, trial boot, health gate, confirm",
        |d| {
            let cmd = d.upgrade_cmd(v2);
            d.m.send_line(&cmd)?;
            let mut text = d.m.wait_for("rebooting", UPGRADE_TIMEOUT)?;
            let (v, s, t) = d.wait_boot(Some("after boot: "))?;
            text += &t;
            Ok((v, s, text))
        },
    )?;
    d.step("manual rollback to v1 (no download)", |d| {
        d.m.send_line("os-agent rollback")?;
        let (v, s, t) = d.wait_boot(Some("after boot: "))?;
        Ok((v, s, t))
    })?;
    d.step(
        "upgrade to broken v3: trial fails, node falls back by itself",
        |d| {
            let cmd = d.upgrade_cmd(v3);
            d.m.send_line(&cmd)?;
            let mut text = d.m.wait_for("rebooting", UPGRADE_TIMEOUT)?;
            // The trial boot of v3: its health gate fails and the agent reboots.
            let (_, _, t) = d.wait_boot(Some("rebooting"))?;
            text += &t;
            let (v, s, t) = d.wait_boot(Some("after boot: "))?;
            text += &t;
            Ok((v, s, text))
        },
    )?;
    d.step(
        "manual rollback refused: B holds v3, whose trial failed",
        |d| {
            let (out, rc) = d.shell("os-agent rollback")?;
            (d.narrate)("  $ os-agent rollback");
            for l in out.lines().filter(|l| !l.trim().is_empty()) {
                (d.narrate)(&format!("  | {l}"));
            }
            (d.narrate)(&format!("  (exit status {rc})"));
            d.report.refused = (out, rc);
            let (v, s) = booted(&d.m.tail(400)).unwrap_or_default();
            Ok((v, s, String::new()))
        },
    )?;
    Ok(())
}

/// The timeline as a table.
pub fn timeline(report: &Report) -> String {
    let mut out = String::from("step                                                               time    boots  running      downloaded\n");
    for s in &report.steps {
        out += &format!(
            "{:<66} {:>5.1}s  {:>5}  v{} slot {}  {:>7.1} MiB\n",
            s.name,
            s.duration.as_secs_f64(),
            s.boots,
            s.version,
            s.slot,
            s.downloaded as f64 / (1 << 20) as f64
        );
    }
    let total: Duration = report.steps.iter().map(|s| s.duration).sum();
    out += &format!("total {:.1}s\n", total.as_secs_f64());
    out
}
