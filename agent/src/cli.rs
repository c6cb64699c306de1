//! The `os-agent` command line. Hand-written flag parsing (a few flags do not
//! need clap, DESIGN.md §2); [`usage`] documents it all, the settings from
//! their one declaration in config.rs.

use crate::config::{self, Config, Overrides, DEFAULT_CONFIG_FILE};
use crate::configure::ConfigureRequest;
use crate::job::{self, Agent, AgentError, JobKind};
use crate::prepare::{PrepareRequest, Tls};
use crate::status::{self, JobReport};
use crate::{node, rpc};
use log::{error, info, warn};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const USAGE_COMMANDS: &str = "\
os-agent: writes verified OS images into the inactive A/B slot, arms trial
boots, confirms or rolls back; serves the cluster's os-proxy over JSON-RPC

USAGE:
  os-agent [OPTIONS] COMMAND [COMMAND OPTIONS]

COMMANDS:
  serve [--socket PATH]      serve JSON-RPC 2.0 on a Unix socket (KubeOS methods
                             prepare_upgrade, upgrade, rollback, configure; and
                             status, confirm, cancel). At start, completes the
                             slot records after a boot, reports a fallback, and
                             runs the health gate when the booted slot is on
                             trial: all checks pass -> confirm; any fails ->
                             mark the trial failed and reboot
  status [--json]            booted slot, A/B boot state, both slot records,
                             last failed trial, running job
  upgrade --url URL --digest blake3:HEX [--version V] [--no-reboot]
          [--ca-cert F --client-cert F --client-key F] [--allow-http]
                             write the image into the inactive slot, verify it,
                             arm a trial boot of it and reboot. URL: https://,
                             http:// (only with --allow-http) or file://;
                             --digest also takes sha256:HEX, the file's own
                             digest (KubeOS's check_sum), checked over the
                             whole download; --ca-cert alone replaces the
                             built-in roots, with
                             the client pair it is mutual TLS. Prints progress
                             while it runs
  upgrade --image REGISTRY/REPO[:TAG][@sha256:HEX] [--digest D] [...]
                             the same from an OCI registry (an artifact made by
                             `os-image oci`); something must pin the content:
                             @sha256: in the reference, or --digest sha256:HEX
                             (the OCI manifest) or blake3:HEX (the root image).
                             Registry credentials, CA, mirrors and plain-HTTP
                             hosts are node settings (registry-*, below)
  rollback [--no-reboot]     commit the other slot and reboot; only when its
                             record says it holds an image that booted before
  confirm                    commit the booted slot now, skipping the health gate
  configure --file REQUEST.json
                             apply a KubeOS ConfigureRequest ({\"configs\":[..]}
                             or [{\"configs\":[..]}]) as one transaction: all of
                             it or, on any error, none of it
";

/// `os-agent --help`: the commands, then every setting from its one
/// declaration ([`config::SETTINGS`]).
pub fn usage() -> String {
    let mut s = String::from(USAGE_COMMANDS);
    s.push_str("\nOPTIONS (also `key = value` lines, without the dashes, in the config file):\n");
    option(
        &mut s,
        "--config FILE",
        &format!("config file (default {DEFAULT_CONFIG_FILE}, if present)"),
    );
    for setting in config::SETTINGS {
        let mut help = setting.help.to_owned();
        if let Some(d) = setting.default {
            help.push_str(&format!(" (default {d})"));
        }
        if setting.repeatable {
            help.push_str(" (repeatable)");
        }
        option(&mut s, &format!("--{} {}", setting.key, setting.arg), &help);
    }
    option(
        &mut s,
        "--no-reboot",
        "never reboot (same as `reboot = no`)",
    );
    option(&mut s, "-h, --help", "this text");
    s.push('\n');
    s.push_str(USAGE_TAIL);
    s
}

/// One option: the flag, then its help wrapped in a column from 30.
fn option(out: &mut String, flag: &str, help: &str) {
    const COLUMN: usize = 29;
    const WIDTH: usize = 80;
    let mut line = format!("  {flag}");
    if line.len() >= COLUMN - 1 {
        out.push_str(&line);
        out.push('\n');
        line.clear();
    }
    for word in help.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > COLUMN {
            out.push_str(line.trim_end());
            out.push('\n');
            line.clear();
        }
        if line.len() < COLUMN {
            line.push_str(&" ".repeat(COLUMN - line.len()));
        } else {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

const USAGE_TAIL: &str = "\
Logs go to stderr (RUST_LOG=debug for more).

EXIT STATUS:
  0 success; 1 failed or refused (stderr says why); 2 bad usage;
  3 busy: another job runs on this node (retry later)
";

/// A failed command: message for stderr and exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: format!("{}; see `os-agent --help`", message.into()),
        }
    }

    fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        let code = if matches!(e, AgentError::Busy(_)) {
            3
        } else {
            1
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// The command line, parsed.
#[derive(Debug, Default)]
struct Args {
    command: String,
    overrides: Overrides,
    config_file: Option<PathBuf>,
    json: bool,
    url: Option<String>,
    image: Option<String>,
    digest: Option<String>,
    version: Option<String>,
    tls: Tls,
    allow_http: bool,
    file: Option<PathBuf>,
}

/// Flags that belong to one command only.
const COMMAND_FLAGS: [(&str, &str); 10] = [
    ("file", "configure"),
    ("json", "status"),
    ("url", "upgrade"),
    ("image", "upgrade"),
    ("digest", "upgrade"),
    ("version", "upgrade"),
    ("ca-cert", "upgrade"),
    ("client-cert", "upgrade"),
    ("client-key", "upgrade"),
    ("allow-http", "upgrade"),
];

fn parse(args: &[String]) -> Result<Option<Args>, Failure> {
    let mut a = Args::default();
    let mut used = vec![];
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            match arg.as_str() {
                "-h" => return Ok(None),
                _ if a.command.is_empty() => a.command = arg.clone(),
                _ => return Err(Failure::usage(format!("unexpected argument `{arg}`"))),
            }
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| Failure::usage(format!("--{name} needs a value")))
        };
        match name {
            "help" => return Ok(None),
            "json" => a.json = true,
            "allow-http" => a.allow_http = true,
            "no-reboot" => a.overrides.reboot = Some(false),
            "config" => a.config_file = Some(value()?.into()),
            "url" => a.url = Some(value()?),
            "image" => a.image = Some(value()?),
            "file" => a.file = Some(value()?.into()),
            "digest" => a.digest = Some(value()?),
            "version" => a.version = Some(value()?),
            "ca-cert" => a.tls.ca_cert = Some(value()?.into()),
            "client-cert" => a.tls.client_cert = Some(value()?.into()),
            "client-key" => a.tls.client_key = Some(value()?.into()),
            setting => {
                let v = value()?;
                a.overrides
                    .set(setting, &v)
                    .map_err(|e| Failure::usage(format!("--{e}")))?;
            }
        }
        used.push(name.to_owned());
    }
    check_flags(&a.command, &used)?;
    Ok(Some(a))
}

fn check_flags(command: &str, used: &[String]) -> Result<(), Failure> {
    match command {
        "" => return Err(Failure::usage("no command given")),
        "serve" | "status" | "upgrade" | "rollback" | "confirm" | "configure" => {}
        other => return Err(Failure::usage(format!("unknown command `{other}`"))),
    }
    for flag in used {
        if let Some((_, cmds)) = COMMAND_FLAGS.iter().find(|(f, _)| f == flag) {
            if !cmds.split(' ').any(|c| c == command) {
                return Err(Failure::usage(format!(
                    "--{flag} does not apply to `{command}`"
                )));
            }
        }
    }
    Ok(())
}

/// The text of a file the admin names on the command line, at most `max` bytes; `None` when
/// it does not exist. Any kind of file: `/dev/null` for an empty configuration, a pipe from
/// the shell; only the bound applies (a longer input is refused, not read on).
fn read_admin_file(path: &Path, max: u64) -> io::Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    bootctl::small_file::read_from(file, max)
        .and_then(bootctl::small_file::text)
        .map(Some)
}

/// Largest agent configuration file read (it is a few lines of `key = value`).
const MAX_CONFIG_FILE: u64 = 1 << 20;

fn load_config(mut overrides: Overrides, file: Option<PathBuf>) -> Result<Config, Failure> {
    let must_exist = file.is_some();
    let path = file.unwrap_or_else(|| DEFAULT_CONFIG_FILE.into());
    match read_admin_file(&path, MAX_CONFIG_FILE) {
        Ok(Some(text)) => overrides
            .merge_file(&text)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
        Ok(None) if !must_exist => {}
        Ok(None) => {
            return Err(Failure::failed(format!(
                "read {}: no such file",
                path.display()
            )))
        }
        Err(e) => return Err(Failure::failed(format!("read {}: {e}", path.display()))),
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    overrides
        .resolve(Path::new("/sys"), Path::new("/dev"), &cmdline)
        .map_err(Failure::failed)
}

/// Runs the command line (without the program name); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let parsed = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{}", usage());
            return 0;
        }
        Err(f) => {
            eprintln!("os-agent: {}", f.message);
            return f.code;
        }
    };
    match run(parsed) {
        Ok(()) => 0,
        Err(f) => {
            error!("{}", f.message);
            eprintln!("os-agent: {}", f.message);
            f.code
        }
    }
}

fn run(a: Args) -> Result<(), Failure> {
    let cfg = load_config(a.overrides.clone(), a.config_file.clone())?;
    let agent = Agent::new(cfg, job::real_prepare());
    match a.command.as_str() {
        "serve" => serve(&agent),
        "status" => {
            let report = status::report(&agent)?;
            if a.json {
                println!("{}", miniserde::json::to_string(&report.to_wire()));
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        "upgrade" => upgrade(&agent, a),
        "rollback" => {
            let (slot, _guard) = agent.rollback()?;
            println!("slot {slot} is committed");
            reboot(&agent, &format!("rollback: slot {slot} committed"))
        }
        "confirm" => {
            let outcome = agent.confirm()?;
            println!("slot {} confirmed ({outcome:?})", agent.config().booted);
            Ok(())
        }
        "configure" => configure(&agent, a.file),
        _ => unreachable!("check_flags accepts known commands only"),
    }
}

fn reboot(agent: &Agent, why: &str) -> Result<(), Failure> {
    node::reboot(agent.config(), why).map_err(|e| Failure::failed(e.to_string()))
}

fn upgrade(agent: &Agent, a: Args) -> Result<(), Failure> {
    let (url, digest) = match (a.url, a.image) {
        (Some(_), Some(_)) => return Err(Failure::usage("give --url or --image, not both")),
        (Some(url), None) => (
            url,
            a.digest
                .ok_or_else(|| Failure::usage("upgrade --url needs --digest"))?,
        ),
        // A digest inside the reference (@sha256:) may stand alone.
        (None, Some(image)) => (format!("oci://{image}"), a.digest.unwrap_or_default()),
        (None, None) => return Err(Failure::usage("upgrade needs --url or --image")),
    };
    let req = PrepareRequest {
        url,
        digest,
        version: a.version,
        tls: a.tls,
        allow_http: a.allow_http,
    };
    let done = AtomicBool::new(false);
    let result = thread::scope(|s| {
        s.spawn(|| print_progress(agent, &done));
        let result = agent.install(&req);
        done.store(true, Ordering::Relaxed);
        result
    });
    let (prepared, _, _guard) = result?;
    println!(
        "slot {} holds version {} ({}); trial boot armed",
        prepared.slot, prepared.version, prepared.digest
    );
    reboot(
        agent,
        &format!("upgrade: trial boot of slot {}", prepared.slot),
    )
}

fn configure(agent: &Agent, file: Option<PathBuf>) -> Result<(), Failure> {
    let file = file.ok_or_else(|| Failure::usage("configure needs --file REQUEST.json"))?;
    // The same bound as a request on the socket.
    let text = read_admin_file(&file, crate::rpc::MAX_REQUEST as u64)
        .and_then(|t| t.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
        .map_err(|e| Failure::failed(format!("read {}: {e}", file.display())))?;
    let req = ConfigureRequest::from_json(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    let outcome = agent.configure(&req)?;
    if outcome.changed.is_empty() {
        println!("configured: nothing to change");
    }
    for path in &outcome.changed {
        println!("changed {path}");
    }
    for unit in &outcome.restarted {
        println!("restarted {unit}");
    }
    Ok(())
}

/// Prints the running job's progress once a second until `done`.
fn print_progress(agent: &Agent, done: &AtomicBool) {
    let mut ticks = 0u32;
    while !done.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
        ticks += 1;
        if ticks % 10 == 0 {
            if let Some(job) = agent.current_job() {
                println!("{}", status::progress_line(&JobReport::of(&job)));
            }
        }
    }
}

fn serve(agent: &Agent) -> Result<(), Failure> {
    let cfg = agent.config();
    let listener = rpc::bind(&cfg.socket, !cfg.allowed_uids.is_empty()).map_err(Failure::failed)?;
    info!(
        "os-agent {} serving JSON-RPC on {} (booted slot {}, slots {} and {}, ESP {}, state {})",
        env!("CARGO_PKG_VERSION"),
        cfg.socket.display(),
        cfg.booted,
        cfg.root_a.display(),
        cfg.root_b.display(),
        cfg.esp.display(),
        cfg.state_dir.display()
    );
    // Begun before the first request is accepted, so none slips in ahead of
    // the health gate.
    let first = agent.begin(JobKind::BootCheck, format!("slot {}", cfg.booted));
    rpc::run(agent, &listener, || after_boot(agent, first));
    Err(Failure::failed(format!(
        "stopped serving {}",
        cfg.socket.display()
    )))
}

/// The after-boot check, retried while another process's job holds the node.
fn after_boot<'a>(agent: &'a Agent, mut attempt: Result<job::JobGuard<'a>, AgentError>) {
    loop {
        match attempt {
            Ok(guard) => {
                match agent.run_after_boot(guard) {
                    Ok(outcome) => info!("after boot: {outcome:?}"),
                    Err(e) => error!("after boot: {e}"),
                }
                return;
            }
            Err(AgentError::Busy(m)) => {
                warn!("after-boot check waits: {m}");
                thread::sleep(Duration::from_secs(5));
                attempt = agent.begin(
                    JobKind::BootCheck,
                    format!("slot {}", agent.config().booted),
                );
            }
            Err(e) => {
                error!("after boot: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_and_settings() {
        let a = parse(&args(
            "--esp /e upgrade --url file:///x --digest=blake3:ab --no-reboot --tries 2",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(a.command, "upgrade");
        assert_eq!(a.url.as_deref(), Some("file:///x"));
        assert_eq!(a.digest.as_deref(), Some("blake3:ab"));
        assert_eq!(a.overrides.reboot, Some(false));
        assert_eq!(a.overrides.tries, Some(2));
        assert_eq!(a.overrides.esp, Some(PathBuf::from("/e")));
        assert!(parse(&args("status --help")).unwrap().is_none());
    }

    #[test]
    fn usage_errors() {
        let code = |s: &str| parse(&args(s)).unwrap_err().code;
        assert_eq!(code(""), 2);
        assert_eq!(code("frobnicate"), 2);
        assert_eq!(code("status --url x"), 2);
        assert_eq!(code("confirm --json"), 2);
        assert_eq!(code("status --bogus 1"), 2);
        assert_eq!(code("upgrade --url"), 2);
        assert_eq!(code("status extra"), 2);
        assert_eq!(code("status --file x"), 2);
        let a = parse(&args("configure --file /r.json")).unwrap().unwrap();
        assert_eq!(a.file, Some(PathBuf::from("/r.json")));
    }
}
