//! An interactive machine: one QEMU process whose serial console is its stdin
//! and stdout, kept running across guest reboots (no `-no-reboot`), with user
//! networking so the guest reaches the host's loopback as 10.0.2.2.
//!
//! A reader thread appends everything the guest prints to `console.log` and to
//! one `boot-N.log` per boot (a boot starts where the firmware prints
//! [`BOOT_MARKER`]); tests wait for markers in it and type commands.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// OVMF prints this once per boot, when it hands over to the boot loader.
pub const BOOT_MARKER: &str = "BdsDxe: loading ";

#[derive(Default)]
struct Shared {
    /// Everything the guest printed, `\r` removed.
    text: String,
    /// Byte offsets in `text` where each boot began.
    boots: Vec<usize>,
    eof: bool,
}

pub struct Interactive {
    child: Child,
    stdin: ChildStdin,
    shared: Arc<Mutex<Shared>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Where the next `wait_for` starts looking.
    cursor: usize,
    commands: usize,
    pub dir: PathBuf,
}

/// The QEMU command line of an interactive boot of `disk` (firmware variables
/// in `vars`); `serial` is the `-serial` backend.
pub fn qemu_command(disk: &Path, vars: &Path, serial: &str) -> Command {
    let mut qemu = crate::qemu::base_command(disk, vars);
    qemu.args(["-display", "none"])
        // No option ROM: the firmware must not try a network boot before the disk.
        .args([
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
        ])
        .args(["-serial", serial]);
    qemu
}

impl Interactive {
    /// Starts QEMU on `disk`, logging into `dir` (created; old logs removed).
    pub fn start(disk: &Path, dir: &Path) -> Interactive {
        std::fs::create_dir_all(dir).unwrap();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("boot-") || name == "console.log" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let vars = crate::qemu::fresh_vars(dir);
        let mut child = qemu_command(disk, &vars, "stdio")
            .args(["-monitor", "none"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start qemu-system-x86_64 (install qemu-system-x86)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reader = {
            let (shared, dir) = (shared.clone(), dir.to_path_buf());
            std::thread::spawn(move || read_console(stdout, &shared, &dir))
        };
        Interactive {
            child,
            stdin,
            shared,
            reader: Some(reader),
            cursor: 0,
            commands: 0,
            dir: dir.to_path_buf(),
        }
    }

    /// Boots seen so far (the first boot is 1).
    pub fn boots(&self) -> usize {
        self.shared.lock().unwrap().boots.len()
    }

    /// The last `n` lines of the current boot's console.
    pub fn tail(&self, n: usize) -> String {
        let s = self.shared.lock().unwrap();
        let start = s.boots.last().copied().unwrap_or(0);
        let lines: Vec<&str> = s.text[start..].lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until `marker` appears after the cursor; returns the text from the
    /// cursor through the end of the marker's line and moves the cursor there.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            {
                let s = self.shared.lock().unwrap();
                if let Some(at) = s.text[self.cursor..].find(marker) {
                    let end = self.cursor + at + marker.len();
                    let line_end = s.text[end..].find('\n').map_or(s.text.len(), |i| end + i);
                    let out = s.text[self.cursor..line_end].to_owned();
                    // Past the whole line: the next wait must not see its rest again.
                    self.cursor = line_end;
                    return Ok(out);
                }
                if s.eof {
                    drop(s);
                    return Err(self.failure(&format!("QEMU exited before {marker:?}")));
                }
            }
            if start.elapsed() > timeout {
                return Err(
                    self.failure(&format!("no {marker:?} on the console within {timeout:?}"))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what} (boot {}, logs in {}); last console lines:\n{}",
            self.boots(),
            self.dir.display(),
            self.tail(30)
        )
    }

    /// Types `line` and Enter on the console.
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("write to the console: {e}"))
    }

    /// Runs `cmd` in the guest's console shell; returns its output (stdout and
    /// stderr, with whatever else the console printed meanwhile) and status.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(String, i32), String> {
        self.commands += 1;
        let n = self.commands;
        // The echoed command shows `$((N+0))`; only the shell's output shows N.
        let end = format!("-END-{n}-");
        self.send_line(&format!(
            "{{ {cmd}; }} 2>&1; echo \"RC-$?-END-$(({n}+0))-\""
        ))?;
        let text = self.wait_for(&end, timeout)?;
        // The output starts after the console's echo of the command.
        let echo = format!("$(({n}+0))-\"\n");
        let body = text
            .split_once(&echo)
            .map_or(text.as_str(), |(_, rest)| rest);
        let (out, rc) = body
            .rsplit_once("RC-")
            .ok_or_else(|| format!("no status from {cmd:?}"))?;
        let rc = rc
            .split('-')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad status line after {cmd:?}"))?;
        Ok((out.to_owned(), rc))
    }

    /// Ends QEMU (the guest gets no say: its state is on disk, fsynced) and
    /// waits for the reader to write out the logs.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_console(mut stdout: impl Read, shared: &Mutex<Shared>, dir: &Path) {
    let mut all = BufWriter::new(File::create(dir.join("console.log")).unwrap());
    let mut boot = None;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = all.write_all(&buf[..n]);
        for &b in &buf[..n] {
            if b == b'\r' {
                continue;
            }
            line.push(b);
            if b == b'\n' {
                end_line(&mut line, shared, dir, &mut boot);
            }
        }
        let _ = all.flush();
    }
    end_line(&mut line, shared, dir, &mut boot);
    shared.lock().unwrap().eof = true;
}

/// `line` without terminal escape sequences (GRUB's menu, the shell's cursor
/// queries), so markers and shown lines are plain text.
pub fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

fn end_line(
    line: &mut Vec<u8>,
    shared: &Mutex<Shared>,
    dir: &Path,
    boot: &mut Option<(BufWriter<File>, bool)>,
) {
    let text = strip_escapes(&String::from_utf8_lossy(line));
    let marker = text.contains(BOOT_MARKER);
    let mut s = shared.lock().unwrap();
    // What comes before the first marker belongs to the first boot.
    let new_boot = match boot {
        None => true,
        Some((_, seen)) => marker && *seen,
    };
    if new_boot {
        let at = s.text.len();
        s.boots.push(at);
        let path = dir.join(format!("boot-{}.log", s.boots.len()));
        *boot = Some((BufWriter::new(File::create(path).unwrap()), false));
    }
    s.text.push_str(&text);
    drop(s);
    if let Some((f, seen)) = boot.as_mut() {
        *seen |= marker;
        let _ = f.write_all(text.as_bytes());
        let _ = f.flush();
    }
    line.clear();
}
