//! Node configuration on temp roots: every model's add, update, delete and
//! idempotent re-apply; the transaction (a failing third model leaves the
//! first two as they were, a failed restart restores and restarts again);
//! the per-node allow-list.

use agent::configure::{self, ConfigureError, ConfigureRequest, Node, Outcome, Settings};
use bootctl::{envblk, Slot};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Rig {
    dir: tempfile::TempDir,
    settings: Settings,
}

const SYSCTL_CONF: &str = "# sysctl settings\nvm.swappiness = 60\n\nnet.ipv4.ip_forward = 0\n";
const LIMITS_CONF: &str = "# limits\n*  soft  nofile  1024\n*  hard  nofile  4096\n";
const KUBELET_YAML: &str = "# kubelet\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nport: 10250  # default\n";
const CONTAINERD_TOML: &str =
    "# containerd\nversion = 2\n\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n";

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        for (path, text) in [
            ("root/etc/sysctl.conf", SYSCTL_CONF),
            ("root/etc/security/limits.conf", LIMITS_CONF),
            ("root/var/lib/kubelet/config.yaml", KUBELET_YAML),
            ("root/etc/containerd/config.toml", CONTAINERD_TOML),
            ("proc/sys/vm/swappiness", "60\n"),
            ("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n"),
        ] {
            fs::create_dir_all(p(path).parent().unwrap()).unwrap();
            fs::write(p(path), text).unwrap();
        }
        fs::create_dir_all(p("esp")).unwrap();
        fs::create_dir_all(p("root/etc/sysctl.d")).unwrap();
        let script = p("restart.sh");
        let calls = p("calls");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1\" >> {calls}\nif [ -e {dir}/fail-$1 ]; then echo \"$1 did not start\" >&2; exit 1; fi\n",
                calls = calls.display(),
                dir = dir.path().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let settings = Settings {
            root: p("root"),
            proc_dir: p("proc"),
            restart: vec![script.display().to_string()],
            ..Settings::default()
        };
        Rig { dir, settings }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The message of a request that must be refused.
    fn refused(&self, json: &str) -> String {
        self.run(json)
            .expect_err("the request should be refused")
            .to_string()
    }

    fn run(&self, json: &str) -> Result<Outcome, ConfigureError> {
        let req = ConfigureRequest::from_json(json).unwrap();
        let esp = self.path("esp");
        let node = Node {
            settings: &self.settings,
            esp: &esp,
            booted: Slot::A,
        };
        configure::configure(&node, &req)
    }

    /// Applies `json`, then again: the second run must change nothing.
    fn run_twice(&self, json: &str, files: &[&str]) -> Outcome {
        let first = self.run(json).unwrap();
        let before: Vec<Vec<u8>> = files
            .iter()
            .map(|f| fs::read(self.path(f)).unwrap())
            .collect();
        let calls = self.calls();
        let second = self.run(json).unwrap();
        assert_eq!(second, Outcome::default(), "a re-apply changed something");
        for (f, b) in files.iter().zip(before) {
            assert_eq!(
                fs::read(self.path(f)).unwrap(),
                b,
                "{f} changed on re-apply"
            );
        }
        assert_eq!(self.calls(), calls, "a re-apply restarted something");
        first
    }
}

/// A KubeOS request: `[{"configs":[{"model":M,"config_path":P,"contents":C}]}]`.
fn request(configs: &[(&str, &str, &str)]) -> String {
    let configs: Vec<String> = configs
        .iter()
        .map(|(m, p, c)| format!(r#"{{"model":"{m}","config_path":"{p}","contents":{c}}}"#))
        .collect();
    format!(r#"[{{"configs":[{}]}}]"#, configs.join(","))
}

#[test]
fn sysctl_persist_add_update_delete() {
    let rig = Rig::new();
    let f = "root/etc/sysctl.conf";
    let req = request(&[(
        "kernel.sysctl.persist",
        "",
        r#"{"vm.swappiness":{"value":10,"operation":"update"},"kernel.pid_max":{"value":"65536","operation":"add"}}"#,
    )]);
    let out = rig.run_twice(&req, &[f]);
    assert_eq!(out.changed, [rig.path(f).display().to_string()]);
    assert_eq!(
        rig.read(f),
        SYSCTL_CONF.replace("swappiness = 60", "swappiness = 10") + "kernel.pid_max=65536\n"
    );
    let del = request(&[(
        "kernel.sysctl.persist",
        "/etc/sysctl.conf",
        r#"{"kernel.pid_max":{"value":"","operation":"delete"}}"#,
    )]);
    rig.run_twice(&del, &[f]);
    assert_eq!(
        rig.read(f),
        SYSCTL_CONF.replace("swappiness = 60", "swappiness = 10")
    );
    assert!(rig.calls().is_empty(), "sysctl files restart nothing");
}

#[test]
fn sysctl_runtime_set_delete_warns_and_refusals() {
    let rig = Rig::new();
    let req = request(&[(
        "kernel.sysctl",
        "",
        r#"{"vm.swappiness":{"value":"10","operation":""},"net.ipv4.tcp_rmem":{"value":"4096 131072 6291456","operation":""}}"#,
    )]);
    let out = rig.run_twice(&req, &["proc/sys/vm/swappiness"]);
    assert_eq!(
        out.changed.len(),
        1,
        "tcp_rmem already held the value: {out:?}"
    );
    assert_eq!(rig.read("proc/sys/vm/swappiness"), "10\n");
    let del = request(&[(
        "kernel.sysctl",
        "",
        r#"{"vm.swappiness":{"value":"","operation":"delete"}}"#,
    )]);
    // KubeOS logs a warning and carries on: so does this agent, and the
    // warning is in the result; the value stays as it was.
    let out = rig.run(&del).unwrap();
    assert!(out.changed.is_empty(), "{out:?}");
    assert_eq!(out.warnings.len(), 1, "{out:?}");
    assert!(
        out.warnings[0]
            .contains("kernel.sysctl \"vm.swappiness\": a runtime sysctl cannot be deleted"),
        "{out:?}"
    );
    assert_eq!(rig.read("proc/sys/vm/swappiness"), "10\n");
    let missing = request(&[("kernel.sysctl", "", r#"{"vm.nope":{"value":"1"}}"#)]);
    let err = rig.run(&missing).unwrap_err().to_string();
    assert!(err.contains("no such sysctl"), "{err}");
}

#[test]
fn pam_limits_add_update_delete() {
    let rig = Rig::new();
    let f = "root/etc/security/limits.conf";
    let req = r#"{"configs":[{"model":"pam.limits","contents":[
        {"key":"*","value":"hard.nofile.65536"},
        {"key":"*","value":"soft.nofile.65536"},
        {"key":"root","value":"soft.core.0","operation":"add"}]}]}"#;
    rig.run_twice(req, &[f]);
    assert_eq!(
        rig.read(f),
        "# limits\n*  soft  nofile  65536\n*  hard  nofile  65536\nroot soft core 0\n"
    );
    let del = request(&[(
        "pam.limits",
        "",
        r#"{"root":{"value":"soft.core.0","operation":"delete"}}"#,
    )]);
    rig.run_twice(&del, &[f]);
    assert_eq!(
        rig.read(f),
        "# limits\n*  soft  nofile  65536\n*  hard  nofile  65536\n"
    );
}

#[test]
fn kubelet_yaml_changes_restart_kubelet_once() {
    let rig = Rig::new();
    let f = "root/var/lib/kubelet/config.yaml";
    let req = request(&[(
        "kubernetes.kubelet",
        "",
        r#"{"port":{"value":10255},"evictionHard.\"memory.available\"":{"value":"200Mi"},"clusterDNS":{"value":["10.96.0.10"]}}"#,
    )]);
    let out = rig.run_twice(&req, &[f]);
    assert_eq!(out.restarted, ["kubelet"]);
    assert_eq!(rig.calls(), ["kubelet"]);
    let text = rig.read(f);
    assert!(
        text.starts_with("# kubelet\napiVersion: kubelet.config.k8s.io/v1beta1\n"),
        "{text}"
    );
    assert!(text.contains("port: 10255  # default\n"), "{text}");
    assert!(
        text.contains("evictionHard:\n  memory.available: 200Mi\n"),
        "{text}"
    );
    let del = request(&[(
        "kubernetes.kubelet",
        "",
        r#"{"evictionHard":{"value":null,"operation":"delete"}}"#,
    )]);
    rig.run_twice(&del, &[f]);
    assert!(!rig.read(f).contains("evictionHard"));
    assert_eq!(rig.calls(), ["kubelet", "kubelet"]);
}

#[test]
fn containerd_toml_changes_restart_containerd() {
    let rig = Rig::new();
    let f = "root/etc/containerd/config.toml";
    let key = r#"plugins.\"io.containerd.grpc.v1.cri\".sandbox_image"#;
    let req = request(&[(
        "container.containerd",
        "",
        &format!(r#"{{"{key}":{{"value":"registry.k8s.io/pause:3.9"}},"grpc.uid":{{"value":0}}}}"#),
    )]);
    rig.run_twice(&req, &[f]);
    assert_eq!(rig.calls(), ["containerd"]);
    let text = rig.read(f);
    assert!(text.starts_with(CONTAINERD_TOML.trim_end()), "{text}");
    assert!(
        text.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""),
        "{text}"
    );
    let del = request(&[(
        "container.containerd",
        "",
        r#"{"grpc.uid":{"value":0,"operation":"delete"}}"#,
    )]);
    rig.run_twice(&del, &[f]);
    assert!(!rig.read(f).contains("uid"));
}

fn args_of(rig: &Rig, slot: &str) -> String {
    let block = fs::read(rig.path(&format!("esp/ab/args-{slot}"))).unwrap();
    assert_eq!(block.len(), envblk::DEFAULT_SIZE);
    let v = envblk::get(&block, b"os_args").unwrap().unwrap();
    String::from_utf8(v.bytes().collect()).unwrap()
}

#[test]
fn grub_cmdline_current_and_next_write_their_slot_file_only() {
    let rig = Rig::new();
    let req = request(&[
        (
            "grub.cmdline.next",
            "",
            r#"{"panic":{"value":"5"},"debug":{"value":""}}"#,
        ),
        ("grub.cmdline.current", "", r#"{"quiet":{"value":null}}"#),
    ]);
    rig.run_twice(&req, &["esp/ab/args-A", "esp/ab/args-B"]);
    assert_eq!(args_of(&rig, "B"), "debug panic=5");
    assert_eq!(args_of(&rig, "A"), "quiet");
    let del = request(&[(
        "grub.cmdline.next",
        "",
        r#"{"panic":{"value":"","operation":"delete"}}"#,
    )]);
    rig.run_twice(&del, &["esp/ab/args-B"]);
    assert_eq!(args_of(&rig, "B"), "debug");
    assert!(
        !rig.path("esp/ab1").exists(),
        "the A/B env copies are never touched"
    );
    let bad = request(&[("grub.cmdline.next", "", r#"{"os.slot":{"value":"A"}}"#)]);
    let err = rig.run(&bad).unwrap_err().to_string();
    assert!(err.contains("grub.cmdline.next key \"os.slot\""), "{err}");
}

fn snapshot(rig: &Rig) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for rel in [
        "root/etc/sysctl.conf",
        "root/etc/security/limits.conf",
        "root/var/lib/kubelet/config.yaml",
        "root/etc/containerd/config.toml",
        "proc/sys/vm/swappiness",
    ] {
        out.push((rel.to_owned(), fs::read(rig.path(rel)).unwrap()));
    }
    out.push((
        "sysctl.d".into(),
        fs::read_dir(rig.path("root/etc/sysctl.d"))
            .unwrap()
            .count()
            .to_string()
            .into_bytes(),
    ));
    out.push((
        "esp".into(),
        fs::read_dir(rig.path("esp"))
            .unwrap()
            .count()
            .to_string()
            .into_bytes(),
    ));
    out
}

#[test]
fn a_third_model_failing_to_write_leaves_the_first_two_unchanged() {
    let rig = Rig::new();
    // A sysctl whose write fails (ENOSPC) after the two files were replaced:
    // a /dev/full node of its own (a symlink to /dev/full would be refused).
    let full = rig.path("proc/sys/vm/overcommit_memory");
    let made = std::process::Command::new("mknod")
        .arg(&full)
        .args(["c", "1", "7"])
        .status()
        .unwrap();
    assert!(
        made.success(),
        "mknod {} (tests run as root)",
        full.display()
    );
    let before = snapshot(&rig);
    let req = request(&[
        (
            "kernel.sysctl.persist",
            "",
            r#"{"vm.swappiness":{"value":"1"}}"#,
        ),
        ("pam.limits", "", r#"{"*":{"value":"soft.nofile.9"}}"#),
        (
            "kernel.sysctl",
            "",
            r#"{"vm.overcommit_memory":{"value":"1"}}"#,
        ),
    ]);
    let err = rig.run(&req).unwrap_err();
    assert!(matches!(err, ConfigureError::Write { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("kernel.sysctl key \"vm.overcommit_memory\""),
        "{msg}"
    );
    assert!(msg.contains("every change was rolled back"), "{msg}");
    assert_eq!(snapshot(&rig), before);
}

#[test]
fn a_refused_model_or_key_changes_nothing() {
    let rig = Rig::new();
    let before = snapshot(&rig);
    for (third, expect) in [
        (
            ("kernel.sysctl.nope", "", "{}"),
            "unknown model \"kernel.sysctl.nope\"",
        ),
        (
            ("kubernetes.kubelet", "", r#"{"port.x":{"value":1}}"#),
            "not a mapping",
        ),
        (
            ("pam.limits", "", r#"{"*":{"value":"1.2"}}"#),
            "pam.limits key \"*\"",
        ),
        (
            ("kernel.sysctl.persist", "", r#"{"a b":{"value":"1"}}"#),
            "sysctl name",
        ),
    ] {
        let req = request(&[
            (
                "kernel.sysctl.persist",
                "",
                r#"{"vm.swappiness":{"value":"1"}}"#,
            ),
            ("grub.cmdline.next", "", r#"{"panic":{"value":"5"}}"#),
            third,
        ]);
        let msg = rig.run(&req).unwrap_err().to_string();
        assert!(
            msg.contains(expect) && msg.contains("nothing was changed"),
            "{msg}"
        );
        assert_eq!(snapshot(&rig), before);
    }
}

#[test]
fn a_failed_restart_restores_and_restarts_again() {
    let rig = Rig::new();
    fs::write(rig.path("fail-containerd"), "").unwrap();
    let before = snapshot(&rig);
    let req = request(&[
        ("kubernetes.kubelet", "", r#"{"port":{"value":1}}"#),
        ("container.containerd", "", r#"{"version":{"value":3}}"#),
    ]);
    let err = rig.run(&req).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigureError::Restart { .. }), "{err:?}");
    assert!(
        msg.contains("restarting containerd failed") && msg.contains("did not start"),
        "{msg}"
    );
    assert_eq!(snapshot(&rig), before);
    // containerd failed first (units restart in name order); after the
    // restore both restart on the old files.
    assert_eq!(rig.calls(), ["containerd", "containerd", "kubelet"]);
}

#[test]
fn paths_outside_the_allow_list_are_refused() {
    let mut rig = Rig::new();
    let before = snapshot(&rig);
    for path in [
        "/etc/passwd",
        "/etc/sysctl.d/90-k8s.conf",
        "/etc/../etc/sysctl.conf",
        "etc/sysctl.conf",
    ] {
        let req = request(&[(
            "kernel.sysctl.persist",
            path,
            r#"{"vm.swappiness":{"value":"1"}}"#,
        )]);
        let msg = rig.run(&req).unwrap_err().to_string();
        assert!(
            msg.contains("is not allowed on this node (allowed: /etc/sysctl.conf"),
            "{msg}"
        );
        assert_eq!(snapshot(&rig), before);
    }
    rig.settings
        .allow
        .add("kernel.sysctl.persist:/etc/sysctl.d/*.conf")
        .unwrap();
    let req = request(&[(
        "kernel.sysctl.persist",
        "/etc/sysctl.d/90-k8s.conf",
        r#"{"vm.swappiness":{"value":"1"}}"#,
    )]);
    rig.run_twice(&req, &["root/etc/sysctl.d/90-k8s.conf"]);
    assert_eq!(
        rig.read("root/etc/sysctl.d/90-k8s.conf"),
        "vm.swappiness=1\n"
    );
    let req = request(&[(
        "kernel.sysctl.persist",
        "/etc/sysctl.conf",
        r#"{"vm.swappiness":{"value":"1"}}"#,
    )]);
    assert!(
        rig.run(&req).is_err(),
        "naming a model replaces its default file"
    );
}

#[test]
fn replaced_files_keep_their_mode_and_symlinks_are_refused() {
    let rig = Rig::new();
    let f = rig.path("root/etc/security/limits.conf");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    rig.run(&request(&[(
        "pam.limits",
        "",
        r#"{"*":{"value":"soft.nofile.7"}}"#,
    )]))
    .unwrap();
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = fs::read_dir(f.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");
    let conf = rig.path("root/etc/sysctl.conf");
    fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(Path::new("/etc/hostname"), &conf).unwrap();
    let msg = rig.refused(&request(&[(
        "kernel.sysctl.persist",
        "",
        r#"{"a.b":{"value":"1"}}"#,
    )]));
    assert!(msg.contains("is a symlink"), "{msg}");
}

/// A file to edit is read whole, so it is bounded: a 64 GiB kubelet config (sparse) is
/// refused after 1 MiB and left as it is. (Read whole before: out of memory under a 6 GB
/// address-space limit.)
#[test]
fn a_huge_file_to_edit_is_refused_not_read_whole() {
    let rig = Rig::new();
    let f = rig.path("root/var/lib/kubelet/config.yaml");
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let msg = rig.refused(&request(&[(
        "kubernetes.kubelet",
        "",
        r#"{"maxPods":{"value":"50"}}"#,
    )]));
    assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
    assert_eq!(fs::metadata(&f).unwrap().len(), 64 << 30);
    assert!(rig.calls().is_empty(), "{:?}", rig.calls());
}

// ---- Hostile requests (issue 13) ----

#[test]
fn a_sysctl_key_cannot_climb_out_of_proc_sys() {
    let rig = Rig::new();
    // `net.//.//.//.etc.passwd` maps to `net/../../../etc/passwd` under
    // proc/sys: two levels above the rig's proc/sys is the rig's own dir.
    fs::create_dir_all(rig.path("proc/sys/net")).unwrap();
    fs::create_dir_all(rig.path("etc")).unwrap();
    fs::write(rig.path("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    for key in [
        "net.//.//.//.etc.passwd",
        "net.//.//.//.etc/passwd",
        "vm..swappiness",
        "vm./.swappiness",
        "vm.swappiness.",
    ] {
        let req = request(&[(
            "kernel.sysctl",
            "",
            &format!(r#"{{"{key}":{{"value":"owned"}}}}"#),
        )]);
        let err = rig.run(&req).unwrap_err().to_string();
        assert!(err.contains(&format!("key {key:?}")), "{key}: {err}");
        assert_eq!(
            rig.read("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
            "{key} wrote outside proc/sys"
        );
    }
    assert_eq!(rig.read("proc/sys/vm/swappiness"), "60\n");
}

#[test]
fn a_symlink_under_proc_sys_is_not_followed() {
    let rig = Rig::new();
    fs::write(rig.path("victim"), "keep\n").unwrap();
    std::os::unix::fs::symlink(rig.path("victim"), rig.path("proc/sys/vm/evil")).unwrap();
    std::os::unix::fs::symlink(rig.path("root/etc"), rig.path("proc/sys/etcdir")).unwrap();
    for key in ["vm.evil", "etcdir.sysctl/conf"] {
        let req = request(&[(
            "kernel.sysctl",
            "",
            &format!(r#"{{"{key}":{{"value":"owned"}}}}"#),
        )]);
        let err = rig.run(&req).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{key}: {err}");
    }
    assert_eq!(rig.read("victim"), "keep\n");
    assert_eq!(rig.read("root/etc/sysctl.conf"), SYSCTL_CONF);
}

#[test]
fn kernel_arguments_that_open_a_shell_or_bypass_the_boot_are_refused() {
    let rig = Rig::new();
    for (key, value) in [
        ("init", "/bin/sh"),
        ("systemd.debug_shell", ""),
        ("systemd.unit", "emergency.target"),
        ("systemd.unit", "rescue.target"),
        ("emergency", ""),
        ("rescue", ""),
        ("single", ""),
        ("S", ""),
        ("s", ""),
        ("1", ""),
        ("-s", ""),
        ("-b", ""),
        ("rd.break", ""),
        ("rd.shell", ""),
        ("rd.emergency", "bash"),
        ("break", "pre-mount"),
        ("kgdboc", "ttyS0"),
        ("kgdbwait", ""),
        ("selinux", "0"),
        ("enforcing", "0"),
        ("apparmor", "0"),
        ("security", "none"),
        ("lsm", ""),
        ("lockdown", "none"),
        ("module.sig_enforce", "0"),
        ("SYSTEMD.DEBUG_SHELL", ""),
    ] {
        let req = request(&[(
            "grub.cmdline.next",
            "",
            &format!(r#"{{"{key}":{{"value":"{value}"}}}}"#),
        )]);
        let err = rig
            .run(&req)
            .err()
            .unwrap_or_else(|| panic!("{key}={value} was accepted"))
            .to_string();
        assert!(err.contains("cmdline-allow"), "{key}: {err}");
        assert!(!rig.path("esp/ab/args-B").exists(), "{key} was written");
    }
    // Ordinary arguments still work.
    let ok = request(&[(
        "grub.cmdline.next",
        "",
        r#"{"quiet":{"value":""},"console":{"value":"ttyS0,115200"},"panic":{"value":"10"}}"#,
    )]);
    rig.run(&ok).unwrap();
    assert_eq!(args_of(&rig, "B"), "console=ttyS0,115200 panic=10 quiet");
}

#[test]
fn a_node_setting_allows_a_denied_kernel_argument() {
    let mut rig = Rig::new();
    rig.settings.cmdline_allow = vec!["systemd.unit".into(), "rd.*".into()];
    let req = request(&[(
        "grub.cmdline.next",
        "",
        r#"{"systemd.unit":{"value":"multi-user.target"},"rd.luks":{"value":"0"}}"#,
    )]);
    rig.run(&req).unwrap();
    assert_eq!(
        args_of(&rig, "B"),
        "rd.luks=0 systemd.unit=multi-user.target"
    );
    let still = request(&[("grub.cmdline.next", "", r#"{"init":{"value":"/bin/sh"}}"#)]);
    assert!(rig.run(&still).is_err(), "init stays denied");
    let boot = request(&[("grub.cmdline.next", "", r#"{"os.slot":{"value":"A"}}"#)]);
    let mut all = Rig::new();
    all.settings.cmdline_allow = vec!["*".into()];
    assert!(
        all.run(&boot).is_err(),
        "the boot protocol's own stay refused"
    );
    assert!(rig.run(&boot).is_err());
}

#[test]
fn a_symlinked_parent_directory_is_refused_not_followed() {
    let rig = Rig::new();
    // /etc is a symlink to a directory outside the config root.
    fs::create_dir_all(rig.path("elsewhere")).unwrap();
    fs::write(rig.path("elsewhere/sysctl.conf"), "x=1\n").unwrap();
    fs::rename(rig.path("root/etc"), rig.path("root/etc.real")).unwrap();
    std::os::unix::fs::symlink(rig.path("elsewhere"), rig.path("root/etc")).unwrap();
    let err = rig.refused(&request(&[(
        "kernel.sysctl.persist",
        "",
        r#"{"a.b":{"value":"1"}}"#,
    )]));
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(rig.read("elsewhere/sysctl.conf"), "x=1\n");
}

#[test]
fn a_file_swapped_between_plan_and_apply_is_not_written() {
    let rig = Rig::new();
    let req = ConfigureRequest::from_json(&request(&[
        ("pam.limits", "", r#"{"*":{"value":"soft.nofile.7"}}"#),
        (
            "kernel.sysctl.persist",
            "",
            r#"{"vm.swappiness":{"value":"1"}}"#,
        ),
    ]))
    .unwrap();
    let esp = rig.path("esp");
    let node = Node {
        settings: &rig.settings,
        esp: &esp,
        booted: Slot::A,
    };
    let plan = configure::plan(&node, &req).unwrap();
    // After the plan, sysctl.conf (the second change) becomes a symlink to
    // a file the request never named.
    fs::write(rig.path("victim"), "keep\n").unwrap();
    let conf = rig.path("root/etc/sysctl.conf");
    fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(rig.path("victim"), &conf).unwrap();
    let err = configure::apply(&rig.settings, &plan)
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed since"), "{err}");
    assert_eq!(rig.read("victim"), "keep\n");
    assert!(fs::symlink_metadata(&conf).unwrap().is_symlink());
    assert_eq!(
        rig.read("root/etc/security/limits.conf"),
        LIMITS_CONF,
        "the first change was restored"
    );
}
