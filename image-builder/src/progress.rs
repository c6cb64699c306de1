//! A `Read` adapter that reports how many bytes have passed, at most once
//! per interval and once more at the end, for long uploads. The end is end
//! of input or the expected total: an HTTP client sending a body of known
//! length stops reading there without seeing end of input.

use std::io::{self, Read};
use std::time::{Duration, Instant};

pub struct ProgressReader<R: Read, F: FnMut(u64)> {
    inner: R,
    done: u64,
    total: u64,
    every: Duration,
    last: Option<Instant>,
    reported: Option<u64>,
    report: F,
}

impl<R: Read, F: FnMut(u64)> ProgressReader<R, F> {
    /// Calls `report(bytes so far)` when `every` has passed since the last
    /// report (the first read starts the clock) and at the end (input or
    /// `total` bytes), unless that count was just reported.
    pub fn new(inner: R, total: u64, every: Duration, report: F) -> ProgressReader<R, F> {
        ProgressReader {
            inner,
            done: 0,
            total,
            every,
            last: None,
            reported: None,
            report,
        }
    }
}

impl<R: Read, F: FnMut(u64)> Read for ProgressReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let now = Instant::now();
        let last = *self.last.get_or_insert(now);
        let at_end = (n == 0 && !buf.is_empty()) || self.done == self.total;
        let due = if at_end {
            self.reported != Some(self.done)
        } else {
            now.duration_since(last) >= self.every
        };
        if due {
            self.last = Some(now);
            self.reported = Some(self.done);
            (self.report)(self.done);
        }
        Ok(n)
    }
}

/// `12.0 / 100.0 MiB (12%)`.
pub fn describe(done: u64, total: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!(
        "{:.1} / {:.1} MiB ({percent}%)",
        done as f64 / MIB,
        total as f64 / MIB
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        // A second read at EOF does not report again.
        assert_eq!(r.read(&mut buf).unwrap(), 0);
        out
    }

    #[test]
    fn reports_every_interval_and_once_at_the_end() {
        let data = vec![7u8; 3500];
        let mut seen = Vec::new();
        let out = drain(&mut ProgressReader::new(
            &data[..],
            3500,
            Duration::ZERO,
            |n| seen.push(n),
        ));
        assert_eq!(out, data);
        assert_eq!(
            seen,
            [1000, 2000, 3000, 3500],
            "the end is not reported twice"
        );

        let mut seen = Vec::new();
        drain(&mut ProgressReader::new(
            &data[..],
            u64::MAX,
            Duration::from_secs(3600),
            |n| seen.push(n),
        ));
        assert_eq!(seen, [3500], "only the end within a long interval");

        let mut seen = Vec::new();
        let mut r =
            ProgressReader::new(&data[..], 2000, Duration::from_secs(3600), |n| seen.push(n));
        r.read_exact(&mut [0u8; 2000]).unwrap();
        assert_eq!(seen, [2000], "reaching the total is the end");
    }

    #[test]
    fn describes_bytes_and_percent() {
        assert_eq!(describe(3 << 20, 12 << 20), "3.0 / 12.0 MiB (25%)");
        assert_eq!(describe(0, 0), "0.0 / 0.0 MiB (100%)");
    }
}
