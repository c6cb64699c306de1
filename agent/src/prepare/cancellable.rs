//! Blocking sources that `cancel` can still interrupt. A server that accepts
//! and then says nothing blocks a read for the whole read timeout, and the
//! job (with the node's job lock) with it. So opening the source and reading
//! it run on a helper thread, and the job waits for them in short steps that
//! look at the cancel flag: a cancel takes effect within [`POLL`], and the
//! helper thread ends on its own when its read times out.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// How often a waiting job looks at the cancel flag.
pub const POLL: Duration = Duration::from_millis(200);
/// Bytes a helper thread reads at once, and reads it may be ahead.
const PIECE: usize = 64 << 10;
const AHEAD: usize = 4;

/// The job was cancelled while it waited on the source.
#[derive(Debug)]
pub struct Cancelled;

/// Runs `f` on a helper thread; returns its result, or [`Cancelled`] as soon
/// as `cancel` is set (the thread is left to finish alone).
pub fn run<T: Send + 'static>(
    cancel: &AtomicBool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Cancelled> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("source".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("cannot start a thread for the image source");
    loop {
        match rx.recv_timeout(POLL) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Timeout) if cancel.load(Ordering::Relaxed) => {
                return Err(Cancelled)
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!("the image source thread died"),
        }
    }
}

/// A reader whose reads happen on a helper thread (at most [`AHEAD`] pieces
/// ahead); a read waiting for data fails once `cancel` is set (the job's
/// retry loop then reports the cancel).
pub struct Pumped<'a> {
    rx: Receiver<io::Result<Vec<u8>>>,
    cancel: &'a AtomicBool,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
}

pub fn pump(mut source: Box<dyn Read + Send>, cancel: &AtomicBool) -> Pumped<'_> {
    let (tx, rx) = mpsc::sync_channel(AHEAD);
    thread::Builder::new()
        .name("source".into())
        .spawn(move || loop {
            let mut piece = vec![0u8; PIECE];
            let sent = match source.read(&mut piece) {
                Ok(n) => {
                    piece.truncate(n);
                    let end = n == 0;
                    tx.send(Ok(piece)).is_ok() && !end
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    false
                }
            };
            if !sent {
                return;
            }
        })
        .expect("cannot start a thread for the image source");
    Pumped {
        rx,
        cancel,
        piece: Vec::new(),
        at: 0,
        ended: false,
    }
}

impl Read for Pumped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv_timeout(POLL) {
                Ok(Ok(piece)) => {
                    self.ended = piece.is_empty();
                    self.piece = piece;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) if self.cancel.load(Ordering::Relaxed) => {
                    return Err(io::Error::other("cancelled while waiting for the source"));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the image source thread died"))
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A source that never answers.
    struct Silent;
    impl Read for Silent {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
    }

    #[test]
    fn passes_every_byte_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let flag = AtomicBool::new(false);
        let mut out = vec![];
        pump(Box::new(io::Cursor::new(data.clone())), &flag)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_cancel_interrupts_a_silent_source_at_once() {
        let flag = AtomicBool::new(false);
        let mut r = pump(Box::new(Silent), &flag);
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(Duration::from_millis(300));
                flag.store(true, Ordering::Relaxed);
            });
            let start = Instant::now();
            assert!(r.read(&mut [0u8; 10]).is_err());
            assert!(start.elapsed() < Duration::from_secs(2));
        });
        let start = Instant::now();
        let stuck = run(&flag, || thread::sleep(Duration::from_secs(3600)));
        assert!(stuck.is_err() && start.elapsed() < Duration::from_secs(2));
        assert_eq!(run(&AtomicBool::new(false), || 7).unwrap(), 7);
    }
}
