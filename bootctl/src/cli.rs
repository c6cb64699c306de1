//! The `bootctl` command line. Other tools and tests drive it exactly as
//! documented in [`USAGE`], so its output formats are part of the interface.

use crate::envblk::{self, EnvError};
use crate::grubcfg::{self, GrubConfig};
use crate::state::{AbState, Confirmed, Slot, DEFAULT_TRIES};
use crate::store::{Esp, Status, StoreError};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const USAGE: &str = "\
bootctl: GRUB environment blocks and the A/B boot state

USAGE:
  bootctl env create FILE              write a blank 1024-byte env block
  bootctl env set FILE NAME=VALUE...   set variables (creates FILE if missing)
  bootctl env unset FILE NAME...       delete variables
  bootctl env list FILE                print NAME=VALUE lines
      The env commands behave and write exactly like `grub-editenv FILE ...`.

  bootctl [--esp DIR] [--default A|B] COMMAND
    init [--active A|B] [--force]      create both A/B env copies (DIR/ab1/env,
                                       DIR/ab2/env); --force overwrites a valid state
    status [--json] [--no-repair]      show the state GRUB boots from; an invalid or
                                       stale copy is repaired from the valid one
                                       unless --no-repair
    arm SLOT [--tries N]               boot SLOT on trial for at most N boots
                                       (1-9, default 3), then fall back
    confirm SLOT                       make the trial slot the committed slot
    mark-failed SLOT                   end SLOT's trial as failed; the committed
                                       slot boots next and ab_fail records SLOT
    rollback                           commit the other slot (no trial may be armed)
    repair                             rewrite both copies from the valid one

  bootctl grub-cfg [--cmdline STR] [--part-a N] [--part-b N] [--default A|B]
                   [--timeout SECS] [--env1 PATH] [--env2 PATH]
                   [--kernel PATH] [--initrd PATH]
      print the grub.cfg that implements the A/B boot (defaults: partitions 2
      and 3, default slot A, timeout 1, /ab1/env and /ab2/env on the ESP,
      /boot/vmlinuz and /boot/initramfs.img inside each slot). --cmdline is
      appended verbatim to the kernel command line.

OPTIONS:
  --esp DIR       mounted ESP holding the env copies (default /boot/efi)
  --default SLOT  slot GRUB boots when both copies are unusable (default A);
                  status reports it with source \"default\"
  -h, --help      this text

EXIT STATUS:
  0 success; 1 refused, invalid state or I/O error (one line on stderr says
  why); 2 bad usage.
";

/// A failed command: the message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: format!("{}; see `bootctl --help`", message.into()),
        }
    }

    fn refused(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::refused(e.to_string())
    }
}

type CliResult = Result<(), Failure>;

/// Runs the command line `args` (without the program name), writing normal
/// output to `out`.
pub fn run(args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let mut args = args.into_iter();
    let mut esp = PathBuf::from("/boot/efi");
    let mut default = Slot::A;
    let command = loop {
        let Some(arg) = args.next() else {
            return Err(Failure::usage("no command given"));
        };
        match arg.to_str() {
            Some("-h" | "--help") => {
                let _ = out.write_all(USAGE.as_bytes());
                return Ok(());
            }
            Some("--esp") => esp = PathBuf::from(value(&mut args, "--esp")?),
            Some("--default") => default = slot_arg(&value(&mut args, "--default")?)?,
            Some(cmd) => break cmd.to_owned(),
            None => return Err(Failure::usage("arguments must be UTF-8")),
        }
    };
    let rest: Vec<OsString> = args.collect();
    let esp = Esp::new(esp);
    match command.as_str() {
        "env" => env_command(rest, out),
        "init" => init(&esp, rest, out),
        "status" => status(&esp, default, rest, out),
        "arm" => arm(&esp, rest, out),
        "confirm" => confirm(&esp, rest, out),
        "mark-failed" => mark_failed(&esp, rest, out),
        "rollback" => rollback(&esp, rest, out),
        "repair" => repair(&esp, default, rest, out),
        "grub-cfg" => grub_cfg(rest, out),
        other => Err(Failure::usage(format!("unknown command `{other}`"))),
    }
}

fn value(args: &mut impl Iterator<Item = OsString>, flag: &str) -> Result<String, Failure> {
    args.next()
        .and_then(|v| v.into_string().ok())
        .ok_or_else(|| Failure::usage(format!("{flag} needs a value")))
}

fn slot_arg(s: &str) -> Result<Slot, Failure> {
    Slot::parse(s).ok_or_else(|| Failure::usage(format!("`{s}` is not a slot (A or B)")))
}

/// Splits `args` into flags with values (`--name VALUE`), boolean flags and
/// positional arguments, refusing anything not listed.
struct Parsed {
    flags: Vec<(String, String)>,
    switches: Vec<String>,
    positional: Vec<String>,
}

impl Parsed {
    fn new(args: Vec<OsString>, with_value: &[&str], switches: &[&str]) -> Result<Parsed, Failure> {
        let mut parsed = Parsed {
            flags: vec![],
            switches: vec![],
            positional: vec![],
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg
                .into_string()
                .map_err(|_| Failure::usage("arguments must be UTF-8"))?;
            if with_value.contains(&arg.as_str()) {
                let v = value(&mut it, &arg)?;
                parsed.flags.push((arg, v));
            } else if switches.contains(&arg.as_str()) {
                parsed.switches.push(arg);
            } else if arg.starts_with("--") {
                return Err(Failure::usage(format!("unknown option `{arg}`")));
            } else {
                parsed.positional.push(arg);
            }
        }
        Ok(parsed)
    }

    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    fn exactly(&self, n: usize, what: &str) -> Result<&[String], Failure> {
        if self.positional.len() != n {
            return Err(Failure::usage(format!("expected {what}")));
        }
        Ok(&self.positional)
    }
}

fn init(esp: &Esp, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let p = Parsed::new(args, &["--active"], &["--force"])?;
    p.exactly(0, "no arguments besides --active and --force")?;
    let active = p.flag("--active").map_or(Ok(Slot::A), slot_arg)?;
    esp.init(active, p.switch("--force"))?;
    let _ = writeln!(
        out,
        "initialized {}: active {active}, no trial",
        esp.dir().display()
    );
    Ok(())
}

fn status(esp: &Esp, default: Slot, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let p = Parsed::new(args, &[], &["--json", "--no-repair"])?;
    p.exactly(0, "no arguments besides --json and --no-repair")?;
    let status = if p.switch("--no-repair") {
        esp.status(false, default)?
    } else {
        // A read-only ESP must not hide the state: report it unrepaired.
        esp.status(true, default).or_else(|e| match e {
            StoreError::Io { .. }
            | StoreError::NotInPlace { .. }
            | StoreError::VerifyFailed { .. } => {
                eprintln!("bootctl: warning: could not repair: {e}");
                esp.status(false, default)
            }
            other => Err(other),
        })?
    };
    let _ = out.write_all(render_status(&status, p.switch("--json")).as_bytes());
    Ok(())
}

/// The text or JSON form of a status report.
pub fn render_status(status: &Status, json: bool) -> String {
    let s = &status.state;
    let opt = |o: Option<Slot>| o.map(Slot::as_str);
    if json {
        let q = |o: Option<&str>| o.map_or("null".to_owned(), |v| format!("\"{v}\""));
        return format!(
            "{{\"active\":\"{}\",\"trial\":{},\"tries\":{},\"fail\":{},\"source\":\"{}\",\"repaired\":{}}}\n",
            s.active,
            q(opt(s.trial)),
            s.tries,
            q(opt(s.fail)),
            status.source.as_str(),
            status.repaired
        );
    }
    let trial = match s.trial {
        Some(t) => format!("{t} ({} boot(s) left)", s.tries),
        None => "none".into(),
    };
    format!(
        "active: {}\ntrial: {trial}\nfail: {}\nsource: {}\nrepaired: {}\n",
        s.active,
        opt(s.fail).unwrap_or("none"),
        match status.source.as_str() {
            "default" => "default (both copies unusable)",
            "1" => "copy 1",
            _ => "copy 2",
        },
        if status.repaired { "yes" } else { "no" }
    )
}

fn one_slot(args: Vec<OsString>, value_flags: &[&str]) -> Result<(Slot, Parsed), Failure> {
    let p = Parsed::new(args, value_flags, &[])?;
    let slot = slot_arg(&p.exactly(1, "one SLOT (A or B)")?[0])?;
    Ok((slot, p))
}

fn arm(esp: &Esp, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let (slot, p) = one_slot(args, &["--tries"])?;
    let tries = match p.flag("--tries") {
        None => DEFAULT_TRIES,
        Some(t) => t
            .parse()
            .map_err(|_| Failure::usage(format!("--tries: `{t}` is not a number")))?,
    };
    esp.update(|s| s.arm_trial(slot, tries))?;
    let _ = writeln!(out, "armed trial of slot {slot}: {tries} boot(s)");
    Ok(())
}

fn confirm(esp: &Esp, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let (slot, _) = one_slot(args, &[])?;
    let (result, _) = esp.update(|s| s.confirm(slot))?;
    let _ = match result {
        Confirmed::Committed => writeln!(out, "slot {slot} confirmed and committed"),
        Confirmed::AlreadyCommitted => writeln!(out, "slot {slot} was already committed"),
    };
    Ok(())
}

fn mark_failed(esp: &Esp, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let (slot, _) = one_slot(args, &[])?;
    let (_, state) = esp.update(|s| s.mark_failed(slot))?;
    let _ = writeln!(
        out,
        "trial of slot {slot} marked failed; slot {} boots next",
        state.active
    );
    Ok(())
}

fn rollback(esp: &Esp, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    Parsed::new(args, &[], &[])?.exactly(0, "no arguments")?;
    let (slot, _) = esp.update(AbState::rollback)?;
    let _ = writeln!(out, "rolled back: slot {slot} is committed");
    Ok(())
}

fn repair(esp: &Esp, default: Slot, args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    Parsed::new(args, &[], &[])?.exactly(0, "no arguments")?;
    let status = esp.status(true, default)?;
    if let crate::Source::Default = status.source {
        return Err(Failure::refused(format!(
            "both copies in {} are unusable, nothing to repair from; use `init --force`",
            esp.dir().display()
        )));
    }
    let _ = if status.repaired {
        writeln!(out, "repaired from copy {}", status.source.as_str())
    } else {
        writeln!(out, "both copies are valid and agree; nothing to do")
    };
    Ok(())
}

fn grub_cfg(args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let names = [
        "--cmdline",
        "--part-a",
        "--part-b",
        "--default",
        "--timeout",
        "--env1",
        "--env2",
        "--kernel",
        "--initrd",
    ];
    let p = Parsed::new(args, &names, &[])?;
    p.exactly(0, "only options")?;
    let number = |name: &str, default: u32| -> Result<u32, Failure> {
        p.flag(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| Failure::usage(format!("{name}: `{v}` is not a number")))
        })
    };
    let d = GrubConfig::default();
    let text = |name: &str, default: String| p.flag(name).map_or(default, str::to_owned);
    let cfg = GrubConfig {
        cmdline: text("--cmdline", d.cmdline),
        part_a: number("--part-a", d.part_a)?,
        part_b: number("--part-b", d.part_b)?,
        default: p.flag("--default").map_or(Ok(d.default), slot_arg)?,
        timeout: number("--timeout", d.timeout)?,
        env1: text("--env1", d.env1),
        env2: text("--env2", d.env2),
        kernel: text("--kernel", d.kernel),
        initrd: text("--initrd", d.initrd),
        args: d.args,
    };
    if cfg.part_a == cfg.part_b || cfg.part_a == 0 || cfg.part_b == 0 {
        return Err(Failure::usage(
            "--part-a and --part-b must be two different partition numbers",
        ));
    }
    let text = grubcfg::render(&cfg).map_err(Failure::usage)?;
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

fn env_command(args: Vec<OsString>, out: &mut dyn Write) -> CliResult {
    let mut it = args.into_iter();
    let verb = it.next().and_then(|v| v.into_string().ok());
    let file = it.next().map(PathBuf::from);
    let rest: Vec<OsString> = it.collect();
    let (Some(verb), Some(file)) = (verb, file) else {
        return Err(Failure::usage("expected `env create|set|unset|list FILE`"));
    };
    match verb.as_str() {
        "create" if rest.is_empty() => env_create(&file),
        "list" if rest.is_empty() => {
            let block = env_open(&file)?;
            for (name, value) in envblk::iter(&block).map_err(|e| env_fail(&file, e))? {
                let mut line = name.to_vec();
                line.push(b'=');
                line.extend(value.bytes());
                line.push(b'\n');
                out.write_all(&line)
                    .map_err(|e| Failure::refused(format!("write output: {e}")))?;
            }
            Ok(())
        }
        "set" => {
            let mut block = env_open(&file)?;
            for arg in &rest {
                let bytes = arg.as_bytes();
                let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
                    return Err(Failure::refused(format!(
                        "invalid parameter {}",
                        arg.to_string_lossy()
                    )));
                };
                envblk::set(&mut block, &bytes[..eq], &bytes[eq + 1..])
                    .map_err(|e| env_fail(&file, e))?;
            }
            env_write(&file, &block)
        }
        "unset" => {
            let mut block = env_open(&file)?;
            for arg in &rest {
                envblk::unset(&mut block, arg.as_bytes()).map_err(|e| env_fail(&file, e))?;
            }
            env_write(&file, &block)
        }
        "create" | "list" => Err(Failure::usage(format!("`env {verb}` takes only FILE"))),
        other => Err(Failure::usage(format!("unknown env command `{other}`"))),
    }
}

fn env_fail(file: &Path, e: EnvError) -> Failure {
    Failure::refused(format!("{}: {e}", file.display()))
}

/// `grub-editenv create`: a fresh block, written beside the file and renamed
/// over it, so an existing block is never half-overwritten.
fn env_create(file: &Path) -> CliResult {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let io_fail =
        |op: &str, p: &Path, e: io::Error| Failure::refused(format!("{op} {}: {e}", p.display()));
    fs::write(&tmp, envblk::create()).map_err(|e| io_fail("write", &tmp, e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_fail("fsync", &tmp, e))?;
    crate::durable::rename_over(&tmp, file).map_err(|e| io_fail("rename to", file, e))
}

/// Reads a block; like grub-editenv, a missing file is created first.
fn env_open(file: &Path) -> Result<Vec<u8>, Failure> {
    if !file.exists() {
        env_create(file)?;
    }
    let block =
        fs::read(file).map_err(|e| Failure::refused(format!("read {}: {e}", file.display())))?;
    envblk::validate(&block).map_err(|e| env_fail(file, e))?;
    Ok(block)
}

/// Writes the edited block back over the same bytes (its length never changes).
fn env_write(file: &Path, block: &[u8]) -> CliResult {
    let fail = |op: &str, e: io::Error| Failure::refused(format!("{op} {}: {e}", file.display()));
    let f = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| fail("open", e))?;
    f.write_all_at(block, 0).map_err(|e| fail("write", e))?;
    f.sync_all().map_err(|e| fail("fsync", e))
}

/// Entry point for `main`: runs and reports, returning the exit status.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run(args, &mut out) {
        Ok(()) => 0,
        Err(f) => {
            let _ = out.flush();
            eprintln!("bootctl: {}", f.message);
            f.code
        }
    }
}
