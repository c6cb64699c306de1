//! One simulated node: slot files, an ESP directory with the A/B env copies, PERSIST with slot
//! records, and the real `os-agent serve` and `os-proxy` processes. A reboot is what the
//! machine would do: the processes die, GRUB's choice (`bootctl::grub_boot`, the model the QEMU
//! tests hold against the real GRUB) is applied to the env copies, and the agent starts again
//! on the chosen slot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bootctl::record::{self, SlotRecord, SlotState};
use bootctl::store::{Esp, COPY_PATHS};
use bootctl::{grub_boot, Slot};

/// The programs a node runs.
#[derive(Clone, Debug)]
pub struct Programs {
    pub agent: PathBuf,
    pub proxy: PathBuf,
    /// Environment and arguments every proxy gets (kubeconfig, namespace).
    pub kubeconfig: PathBuf,
    pub namespace: String,
}

pub struct SimNode {
    pub name: String,
    pub dir: PathBuf,
    pub esp: PathBuf,
    pub state: PathBuf,
    pub root_a: PathBuf,
    pub root_b: PathBuf,
    pub health: PathBuf,
    pub socket: PathBuf,
    programs: Programs,
    procs: Mutex<Procs>,
    /// More `key = value` lines for the agent's config (registries, say).
    agent_extra: Mutex<String>,
}

struct Procs {
    agent: Option<Child>,
    proxy: Option<Child>,
    booted: Slot,
    boots: u32,
    /// Length of agent.log when this boot's agent started.
    log_mark: u64,
}

impl SimNode {
    /// A node whose slot A holds `version` (committed, `good`) and slot B is empty; slots are
    /// sparse files of `slot_size` bytes.
    pub fn create(
        dir: &Path,
        name: &str,
        slot_size: u64,
        version: &str,
        digest: &str,
        programs: Programs,
    ) -> SimNode {
        let dir = dir.join(name);
        let _ = fs::remove_dir_all(&dir);
        let p = |n: &str| dir.join(n);
        let node = SimNode {
            name: name.to_string(),
            esp: p("esp"),
            state: p("persist"),
            root_a: p("root-a"),
            root_b: p("root-b"),
            health: p("health.d"),
            socket: p("run/os-agent.sock"),
            dir: dir.clone(),
            programs,
            agent_extra: Mutex::new(String::new()),
            procs: Mutex::new(Procs {
                agent: None,
                proxy: None,
                booted: Slot::A,
                boots: 0,
                log_mark: 0,
            }),
        };
        for d in [
            &node.esp,
            &node.state,
            &node.health,
            &p("run"),
            &p("certs"),
            &p("root/etc"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        for slot in [&node.root_a, &node.root_b] {
            fs::File::create(slot).unwrap().set_len(slot_size).unwrap();
        }
        Esp::new(&node.esp).init(Slot::A, false).unwrap();
        let rec = SlotRecord {
            slot: Slot::A,
            state: SlotState::Good,
            version: version.into(),
            digest: digest.into(),
            size: slot_size,
            written_at: 1_700_000_000,
            confirm: None,
            source: String::new(),
            verity: None,
        };
        record::write(&node.state, &rec).unwrap();
        node
    }

    /// Adds an executable health check (a shell script body) run by the agent's health gate.
    pub fn add_check(&self, name: &str, script: &str) {
        let path = self.health.join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn booted(&self) -> Slot {
        self.procs.lock().unwrap().booted
    }

    /// Reboots since the node was created.
    pub fn boots(&self) -> u32 {
        self.procs.lock().unwrap().boots
    }

    /// The version recorded for the running slot: what the node's /etc/os-release says.
    pub fn running_version(&self) -> String {
        record::read(&self.state, self.booted())
            .map(|r| r.version)
            .unwrap_or_default()
    }

    pub fn record(&self, slot: Slot) -> Option<SlotRecord> {
        record::read(&self.state, slot).ok()
    }

    /// Adds `key = value` lines to the agent's config (from its next start on).
    pub fn add_agent_settings(&self, lines: &str) {
        let mut extra = self.agent_extra.lock().unwrap();
        extra.push_str(lines);
        if !extra.ends_with('\n') {
            extra.push('\n');
        }
    }

    /// Writes the agent's config for the running slot; returns its path (for
    /// running `os-agent --config PATH COMMAND` by hand).
    pub fn write_agent_config(&self) -> PathBuf {
        self.agent_config(self.booted())
    }

    fn agent_config(&self, booted: Slot) -> PathBuf {
        let s = |p: &Path| p.display().to_string();
        let text = [
            ("root-a", s(&self.root_a)),
            ("root-b", s(&self.root_b)),
            ("esp", s(&self.esp)),
            ("state-dir", s(&self.state)),
            ("booted", booted.to_string()),
            ("socket", s(&self.socket)),
            ("health-dir", s(&self.health)),
            ("health-deadline", "10".into()),
            ("check-timeout", "5".into()),
            ("tries", "1".into()),
            ("certs-dir", s(&self.dir.join("certs"))),
            // The simulation reboots the node itself when the agent asks for it.
            ("reboot", "no".into()),
            // Node configuration edits this node's files, never the host's.
            ("config-root", s(&self.dir.join("root"))),
            ("proc-dir", s(&self.dir.join("proc"))),
        ]
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect::<String>()
            + self.agent_extra.lock().unwrap().as_str();
        let path = self.dir.join("agent.conf");
        fs::write(&path, text).unwrap();
        path
    }

    fn log(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap()
    }

    /// Starts the agent on the current slot and waits for its socket.
    pub fn start_agent(&self) {
        let mut procs = self.procs.lock().unwrap();
        let conf = self.agent_config(procs.booted);
        procs.log_mark = fs::metadata(self.dir.join("agent.log")).map_or(0, |m| m.len());
        let _ = fs::remove_file(&self.socket);
        let child = Command::new(&self.programs.agent)
            .args(["--config", conf.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log("agent.log"))
            .spawn()
            .unwrap();
        procs.agent = Some(child);
        drop(procs);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "{}: os-agent did not open its socket; see {}",
                self.name,
                self.dir.join("agent.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node's proxy (replacing one that runs: a pod has one container).
    pub fn start_proxy(&self) {
        self.kill_proxy();
        let child = Command::new(&self.programs.proxy)
            .args([
                "--node-name",
                &self.name,
                "--namespace",
                &self.programs.namespace,
                "--agent-socket",
                self.socket.to_str().unwrap(),
                "--drain-timeout",
                "5",
            ])
            .env("KUBECONFIG", &self.programs.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(self.log("proxy.log"))
            .spawn()
            .unwrap();
        self.procs.lock().unwrap().proxy = Some(child);
    }

    /// Kills the proxy (SIGKILL, as a crash would) and returns whether one ran.
    pub fn kill_proxy(&self) -> bool {
        let proxy = self.procs.lock().unwrap().proxy.take();
        proxy.map(kill).is_some()
    }

    pub fn kill_all(&self) {
        let mut procs = self.procs.lock().unwrap();
        for child in [procs.agent.take(), procs.proxy.take()]
            .into_iter()
            .flatten()
        {
            kill(child);
        }
    }

    /// The slot GRUB would boot now, computed on copies of the env blocks (nothing written).
    pub fn grub_choice(&self) -> (Slot, bool) {
        let [mut c1, mut c2] = COPY_PATHS.map(|p| fs::read(self.esp.join(p)).unwrap_or_default());
        let boot = grub_boot(&mut c1, &mut c2, Slot::A);
        (boot.slot, boot.trial)
    }

    /// Whether the agent asked for a reboot since this boot. The agent runs with `reboot = no`
    /// and logs `not rebooting (WHY)` exactly where it would restart the machine; that line is
    /// the request.
    pub fn wants_reboot(&self) -> bool {
        let since = self.procs.lock().unwrap().log_mark;
        let log = fs::read(self.dir.join("agent.log")).unwrap_or_default();
        let new = String::from_utf8_lossy(log.get(since as usize..).unwrap_or_default());
        new.contains("not rebooting (")
    }

    /// Power off (every process dies), then GRUB's boot: the env copies are rewritten as GRUB
    /// would, and the chosen slot becomes the running one. Processes are started by the caller.
    pub fn power_cycle(&self) -> Slot {
        self.kill_all();
        let paths = COPY_PATHS.map(|p| self.esp.join(p));
        let [mut c1, mut c2] = paths.clone().map(|p| fs::read(p).unwrap_or_default());
        let boot = grub_boot(&mut c1, &mut c2, Slot::A);
        for (i, bytes) in [c1, c2].iter().enumerate() {
            if boot.wrote[i] {
                fs::write(&paths[i], bytes).unwrap();
            }
        }
        let mut procs = self.procs.lock().unwrap();
        procs.booted = boot.slot;
        procs.boots += 1;
        boot.slot
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}
