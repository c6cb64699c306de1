//! The `os-agent` command line on a file-backed node. Reboots are disabled
//! (`reboot = no` in the config, and `--no-reboot`).

mod node_fixture;

use bootctl::record::SlotState;
use bootctl::Slot;
use node_fixture::{bundle, image, Node};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn os_agent(node: &Node, booted: Slot, args: &[&str]) -> Output {
    let conf = node.config_file(booted, "");
    Command::new(env!("CARGO_BIN_EXE_os-agent"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_documents_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_os-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "serve [--socket PATH]",
        "status [--json]",
        "upgrade --url URL --digest blake3:HEX",
        "rollback [--no-reboot]",
        "confirm",
        "--root-a PATH",
        "EXIT STATUS",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_os-agent"))
        .arg("bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown command `bogus`"));
}

#[test]
fn status_text_and_json() {
    let node = Node::new();
    let out = os_agent(&node, Slot::A, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("booted:     A"), "{s}");
    assert!(s.contains("slot A:     good     version 1"), "{s}");
    assert!(s.contains("job:        none"), "{s}");
    let out = os_agent(&node, Slot::A, &["status", "--json"]);
    let s = text(&out.stdout);
    let status: wire::rpc::Status = miniserde::json::from_str(s.trim()).expect(&s);
    assert_eq!((status.booted, status.active), (Slot::A, Slot::A));
    assert_eq!(status.slots.b.state, wire::record::SlotState::Empty);
    assert_eq!(status.slots.a.version, "1");
}

#[test]
fn status_says_whether_bundles_must_be_signed() {
    let node = Node::new();
    let out = os_agent(&node, Slot::A, &["status"]);
    let s = text(&out.stdout);
    assert!(
        s.contains("signatures: not checked (no trusted keys installed)"),
        "{s}"
    );
    let keys = node.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, _) = wire::signature::SecretKey::generate().unwrap();
    std::fs::write(keys.join("vendor.pub"), key.public().to_pem()).unwrap();
    std::fs::write(keys.join("broken.pub"), "garbage").unwrap();
    let out = os_agent(&node, Slot::A, &["status"]);
    let s = text(&out.stdout);
    let id = key.public().id();
    assert!(
        s.contains(&format!("signatures: required, trusted keys {id}")),
        "{s}"
    );
    assert!(
        s.contains("unusable key:") && s.contains("broken.pub"),
        "{s}"
    );
    let out = os_agent(&node, Slot::A, &["status", "--json"]);
    let s = text(&out.stdout);
    let status: wire::rpc::Status = miniserde::json::from_str(s.trim()).expect(&s);
    let trust = status.trust.expect("trust reported");
    assert!(trust.signatures_required);
    assert_eq!(trust.keys, vec![id]);
    assert_eq!(trust.unusable.len(), 1, "{:?}", trust.unusable);
}

#[test]
fn upgrade_then_confirm_then_rollback() {
    let node = Node::new();
    let img = image(300 << 10);
    let (url, digest) = bundle(node.dir.path(), "os-2", "2", &img, 128 << 10);
    let out = os_agent(
        &node,
        Slot::A,
        &[
            "upgrade",
            "--url",
            &url,
            "--digest",
            &digest,
            "--version",
            "2",
            "--no-reboot",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("slot B holds version 2"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("not rebooting"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(node.ab().trial, Some(Slot::B));

    // The trial boot of B: confirm by hand.
    let out = os_agent(&node, Slot::B, &["confirm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(node.record(Slot::B).state, SlotState::Good);
    assert_eq!(node.ab().active, Slot::B);

    // A booted and was confirmed before, so B can roll back to it.
    let out = os_agent(&node, Slot::B, &["rollback", "--no-reboot"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("slot A is committed"));
    assert_eq!(node.ab().active, Slot::A);
}

#[test]
fn refusals_and_busy_have_their_exit_codes() {
    let node = Node::new();
    let out = os_agent(&node, Slot::A, &["rollback", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("slot B holds no image"),
        "{}",
        text(&out.stderr)
    );

    // Another process holds the node's job lock until its stdin closes. (A
    // lock taken in this process could leak into a child that a parallel
    // test forks, for the moment before its exec.)
    let dir = node.state.join("os-agent");
    std::fs::create_dir_all(&dir).unwrap();
    let mut holder = Command::new("flock")
        .arg("--close")
        .arg(dir.join("lock"))
        .args(["-c", "echo locked; cat >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    let out = os_agent(&node, Slot::A, &["confirm"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("busy"), "{}", text(&out.stderr));
    let out = os_agent(&node, Slot::A, &["status"]);
    assert!(out.status.success(), "status never needs the lock");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    let out = os_agent(&node, Slot::A, &["confirm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The agent's own inputs on the command line are read bounded: a 64 GiB config or request
/// file, or /dev/zero, is refused after 1 MiB. Any kind of file is taken: `/dev/null` is an
/// empty configuration. (Read whole before: both ran `os-agent` out of memory.)
#[test]
fn config_and_request_files_are_read_bounded() {
    let node = Node::new();
    let huge = node.dir.path().join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_os-agent"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("os-agent {args:?} still running after 20 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let conf = node.config_file(Slot::A, "");
    for file in [huge.as_os_str(), std::ffi::OsStr::new("/dev/zero")] {
        let out = run(&["--config".as_ref(), file, "status".as_ref()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let says = "larger than 1048576 bytes";
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
        let out = run(&[
            "--config".as_ref(),
            conf.as_os_str(),
            "configure".as_ref(),
            "--file".as_ref(),
            file,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    // An empty configuration is taken: the agent goes on to look for the node's partitions
    // (there are none here).
    let out = run(&["--config".as_ref(), "/dev/null".as_ref(), "status".as_ref()]);
    assert!(
        text(&out.stderr).contains("finding the slot partitions"),
        "{}",
        text(&out.stderr)
    );
}
