//! The proxy driving the real os-agent (in process, on file-backed slots, reboots disabled):
//! prepare from a `file://` bundle, drain, arm; a restarted proxy does not write the verified
//! slot again; after a "reboot" (GRUB's choice applied to the env copies and a new agent on the
//! chosen slot) the agent's health gate commits the slot and the node succeeds.

mod common;

use agent::config::{Config as AgentConfig, Overrides};
use agent::job::{self, Agent};
use agent::rpc;
use bootctl::record::{self, SlotRecord, SlotState};
use bootctl::store::{Esp, COPY_PATHS};
use bootctl::{grub_boot, Slot};
use common::*;
use fakekube::FakeApiServer;
use kube::api::{Api, Patch, PatchParams};
use operator::crd::{NodeStatus, Os, OsInstance};
use proxy::Proxy;
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SLOT_SIZE: u64 = 1 << 20;

struct FileNode {
    dir: tempfile::TempDir,
}

impl FileNode {
    /// Slot A committed and good with v1, slot B empty.
    fn new() -> FileNode {
        let node = FileNode {
            dir: tempfile::tempdir().unwrap(),
        };
        for name in ["esp", "persist"] {
            fs::create_dir_all(node.path(name)).unwrap();
        }
        for slot in ["root-a", "root-b"] {
            fs::File::create(node.path(slot))
                .unwrap()
                .set_len(SLOT_SIZE)
                .unwrap();
        }
        Esp::new(node.path("esp")).init(Slot::A, false).unwrap();
        let rec = SlotRecord {
            slot: Slot::A,
            state: SlotState::Good,
            version: "v1".into(),
            digest: format!("blake3:{}", blake3::hash(b"v1").to_hex()),
            size: 4096,
            written_at: 1_700_000_000,
            confirm: None,
            source: String::new(),
            verity: None,
        };
        record::write(&node.path("persist"), &rec).unwrap();
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, booted: Slot, socket: &Path) -> AgentConfig {
        let mut o = Overrides::default();
        let s = |n: &str| self.path(n).display().to_string();
        for (k, v) in [
            ("root-a", s("root-a")),
            ("root-b", s("root-b")),
            ("esp", s("esp")),
            ("state-dir", s("persist")),
            ("booted", booted.to_string()),
            ("socket", socket.display().to_string()),
            ("health-dir", s("health.d")),
            ("health-deadline", "10".into()),
            ("tries", "3".into()),
            ("certs-dir", s("certs")),
            ("reboot", "no".into()),
            // The image the OS names is a file in the test's directory.
            ("file-sources", self.dir.path().display().to_string()),
        ] {
            o.set(k, &v).unwrap();
        }
        o.resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
            .unwrap()
    }

    /// Boots the real agent on `booted`: its after-boot check (the health gate on a trial),
    /// then serving on a socket of its own for the rest of the test.
    fn boot(&self, booted: Slot, n: u32) -> PathBuf {
        let socket = self.path(&format!("run/agent-{n}.sock"));
        let agent: &'static Agent = Box::leak(Box::new(Agent::new(
            self.config(booted, &socket),
            job::real_prepare(),
        )));
        agent.after_boot().unwrap();
        let listener = Box::leak(Box::new(rpc::bind(&socket, false).unwrap()));
        std::thread::spawn(move || rpc::run(agent, listener, || {}));
        socket
    }

    /// What GRUB does at power-on: returns the slot it boots.
    fn grub(&self) -> Slot {
        let paths = COPY_PATHS.map(|p| self.path("esp").join(p));
        let [mut c1, mut c2] = paths.clone().map(|p| fs::read(p).unwrap_or_default());
        let boot = grub_boot(&mut c1, &mut c2, Slot::A);
        for (i, bytes) in [c1, c2].iter().enumerate() {
            if boot.wrote[i] {
                fs::write(&paths[i], bytes).unwrap();
            }
        }
        boot.slot
    }

    fn record(&self, slot: Slot) -> SlotRecord {
        record::read(&self.path("persist"), slot).unwrap()
    }
}

/// A bundle as os-image writes it (docs/bundle.md): one zstd frame per chunk and a
/// manifest from `wire::manifest`. Returns the image's `file://` URL and `blake3:` digest.
fn bundle(dir: &Path, version: &str, img: &[u8]) -> (String, String) {
    let chunk = 64 << 10;
    let (mut zst, mut frames) = (vec![], vec![]);
    for part in img.chunks(chunk) {
        let frame = zstd::bulk::compress(part, 3).unwrap();
        frames.push((*blake3::hash(part).as_bytes(), frame.len() as u64));
        zst.extend_from_slice(&frame);
    }
    let image_digest = wire::Digest::blake3(*blake3::hash(img).as_bytes());
    let digest = image_digest.to_string();
    let manifest = wire::manifest::Manifest::from_chunks(
        "os",
        version,
        "os.img.zst",
        img.len() as u64,
        image_digest,
        chunk as u64,
        frames,
    )
    .to_json();
    fs::write(dir.join("os.img.zst"), zst).unwrap();
    fs::write(dir.join("os.manifest.json"), manifest).unwrap();
    (
        format!("file://{}", dir.join("os.img.zst").display()),
        digest,
    )
}

fn image(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn phase_is(want: &'static str) -> impl Fn(&OsInstance) -> bool {
    move |o| phase(o).as_deref() == Some(want)
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_with_the_real_agent_across_a_restart_and_a_reboot() {
    let host = FileNode::new();
    let (url, digest) = bundle(host.dir.path(), NEW, &image(300 << 10));
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Assigned", NEW).await;
    let patch = json!({"spec": {"imageurl": url, "checksum": digest}});
    Api::<Os>::default_namespaced(client.clone())
        .patch("os", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();

    let socket = tokio::task::block_in_place(|| host.boot(Slot::A, 1));
    let proxy = |socket: &Path| {
        Proxy::new(
            client.clone(),
            proxy_config(socket, Duration::from_secs(10)),
        )
    };
    tick_until(&proxy(&socket), &client, 10, phase_is("Rebooting")).await;
    let written = host.record(Slot::B);
    assert_eq!(
        (written.state, written.version.as_str()),
        (SlotState::Written, NEW)
    );
    assert_eq!(written.digest, digest);

    // A proxy that crashed before it recorded the drain finds the slot verified: no rewrite.
    let back = json!({"status": {"phase": "Preparing"}});
    Api::<OsInstance>::default_namespaced(client.clone())
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(back))
        .await
        .unwrap();
    tick_until(&proxy(&socket), &client, 10, phase_is("Rebooting")).await;
    assert_eq!(
        host.record(Slot::B).written_at,
        written.written_at,
        "written once"
    );

    // Power cycle: GRUB boots B on trial; the new agent's health gate (no checks) commits it.
    assert_eq!(host.grub(), Slot::B);
    let socket = tokio::task::block_in_place(|| host.boot(Slot::B, 2));
    tick_until(&proxy(&socket), &client, 10, phase_is("Succeeded")).await;
    let osi = instance(&client).await;
    assert_eq!(osi.spec.nodestatus, NodeStatus::Idle);
    assert_eq!(osi.status.unwrap().current_version.as_deref(), Some(NEW));
    assert_eq!(host.record(Slot::B).state, SlotState::Good);
    assert_ne!(
        node(&client, NODE).await.spec.unwrap().unschedulable,
        Some(true)
    );
}
