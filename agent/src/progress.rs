//! Progress of the running job, shared between the worker thread that
//! updates it and the server threads that report it (`status`), lock-free.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What the job is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Idle = 0,
    Connecting = 1,
    Downloading = 2,
    Verifying = 3,
    Recording = 4,
    Done = 5,
    Failed = 6,
    /// Reading the local slots for chunks the new image shares with them
    /// (delta.rs), before anything is downloaded.
    Scanning = 7,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Connecting => "connecting",
            Phase::Downloading => "downloading",
            Phase::Verifying => "verifying",
            Phase::Recording => "recording",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Scanning => "scanning",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Connecting,
            2 => Phase::Downloading,
            3 => Phase::Verifying,
            4 => Phase::Recording,
            5 => Phase::Done,
            6 => Phase::Failed,
            7 => Phase::Scanning,
            _ => Phase::Idle,
        }
    }
}

/// Counters of one job. `bytes` counts uncompressed bytes written to the slot
/// (or read back, while verifying); `total` is the image size, 0 if unknown.
#[derive(Debug)]
pub struct Progress {
    phase: AtomicU8,
    bytes: AtomicU64,
    total: AtomicU64,
    /// Bytes fetched from the network (compressed), including resumed requests.
    fetched: AtomicU64,
    started: Mutex<Option<Instant>>,
}

/// A consistent-enough copy for reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub phase: Phase,
    pub bytes: u64,
    pub total: u64,
    pub fetched: u64,
    /// 0-100, `None` while the total is unknown.
    pub percent: Option<f64>,
    /// Bytes per second since the phase's clock started.
    pub rate: f64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: AtomicU8::new(Phase::Idle as u8),
            bytes: AtomicU64::new(0),
            total: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            started: Mutex::new(None),
        }
    }
}

impl Progress {
    /// Enters `phase`, resetting the byte counter and the rate clock.
    pub fn start_phase(&self, phase: Phase, total: u64) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let elapsed = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        Snapshot {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            bytes,
            total,
            fetched: self.fetched.load(Ordering::Relaxed),
            percent: (total > 0).then(|| (bytes as f64 * 100.0 / total as f64).min(100.0)),
            rate: if elapsed > 0.0 {
                bytes as f64 / elapsed
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_phase() {
        let p = Progress::default();
        assert_eq!(p.snapshot().phase, Phase::Idle);
        assert_eq!(p.snapshot().percent, None);
        p.start_phase(Phase::Downloading, 200);
        p.add_bytes(50);
        let s = p.snapshot();
        assert_eq!(
            (s.phase, s.bytes, s.percent),
            (Phase::Downloading, 50, Some(25.0))
        );
    }
}
