//! The node-image scenario (issue 16), shared by `tests/tests/node_image.rs`
//! and `make demo-node`: the real Debian node image ([`crate::node_image`])
//! boots v1 from A under systemd, imports and runs a container with
//! containerd, is upgraded to v2 (trial boot of B, confirmed by the agent's
//! health gate under systemd), keeps its /etc and /var and the imported
//! image, then is upgraded to the broken v3, whose trial fails (containerd
//! never starts) and the node falls back to v2 by itself.
//!
//! Under systemd the agent's service logs to the journal, not the console:
//! the scenario reads the node's state from `os-agent status` (polled) and
//! `journalctl -u os-agent`, and the console only for the firmware's boot
//! marker and the serial autologin.

use crate::console::{Interactive, BOOT_MARKER};
use crate::http::FileServer;
use crate::node_image::{NodeImages, CONTAINER_TAR};
use std::path::Path;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(900);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// serial-getty's autologin line.
const LOGIN: &str = "login: root (automatic login)";

pub const ETC_NOTE: &str = "node-image-note-under-etc";
pub const VAR_NOTE: &str = "node-image-note-under-var";
/// Reads both notes: /etc is the overlay on PERSIST, /var is PERSIST.
pub const READ_NOTES: &str = "cat /etc/node-note /var/lib/node-note";

/// What the scenario saw: each command's output and exit status under a
/// name, and the timeline.
#[derive(Debug, Default)]
pub struct Report {
    pub outputs: Vec<(String, String, i32)>,
    pub steps: Vec<(String, Duration)>,
    /// From the firmware's boot marker of v1's first boot to a root shell.
    pub v1_boot_to_shell: Duration,
    /// From the firmware's boot marker of v2's trial boot to `os-agent
    /// status` showing B committed.
    pub v2_boot_to_confirmed: Duration,
}

impl Report {
    /// The output and status recorded under `name`.
    pub fn get(&self, name: &str) -> (&str, i32) {
        self.outputs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, o, rc)| (o.as_str(), *rc))
            .unwrap_or_else(|| panic!("no output {name:?} in the report"))
    }
}

struct Driver<'a> {
    m: Interactive,
    server: FileServer,
    report: Report,
    narrate: &'a mut dyn FnMut(&str),
}

impl Driver<'_> {
    /// Runs `cmd` on the console, records and narrates its output.
    fn check(&mut self, name: &str, cmd: &str) -> Result<String, String> {
        let (out, rc) = self.m.run(cmd, COMMAND_TIMEOUT)?;
        (self.narrate)(&format!("  $ {cmd}"));
        for l in out.lines().filter(|l| !l.trim().is_empty()) {
            (self.narrate)(&format!("  | {l}"));
        }
        if rc != 0 {
            (self.narrate)(&format!("  (exit status {rc})"));
        }
        self.report.outputs.push((name.into(), out.clone(), rc));
        Ok(out)
    }

    /// Waits for the next boot's autologin and a shell that answers.
    /// Returns when the boot began (its firmware marker).
    fn wait_shell(&mut self) -> Result<Instant, String> {
        self.m.wait_for(BOOT_MARKER, BOOT_TIMEOUT)?;
        let began = Instant::now();
        self.m.wait_for(LOGIN, BOOT_TIMEOUT)?;
        // bash starts after the login line; what is typed before may be lost.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_secs(2));
            if let Ok((_, 0)) = self.m.run("true", Duration::from_secs(15)) {
                return Ok(began);
            }
        }
        Err(format!(
            "no shell after the autologin; last console lines:\n{}",
            self.m.tail(30)
        ))
    }

    /// Polls `os-agent status` until it contains `want`; returns it.
    fn poll_status(&mut self, want: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let (out, _) = self.m.run("os-agent status", COMMAND_TIMEOUT)?;
            if out.contains(want) {
                return Ok(out);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "`os-agent status` did not show {want:?} within {timeout:?}:\n{out}"
                ));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    fn step(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        (self.narrate)(&format!("\n=== {name} ==="));
        let start = Instant::now();
        body(self)?;
        let took = start.elapsed();
        (self.narrate)(&format!("  ({:.0} s)", took.as_secs_f64()));
        self.report.steps.push((name.into(), took));
        Ok(())
    }

    fn upgrade_cmd(&self, images: &NodeImages, version: &str) -> String {
        let b = images.bundle(version);
        format!(
            "os-agent upgrade --url http://10.0.2.2:{}/os-{version}.img.zst --digest {} --version {version} --allow-http",
            self.server.port, b.digest
        )
    }

    fn run_container(&mut self, name: &str, word: &str) -> Result<String, String> {
        self.check(
            name,
            &format!(
                "ctr -n default run --rm local/busybox:1 {name} /usr/local/bin/busybox echo {word}"
            ),
        )
    }
}

/// Runs the scenario on a fresh disk at `disk` (console logs in `logs`).
pub fn run_scenario(
    images: &NodeImages,
    disk: &Path,
    logs: &Path,
    narrate: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    images.build_disk(disk);
    let server = FileServer::start(&images.dir.join("bundles"))
        .map_err(|e| format!("start the HTTP server: {e}"))?;
    narrate(&format!(
        "serving the bundles on http://127.0.0.1:{} (the guest's 10.0.2.2)",
        server.port
    ));
    let mut d = Driver {
        m: Interactive::start(disk, logs),
        server,
        report: Report::default(),
        narrate,
    };
    let result = boot_v1(&mut d)
        .and_then(|()| upgrade_to_v2(&mut d, images))
        .and_then(|()| fall_back_from_v3(&mut d, images));
    d.m.close();
    result.map(|()| d.report)
}

fn boot_v1(d: &mut Driver) -> Result<(), String> {
    d.step("boot v1 from A under systemd", |d| {
        let began = d.wait_shell()?;
        d.report.v1_boot_to_shell = began.elapsed();
        d.check("pid1", "cat /proc/1/comm")?;
        // The shipped health check: running, or degraded by allowed units only.
        d.check(
            "system",
            "systemctl is-system-running --wait; /etc/os-agent/health.d/10-systemd-running",
        )?;
        d.check("agent-active", "systemctl is-active os-agent.service")?;
        d.check("var-seeded", "ls -l /var/lib/dpkg/status")?;
        d.check("root-mount", "grep ' / ' /proc/mounts")?;
        d.check("status-v1", "os-agent status")?;
        d.check(
            "import",
            &format!("ctr -n default images import --base-name local/busybox {CONTAINER_TAR}"),
        )?;
        d.run_container("run-v1", "hello-from-v1")?;
        d.check(
            "notes",
            &format!(
                "echo {ETC_NOTE} >/etc/node-note && echo {VAR_NOTE} >/var/lib/node-note && sync"
            ),
        )?;
        Ok(())
    })
}

fn upgrade_to_v2(d: &mut Driver, images: &NodeImages) -> Result<(), String> {
    d.step(
        "upgrade to v2: download, verify, trial boot of B, health gate, confirm",
        |d| {
            let cmd = d.upgrade_cmd(images, "2");
            (d.narrate)(&format!("  $ {cmd}"));
            d.m.send_line(&cmd)?;
            d.m.wait_for("rebooting", UPGRADE_TIMEOUT)?;
            let began = d.wait_shell()?;
            let status = d.poll_status("committed:  B", UPGRADE_TIMEOUT)?;
            d.report.v2_boot_to_confirmed = began.elapsed();
            (d.narrate)(&format!(
                "  confirmed {:.0} s after the firmware started the trial boot",
                d.report.v2_boot_to_confirmed.as_secs_f64()
            ));
            d.report.outputs.push(("confirmed-v2".into(), status, 0));
            d.check("status-v2", "os-agent status")?;
            d.check(
                "journal-v2",
                "journalctl -b -u os-agent --no-pager | tail -n 15",
            )?;
            d.check("notes-v2", READ_NOTES)?;
            d.check("images-v2", "ctr -n default images ls -q")?;
            d.run_container("run-v2", "hello-from-v2")?;
            Ok(())
        },
    )
}

fn fall_back_from_v3(d: &mut Driver, images: &NodeImages) -> Result<(), String> {
    d.step(
        "upgrade to broken v3: containerd fails, the node falls back to v2",
        |d| {
            let cmd = d.upgrade_cmd(images, "3");
            (d.narrate)(&format!("  $ {cmd}"));
            d.m.send_line(&cmd)?;
            d.m.wait_for("rebooting", UPGRADE_TIMEOUT)?;
            // The trial boot of v3: its health gate fails and the agent reboots.
            d.wait_shell()?;
            (d.narrate)("  v3's trial boot reached a shell; waiting for its health gate");
            d.wait_shell()?;
            d.check("status-v3", "os-agent status")?;
            d.check("version-v3", "grep VERSION_ID /etc/os-release")?;
            d.check("notes-v3", READ_NOTES)?;
            d.run_container("run-after-v3", "hello-again-from-v2")?;
            Ok(())
        },
    )
}

/// The timeline as text.
pub fn timeline(report: &Report) -> String {
    let mut out = String::new();
    for (name, took) in &report.steps {
        out += &format!("{name:<72} {:>6.0} s\n", took.as_secs_f64());
    }
    let total: Duration = report.steps.iter().map(|(_, t)| *t).sum();
    out += &format!("total {:.0} s\n", total.as_secs_f64());
    out += &format!(
        "v1: firmware to root shell {:.0} s; v2: firmware to confirmed by the health gate {:.0} s\n",
        report.v1_boot_to_shell.as_secs_f64(),
        report.v2_boot_to_confirmed.as_secs_f64()
    );
    out
}
