//! `configure` through the real `os-agent serve` on a socket (KubeOS's
//! request and answer), and through `os-agent configure --file`, on a
//! file-backed node whose configured files live under a temp `config-root`.

mod node_fixture;

use bootctl::Slot;
use node_fixture::Node;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    node: Node,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(node: &Node) -> String {
    fs::read_to_string(node.dir.path().join("agent.log")).unwrap_or_default()
}

/// Config lines pointing node configuration at temp dirs.
fn extra(node: &Node) -> String {
    let p = |s: &str| node.dir.path().join(s).display().to_string();
    fs::create_dir_all(p("root/etc")).unwrap();
    fs::write(p("root/etc/sysctl.conf"), "# tuned\nvm.swappiness = 60\n").unwrap();
    format!(
        "config-root = {}\nproc-dir = {}\nconfig-restart = /bin/true\n",
        p("root"),
        p("proc")
    )
}

fn start(node: Node) -> Server {
    let conf = node.config_file(Slot::A, &extra(&node));
    let log_file = fs::File::create(node.dir.path().join("agent.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_os-agent"))
        .args(["--config", conf.to_str().unwrap(), "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let server = Server { child, node };
    let start = Instant::now();
    while !log(&server.node).contains("after boot: ") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            log(&server.node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn call(server: &Server, request: &str) -> String {
    let mut s = UnixStream::connect(&server.node.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

fn configure_request(id: u32, contents: &str) -> String {
    format!(
        r#"{{"method":"configure","params":[{{"configs":[{{"model":"kernel.sysctl.persist","config_path":"","contents":{contents}}},{{"model":"grub.cmdline.next","config_path":"","contents":{{"panic":{{"value":"5","operation":""}}}}}}]}}],"id":{id},"jsonrpc":"2.0"}}"#
    )
}

#[test]
fn configure_over_the_socket_answers_like_kubeos() {
    let server = start(Node::new());
    let conf: PathBuf = server.node.dir.path().join("root/etc/sysctl.conf");
    let req = configure_request(
        1,
        r#"{"vm.swappiness":{"value":"10","operation":"update"}}"#,
    );
    let reply = call(&server, &req);
    assert_eq!(
        reply,
        r#"{"jsonrpc":"2.0","result":{"status":"Configured"},"id":1}"#,
        "{}",
        log(&server.node)
    );
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "# tuned\nvm.swappiness = 10\n"
    );
    assert!(server.node.esp.join("ab/args-B").exists());
    // Again: same answer, nothing changes.
    let reply = call(&server, &req.replace(r#""id":1"#, r#""id":2"#));
    assert!(reply.contains(r#""status":"Configured""#), "{reply}");
    assert!(log(&server.node).contains("configure: nothing to change"));

    // A refused key: refused (never worth retrying), the model and key
    // named, the file untouched.
    let bad = configure_request(3, r#"{"vm swappiness":{"value":"1","operation":""}}"#);
    let reply = call(&server, &bad);
    assert!(reply.contains(r#""code":-32003"#), "{reply}");
    assert!(
        reply.contains(r#""kind":"refused","reason":"configure-refused""#),
        "{reply}"
    );
    assert!(
        reply.contains(r#"kernel.sysctl.persist key \"vm swappiness\""#),
        "{reply}"
    );
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "# tuned\nvm.swappiness = 10\n"
    );
    // A malformed request: invalid params.
    let reply = call(
        &server,
        r#"{"method":"configure","params":[{"configs":7}],"id":4,"jsonrpc":"2.0"}"#,
    );
    assert!(reply.contains(r#""code":-32602"#), "{reply}");
}

#[test]
fn configure_from_the_command_line() {
    let node = Node::new();
    let conf = node.config_file(Slot::A, &extra(&node));
    let file = node.dir.path().join("request.json");
    fs::write(
        &file,
        r#"{"configs":[{"model":"kernel.sysctl.persist","contents":[{"key":"kernel.pid_max","value":65536}]}]}"#,
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_os-agent"))
            .args(["--config", conf.to_str().unwrap(), "configure", "--file"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed "));
    let text = fs::read_to_string(node.dir.path().join("root/etc/sysctl.conf")).unwrap();
    assert_eq!(text, "# tuned\nvm.swappiness = 60\nkernel.pid_max=65536\n");
    let out = run();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configured: nothing to change\n"
    );
    fs::write(&file, r#"{"configs":[{"model":"kernel.sysctl.persist","config_path":"/etc/shadow","contents":{}}]}"#).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"/etc/shadow\" is not allowed"));
}
