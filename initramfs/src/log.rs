//! A console logger for PID 1: one whole line per message on stderr, which the
//! kernel connects to /dev/console. No timestamps (the kernel's own messages
//! around ours carry them) and no buffering (a reboot may follow any line).

use log::{Level, LevelFilter, Metadata, Record};
use std::io::Write;

struct Console;

static CONSOLE: Console = Console;

/// The line printed for a message at `level`.
pub fn format_line(level: Level, message: &std::fmt::Arguments<'_>) -> String {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        _ => "",
    };
    format!("os-init: {tag}{message}\n")
}

impl log::Log for Console {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format_line(record.level(), record.args());
            // One write per line so kernel messages cannot land inside it; a
            // console that cannot be written to is no reason to stop booting.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the console logger (once; later calls change nothing).
pub fn init() {
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_tagged() {
        assert_eq!(
            format_line(
                Level::Info,
                &format_args!("mounting {} at /sysroot", "/dev/vda3")
            ),
            "os-init: mounting /dev/vda3 at /sysroot\n"
        );
        assert_eq!(
            format_line(Level::Warn, &format_args!("x")),
            "os-init: warning: x\n"
        );
        assert_eq!(
            format_line(Level::Error, &format_args!("y")),
            "os-init: error: y\n"
        );
    }
}
