//! /etc changes follow an upgrade: arming a trial replaces the trial slot's
//! /etc layer with a copy of the booted slot's upper, whiteouts and overlay
//! xattrs included, and a crash's leftovers do not get in the way.

mod node_fixture;

use agent::etc_overlay::{layer_dir, seed};
use agent::job::Agent;
use agent::prepare::{PrepareRequest, Tls};
use bootctl::Slot;
use node_fixture::Node;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid strings; `buf` is writable for its length.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings; `value` is readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// An upper layer for slot A as overlayfs leaves one: a file, a nested dir
/// with a private file, a symlink, and (as root) a whiteout and an opaque dir.
fn populate_upper(state: &Path) {
    let upper = layer_dir(state, Slot::A).join("upper");
    fs::create_dir_all(upper.join("ssh")).unwrap();
    fs::create_dir_all(layer_dir(state, Slot::A).join("work")).unwrap();
    fs::write(upper.join("hostname"), "node-7\n").unwrap();
    fs::write(upper.join("ssh/key"), "secret").unwrap();
    fs::set_permissions(upper.join("ssh/key"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", upper.join("localtime")).unwrap();
    if is_root() {
        let path = CString::new(upper.join("motd").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid string; a 0:0 character device is an overlayfs whiteout.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        set_xattr(&upper.join("ssh"), "trusted.overlay.opaque", b"y");
    }
}

fn assert_seeded(state: &Path) {
    let upper = layer_dir(state, Slot::B).join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("hostname")).unwrap(),
        "node-7\n"
    );
    assert_eq!(fs::read_to_string(upper.join("ssh/key")).unwrap(), "secret");
    let mode = fs::metadata(upper.join("ssh/key")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        fs::read_link(upper.join("localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    assert!(layer_dir(state, Slot::B).join("work").is_dir());
    if is_root() {
        let motd = fs::symlink_metadata(upper.join("motd")).unwrap();
        assert!(motd.file_type().is_char_device() && motd.rdev() == 0);
        assert_eq!(
            get_xattr(&upper.join("ssh"), "trusted.overlay.opaque"),
            Some(b"y".to_vec())
        );
    }
}

#[test]
fn seed_replaces_the_old_layer_and_cleans_a_crashed_attempt() {
    let node = Node::new();
    populate_upper(&node.state);
    // B's old layer from an earlier life, and a crashed seed's leftovers.
    let old = layer_dir(&node.state, Slot::B);
    fs::create_dir_all(old.join("upper")).unwrap();
    fs::write(old.join("upper/stale"), "old").unwrap();
    let leftover = node.state.join("etc-overlay/.B.seed/upper");
    fs::create_dir_all(&leftover).unwrap();
    fs::write(leftover.join("half"), "x").unwrap();

    let copied = seed(&node.state, Slot::A, Slot::B).unwrap();
    assert!(copied >= 5, "{copied}");
    assert_seeded(&node.state);
    assert!(!old.join("upper/stale").exists());
    let names: Vec<_> = fs::read_dir(node.state.join("etc-overlay"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "leftovers: {names:?}");
    // The source is untouched.
    let a = layer_dir(&node.state, Slot::A).join("upper/hostname");
    assert_eq!(fs::read_to_string(a).unwrap(), "node-7\n");
}

#[test]
fn seed_from_a_slot_without_a_layer_gives_an_empty_one() {
    let node = Node::new();
    let old = layer_dir(&node.state, Slot::B).join("upper");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("stale"), "old").unwrap();
    assert_eq!(seed(&node.state, Slot::A, Slot::B).unwrap(), 0);
    assert_eq!(fs::read_dir(&old).unwrap().count(), 0);
}

#[test]
fn upgrade_seeds_the_trial_slot_before_arming_it() {
    let node = Node::new();
    populate_upper(&node.state);
    let agent = Agent::new(
        node.config(Slot::A),
        Box::new(
            |cfg: &agent::config::Config, req: &PrepareRequest, _: &_, _: &_| {
                let rec = bootctl::record::SlotRecord {
                    slot: cfg.inactive(),
                    state: bootctl::record::SlotState::Written,
                    version: "2".into(),
                    digest: req.digest.clone(),
                    size: 4096,
                    written_at: 1,
                    confirm: None,
                    source: String::new(),
                    verity: None,
                };
                bootctl::record::write(&cfg.state_dir, &rec).map_err(|source| {
                    agent::prepare::PrepareError::Record {
                        slot: rec.slot,
                        source,
                    }
                })?;
                Ok(agent::prepare::Prepared {
                    slot: rec.slot,
                    version: rec.version,
                    digest: rec.digest,
                    size: rec.size,
                    source: String::new(),
                    verity: None,
                })
            },
        ),
    );
    agent
        .prepare_upgrade(&PrepareRequest {
            url: "file:///os-2.img.zst".into(),
            digest: format!("blake3:{}", blake3::hash(b"2").to_hex()),
            version: Some("2".into()),
            tls: Tls::default(),
            allow_http: false,
        })
        .unwrap();
    let (state, _guard) = agent.upgrade().unwrap();
    assert_eq!(state.trial, Some(Slot::B));
    assert_seeded(&node.state);
}
