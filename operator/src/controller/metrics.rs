//! Prometheus metrics in the text exposition format 0.0.4, and the small HTTP server that
//! serves them with the liveness and readiness probes.
//!
//! Every series is keyed by the OS resource (`namespace/name`) in label `os`. Output is sorted
//! by family, then by labels, so scrapes and tests see a stable order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Upper bounds of the reconcile-duration buckets, in seconds (Prometheus' defaults).
const RECONCILE_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations per bucket of `RECONCILE_BUCKETS`, not cumulative; the last is `+Inf` only.
    buckets: [u64; RECONCILE_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        let i = RECONCILE_BUCKETS
            .iter()
            .position(|&le| value <= le)
            .unwrap_or(RECONCILE_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Default)]
struct Families {
    /// os -> phase -> nodes.
    nodes: BTreeMap<String, BTreeMap<String, u64>>,
    started: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    succeeded: BTreeMap<String, u64>,
    reconcile: BTreeMap<String, Histogram>,
    reconcile_errors: BTreeMap<String, u64>,
    rollout_started: BTreeMap<String, f64>,
    rollout_duration: BTreeMap<String, f64>,
    leader: bool,
}

/// The operator's metrics. Shared behind an `Arc`; every method takes `&self`.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<Families>,
}

impl Metrics {
    /// Replaces the per-phase node counts of one OS resource; phases not listed are dropped.
    pub fn set_nodes(&self, os: &str, counts: &[(&str, u64)]) {
        let phases = counts.iter().map(|&(p, n)| (p.to_owned(), n)).collect();
        self.with(|f| {
            f.nodes.insert(os.to_owned(), phases);
        });
    }

    /// Records one reconcile of `os`: its duration, and an error when it failed.
    pub fn observe_reconcile(&self, os: &str, seconds: f64, result_ok: bool) {
        // Durations come from a monotonic clock; `max` also turns NaN into 0 so one bad
        // value cannot poison the sum for the process's lifetime.
        let seconds = seconds.max(0.0);
        self.with(|f| {
            f.reconcile
                .entry(os.to_owned())
                .or_default()
                .observe(seconds);
            let errors = f.reconcile_errors.entry(os.to_owned()).or_default();
            *errors += u64::from(!result_ok);
        });
    }

    pub fn inc_node_started(&self, os: &str) {
        self.with(|f| *f.started.entry(os.to_owned()).or_default() += 1);
    }

    pub fn inc_node_failed(&self, os: &str) {
        self.with(|f| *f.failed.entry(os.to_owned()).or_default() += 1);
    }

    pub fn inc_node_succeeded(&self, os: &str) {
        self.with(|f| *f.succeeded.entry(os.to_owned()).or_default() += 1);
    }

    /// When the current rollout of `os` started, as Unix seconds.
    pub fn set_rollout_started(&self, os: &str, unix_seconds: f64) {
        self.with(|f| {
            f.rollout_started.insert(os.to_owned(), unix_seconds);
        });
    }

    /// How long the current (or last finished) rollout of `os` has taken.
    pub fn set_rollout_duration(&self, os: &str, seconds: f64) {
        self.with(|f| {
            f.rollout_duration.insert(os.to_owned(), seconds);
        });
    }

    /// Drops every series of an OS resource that was deleted, so its gauges do not linger.
    pub fn remove_os(&self, os: &str) {
        self.with(|f| {
            f.nodes.remove(os);
            f.started.remove(os);
            f.failed.remove(os);
            f.succeeded.remove(os);
            f.reconcile.remove(os);
            f.reconcile_errors.remove(os);
            f.rollout_started.remove(os);
            f.rollout_duration.remove(os);
        });
    }

    pub fn set_leader(&self, leader: bool) {
        self.with(|f| f.leader = leader);
    }

    /// The text exposition format 0.0.4, families in a fixed order, series sorted by labels.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|f| render_into(&mut out, f));
        out
    }

    fn with<T>(&self, f: impl FnOnce(&mut Families) -> T) -> T {
        // A panic while holding the lock leaves plain numbers behind; keep serving them.
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut families)
    }
}

fn render_into(out: &mut String, f: &Families) {
    let nodes = "os_operator_nodes";
    header(out, nodes, "gauge", "Nodes of an OS resource per phase.");
    for (os, phases) in &f.nodes {
        for (phase, n) in phases {
            sample(out, nodes, &[("os", os), ("phase", phase)], *n as f64);
        }
    }
    let node_counters = [
        (
            "os_operator_nodes_started_total",
            "Node operations started.",
            &f.started,
        ),
        (
            "os_operator_nodes_failed_total",
            "Node operations that failed.",
            &f.failed,
        ),
        (
            "os_operator_nodes_succeeded_total",
            "Node operations that succeeded.",
            &f.succeeded,
        ),
    ];
    for (name, help, series) in node_counters {
        counter(out, name, help, series);
    }
    histogram(out, &f.reconcile);
    let errors = "os_operator_reconcile_errors_total";
    counter(
        out,
        errors,
        "Reconciles of an OS resource that failed.",
        &f.reconcile_errors,
    );
    let rollout_gauges = [
        (
            "os_operator_rollout_started_timestamp_seconds",
            "When the current rollout of an OS resource started, in Unix seconds.",
            &f.rollout_started,
        ),
        (
            "os_operator_rollout_duration_seconds",
            "How long the current or last rollout of an OS resource has taken.",
            &f.rollout_duration,
        ),
    ];
    for (name, help, series) in rollout_gauges {
        gauge(out, name, help, series);
    }
    let leader = "os_operator_leader";
    header(
        out,
        leader,
        "gauge",
        "1 while this replica holds the leader lease.",
    );
    sample(out, leader, &[], if f.leader { 1.0 } else { 0.0 });
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, series: &BTreeMap<String, u64>) {
    header(out, name, "counter", help);
    for (os, v) in series {
        sample(out, name, &[("os", os)], *v as f64);
    }
}

fn gauge(out: &mut String, name: &str, help: &str, series: &BTreeMap<String, f64>) {
    header(out, name, "gauge", help);
    for (os, v) in series {
        sample(out, name, &[("os", os)], *v);
    }
}

fn histogram(out: &mut String, series: &BTreeMap<String, Histogram>) {
    let name = "os_operator_reconcile_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "How long reconciling an OS resource took.",
    );
    let bucket = format!("{name}_bucket");
    for (os, h) in series {
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = RECONCILE_BUCKETS
                .get(i)
                .map_or("+Inf".to_owned(), |&b| value(b));
            sample(out, &bucket, &[("os", os), ("le", &le)], cumulative as f64);
        }
        sample(out, &format!("{name}_sum"), &[("os", os)], h.sum);
        sample(out, &format!("{name}_count"), &[("os", os)], h.count as f64);
    }
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", value(v));
}

/// Label values escape backslash, double quote and line feed (exposition format 0.0.4).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Go's float spelling for the special values; Rust's shortest round-trip form otherwise.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

/// Liveness and readiness, as the probes see them. Starts alive and not ready.
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Ready once the caches have synced (or, for a standby replica, once it is waiting).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Not alive makes `/healthz` fail so the kubelet restarts the pod.
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

/// Bounds that keep slow or hostile clients from holding the server.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Whole exchange: reading the request head and writing the response.
    exchange: Duration,
    /// Request line plus headers.
    head_bytes: usize,
    /// Connections handled at once; further ones wait in the listen backlog.
    connections: usize,
}

const LIMITS: Limits = Limits {
    exchange: Duration::from_secs(5),
    head_bytes: 8 * 1024,
    connections: 32,
};

/// Serves `GET /metrics` (text/plain; version=0.0.4), `GET /healthz` (200 `ok` while alive,
/// else 503) and `GET /readyz` (200 when ready, else 503) until the future is dropped. Other
/// paths get 404, other methods on these paths 405. One request per connection.
///
/// Failed accepts are logged and retried (they are almost always a connection reset before
/// accept, or a file descriptor limit that clears); only a listener that cannot accept at all
/// (`InvalidInput`: not listening) ends the server with an error.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> io::Result<()> {
    serve_with(listener, metrics, health, LIMITS).await
}

async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
            Err(e) => {
                warn!(error = %e, "cannot accept a metrics connection; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let exchange = answer(stream, &metrics, &health, limits.head_bytes);
            match tokio::time::timeout(limits.exchange, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => debug!(%peer, "metrics client too slow; closed"),
            }
            drop(permit);
        });
    }
}

/// Reads one request head, writes one response, closes.
async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &Health,
    max_head: usize,
) -> io::Result<()> {
    let head = match read_head(&mut stream, max_head).await? {
        Head::Complete(head) => head,
        Head::Empty => return Ok(()),
        Head::Truncated => Vec::new(),
    };
    let response = route(parse_request_line(&head), metrics, health);
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await?;
    drain(&mut stream).await;
    Ok(())
}

enum Head {
    /// The bytes up to the blank line ending the headers.
    Complete(Vec<u8>),
    /// The client closed without sending anything.
    Empty,
    /// The client closed mid-head, or the head exceeded the limit.
    Truncated,
}

async fn read_head(stream: &mut TcpStream, max_head: usize) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if head.is_empty() {
                Head::Empty
            } else {
                Head::Truncated
            });
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() > max_head {
            return Ok(Head::Truncated);
        }
    }
}

/// Where the head ends: the first empty line (`\r\n\r\n`, or `\n\n` from lenient clients).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// After our response, consume what the client still sends (briefly and boundedly): closing
/// a socket with unread input makes the kernel send RST, which can discard the response.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let mut budget: usize = 64 * 1024;
    let reads = async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), reads).await;
}

/// `(method, path)` from `METHOD SP TARGET SP HTTP/1.x`, with any query string removed.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some((method, path))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow_get: bool,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow_get: false,
            body: format!("{body}\n"),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow_get {
            head.push_str("Allow: GET\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

fn route(request: Option<(&str, &str)>, metrics: &Metrics, health: &Health) -> Response {
    let Some((method, path)) = request else {
        return Response::text(400, "Bad Request", "bad request");
    };
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Response::text(404, "Not Found", "not found");
    }
    if method != "GET" {
        return Response {
            allow_get: true,
            ..Response::text(405, "Method Not Allowed", "method not allowed")
        };
    }
    match path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            allow_get: false,
            body: metrics.render(),
        },
        "/healthz" if health.is_alive() => Response::text(200, "OK", "ok"),
        "/healthz" => Response::text(503, "Service Unavailable", "not alive"),
        _ if health.is_ready() => Response::text(200, "OK", "ok"),
        _ => Response::text(503, "Service Unavailable", "not ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_small_case_exactly() {
        let m = Metrics::default();
        m.set_nodes("default/os", &[("Succeeded", 2), ("Pending", 1)]);
        m.inc_node_started("default/os");
        m.inc_node_started("default/os");
        m.inc_node_succeeded("default/os");
        m.inc_node_failed("default/os");
        m.observe_reconcile("default/os", 0.02, true);
        m.observe_reconcile("default/os", 3.0, false);
        m.set_rollout_started("default/os", 1_700_000_000.0);
        m.set_rollout_duration("default/os", 42.5);
        m.set_leader(true);
        let expected = r#"# HELP os_operator_nodes Nodes of an OS resource per phase.
# TYPE os_operator_nodes gauge
os_operator_nodes{os="default/os",phase="Pending"} 1
os_operator_nodes{os="default/os",phase="Succeeded"} 2
# HELP os_operator_nodes_started_total Node operations started.
# TYPE os_operator_nodes_started_total counter
os_operator_nodes_started_total{os="default/os"} 2
# HELP os_operator_nodes_failed_total Node operations that failed.
# TYPE os_operator_nodes_failed_total counter
os_operator_nodes_failed_total{os="default/os"} 1
# HELP os_operator_nodes_succeeded_total Node operations that succeeded.
# TYPE os_operator_nodes_succeeded_total counter
os_operator_nodes_succeeded_total{os="default/os"} 1
# HELP os_operator_reconcile_duration_seconds How long reconciling an OS resource took.
# TYPE os_operator_reconcile_duration_seconds histogram
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.005"} 0
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.01"} 0
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.025"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.05"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.1"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.25"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="0.5"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="1"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="2.5"} 1
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="5"} 2
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="10"} 2
os_operator_reconcile_duration_seconds_bucket{os="default/os",le="+Inf"} 2
os_operator_reconcile_duration_seconds_sum{os="default/os"} 3.02
os_operator_reconcile_duration_seconds_count{os="default/os"} 2
# HELP os_operator_reconcile_errors_total Reconciles of an OS resource that failed.
# TYPE os_operator_reconcile_errors_total counter
os_operator_reconcile_errors_total{os="default/os"} 1
# HELP os_operator_rollout_started_timestamp_seconds When the current rollout of an OS resource started, in Unix seconds.
# TYPE os_operator_rollout_started_timestamp_seconds gauge
os_operator_rollout_started_timestamp_seconds{os="default/os"} 1700000000
# HELP os_operator_rollout_duration_seconds How long the current or last rollout of an OS resource has taken.
# TYPE os_operator_rollout_duration_seconds gauge
os_operator_rollout_duration_seconds{os="default/os"} 42.5
# HELP os_operator_leader 1 while this replica holds the leader lease.
# TYPE os_operator_leader gauge
os_operator_leader 1
"#;
        assert_eq!(m.render(), expected);
    }

    #[test]
    fn empty_metrics_still_declare_every_family() {
        let out = Metrics::default().render();
        assert_eq!(out.matches("# TYPE ").count(), 9);
        assert!(out.ends_with("os_operator_leader 0\n"), "{out}");
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc_node_started("a\\b\"c\nd");
        let out = m.render();
        assert!(
            out.contains("os_operator_nodes_started_total{os=\"a\\\\b\\\"c\\nd\"} 1\n"),
            "{out}"
        );
        assert_eq!(escape_label("plain/ns-1"), "plain/ns-1");
    }

    fn buckets(out: &str, os: &str) -> Vec<u64> {
        let prefix = format!("os_operator_reconcile_duration_seconds_bucket{{os=\"{os}\",");
        out.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        for s in [
            0.0,
            0.005,
            0.0051,
            0.3,
            0.3,
            10.0,
            11.0,
            1e9,
            -1.0,
            f64::NAN,
        ] {
            m.observe_reconcile("ns/x", s, true);
        }
        let out = m.render();
        let b = buckets(&out, "ns/x");
        // -1 and NaN count as 0 s.
        assert_eq!(b, [4, 5, 5, 5, 5, 5, 7, 7, 7, 7, 8, 10]);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert!(out.contains("os_operator_reconcile_duration_seconds_count{os=\"ns/x\"} 10\n"));
        assert!(out.contains("os_operator_reconcile_errors_total{os=\"ns/x\"} 0\n"));
        assert!(!out.contains("NaN"));
    }

    #[test]
    fn series_are_sorted_and_replaced() {
        let m = Metrics::default();
        m.set_nodes("ns/b", &[("Running", 1)]);
        m.set_nodes("ns/a", &[("Running", 3), ("Failed", 1)]);
        m.set_nodes("ns/a", &[("Running", 4)]);
        let out = m.render();
        let nodes: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("os_operator_nodes{"))
            .collect();
        assert_eq!(
            nodes,
            [
                "os_operator_nodes{os=\"ns/a\",phase=\"Running\"} 4",
                "os_operator_nodes{os=\"ns/b\",phase=\"Running\"} 1",
            ]
        );
        m.remove_os("ns/a");
        assert!(!m.render().contains("ns/a"));
    }

    #[test]
    fn special_values_use_prometheus_spelling() {
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(0.1), "0.1");
        assert_eq!(value(-2.0), "-2");
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /readyz?verbose HTTP/1.0"),
            Some(("GET", "/readyz"))
        );
        assert_eq!(parse_request_line(b"GET /metrics"), None);
        assert_eq!(parse_request_line(b"GET  /metrics HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"GET /metrics SPDY/3"), None);
        assert_eq!(parse_request_line(b"\xff\xfe /x HTTP/1.1"), None);
        assert_eq!(parse_request_line(b""), None);
    }

    mod http {
        use super::super::*;
        use std::net::SocketAddr;

        struct Server {
            addr: SocketAddr,
            health: Arc<Health>,
            metrics: Arc<Metrics>,
            task: tokio::task::JoinHandle<io::Result<()>>,
        }

        impl Drop for Server {
            fn drop(&mut self) {
                self.task.abort();
            }
        }

        async fn start(limits: Limits) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (metrics, health) = (Arc::new(Metrics::default()), Arc::new(Health::default()));
            let task = tokio::spawn(serve_with(
                listener,
                metrics.clone(),
                health.clone(),
                limits,
            ));
            Server {
                addr,
                health,
                metrics,
                task,
            }
        }

        /// Sends `request`, half-closes, returns everything the server wrote.
        async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request).await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }

        async fn get(addr: SocketAddr, path: &str) -> String {
            exchange(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
            )
            .await
        }

        fn status_line(response: &str) -> &str {
            response.lines().next().unwrap_or("")
        }

        fn body(response: &str) -> &str {
            response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
        }

        #[tokio::test]
        async fn answers_the_three_endpoints() {
            let server = start(LIMITS).await;
            server.metrics.set_leader(true);
            let metrics = get(server.addr, "/metrics").await;
            assert_eq!(status_line(&metrics), "HTTP/1.1 200 OK");
            assert!(
                metrics.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n")
            );
            assert!(metrics.contains("\r\nConnection: close\r\n"));
            assert_eq!(body(&metrics), server.metrics.render());
            let length = format!("\r\nContent-Length: {}\r\n", body(&metrics).len());
            assert!(metrics.contains(&length), "{metrics}");

            let healthz = get(server.addr, "/healthz").await;
            assert_eq!(status_line(&healthz), "HTTP/1.1 200 OK");
            assert_eq!(body(&healthz), "ok\n");
            server.health.set_alive(false);
            assert_eq!(
                status_line(&get(server.addr, "/healthz").await),
                "HTTP/1.1 503 Service Unavailable"
            );

            assert_eq!(
                status_line(&get(server.addr, "/readyz").await),
                "HTTP/1.1 503 Service Unavailable"
            );
            server.health.set_ready(true);
            let readyz = get(server.addr, "/readyz?verbose=1").await;
            assert_eq!(status_line(&readyz), "HTTP/1.1 200 OK");
            assert_eq!(body(&readyz), "ok\n");
        }

        #[tokio::test]
        async fn unknown_paths_and_methods_are_refused() {
            let server = start(LIMITS).await;
            assert_eq!(
                status_line(&get(server.addr, "/").await),
                "HTTP/1.1 404 Not Found"
            );
            assert_eq!(
                status_line(&get(server.addr, "/metrics/x").await),
                "HTTP/1.1 404 Not Found"
            );
            let post = exchange(
                server.addr,
                b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            )
            .await;
            assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
            assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
            let head = exchange(server.addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
            assert_eq!(status_line(&head), "HTTP/1.1 405 Method Not Allowed");
        }

        #[tokio::test]
        async fn survives_garbage_silence_and_floods() {
            let limits = Limits {
                exchange: Duration::from_millis(300),
                head_bytes: 1024,
                connections: 4,
            };
            let server = start(limits).await;

            let garbage = exchange(server.addr, b"\x00\xff\x16\x03\x01 hello\r\n\r\n").await;
            assert_eq!(status_line(&garbage), "HTTP/1.1 400 Bad Request");
            let cut_off = exchange(server.addr, b"GET /metr").await;
            assert_eq!(status_line(&cut_off), "HTTP/1.1 400 Bad Request");
            assert_eq!(exchange(server.addr, b"").await, "");
            let flood = exchange(server.addr, &vec![b'A'; 100 * 1024]).await;
            assert_eq!(status_line(&flood), "HTTP/1.1 400 Bad Request");

            // More silent clients than connection slots: each is cut off after the timeout,
            // and a real request is still answered afterwards.
            let mut silent = Vec::new();
            for _ in 0..6 {
                silent.push(TcpStream::connect(server.addr).await.unwrap());
            }
            for mut s in silent {
                let mut buf = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf));
                assert_eq!(read.await.unwrap().unwrap(), 0);
            }
            let healthz = get(server.addr, "/healthz").await;
            assert_eq!(status_line(&healthz), "HTTP/1.1 200 OK");
        }
    }
}
