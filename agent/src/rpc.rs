//! JSON-RPC 2.0 over a Unix socket (DESIGN.md §6), wire-compatible with
//! openEuler KubeOS's os-agent (`KubeOS-Rust/agent/src/rpc/agent.rs`; client:
//! `cli/src/client.rs`, the `jsonrpc` crate's `simple_uds` transport).
//!
//! Framing: a request is one complete JSON value; values may follow each other
//! directly or be separated by newlines (KubeOS's client sends one value and
//! no newline, then waits). Every response is one line. A connection may carry
//! many requests; each is answered in order.
//!
//! Methods (params `[obj]` positional as KubeOS sends them, or `obj`):
//! - `prepare_upgrade` `[UpgradeRequest]` → `{"status":"UpgradeReady"}` when
//!   the image is written and verified (the call lasts as long as the write).
//! - `upgrade` → `{"status":"Upgraded"}`, then the machine reboots into the trial.
//! - `rollback` → `{"status":"Rollbacked"}`, then the machine reboots.
//! - `configure` `[ConfigureRequest]` → `{"status":"Configured"}` once every
//!   change is written and the services it names restarted; error -1 naming
//!   the model, key and path when it was refused or failed and rolled back
//!   (configure/mod.rs).
//! - `status` → the node report (status.rs): `booted`, `active`, `trial`,
//!   `tries`, `fail`, `on_trial`, `source`, `slots.{A,B}.{state,version,digest,
//!   size,written_at}`, `last_failure {slot,version,reason}`, `rescue {from,to,reason}`
//!   (os-init's last resort, bootctl::record::RescueNote), `job {kind,detail,
//!   step,elapsed_s,phase,bytes,total,fetched,percent,rate}`, `other_job`.
//! - `confirm` → `{"confirmed":"B","changed":true}`: commit the booted slot now.
//! - `cancel` → `{"cancelled":"prepare"}` (or `null` when nothing runs).
//!
//! Error codes: the JSON-RPC ones (-32700 parse, -32600 invalid request or
//! larger than [`MAX_REQUEST`], -32601 unknown method with KubeOS's exact
//! message "Method not found", -32602 bad params), -1 for a failed or refused
//! operation (KubeOS's `RPC_OP_ERROR`), and this agent's own: -32000 busy
//! (the message names the running job), -32001 not supported, -32002 peer not
//! allowed.
//!
//! Access: the socket is 0600 (root only) unless `allow-uid` names other users,
//! then 0666; either way the peer's uid is checked with `SO_PEERCRED`.

use crate::configure::ConfigureRequest;
use crate::job::{Agent, AgentError, JobGuard};
use crate::kubeos::{ToPrepare, UpgradeRequest};
use crate::{node, status, sys};
use bootctl::state::Confirmed;
use log::{debug, error, info, warn};
use miniserde::json::{self, Value};
use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use wire::json::{object, string, to_value};
use wire::rpc::{self as msg, ErrorData, Reason};

/// Largest request accepted (the wire's one bound); a KubeOS request is well under 4 KiB.
pub const MAX_REQUEST: usize = msg::MAX_MESSAGE;
/// Deepest nesting of objects and arrays accepted. KubeOS's requests nest
/// five levels; a deeper value is refused before it is parsed, because
/// copying or comparing a parsed value recurses once per level and 100,000
/// levels overflow a connection thread's stack (the whole agent aborts).
pub const MAX_DEPTH: usize = 64;
/// Connections served at once; more get a busy error and are closed.
const MAX_CONNECTIONS: usize = 32;
/// A client that does not read its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub use wire::rpc::code::*;

#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: ErrorData,
}

impl RpcError {
    /// An error whose code and kind follow from `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> RpcError {
        RpcError {
            code: reason.code(),
            message: message.into(),
            data: ErrorData::of(reason),
        }
    }

    fn detail(mut self, detail: String) -> RpcError {
        self.data.detail = Some(detail);
        self
    }
}

impl From<AgentError> for RpcError {
    fn from(e: AgentError) -> Self {
        RpcError::new(e.reason(), e.to_string())
    }
}

/// Splits a byte stream into requests: each complete top-level JSON object
/// or array, or (for anything else, which cannot be a request) the rest of
/// the line, so garbage costs one error per line.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for the current value.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Request(Vec<u8>),
    /// The current request exceeds [`MAX_REQUEST`]; the stream cannot be
    /// resynchronised.
    TooLarge,
    /// The current request nests deeper than [`MAX_DEPTH`]; likewise.
    TooDeep,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete request, if the buffer holds one.
    pub fn pop(&mut self) -> Option<Frame> {
        if self.scanned == 0 {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            self.buf.drain(..start.unwrap_or(self.buf.len()));
        }
        let end = match self.buf.first()? {
            b'{' | b'[' => self.scan_value(),
            _ => self.scan_line(),
        };
        match end {
            _ if self.depth > MAX_DEPTH => Some(Frame::TooDeep),
            Some(end) => {
                let frame: Vec<u8> = self.buf.drain(..end).collect();
                *self = Framer {
                    buf: std::mem::take(&mut self.buf),
                    ..Framer::default()
                };
                Some(Frame::Request(frame))
            }
            None if self.buf.len() > MAX_REQUEST => Some(Frame::TooLarge),
            None => None,
        }
    }

    /// Whether part of a request has arrived.
    pub fn pending(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }

    /// Whatever is left when the peer stops sending: a truncated request.
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        *self = Framer::default();
        rest.iter()
            .any(|b| !b.is_ascii_whitespace())
            .then_some(rest)
    }

    /// End (exclusive) of the object or array that starts the buffer.
    fn scan_value(&mut self) -> Option<usize> {
        for i in self.scanned..self.buf.len() {
            let b = self.buf[i];
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return None;
                    }
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        self.scanned = self.buf.len();
        None
    }

    fn scan_line(&mut self) -> Option<usize> {
        let from = self.scanned;
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => Some(from + i + 1),
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

/// A parsed request.
struct Request {
    /// `None`: a notification, which gets no answer.
    id: Option<Value>,
    method: String,
    params: Option<Value>,
}

fn parse_request(bytes: &[u8]) -> Result<Request, (Value, RpcError)> {
    let parse_error = |m: &str| (Value::Null, RpcError::new(Reason::ParseError, m));
    let text = std::str::from_utf8(bytes).map_err(|_| parse_error("Parse error: not UTF-8"))?;
    let value: Value = json::from_str(text)
        .map_err(|_| parse_error("Parse error: not a complete, valid JSON value"))?;
    let mut o = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            let m = "Invalid request: batches are not supported; send one request at a time";
            return Err((Value::Null, RpcError::new(Reason::InvalidRequest, m)));
        }
        _ => {
            let m = "Invalid request: a request is a JSON object";
            return Err((Value::Null, RpcError::new(Reason::InvalidRequest, m)));
        }
    };
    let id = o.remove("id");
    let id_or_null = match &id {
        None => Value::Null,
        Some(v @ (Value::Null | Value::Number(_) | Value::String(_))) => v.clone(),
        Some(_) => {
            let m = "Invalid request: id must be a string, a number or null";
            return Err((Value::Null, RpcError::new(Reason::InvalidRequest, m)));
        }
    };
    let invalid = |m: &str| (id_or_null.clone(), RpcError::new(Reason::InvalidRequest, m));
    if !matches!(o.get("jsonrpc"), Some(Value::String(v)) if v == "2.0") {
        return Err(invalid(r#"Invalid request: "jsonrpc" must be "2.0""#));
    }
    let method = match o.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid(r#"Invalid request: "method" must be a string"#)),
    };
    let params = match o.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Array(_) | Value::Object(_))) => Some(p),
        Some(_) => {
            return Err(invalid(
                r#"Invalid request: "params" must be an array or object"#,
            ))
        }
    };
    Ok(Request { id, method, params })
}

fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    let id = json::to_string(id);
    match result {
        Ok(v) => format!(
            r#"{{"jsonrpc":"2.0","result":{},"id":{id}}}"#,
            json::to_string(&v)
        ),
        Err(e) => {
            let err = object([
                ("code", Value::Number(json::Number::I64(e.code))),
                ("message", string(e.message)),
                ("data", to_value(&e.data)),
            ]);
            format!(
                r#"{{"jsonrpc":"2.0","error":{},"id":{id}}}"#,
                json::to_string(&err)
            )
        }
    }
}

/// A method's result, and the reboot it asks for once the answer is out.
struct Done<'a> {
    result: Value,
    reboot: Option<(JobGuard<'a>, String)>,
}

impl Done<'_> {
    fn value(result: Value) -> Self {
        Done {
            result,
            reboot: None,
        }
    }
}

fn kubeos_status(status: &str) -> Value {
    to_value(&msg::OpStatus {
        status: status.to_owned(),
    })
}

/// KubeOS's `{"status":"Configured"}`, with `warnings` only when there are
/// any (so a plain success stays byte-identical to KubeOS's).
fn configured(warnings: &[String]) -> Value {
    let mut v = kubeos_status(msg::CONFIGURED);
    if let (Value::Object(o), false) = (&mut v, warnings.is_empty()) {
        let list = warnings.iter().map(|w| string(w.as_str())).collect();
        o.insert("warnings".to_owned(), Value::Array(list));
    }
    v
}

fn no_params(method: &str, params: Option<&Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(Value::Object(o)) if o.is_empty() => Ok(()),
        Some(_) => Err(RpcError::new(
            Reason::InvalidParams,
            format!("Invalid params: {method} takes no parameters"),
        )),
    }
}

fn dispatch<'a>(
    agent: &'a Agent,
    method: &str,
    params: Option<&Value>,
) -> Result<Done<'a>, RpcError> {
    let invalid = |m: String| RpcError::new(Reason::InvalidParams, format!("Invalid params: {m}"));
    match method {
        msg::PREPARE_UPGRADE => {
            let req = UpgradeRequest::from_params(params)
                .and_then(|r| r.to_prepare(&agent.config().certs_dir))
                .map_err(invalid)?;
            crate::kubeos::check_file_source(&req.url, &agent.config().file_sources)
                .map_err(|m| RpcError::new(Reason::FileSource, m))?;
            agent.prepare_upgrade(&req)?;
            Ok(Done::value(kubeos_status(msg::UPGRADE_READY)))
        }
        msg::UPGRADE => {
            no_params(method, params)?;
            let (state, guard) = agent.upgrade()?;
            let trial = state.trial.map_or("-", |s| s.as_str());
            let why = format!("upgrade: trial boot of slot {trial} armed");
            Ok(Done {
                result: kubeos_status(msg::UPGRADED),
                reboot: Some((guard, why)),
            })
        }
        msg::ROLLBACK => {
            no_params(method, params)?;
            let (slot, guard) = agent.rollback()?;
            Ok(Done {
                result: kubeos_status(msg::ROLLBACKED),
                reboot: Some((guard, format!("rollback: slot {slot} committed"))),
            })
        }
        msg::CONFIGURE => {
            let req = ConfigureRequest::from_params(params).map_err(invalid)?;
            let outcome = agent.configure(&req)?;
            Ok(Done::value(configured(&outcome.warnings)))
        }
        msg::STATUS => {
            no_params(method, params)?;
            Ok(Done::value(to_value(&status::report(agent)?.to_wire())))
        }
        msg::CONFIRM => {
            no_params(method, params)?;
            confirm(agent)
        }
        msg::CANCEL => {
            no_params(method, params)?;
            let cancelled = agent.cancel().map(|k| k.as_str().to_owned());
            Ok(Done::value(to_value(&msg::Cancelled { cancelled })))
        }
        _ => Err(method_not_found(method)),
    }
}

fn confirm(agent: &Agent) -> Result<Done<'_>, RpcError> {
    let changed = agent.confirm()? == Confirmed::Committed;
    Ok(Done::value(to_value(&msg::Confirmed {
        confirmed: agent.config().booted,
        changed,
    })))
}

/// KubeOS's client tells "unimplemented" by this exact message.
fn method_not_found(method: &str) -> RpcError {
    RpcError::new(Reason::MethodNotFound, "Method not found").detail(format!(
        "no method {method:?}; methods: {}",
        msg::METHODS.join(", ")
    ))
}

/// Handles one request; `None` for a notification. A reboot the method asked
/// for is carried out after the answer is written.
fn answer<'a>(agent: &'a Agent, bytes: &[u8]) -> (Option<String>, Option<(JobGuard<'a>, String)>) {
    let req = match parse_request(bytes) {
        Ok(r) => r,
        Err((id, e)) => {
            warn!("rpc: rejected request: {}", e.message);
            return (Some(response(&id, Err(e))), None);
        }
    };
    // The method name is the peer's text: quoted, so it cannot forge log lines.
    info!("rpc: {:?}", req.method);
    let (result, reboot) = match dispatch(agent, &req.method, req.params.as_ref()) {
        Ok(done) => (Ok(done.result), done.reboot),
        Err(e) => {
            warn!(
                "rpc: {:?} failed: {}",
                req.method,
                wire::record::one_line(&e.message)
            );
            (Err(e), None)
        }
    };
    (req.id.map(|id| response(&id, result)), reboot)
}

fn send(stream: &mut UnixStream, line: &str) -> io::Result<()> {
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    stream.flush()
}

fn send_error(stream: &mut UnixStream, reason: Reason, message: &str) {
    let line = response(&Value::Null, Err(RpcError::new(reason, message)));
    let _ = send(stream, &line);
}

/// Whether the peer may talk to the agent; refused peers get told why.
fn peer_allowed(agent: &Agent, stream: &mut UnixStream) -> bool {
    match sys::peer_cred(stream) {
        Ok(c) if c.uid == 0 || agent.config().allowed_uids.contains(&c.uid) => true,
        Ok(c) => {
            warn!(
                "rpc: refused a connection from uid {} (pid {})",
                c.uid, c.pid
            );
            let m = format!(
                "uid {} may not use os-agent: root only, or a uid named by allow-uid",
                c.uid
            );
            send_error(stream, Reason::Forbidden, &m);
            false
        }
        Err(e) => {
            warn!("rpc: cannot read the peer's credentials: {e}");
            false
        }
    }
}

fn connection(agent: &Agent, mut stream: UnixStream) {
    if !peer_allowed(agent, &mut stream) {
        return;
    }
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = agent.config().request_deadline;
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 << 10];
    // A whole request must arrive within `deadline` of the connection or of
    // the previous answer: a per-read timeout alone lets a peer that sends
    // a byte now and then hold one of the MAX_CONNECTIONS slots for ever.
    let mut since = Instant::now();
    loop {
        while let Some(frame) = framer.pop() {
            let bytes = match frame {
                Frame::Request(bytes) => bytes,
                Frame::TooLarge => {
                    let m = format!("Invalid request: larger than {MAX_REQUEST} bytes");
                    send_error(&mut stream, Reason::InvalidRequest, &m);
                    return;
                }
                Frame::TooDeep => {
                    let m = format!("Parse error: nested deeper than {MAX_DEPTH} levels");
                    send_error(&mut stream, Reason::ParseError, &m);
                    return;
                }
            };
            if !serve_one(agent, &mut stream, &bytes) {
                return;
            }
            since = Instant::now();
        }
        let Some(left) = deadline
            .checked_sub(since.elapsed())
            .filter(|d| !d.is_zero())
        else {
            if framer.pending() {
                warn!(
                    "rpc: a request was not complete within {} s; closing the connection",
                    deadline.as_secs()
                );
                let m = format!(
                    "Parse error: request not complete within {} s",
                    deadline.as_secs()
                );
                send_error(&mut stream, Reason::ParseError, &m);
            }
            return;
        };
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => {
                if let Some(rest) = framer.rest() {
                    serve_one(agent, &mut stream, &rest);
                }
                return;
            }
            Ok(n) => framer.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The deadline passed: said above, on the next turn.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                if framer.rest().is_some() {
                    let m = format!("Parse error: incomplete request ({e})");
                    send_error(&mut stream, Reason::ParseError, &m);
                }
                return;
            }
        }
    }
}

/// Answers one request; `false` when the connection is no longer usable.
fn serve_one(agent: &Agent, stream: &mut UnixStream, bytes: &[u8]) -> bool {
    let (line, reboot) = answer(agent, bytes);
    let sent = match line {
        Some(line) => send(stream, &line),
        None => Ok(()),
    };
    if let Err(e) = &sent {
        debug!("rpc: the client left before its answer: {e}");
    }
    if let Some((_guard, why)) = reboot {
        if let Err(e) = node::reboot(agent.config(), &why) {
            error!("{e}");
        }
    }
    sent.is_ok()
}

/// Creates the socket: parent directory, stale socket removed (a live one is
/// not stolen), mode 0600, or 0666 when `open` (other uids are then checked
/// by credentials). Until the chmod the socket has the umask's mode, which
/// for root's 022 lets nobody else connect.
pub fn bind(path: &Path, open: bool) -> Result<UnixListener, String> {
    let ctx = |op: &str| {
        let path = path.display().to_string();
        let op = op.to_owned();
        move |e: io::Error| format!("{op} {path}: {e}")
    };
    if let Some(dir) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(ctx("create the directory of"))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "another os-agent already serves {}",
                    path.display()
                ));
            }
            fs::remove_file(path).map_err(ctx("remove the stale socket"))?;
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("stat")(e)),
    }
    let listener = UnixListener::bind(path).map_err(ctx("listen on"))?;
    let mode = if open { 0o666 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(ctx("chmod"))?;
    Ok(listener)
}

/// Counts a connection for as long as it lives.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves connections until the listener fails, each in its own thread, with
/// `background` (the after-boot check) running alongside.
pub fn run(agent: &Agent, listener: &UnixListener, background: impl FnOnce() + Send) {
    let active = AtomicUsize::new(0);
    thread::scope(|scope| {
        scope.spawn(background);
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    warn!("rpc: accept: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::Relaxed);
                send_error(
                    &mut stream,
                    Reason::Busy,
                    "too many connections; retry later",
                );
                continue;
            }
            let counted = Counted(&active);
            let spawned =
                thread::Builder::new()
                    .name("rpc".into())
                    .spawn_scoped(scope, move || {
                        let _counted = counted;
                        connection(agent, stream);
                    });
            if let Err(e) = spawned {
                warn!("rpc: cannot start a connection thread: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::default();
        let mut out = vec![];
        for chunk in input {
            f.push(chunk);
            while let Some(frame) = f.pop() {
                let last = !matches!(frame, Frame::Request(_));
                out.push(frame);
                if last {
                    // The stream cannot be resynchronised: the server closes.
                    return out;
                }
            }
        }
        out
    }

    fn req(s: &str) -> Frame {
        Frame::Request(s.as_bytes().to_vec())
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_a_frame_of_its_own() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(frames(&[ok.as_bytes()]), vec![req(&ok)]);
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(frames(&[deep.as_bytes()]), vec![Frame::TooDeep]);
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"a":"{}"}}"#, "[".repeat(1000));
        assert_eq!(frames(&[quoted.as_bytes()]), vec![req(&quoted)]);
    }

    #[test]
    fn values_split_with_or_without_newlines() {
        let got = frames(&[b"{\"a\":\"}{\\\"\"}{\"b\":[1,{}]}\n  {\"c\"", b":1}\n"]);
        assert_eq!(
            got,
            vec![
                req(r#"{"a":"}{\""}"#),
                req(r#"{"b":[1,{}]}"#),
                req(r#"{"c":1}"#)
            ]
        );
    }

    #[test]
    fn garbage_is_one_frame_per_line_and_truncation_is_left_over() {
        let mut f = Framer::default();
        f.push(b"hello world\n{\"x\": [1, 2");
        assert_eq!(f.pop(), Some(req("hello world\n")));
        assert_eq!(f.pop(), None);
        assert_eq!(f.rest(), Some(b"{\"x\": [1, 2".to_vec()));
        assert_eq!(f.rest(), None);
    }

    #[test]
    fn oversized_requests_are_flagged() {
        let mut f = Framer::default();
        f.push(b"[");
        f.push(&vec![b' '; MAX_REQUEST]);
        assert_eq!(f.pop(), Some(Frame::TooLarge));
    }

    #[test]
    fn request_validation() {
        let err = |s: &str| parse_request(s.as_bytes()).err().unwrap().1.code;
        assert_eq!(err("{\"jsonrpc\":"), PARSE_ERROR);
        assert_eq!(err("[]"), INVALID_REQUEST);
        assert_eq!(err("42"), INVALID_REQUEST);
        assert_eq!(
            err(r#"{"jsonrpc":"1.0","method":"x","id":1}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","method":7,"id":1}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","method":"x","params":3}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","method":"x","id":[1]}"#),
            INVALID_REQUEST
        );
        let ok = parse_request(br#"{"jsonrpc":"2.0","method":"status","params":[],"id":"a"}"#);
        let r = ok.ok().unwrap();
        assert_eq!(r.method, "status");
        assert!(matches!(r.id, Some(Value::String(ref s)) if s == "a"));
    }

    #[test]
    fn response_shapes_match_kubeos() {
        assert_eq!(
            response(
                &Value::Number(json::Number::U64(3)),
                Ok(kubeos_status("UpgradeReady"))
            ),
            r#"{"jsonrpc":"2.0","result":{"status":"UpgradeReady"},"id":3}"#
        );
        assert_eq!(
            response(&Value::Null, Err(RpcError::new(Reason::Busy, "busy"))),
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"data":{"detail":null,"kind":"retryable","reason":"busy"},"message":"busy"},"id":null}"#
        );
        assert_eq!(
            json::to_string(&configured(&[])),
            r#"{"status":"Configured"}"#
        );
        assert_eq!(
            json::to_string(&configured(&["w".into()])),
            r#"{"status":"Configured","warnings":["w"]}"#
        );
    }
}
