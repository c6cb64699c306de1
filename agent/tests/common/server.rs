//! A loopback HTTP/1.1 file server that honours `Range: bytes=N-[M]` and
//! `If-Range` (each `put` of a path gives it a new strong `ETag`) and injects
//! faults: dropped connections, stalls, error statuses, a slow link. One
//! request per connection (`Connection: close`); every response is logged.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection after this many body bytes.
    DropAfter(u64),
    /// Send this many body bytes, then go silent for the duration.
    StallAfter(u64, Duration),
    /// Answer with this status instead of the file.
    Status(u16),
    /// Send the body at this many bytes per second.
    Throttle(u64),
    /// Answer as a server without Range support: 200 and the whole file.
    IgnoreRange,
    /// No fault (a placeholder in the queue, for a fault on a later request).
    Pass,
}

/// One response: which path, from which offset, with which status, and how
/// many body bytes actually went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub path: String,
    pub start: u64,
    /// Last byte asked for (`Range: bytes=START-END`), if any.
    pub end: Option<u64>,
    pub status: u16,
    pub sent: u64,
}

#[derive(Default)]
struct State {
    /// Each file with its ETag.
    files: HashMap<String, (Arc<Vec<u8>>, String)>,
    puts: u64,
    /// Faults for the next requests of a path, in order.
    faults: HashMap<String, VecDeque<Fault>>,
    /// A fault applied to every request of a path once the queue is empty.
    always: HashMap<String, Fault>,
    log: Vec<Served>,
}

pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || handle(conn, &state));
            }
        });
        Server { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `bytes` at `path` under a new ETag.
    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.puts += 1;
        let etag = format!("\"v{}\"", s.puts);
        s.files.insert(path.into(), (Arc::new(bytes), etag));
    }

    /// Bytes of `path`'s body sent in all, once every response has ended
    /// (a client may have all the bytes before the server logs them).
    pub fn sent(&self, path: &str) -> u64 {
        let start = std::time::Instant::now();
        while self.served(path).iter().any(|s| s.status == 0) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "a response to {path} never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.served(path).iter().map(|s| s.sent).sum()
    }

    /// Queues `fault` for the next request of `path` that has none queued.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.into())
            .or_default()
            .push_back(fault);
    }

    pub fn fault_always(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().always.insert(path.into(), fault);
    }

    pub fn served(&self, path: &str) -> Vec<Served> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>) {
    let Some((path, range, if_range)) = read_request(&conn) else {
        return;
    };
    // Logged in arrival order (a stalled response finishes last).
    let (file, fault, index, range) = {
        let mut s = state.lock().unwrap();
        let fault = s
            .faults
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .or_else(|| s.always.get(&path).copied());
        let file = s.files.get(&path).cloned();
        // If-Range with another ETag than the file's, or no Range support:
        // the whole file.
        let range = match (&file, &if_range) {
            (Some((_, etag)), Some(v)) if v != etag => None,
            _ if fault == Some(Fault::IgnoreRange) => None,
            _ => range,
        };
        s.log.push(Served {
            path: path.clone(),
            start: range.map_or(0, |r| r.0),
            end: range.and_then(|r| r.1),
            status: 0,
            sent: 0,
        });
        (file, fault, s.log.len() - 1, range)
    };
    let (status, sent) = respond(conn, file.as_ref(), range, fault);
    let entry = &mut state.lock().unwrap().log[index];
    (entry.status, entry.sent) = (status, sent);
}

/// A `Range: bytes=START-[END]` header's values.
type Range = (u64, Option<u64>);

/// The path, the Range and the If-Range validator of a GET.
fn read_request(conn: &TcpStream) -> Option<(String, Option<Range>, Option<String>)> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut range = None;
    let mut if_range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if lower.starts_with("if-range:") {
            if_range = Some(header["if-range:".len()..].trim().to_owned());
        }
        if let Some(value) = lower.strip_prefix("range:") {
            let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
            let end = match end {
                "" => None,
                e => Some(e.parse().ok()?),
            };
            range = Some((start.parse().ok()?, end));
        }
    }
    Some((path, range, if_range))
}

fn respond(
    mut conn: TcpStream,
    file: Option<&(Arc<Vec<u8>>, String)>,
    range: Option<Range>,
    fault: Option<Fault>,
) -> (u16, u64) {
    let status_page = |conn: &mut TcpStream, code: u16| {
        let body =
            format!("<html><head><title>{code} injected by the test server</title></head></html>");
        let _ = write!(
            conn,
            "HTTP/1.1 {code} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        (code, 0)
    };
    let Some((file, etag)) = file else {
        return status_page(&mut conn, 404);
    };
    if let Some(Fault::Status(code)) = fault {
        return status_page(&mut conn, code);
    }
    let len = file.len() as u64;
    let (start, stop) = match range {
        Some((start, end)) => (start, end.map_or(len, |e| (e + 1).min(len))),
        None => (0, len),
    };
    if start >= len && len > 0 || stop < start {
        return status_page(&mut conn, 416);
    }
    let (status, content_range) = match range {
        Some(_) => (
            206,
            format!("Content-Range: bytes {start}-{}/{len}\r\n", stop - 1),
        ),
        None => (200, String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status} OK\r\nContent-Length: {}\r\nETag: {etag}\r\n{content_range}Connection: close\r\n\r\n",
        stop - start
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return (status, 0);
    }
    let limit = match fault {
        Some(Fault::DropAfter(n)) | Some(Fault::StallAfter(n, _)) => n.min(stop - start),
        _ => stop - start,
    };
    let mut sent = 0;
    let piece_size = match fault {
        Some(Fault::Throttle(rate)) => (rate / 20).max(1) as usize,
        _ => 64 << 10,
    };
    for piece in file[start as usize..(start + limit) as usize].chunks(piece_size) {
        if conn.write_all(piece).is_err() {
            return (status, sent);
        }
        sent += piece.len() as u64;
        if let Some(Fault::Throttle(_)) = fault {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(Fault::StallAfter(_, pause)) = fault {
        let _ = conn.flush();
        std::thread::sleep(pause);
    }
    let _ = conn.shutdown(Shutdown::Both);
    (status, sent)
}
