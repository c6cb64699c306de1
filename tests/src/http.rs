//! A small loopback HTTP/1.1 file server for the QEMU guest (reached as
//! 10.0.2.2 through user networking): GET and HEAD of the files in one
//! directory, with single `Range: bytes=N-[M]` requests (the agent resumes
//! with them), counting requests and bytes so a test can tell whether a step
//! downloaded anything.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Microseconds to wait after each 64 KiB of a body (0: full speed), so a
    /// test can make a download last long enough to act during it.
    pub pace_us: AtomicU64,
}

pub struct FileServer {
    pub port: u16,
    pub counters: Arc<Counters>,
}

impl FileServer {
    /// Serves `dir` on 127.0.0.1 (a free port) from a background thread that
    /// lives as long as the process.
    pub fn start(dir: &Path) -> std::io::Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let (dir, c) = (dir.to_path_buf(), counters.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, c) = (dir.clone(), c.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &dir, &c);
                });
            }
        });
        Ok(FileServer { port, counters })
    }

    /// Slows every later body down to about `bytes_per_sec` (0: full speed).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let pace = (CHUNK as u64 * 1_000_000)
            .checked_div(bytes_per_sec)
            .unwrap_or(0);
        self.counters.pace_us.store(pace, Ordering::Relaxed);
    }

    /// Requests and bytes of file content served so far.
    pub fn served(&self) -> (u64, u64) {
        (
            self.counters.requests.load(Ordering::Relaxed),
            self.counters.bytes.load(Ordering::Relaxed),
        )
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<(u64, Option<u64>)>,
}

fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = parse_range(value.trim());
            }
        }
    }
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        range,
    }))
}

fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = v.strip_prefix("bytes=")?.split_once('-')?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start.parse().ok()?, end))
}

fn file_for(dir: &Path, path: &str) -> Option<PathBuf> {
    let name = path.strip_prefix('/')?;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    Some(dir.join(name)).filter(|p| p.is_file())
}

const CHUNK: usize = 64 * 1024;

/// Copies a body, counting each chunk as it goes out (so a dropped
/// connection still counts what was sent) and pacing it when asked.
fn send_body(body: &mut impl Read, out: &mut impl Write, c: &Counters) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let pace = c.pace_us.load(Ordering::Relaxed);
        if pace > 0 {
            std::thread::sleep(std::time::Duration::from_micros(pace));
        }
    }
}

fn serve(stream: TcpStream, dir: &Path, c: &Counters) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader)? {
        c.requests.fetch_add(1, Ordering::Relaxed);
        let Some(path) =
            file_for(dir, &req.path).filter(|_| req.method == "GET" || req.method == "HEAD")
        else {
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let mut file = std::fs::File::open(&path)?;
        let size = file.metadata()?.len();
        let (status, start, end) = match req.range {
            Some((s, e)) if s < size => (
                "206 Partial Content",
                s,
                e.map_or(size - 1, |e| e.min(size - 1)),
            ),
            Some(_) => {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n"
                );
                out.write_all(head.as_bytes())?;
                continue;
            }
            None => ("200 OK", 0, size.saturating_sub(1)),
        };
        let len = if size == 0 { 0 } else { end - start + 1 };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n"
        );
        if req.range.is_some() {
            head.push_str(&format!("Content-Range: bytes {start}-{end}/{size}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if req.method == "GET" {
            file.seek(SeekFrom::Start(start))?;
            send_body(&mut file.take(len), &mut out, c)?;
        }
        out.flush()?;
    }
    Ok(())
}
