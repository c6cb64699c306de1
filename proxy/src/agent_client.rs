//! Client of os-agent's JSON-RPC 2.0 socket (DESIGN.md §6, `agent/src/rpc.rs`).
//!
//! One connection per call: the agent answers each request with one line, and a connection
//! that outlives a reboot is useless anyway. `prepare_upgrade` lasts as long as the image write,
//! so calls carry no timeout here; callers that must not block (status while the node reboots)
//! wrap them in one.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
pub use wire::record::{SlotRecord, SlotState};
use wire::rpc::{self as msg};
pub use wire::rpc::{
    code, CertsInfo as Certs, ErrorData, ErrorKind, JobStatus as Job, LastFailure, Reason, Slots,
    Status as AgentStatus, UpgradeRequest,
};
pub use wire::Slot;

/// Longest answer line taken from the agent (the wire's one bound; a status is a few KiB): a
/// longer line is a bad answer, not read on.
pub const MAX_ANSWER: u64 = wire::rpc::MAX_MESSAGE as u64;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No socket, or nobody listening: the agent is down or the node is rebooting.
    #[error("agent not reachable at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent at {path} closed the connection before answering {method}")]
    NoAnswer { path: PathBuf, method: String },
    #[error("the agent's answer to {method} is not valid: {detail}")]
    BadAnswer { method: String, detail: String },
    /// An error answer. `kind` comes from the answer's `data.kind`, or from
    /// its code for an agent that sends none.
    #[error("agent {method} {} ({}): {message}", kind.as_str(), reason.as_deref().unwrap_or("no reason given"))]
    Rpc {
        method: String,
        code: i64,
        message: String,
        kind: ErrorKind,
        reason: Option<String>,
    },
}

impl AgentError {
    /// The agent is not there to ask (down, restarting, rebooting).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AgentError::Unreachable { .. } | AgentError::NoAnswer { .. }
        )
    }

    /// What to do about it: the agent's own word for an error answer; an
    /// agent that cannot be reached, or a connection cut mid-call (the agent
    /// restarted), is worth asking again; an answer that makes no sense is not.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Unreachable { .. }
            | AgentError::NoAnswer { .. }
            | AgentError::Io { .. } => ErrorKind::Retryable,
            AgentError::BadAnswer { .. } => ErrorKind::Failed,
            AgentError::Rpc { kind, .. } => *kind,
        }
    }

    /// The stable reason of an error answer, when the agent gave a known one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            AgentError::Rpc {
                reason: Some(r), ..
            } => Reason::parse(r),
            _ => None,
        }
    }

    /// The code of an RPC error answer.
    pub fn code(&self) -> Option<i64> {
        match self {
            AgentError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Talks to one agent socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> AgentClient {
        AgentClient {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        let v = self.call(msg::STATUS, json!([])).await?;
        decode(msg::STATUS, with_record_defaults(v))
    }

    /// Writes and verifies the image into the inactive slot; returns when that is done.
    pub async fn prepare_upgrade(&self, req: &UpgradeRequest) -> Result<(), AgentError> {
        let params = json!([req]);
        self.expect_status(msg::PREPARE_UPGRADE, params, msg::UPGRADE_READY)
            .await
    }

    /// Arms the trial boot of the prepared slot; the agent reboots when its config allows.
    pub async fn upgrade(&self) -> Result<(), AgentError> {
        self.expect_status(msg::UPGRADE, json!([]), msg::UPGRADED)
            .await
    }

    /// Commits the other slot; the agent reboots when its config allows.
    pub async fn rollback(&self) -> Result<(), AgentError> {
        self.expect_status(msg::ROLLBACK, json!([]), msg::ROLLBACKED)
            .await
    }

    /// Applies KubeOS `sysconfigs` (a `ConfigureRequest`).
    pub async fn configure(&self, configs: &Value) -> Result<(), AgentError> {
        let params = json!([{ "configs": configs }]);
        self.expect_status(msg::CONFIGURE, params, msg::CONFIGURED)
            .await
    }

    /// Commits the booted slot now; `true` when that changed anything.
    pub async fn confirm(&self) -> Result<bool, AgentError> {
        let v = self.call(msg::CONFIRM, json!([])).await?;
        let done: msg::Confirmed = decode(msg::CONFIRM, v)?;
        Ok(done.changed)
    }

    /// Cancels the running job; the kind of job cancelled, if any.
    pub async fn cancel(&self) -> Result<Option<String>, AgentError> {
        let v = self.call(msg::CANCEL, json!([])).await?;
        let done: msg::Cancelled = decode(msg::CANCEL, v)?;
        Ok(done.cancelled)
    }

    async fn expect_status(
        &self,
        method: &str,
        params: Value,
        want: &str,
    ) -> Result<(), AgentError> {
        let v = self.call(method, params).await?;
        match decode::<msg::OpStatus>(method, v.clone()) {
            Ok(s) if s.status == want => Ok(()),
            _ => Err(AgentError::BadAnswer {
                method: method.into(),
                detail: format!("expected {{\"status\":\"{want}\"}}, got {v}"),
            }),
        }
    }

    /// One request, one answer line (at most [`MAX_ANSWER`] bytes).
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, AgentError> {
        let io = |source| AgentError::Io {
            path: self.socket.clone(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| AgentError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        let (read, mut write) = stream.into_split();
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        let mut line = req.to_string();
        line.push('\n');
        write.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        let n = BufReader::new(read.take(MAX_ANSWER + 1))
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        if n as u64 > MAX_ANSWER {
            return Err(AgentError::BadAnswer {
                method: method.into(),
                detail: format!("longer than {MAX_ANSWER} bytes"),
            });
        }
        if n == 0 {
            return Err(AgentError::NoAnswer {
                path: self.socket.clone(),
                method: method.into(),
            });
        }
        parse_answer(method, &answer)
    }
}

/// Agents older than the `wire` crate (a node not yet upgraded talks to a new
/// proxy) send slot records without `slot` and `source`: the slot is the
/// record's key, the source empty.
fn with_record_defaults(mut v: Value) -> Value {
    if let Some(slots) = v.get_mut("slots").and_then(Value::as_object_mut) {
        for (key, rec) in slots.iter_mut() {
            if let Some(rec) = rec.as_object_mut() {
                rec.entry("slot").or_insert_with(|| json!(key));
                rec.entry("source").or_insert_with(|| json!(""));
            }
        }
    }
    v
}

/// A result as the type the agent encoded it from.
fn decode<T: serde::de::DeserializeOwned>(method: &str, v: Value) -> Result<T, AgentError> {
    serde_json::from_value(v).map_err(|e| AgentError::BadAnswer {
        method: method.into(),
        detail: e.to_string(),
    })
}

/// The result of a JSON-RPC answer line, or its error as a typed [`AgentError`].
pub fn parse_answer(method: &str, line: &str) -> Result<Value, AgentError> {
    let bad = |detail: String| AgentError::BadAnswer {
        method: method.into(),
        detail,
    };
    let mut v: Value = serde_json::from_str(line.trim()).map_err(|e| bad(e.to_string()))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // An agent without `data` (KubeOS's), or with one of another shape:
        // the kind follows from the code.
        let data: Option<ErrorData> = err
            .get("data")
            .and_then(|d| serde_json::from_value(d.clone()).ok());
        return Err(AgentError::Rpc {
            method: method.into(),
            code,
            message,
            kind: data.as_ref().map_or(ErrorKind::of_code(code), |d| d.kind),
            reason: data.map(|d| d.reason),
        });
    }
    match v.get_mut("result") {
        Some(r) => Ok(r.take()),
        None => Err(bad(format!("neither result nor error in {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A status report as the agent encodes it (miniserde, from the same
    /// type): decoded here with serde.
    fn status_line() -> String {
        let rec = |slot, state, version: &str| SlotRecord {
            slot,
            state,
            version: version.into(),
            digest: format!("blake3:{}", "ab".repeat(32)),
            size: 4096,
            written_at: 1,
            confirm: None,
            source: String::new(),
            verity: None,
        };
        let status = AgentStatus {
            booted: Slot::A,
            active: Slot::A,
            trial: Some(Slot::B),
            tries: 3,
            fail: None,
            on_trial: false,
            source: "1".into(),
            slots: Slots {
                a: rec(Slot::A, SlotState::Good, "1"),
                b: rec(Slot::B, SlotState::Written, "2"),
            },
            last_failure: None,
            rescue: None,
            job: Some(Job {
                kind: "prepare".into(),
                detail: "file:///x".into(),
                step: String::new(),
                elapsed_s: 3,
                phase: "downloading".into(),
                bytes: 250,
                total: 1000,
                fetched: 250,
                percent: Some(25.0),
                rate: 1.5,
            }),
            other_job: None,
            trust: None,
            verity: None,
        };
        miniserde::json::to_string(&status)
    }

    #[test]
    fn status_report_encoded_by_the_agent_decodes_here() {
        let s: AgentStatus = serde_json::from_str(&status_line()).unwrap();
        assert_eq!(
            (s.booted, s.active, s.trial),
            (Slot::A, Slot::A, Some(Slot::B))
        );
        assert_eq!(s.inactive(), Slot::B);
        assert_eq!(s.record(Slot::B).state, SlotState::Written);
        assert_eq!(s.booted_record().version, "1");
        assert_eq!(s.job.unwrap().percent, Some(25.0));
    }

    #[test]
    fn a_status_from_an_agent_before_the_wire_crate_still_decodes() {
        // What agents up to issue 13 sent: records without `slot` or `source`.
        let old = r#"{"booted":"A","active":"A","trial":"B","tries":3,"fail":null,"on_trial":false,"source":"1","slots":{"A":{"state":"good","version":"1","digest":"blake3:aa","size":4096,"written_at":1},"B":{"state":"written","version":"2","digest":"blake3:bb","size":4096,"written_at":2}},"last_failure":null,"job":null,"other_job":null}"#;
        let v = with_record_defaults(serde_json::from_str(old).unwrap());
        let s: AgentStatus = decode("status", v).unwrap();
        assert_eq!((s.slots.a.slot, s.slots.b.slot), (Slot::A, Slot::B));
        assert_eq!(s.record(Slot::B).version, "2");
        assert_eq!(s.rescue, None);
    }

    #[test]
    fn answers_map_to_results_and_error_kinds() {
        let ok = parse_answer(
            "x",
            r#"{"jsonrpc":"2.0","result":{"status":"Upgraded"},"id":1}"#,
        );
        assert_eq!(ok.unwrap(), json!({"status": "Upgraded"}));
        let busy = r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"busy: prepare (u)","data":{"kind":"retryable","reason":"busy","detail":null}},"id":1}"#;
        let err = parse_answer("upgrade", busy).unwrap_err();
        assert_eq!(
            (err.kind(), err.reason(), err.code()),
            (ErrorKind::Retryable, Some(Reason::Busy), Some(code::BUSY))
        );
        // KubeOS's agent sends no data: the code decides.
        let kubeos = r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"no"},"id":1}"#;
        let err = parse_answer("configure", kubeos).unwrap_err();
        assert_eq!((err.kind(), err.reason()), (ErrorKind::Failed, None));
        assert_eq!(
            err.to_string(),
            "agent configure failed (no reason given): no"
        );
        let refused = r#"{"jsonrpc":"2.0","error":{"code":-32003,"message":"armed","data":{"kind":"refused","reason":"trial-armed"}},"id":1}"#;
        let err = parse_answer("prepare_upgrade", refused).unwrap_err();
        assert_eq!(
            (err.kind(), err.reason()),
            (ErrorKind::Refused, Some(Reason::TrialArmed))
        );
        assert!(parse_answer("x", "garbage").is_err());
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = AgentClient::new(&path).status().await.unwrap_err();
        assert!(err.is_unreachable());
        assert!(err
            .to_string()
            .starts_with(&format!("agent not reachable at {}", path.display())));
    }

    /// A one-shot server: reads one request line, checks it, answers `reply`.
    async fn serve_once(listener: UnixListener, method: &'static str, reply: String) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        let req: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(req["jsonrpc"], "2.0");
        assert_eq!(req["method"], method);
        write.write_all(reply.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn framing_one_request_line_one_answer_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let client = AgentClient::new(&path);

        let listener = UnixListener::bind(&path).unwrap();
        let reply = format!(
            "{{\"jsonrpc\":\"2.0\",\"result\":{},\"id\":1}}\n",
            status_line()
        );
        let server = tokio::spawn(serve_once(listener, "status", reply));
        assert_eq!(client.status().await.unwrap().booted, Slot::A);
        server.await.unwrap();

        std::fs::remove_file(&path).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_once(listener, "upgrade", String::new()));
        let err = client.upgrade().await.unwrap_err();
        assert!(matches!(err, AgentError::NoAnswer { .. }), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_is_refused_not_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // A line that never ends: the client stops after MAX_ANSWER + 1 bytes.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (_read, mut write) = stream.into_split();
            let block = vec![b' '; 64 << 10];
            while write.write_all(&block).await.is_ok() {}
        });
        let err = AgentClient::new(&path).status().await.unwrap_err();
        assert!(matches!(err, AgentError::BadAnswer { .. }), "{err}");
        assert!(
            err.to_string().contains("longer than 1048576 bytes"),
            "{err}"
        );
        server.await.unwrap();
    }
}
