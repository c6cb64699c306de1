//! The demo scenario (issue 5), as a library the `ab-demo` binary and the
//! end-to-end tests share: demo bundles v1, v2 and a broken v3, a disk with v1,
//! one QEMU machine driven over its serial console, and the upgrades' source on
//! loopback, which the guest reaches as 10.0.2.2 ([`Source`]): an HTTP file
//! server, or an OCI registry that `os-image oci --push` published v2 and v3 to.
//!
//! Steps: boot v1 from A; upgrade to v2 (download, verify, trial boot, health
//! gate, confirm); manual rollback to v1; upgrade to the broken v3, whose trial
//! fails its health gate so the node falls back to v1 by itself; a further
//! rollback is refused. Every step's boot is read from the node's own console
//! (`OS-DEMO version=V slot=X`) and `os-agent status`.

use crate::console::Interactive;
use crate::http::FileServer;
use crate::registry::{Auth, Registry, RegistryOptions};
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
    build_versions(dir, &["1", "2", "3"])
}

/// [`build_bundles`] for some of the versions only (v3 is the broken one):
/// the scenario's first steps need no more than v1 and v2.
pub fn build_versions(dir: &Path, versions: &[&str]) -> Artifacts {
    let os_image = crate::host_binary("image-builder", "os-image");
    let out = dir.join("bundles");
    let _ = std::fs::remove_dir_all(&out);
    let bundles = versions
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
    let spec = Spec {
        broken,
        ..Spec::default()
    };
    build_bundle_spec(dir, out, version, &spec)
}

/// What else goes into a demo bundle.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Its demo service never starts, so its health gate fails.
    pub broken: bool,
    /// Public keys installed as the image's trusted signing keys
    /// (`/usr/share/os-agent/keys`).
    pub trusted_keys: Vec<PathBuf>,
    /// Secret key the manifest is signed with (`os-image bundle --sign`).
    pub sign: Option<PathBuf>,
}

/// [`build_bundle`] with keys and a signature.
pub fn build_bundle_spec(dir: &Path, out: &Path, version: &str, spec: &Spec) -> Bundle {
    let broken = spec.broken;
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
    if !spec.trusted_keys.is_empty() {
        let keys = rootfs.join("usr/share/os-agent/keys");
        std::fs::create_dir_all(&keys).unwrap();
        for k in &spec.trusted_keys {
            std::fs::copy(k, keys.join(k.file_name().unwrap())).unwrap();
        }
    }
    let mut bundle = Command::new(&os_image);
    bundle
        .args(["bundle", "--version", version, "--rootfs"])
        .arg(&rootfs)
        .arg("--out")
        .arg(out)
        .arg("--os-init")
        .arg(&os_init);
    if let Some(key) = &spec.sign {
        bundle.arg("--sign").arg(key);
    }
    run(&mut bundle);
    let _ = std::fs::remove_dir_all(&rootfs);
    let text = std::fs::read_to_string(out.join(format!("os-{version}.manifest.json"))).unwrap();
    let manifest = wire::manifest::Manifest::parse(&text).expect("os-image wrote a bad manifest");
    Bundle {
        version: version.into(),
        image: out.join(format!("os-{version}.img.zst")),
        digest: manifest.image_digest.to_string(),
        size: manifest.image_size,
    }
}

impl Bundle {
    /// `os-VERSION.manifest.json` beside the image.
    pub fn manifest(&self) -> PathBuf {
        self.image
            .with_extension("")
            .with_extension("manifest.json")
    }
}

impl Artifacts {
    /// A fresh disk with v1 committed in slot A and B empty.
    pub fn build_disk(&self, out: &Path) {
        let _ = std::fs::remove_file(out);
        run(Command::new(&self.os_image)
            .arg("disk")
            .arg("--bundle")
            .arg(self.bundles[0].manifest())
            .arg("--out")
            .arg(out));
    }

    fn bundle(&self, version: &str) -> Result<&Bundle, String> {
        self.bundles
            .iter()
            .find(|b| b.version == version)
            .ok_or_else(|| format!("no bundle v{version} in {}", self.dir.display()))
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
    /// Bytes the guest downloaded during the step: what the HTTP server sent,
    /// or the blobs the registry served.
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
    /// The registry's log at the end ([`Source::Registry`] only).
    pub registry_log: Option<String>,
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
    origin: Origin,
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
        let (start, boots, bytes) = (Instant::now(), self.m.boots(), self.origin.served());
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
        let (notes, _) = self.shell(
            "cat /etc/demo-note /var/lib/demo/note 2>&1 | tr '\\n' ' '; \
             echo \"factory: first=$(cat /var/lib/demo-factory/first) $(ls /var/lib/demo-factory | grep from- | tr '\\n' ' ')cni=$(ls /opt/cni/bin | tr '\\n' ,)\"",
        )?;
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
            downloaded: self.origin.served() - bytes,
            shown,
        });
        Ok(())
    }
}

/// Where the node takes its upgrades from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// `os-agent upgrade --url`: the bundles' images from a loopback HTTP
    /// file server.
    #[default]
    Http,
    /// `os-agent upgrade --image`: OCI artifacts that `os-image oci --push`
    /// published to a plain, anonymous registry on loopback.
    Registry,
}

/// The scenario's steps, in order (see the module documentation).
pub const STEPS: usize = 5;

/// The running source of the upgrades.
enum Origin {
    Http(FileServer),
    /// With the manifest digest `os-image oci` printed, by version.
    Registry(Registry, Vec<(String, String)>),
}

impl Origin {
    fn start(
        art: &Artifacts,
        source: Source,
        narrate: &mut dyn FnMut(&str),
    ) -> Result<Self, String> {
        let bundles = art.dir.join("bundles");
        match source {
            Source::Http => {
                let server = FileServer::start(&bundles)
                    .map_err(|e| format!("start the HTTP server on 127.0.0.1: {e}"))?;
                narrate(&format!(
                    "serving {} on http://127.0.0.1:{} (the guest's http://10.0.2.2:{})",
                    bundles.display(),
                    server.port,
                    server.port
                ));
                Ok(Origin::Http(server))
            }
            Source::Registry => Origin::publish_to_registry(art, narrate),
        }
    }

    /// Starts the registry under `art.dir/registry` and publishes every
    /// bundle after v1 to it as `os:VERSION`.
    fn publish_to_registry(art: &Artifacts, narrate: &mut dyn FnMut(&str)) -> Result<Self, String> {
        let dir = art.dir.join("registry");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = RegistryOptions {
            tls: false,
            auth: Auth::None,
        };
        let registry = Registry::start(&dir, opts);
        narrate(&format!(
            "OCI registry (docker-registry, plain HTTP, anonymous) on {} (the guest's 10.0.2.2:{})",
            registry.host(),
            registry.port()
        ));
        let layout = art.dir.join("oci-layout");
        let _ = std::fs::remove_dir_all(&layout);
        let mut digests = Vec::new();
        for b in art.bundles.iter().skip(1) {
            let digest = publish(art, &registry, &layout, b)?;
            narrate(&format!(
                "  os-image oci --push {}/os:{} -> {digest}",
                registry.host(),
                b.version
            ));
            digests.push((b.version.clone(), digest));
        }
        Ok(Origin::Registry(registry, digests))
    }

    /// Bytes sent to the guest so far: everything the HTTP server sent, or the
    /// blobs the registry served (pushes and manifests do not count).
    fn served(&self) -> u64 {
        match self {
            Origin::Http(server) => server.served().1,
            Origin::Registry(registry, _) => blob_bytes_served(&registry.log()),
        }
    }

    fn upgrade_cmd(&self, b: &Bundle) -> Result<String, String> {
        match self {
            Origin::Http(server) => {
                let name = b.image.file_name().unwrap().to_string_lossy();
                Ok(format!(
                    "os-agent upgrade --url http://10.0.2.2:{}/{name} --digest {} --version {} --allow-http",
                    server.port, b.digest, b.version
                ))
            }
            Origin::Registry(registry, digests) => {
                let (_, digest) = digests
                    .iter()
                    .find(|(v, _)| *v == b.version)
                    .ok_or_else(|| format!("v{} was not published", b.version))?;
                Ok(format!(
                    "os-agent upgrade --image 10.0.2.2:{}/os:{} --digest {digest} --version {} --allow-http",
                    registry.port(),
                    b.version,
                    b.version
                ))
            }
        }
    }
}

/// `os-image oci --push` of bundle `b` to `registry` as `os:VERSION` (the
/// product's path, not skopeo); returns the manifest digest it printed last.
fn publish(
    art: &Artifacts,
    registry: &Registry,
    layout: &Path,
    b: &Bundle,
) -> Result<String, String> {
    let target = format!("{}/os:{}", registry.host(), b.version);
    let out = Command::new(&art.os_image)
        .arg("oci")
        .arg("--manifest")
        .arg(b.manifest())
        .arg("--layout")
        .arg(layout)
        .args(["--push", &target, "--plain-http"])
        .output()
        .map_err(|e| format!("run {}: {e}", art.os_image.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.lines().last().unwrap_or("").trim();
    if !out.status.success() || !digest.starts_with("sha256:") {
        return Err(format!(
            "os-image oci --push {target} failed ({}):\n{stdout}{}\nregistry log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            registry.log()
        ));
    }
    Ok(digest.to_owned())
}

/// Bytes of the blobs a registry served, from its access log's blob GETs
/// with a 2xx status.
pub fn blob_bytes_served(log: &str) -> u64 {
    crate::registry::blob_gets(log)
        .iter()
        .filter(|g| (200..300).contains(&g.status))
        .map(|g| g.bytes)
        .sum()
}

/// Runs the scenario on a fresh disk at `disk`, logging each boot's console
/// into `logs`. `narrate` hears what happens, line by line.
pub fn run_scenario(
    art: &Artifacts,
    disk: &Path,
    logs: &Path,
    narrate: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    run_scenario_with(art, disk, logs, narrate, Source::Http, STEPS)
}

/// [`run_scenario`] with the upgrades from `source`, and only the first
/// `steps` steps (at most [`STEPS`]; `art` needs the bundles those use).
pub fn run_scenario_with(
    art: &Artifacts,
    disk: &Path,
    logs: &Path,
    narrate: &mut dyn FnMut(&str),
    source: Source,
    steps: usize,
) -> Result<Report, String> {
    art.build_disk(disk);
    let origin = Origin::start(art, source, narrate)?;
    let m = Interactive::start(disk, logs);
    let mut d = Driver {
        m,
        origin,
        report: Report::default(),
        narrate,
    };
    let result = PLAN
        .iter()
        .take(steps)
        .try_for_each(|step| step(&mut d, art));
    d.m.close();
    if let Origin::Registry(registry, _) = &d.origin {
        d.report.registry_log = Some(registry.log());
    }
    result.map(|()| d.report)
}

type StepFn = fn(&mut Driver, &Artifacts) -> Result<(), String>;

const PLAN: [StepFn; STEPS] = [
    boot_v1,
    upgrade_to_v2,
    roll_back_to_v1,
    fall_back_from_v3,
    refuse_rollback,
];

fn boot_v1(d: &mut Driver, _: &Artifacts) -> Result<(), String> {
    d.step("boot v1 (slot A)", |d| {
        let (v, s, t) = d.wait_boot(Some("after boot: "))?;
        d.shell(&format!(
            "echo {ETC_NOTE} >/etc/demo-note; mkdir -p /var/lib/demo; \
             echo {VAR_NOTE} >/var/lib/demo/note; touch /opt/cni/bin/from-node; sync"
        ))?;
        Ok((v, s, t))
    })
}

/// Sends the upgrade command for `b` and waits for the agent's reboot.
fn start_upgrade(d: &mut Driver, b: &Bundle) -> Result<String, String> {
    let cmd = d.origin.upgrade_cmd(b)?;
    (d.narrate)(&format!("  $ {cmd}"));
    d.m.send_line(&cmd)?;
    d.m.wait_for("rebooting", UPGRADE_TIMEOUT)
}

fn upgrade_to_v2(d: &mut Driver, art: &Artifacts) -> Result<(), String> {
    let v2 = art.bundle("2")?;
    d.step(
        "upgrade to v2: download, verify, trial boot, health gate, confirm",
        |d| {
            let mut text = start_upgrade(d, v2)?;
            let (v, s, t) = d.wait_boot(Some("after boot: "))?;
            text += &t;
            Ok((v, s, text))
        },
    )
}

fn roll_back_to_v1(d: &mut Driver, _: &Artifacts) -> Result<(), String> {
    d.step("manual rollback to v1 (no download)", |d| {
        d.m.send_line("os-agent rollback")?;
        let (v, s, t) = d.wait_boot(Some("after boot: "))?;
        Ok((v, s, t))
    })
}

fn fall_back_from_v3(d: &mut Driver, art: &Artifacts) -> Result<(), String> {
    let v3 = art.bundle("3")?;
    d.step(
        "upgrade to broken v3: trial fails, node falls back by itself",
        |d| {
            let mut text = start_upgrade(d, v3)?;
            // The trial boot of v3: its health gate fails and the agent reboots.
            let (_, _, t) = d.wait_boot(Some("rebooting"))?;
            text += &t;
            let (v, s, t) = d.wait_boot(Some("after boot: "))?;
            text += &t;
            Ok((v, s, text))
        },
    )
}

fn refuse_rollback(d: &mut Driver, _: &Artifacts) -> Result<(), String> {
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
    )
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

#[cfg(test)]
mod tests {
    use super::blob_bytes_served;

    #[test]
    fn blob_bytes_count_successful_blob_gets_only() {
        let log = r#"127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "os-agent/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "GET /v2/os/manifests/2 HTTP/1.1" 200 900 "" "os-agent/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "GET /v2/os/blobs/sha256:e69a HTTP/1.1" 200 2027 "" "os-agent/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "GET /v2/os/blobs/sha256:fadd HTTP/1.1" 206 14407237 "" "os-agent/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "GET /v2/os/blobs/sha256:0000 HTTP/1.1" 404 157 "" "os-agent/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "HEAD /v2/os/blobs/sha256:e69a HTTP/1.1" 200 2027 "" "ab-os-oci/0.1.0"
127.0.0.1 - - [27/Nov/2026:03:44:21 +0000] "PUT /v2/os/blobs/uploads/x HTTP/1.1" 201 0 "" "ab-os-oci/0.1.0"
time="2026-11-27T03:44:21Z" level=info msg="response completed" http.request.method=GET http.request.uri="/v2/os/blobs/sha256:e69a" http.response.status=200 http.response.written=2027"#;
        assert_eq!(blob_bytes_served(log), 2027 + 14407237);
    }
}
