//! A node made of plain files for the control-plane tests: slot files, an ESP
//! directory with both A/B env copies, a PERSIST directory with slot records,
//! a health-check directory, and a config that never reboots.
#![allow(dead_code)] // each test crate uses a different part

use agent::config::{Config, Overrides};
use bootctl::record::{self, SlotRecord, SlotState};
use bootctl::store::Esp;
use bootctl::{AbState, Slot};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const SLOT_SIZE: u64 = 1 << 20;

pub struct Node {
    pub dir: tempfile::TempDir,
    pub esp: PathBuf,
    pub state: PathBuf,
    pub root_a: PathBuf,
    pub root_b: PathBuf,
    pub health: PathBuf,
    pub socket: PathBuf,
}

impl Node {
    /// Slot A committed and `good` (version 1), slot B empty.
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        // Traversable, so a test can connect to the socket as another uid.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let p = |n: &str| dir.path().join(n);
        let node = Node {
            esp: p("esp"),
            state: p("persist"),
            root_a: p("root-a"),
            root_b: p("root-b"),
            health: p("health.d"),
            socket: p("run/os-agent.sock"),
            dir,
        };
        fs::create_dir_all(&node.esp).unwrap();
        fs::create_dir_all(&node.state).unwrap();
        for slot in [&node.root_a, &node.root_b] {
            fs::File::create(slot).unwrap().set_len(SLOT_SIZE).unwrap();
        }
        Esp::new(&node.esp).init(Slot::A, false).unwrap();
        node.set_record(Slot::A, SlotState::Good, "1");
        node
    }

    /// `key = value` settings for `booted`, as flags or a config file.
    pub fn settings(&self, booted: Slot) -> Vec<(&'static str, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("root-a", s(&self.root_a)),
            ("root-b", s(&self.root_b)),
            ("esp", s(&self.esp)),
            ("state-dir", s(&self.state)),
            ("booted", booted.to_string()),
            ("socket", s(&self.socket)),
            ("health-dir", s(&self.health)),
            ("health-deadline", "10".into()),
            ("check-timeout", "5".into()),
            ("tries", "3".into()),
            ("certs-dir", s(&self.dir.path().join("certs"))),
            // Trusted signing keys, when a test puts some here.
            ("keys-dir", s(&self.dir.path().join("keys"))),
            // Requests over the socket may name bundles the tests write here.
            ("file-sources", s(&self.dir.path().join("bundles"))),
            // Never reboot the machine running the tests.
            ("reboot", "no".into()),
        ]
    }

    pub fn config(&self, booted: Slot) -> Config {
        let mut o = Overrides::default();
        for (k, v) in self.settings(booted) {
            o.set(k, &v).unwrap();
        }
        let c = o
            .resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
            .unwrap();
        assert!(!c.reboot);
        c
    }

    /// Writes the settings as a config file (plus `extra` lines); returns it.
    pub fn config_file(&self, booted: Slot, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("agent-{booted}.conf"));
        let mut text: String = self
            .settings(booted)
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        text.push_str(extra);
        fs::write(&path, text).unwrap();
        path
    }

    pub fn ab(&self) -> AbState {
        Esp::new(&self.esp).status(false, Slot::A).unwrap().state
    }

    pub fn record(&self, slot: Slot) -> SlotRecord {
        record::read(&self.state, slot).unwrap()
    }

    pub fn set_record(&self, slot: Slot, state: SlotState, version: &str) {
        let rec = SlotRecord {
            slot,
            state,
            version: version.into(),
            digest: format!("blake3:{}", blake3::hash(version.as_bytes()).to_hex()),
            size: 4096,
            written_at: 1_700_000_000,
            confirm: None,
            source: String::new(),
            verity: None,
        };
        record::write(&self.state, &rec).unwrap();
    }

    /// Adds an executable health check holding `script` (a shell script body).
    pub fn add_check(&self, name: &str, script: &str) {
        fs::create_dir_all(&self.health).unwrap();
        let path = self.health.join(name);
        let mut f = fs::File::create(&path).unwrap();
        writeln!(f, "#!/bin/sh\n{script}").unwrap();
        drop(f);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A deterministic, poorly compressible test image.
pub fn image(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `NAME.img.zst` (one zstd frame per chunk) and `NAME.manifest.json`
/// (with the one manifest writer, `wire::manifest`) into `dir`.
/// Returns the image's `file://` URL and its `blake3:` digest.
pub fn bundle(dir: &Path, name: &str, version: &str, img: &[u8], chunk: usize) -> (String, String) {
    let mut zst = vec![];
    let mut frames = vec![];
    for part in img.chunks(chunk) {
        let frame = zstd::bulk::compress(part, 3).unwrap();
        frames.push((*blake3::hash(part).as_bytes(), frame.len() as u64));
        zst.extend_from_slice(&frame);
    }
    let image_digest = wire::Digest::blake3(*blake3::hash(img).as_bytes());
    let digest = image_digest.to_string();
    let manifest = wire::manifest::Manifest::from_chunks(
        name,
        version,
        &format!("{name}.img.zst"),
        img.len() as u64,
        image_digest,
        chunk as u64,
        frames,
    )
    .to_json();
    let img_path = dir.join(format!("{name}.img.zst"));
    fs::write(&img_path, zst).unwrap();
    fs::write(dir.join(format!("{name}.manifest.json")), manifest).unwrap();
    (format!("file://{}", img_path.display()), digest)
}
