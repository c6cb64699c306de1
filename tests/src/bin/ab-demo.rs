//! `make demo`: builds demo bundles v1, v2 and a broken v3, boots a disk with
//! v1 in QEMU and drives it through upgrade, rollback and automatic fallback
//! (see `e2e::demo`). Usage: `ab-demo [--out DIR] [--from-registry]` (default
//! target/ab-demo); `--from-registry`: the upgrades come from a loopback OCI
//! registry that `os-image oci --push` published v2 and v3 to, instead of
//! plain HTTP.

use e2e::demo::{self, Source};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = e2e::repo_root().join("target/ab-demo");
    let mut source = Source::Http;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--from-registry" => source = Source::Registry,
            _ => usage(),
        }
    }
    std::process::exit(match run(&out, source) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("\nab-demo failed: {e}");
            1
        }
    });
}

fn usage() -> ! {
    eprintln!(
        "usage: ab-demo [--out DIR] [--from-registry]\n  \
         --out DIR        disk, bundles and logs (default target/ab-demo)\n  \
         --from-registry  take the upgrades from a loopback OCI registry that\n                   \
         os-image oci --push published them to, instead of plain HTTP"
    );
    std::process::exit(2);
}

fn run(out: &std::path::Path, source: Source) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    // Absolute, so the paths printed at the end work from anywhere.
    let out = &std::fs::canonicalize(out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("building os-image, os-init, os-agent and demo bundles v1, v2, v3 (broken) ...");
    let art = demo::build_bundles(out);
    for b in &art.bundles {
        println!("  v{}: {} {}", b.version, b.image.display(), b.digest);
    }
    let built = started.elapsed();
    let disk = out.join("node.img");
    let logs = out.join("logs");
    let report = demo::run_scenario_with(
        &art,
        &disk,
        &logs,
        &mut |l| println!("{l}"),
        source,
        demo::STEPS,
    )?;
    println!(
        "\n=== timeline (builds took {:.0}s) ===",
        built.as_secs_f64()
    );
    print!("{}", demo::timeline(&report));
    println!("\ndisk, bundles and logs are in {}", out.display());
    println!("  console of every boot: {}/boot-N.log", logs.display());
    println!("  boot the node yourself (Ctrl-A X quits):");
    println!(
        "    cp /usr/share/OVMF/OVMF_VARS_4M.fd {d}/vars.fd && {}",
        interactive_command(&disk, &out.join("vars.fd")),
        d = out.display()
    );
    Ok(())
}

fn interactive_command(disk: &std::path::Path, vars: &std::path::Path) -> String {
    let cmd = e2e::console::qemu_command(disk, vars, "mon:stdio");
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s += &a.to_string_lossy();
    }
    s
}
