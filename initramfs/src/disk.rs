//! Waiting for the A/B disk: drivers probe disks asynchronously (virtio_blk,
//! NVMe, USB), so the partitions show up some time after the modules load.

use bootctl::partitions::{self, DiscoveryError, Partitions};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often sysfs is scanned while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How often the wait says it is still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Why the wait ended without the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed; `last` says what was seen at the end.
    Timeout { waited: Duration, last: String },
    /// Waiting cannot help: the partition table itself is wrong.
    Layout(DiscoveryError),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Timeout { waited, last } => write!(
                f,
                "no A/B disk after {} s: {last} (is the disk's driver among the initramfs \
                 modules?)",
                waited.as_secs()
            ),
            WaitError::Layout(e) => write!(f, "{e}"),
        }
    }
}

/// What one look at sysfs found.
enum Seen {
    Found(Partitions),
    /// Not (yet) there; what was seen instead.
    NotYet(String),
    /// Waiting cannot help.
    Broken(DiscoveryError),
}

/// One look: the partitions, once sysfs names all four and their device
/// nodes exist under `dev` (devtmpfs creates them shortly after sysfs).
fn look(sys: &Path, dev: &Path) -> Seen {
    match partitions::discover(sys, dev) {
        Ok(p) => {
            let missing: Vec<String> = [&p.esp, &p.root_a, &p.root_b, &p.persist]
                .into_iter()
                .filter(|n| !n.exists())
                .map(|n| n.display().to_string())
                .collect();
            if missing.is_empty() {
                Seen::Found(p)
            } else {
                Seen::NotYet(format!("device nodes missing: {}", missing.join(", ")))
            }
        }
        Err(e @ DiscoveryError::NotFound { .. }) => Seen::NotYet(e.to_string()),
        Err(e) => Seen::Broken(e),
    }
}

/// Polls until the disk with the ESP, ROOT-A, ROOT-B and PERSIST partitions
/// appears under `sys`/`dev`, or `timeout` passes.
pub fn wait_for_partitions(
    sys: &Path,
    dev: &Path,
    timeout: Duration,
) -> Result<Partitions, WaitError> {
    let start = Instant::now();
    let mut next_report = start + REPORT_EVERY;
    loop {
        let last = match look(sys, dev) {
            Seen::Found(p) => return Ok(p),
            Seen::Broken(e) => return Err(WaitError::Layout(e)),
            Seen::NotYet(last) => last,
        };
        let now = Instant::now();
        if now >= start + timeout {
            return Err(WaitError::Timeout {
                waited: now - start,
                last,
            });
        }
        if now >= next_report {
            log::info!(
                "still waiting for the A/B disk ({} s of {} s): {last}",
                (now - start).as_secs(),
                timeout.as_secs()
            );
            next_report += REPORT_EVERY;
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::fs;

    /// A fake sysfs disk `vda` with the given (device, GPT name) partitions, laid
    /// out as the kernel does: the partition directory inside the disk's.
    fn fake_disk(sys: &Path, parts: &[(&str, &str)]) {
        for (dev, name) in parts {
            let dir = sys.join("devices/virtual/block/vda").join(dev);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            fs::write(
                dir.join("uevent"),
                format!("DEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={name}\n"),
            )
            .unwrap();
            fs::create_dir_all(sys.join("class/block")).unwrap();
            std::os::unix::fs::symlink(&dir, sys.join("class/block").join(dev)).unwrap();
        }
    }

    const AB: [(&str, &str); 4] = [
        ("vda1", "ESP"),
        ("vda2", "ROOT-A"),
        ("vda3", "ROOT-B"),
        ("vda4", "PERSIST"),
    ];

    #[test]
    fn found_once_the_nodes_exist() {
        let t = TempDir::new();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        fake_disk(&sys, &AB);
        fs::create_dir(&dev).unwrap();
        for (node, _) in &AB[..3] {
            fs::write(dev.join(node), "").unwrap();
        }
        let err = wait_for_partitions(&sys, &dev, Duration::from_millis(150)).unwrap_err();
        assert!(
            matches!(&err, WaitError::Timeout { last, .. } if last.contains("vda4")),
            "{err}"
        );
        fs::write(dev.join("vda4"), "").unwrap();
        let p = wait_for_partitions(&sys, &dev, Duration::ZERO).unwrap();
        assert_eq!(p.root_b, dev.join("vda3"));
        assert_eq!(p.persist, dev.join("vda4"));
    }

    #[test]
    fn timeout_says_what_was_seen() {
        let t = TempDir::new();
        fake_disk(t.path(), &AB[..2]);
        let err = wait_for_partitions(t.path(), t.path(), Duration::ZERO).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("vda: ESP=vda1"), "{text}");
        assert!(text.starts_with("no A/B disk after 0 s"), "{text}");
    }

    #[test]
    fn duplicate_names_fail_at_once() {
        let t = TempDir::new();
        fake_disk(t.path(), &[("vda1", "ESP"), ("vda2", "ESP")]);
        let err = wait_for_partitions(t.path(), t.path(), Duration::from_secs(60)).unwrap_err();
        assert!(
            matches!(err, WaitError::Layout(DiscoveryError::Duplicate { .. })),
            "{err}"
        );
    }
}
