//! The server's job handling, in process with a fake write path that runs
//! until cancelled: `prepare_upgrade` answers when its job ends, `status` on
//! another connection shows the progress meanwhile, other mutating requests
//! are busy, and `cancel` stops the job.

mod node_fixture;

use agent::job::{Agent, PrepareFn};
use agent::prepare::PrepareError;
use agent::progress::Phase;
use agent::rpc;
use bootctl::Slot;
use node_fixture::Node;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A download stuck at 25 % until cancelled.
fn stuck_prepare() -> PrepareFn {
    Box::new(|_, _, progress, cancel| {
        progress.start_phase(Phase::Downloading, 1000);
        progress.add_bytes(250);
        while !cancel.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(PrepareError::Cancelled { slot: Slot::B })
    })
}

/// Serves `agent` on the node's socket for the rest of the test process.
fn serve(node: &Node, prepare: PrepareFn) {
    let mut config = node.config(Slot::A);
    config.file_sources.push("/srv".into());
    let agent: &'static Agent = Box::leak(Box::new(Agent::new(config, prepare)));
    let listener = Box::leak(Box::new(rpc::bind(&node.socket, false).unwrap()));
    std::thread::spawn(move || rpc::run(agent, listener, || {}));
}

fn send(node: &Node, request: &str) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(&node.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    BufReader::new(s)
}

fn answer(r: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

fn call(node: &Node, request: &str) -> String {
    answer(&mut send(node, request))
}

const STATUS: &str = r#"{"jsonrpc":"2.0","method":"status","id":0}"#;

fn prepare_request(id: u32) -> String {
    let digest = format!("blake3:{}", "ab".repeat(32));
    format!(
        r#"{{"jsonrpc":"2.0","method":"prepare_upgrade","id":{id},"params":[{{"version":"2","check_sum":"{digest}","image_type":"disk","container_image":"","image_url":"file:///srv/os-2.img.zst","flag_safe":false,"mtls":false,"certs":{{"ca_cert":"","client_cert":"","client_key":""}}}}]}}"#
    )
}

#[test]
fn long_prepare_reports_progress_is_exclusive_and_cancellable() {
    let node = Node::new();
    serve(&node, stuck_prepare());
    let mut first = send(&node, &prepare_request(1));

    let start = Instant::now();
    let status = loop {
        let s = call(&node, STATUS);
        if s.contains(r#""phase":"downloading""#) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{s}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.contains(r#""kind":"prepare""#), "{status}");
    assert!(status.contains(r#""percent":25"#), "{status}");
    assert!(status.contains(r#""bytes":250,"#), "{status}");

    for busy in [
        prepare_request(2),
        r#"{"jsonrpc":"2.0","method":"upgrade","id":3}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"rollback","params":[],"id":4}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"confirm","id":5}"#.to_owned(),
    ] {
        let reply = call(&node, &busy);
        assert!(reply.contains(r#""code":-32000"#), "{reply}");
        assert!(
            reply.contains("busy: prepare (file:///srv/os-2.img.zst)"),
            "{reply}"
        );
    }

    let reply = call(&node, r#"{"jsonrpc":"2.0","method":"cancel","id":6}"#);
    assert_eq!(
        reply,
        "{\"jsonrpc\":\"2.0\",\"result\":{\"cancelled\":\"prepare\"},\"id\":6}\n"
    );
    let reply = answer(&mut first);
    assert!(reply.contains(r#""code":-1"#), "{reply}");
    assert!(reply.contains("prepare was cancelled"), "{reply}");
    assert!(reply.ends_with("\"id\":1}\n"), "{reply}");
    assert!(call(&node, STATUS).contains(r#""job":null"#));
}

#[test]
fn confirm_of_the_committed_slot_is_a_harmless_no_op() {
    let node = Node::new();
    serve(&node, stuck_prepare());
    let reply = call(
        &node,
        r#"{"jsonrpc":"2.0","method":"confirm","params":[],"id":1}"#,
    );
    assert_eq!(
        reply,
        "{\"jsonrpc\":\"2.0\",\"result\":{\"changed\":false,\"confirmed\":\"A\"},\"id\":1}\n"
    );
    let reply = call(
        &node,
        r#"{"jsonrpc":"2.0","method":"confirm","params":[1],"id":2}"#,
    );
    assert!(reply.contains(r#""code":-32602"#), "{reply}");
}
