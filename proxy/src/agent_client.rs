//! Client of os-agent's JSON-RPC 2.0 socket (DESIGN.md §6, `agent/src/rpc.rs`).
//!
//! One connection per call: the agent answers each request with one line, and a connection
//! that outlives a reboot is useless anyway. `prepare_upgrade` lasts as long as the image write,
//! so calls carry no timeout here; callers that must not block (status while the node reboots)
//! wrap them in one.

use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The agent's "busy" code: another job runs (the message names it).
pub const BUSY: i64 = -32000;
/// The agent's "not supported" code (`configure` before issue 8).
pub const NOT_SUPPORTED: i64 = -32001;

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
    #[error("agent is busy: {message}")]
    Busy { message: String },
    #[error("agent {method} failed (code {code}): {message}")]
    Rpc {
        method: String,
        code: i64,
        message: String,
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

    /// The code of an RPC error answer.
    pub fn code(&self) -> Option<i64> {
        match self {
            AgentError::Rpc { code, .. } => Some(*code),
            AgentError::Busy { .. } => Some(BUSY),
            _ => None,
        }
    }
}

/// KubeOS's `UpgradeRequest` (`agent/src/kubeos.rs`), as the proxy sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeRequest {
    pub version: String,
    pub check_sum: String,
    pub image_type: String,
    pub container_image: String,
    pub image_url: String,
    pub flag_safe: bool,
    pub mtls: bool,
    pub certs: Certs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Certs {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// A slot record's state (`bootctl::record::SlotState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Empty,
    Written,
    Good,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SlotRecord {
    pub state: SlotState,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub written_at: u64,
    /// `oci://REGISTRY/REPO@sha256:<manifest>` for an image from a registry.
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Slots {
    #[serde(rename = "A")]
    pub a: SlotRecord,
    #[serde(rename = "B")]
    pub b: SlotRecord,
}

/// A trial that fell back: which slot, the version that failed (when the agent knows) and why.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LastFailure {
    pub slot: Slot,
    pub version: Option<String>,
    pub reason: String,
}

/// The agent's running job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    pub kind: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub elapsed_s: u64,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub total: u64,
    pub percent: Option<f64>,
}

/// The `status` report (`agent/src/status.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentStatus {
    pub booted: Slot,
    pub active: Slot,
    pub trial: Option<Slot>,
    #[serde(default)]
    pub tries: u8,
    pub fail: Option<Slot>,
    pub on_trial: bool,
    pub slots: Slots,
    pub last_failure: Option<LastFailure>,
    pub job: Option<Job>,
    #[serde(default)]
    pub other_job: Option<String>,
}

impl AgentStatus {
    pub fn record(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::A => &self.slots.a,
            Slot::B => &self.slots.b,
        }
    }

    /// The record of the slot that runs now.
    pub fn booted_record(&self) -> &SlotRecord {
        self.record(self.booted)
    }

    /// The slot the next image goes to: the one not running.
    pub fn inactive(&self) -> Slot {
        self.booted.other()
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
        let v = self.call("status", json!([])).await?;
        serde_json::from_value(v).map_err(|e| AgentError::BadAnswer {
            method: "status".into(),
            detail: e.to_string(),
        })
    }

    /// Writes and verifies the image into the inactive slot; returns when that is done.
    pub async fn prepare_upgrade(&self, req: &UpgradeRequest) -> Result<(), AgentError> {
        let params = json!([req]);
        self.expect_status("prepare_upgrade", params, "UpgradeReady")
            .await
    }

    /// Arms the trial boot of the prepared slot; the agent reboots when its config allows.
    pub async fn upgrade(&self) -> Result<(), AgentError> {
        self.expect_status("upgrade", json!([]), "Upgraded").await
    }

    /// Commits the other slot; the agent reboots when its config allows.
    pub async fn rollback(&self) -> Result<(), AgentError> {
        self.expect_status("rollback", json!([]), "Rollbacked")
            .await
    }

    /// Applies KubeOS `sysconfigs` (a `ConfigureRequest`).
    pub async fn configure(&self, configs: &Value) -> Result<(), AgentError> {
        let params = json!([{ "configs": configs }]);
        self.expect_status("configure", params, "Configured").await
    }

    /// Commits the booted slot now; `true` when that changed anything.
    pub async fn confirm(&self) -> Result<bool, AgentError> {
        let v = self.call("confirm", json!([])).await?;
        Ok(v.get("changed").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Cancels the running job; the kind of job cancelled, if any.
    pub async fn cancel(&self) -> Result<Option<String>, AgentError> {
        let v = self.call("cancel", json!([])).await?;
        Ok(v.get("cancelled")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    async fn expect_status(
        &self,
        method: &str,
        params: Value,
        want: &str,
    ) -> Result<(), AgentError> {
        let v = self.call(method, params).await?;
        match v.get("status").and_then(Value::as_str) {
            Some(s) if s == want => Ok(()),
            _ => Err(AgentError::BadAnswer {
                method: method.into(),
                detail: format!("expected {{\"status\":\"{want}\"}}, got {v}"),
            }),
        }
    }

    /// One request, one answer line.
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
        let n = BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(AgentError::NoAnswer {
                path: self.socket.clone(),
                method: method.into(),
            });
        }
        parse_answer(method, &answer)
    }
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
        return Err(match code {
            BUSY => AgentError::Busy { message },
            _ => AgentError::Rpc {
                method: method.into(),
                code,
                message,
            },
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

    const STATUS: &str = r#"{"booted":"A","active":"A","trial":"B","tries":3,"fail":null,"on_trial":false,"source":"1","slots":{"A":{"state":"good","version":"1","digest":"blake3:aa","size":4096,"written_at":1},"B":{"state":"written","version":"2","digest":"blake3:bb","size":4096,"written_at":2}},"last_failure":null,"job":{"kind":"prepare","detail":"file:///x","step":"","elapsed_s":3,"phase":"downloading","bytes":250,"total":1000,"fetched":250,"percent":25,"rate":1.5},"other_job":null}"#;

    #[test]
    fn status_report_parses_into_types() {
        let s: AgentStatus = serde_json::from_str(STATUS).unwrap();
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
    fn answers_map_to_results_and_typed_errors() {
        let ok = parse_answer(
            "x",
            r#"{"jsonrpc":"2.0","result":{"status":"Upgraded"},"id":1}"#,
        );
        assert_eq!(ok.unwrap(), json!({"status": "Upgraded"}));
        let busy =
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"busy: prepare (u)"},"id":1}"#;
        assert!(
            matches!(parse_answer("upgrade", busy), Err(AgentError::Busy { message }) if message == "busy: prepare (u)")
        );
        let ns = r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"no"},"id":1}"#;
        let err = parse_answer("configure", ns).unwrap_err();
        assert_eq!(err.code(), Some(NOT_SUPPORTED));
        assert_eq!(err.to_string(), "agent configure failed (code -32001): no");
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
        let reply = format!("{{\"jsonrpc\":\"2.0\",\"result\":{STATUS},\"id\":1}}\n");
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
}
