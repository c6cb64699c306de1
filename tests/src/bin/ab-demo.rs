//! `make demo`: builds demo bundles v1, v2 and a broken v3, boots a disk with
//! v1 in QEMU and drives it through upgrade, rollback and automatic fallback
//! (see `e2e::demo`). Usage: `ab-demo [--out DIR] [--from-registry]` (default
//! target/ab-demo); `--from-registry`: the upgrades come from a loopback OCI
//! registry that `os-image oci --push` published v2 and v3 to, instead of
//! plain HTTP. `--node-image`: the same kind of story on the real Debian node
//! image (systemd, containerd; `e2e::node_demo`), default out target/ab-demo-node.

use e2e::demo::{self, Source};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    let mut source = Source::Http;
    let mut node_image = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(args.next().map(PathBuf::from).unwrap_or_else(|| usage())),
            "--from-registry" => source = Source::Registry,
            "--node-image" => node_image = true,
            _ => usage(),
        }
    }
    let default = if node_image {
        "target/ab-demo-node"
    } else {
        "target/ab-demo"
    };
    let out = out.unwrap_or_else(|| e2e::repo_root().join(default));
    let result = if node_image {
        run_node_image(&out)
    } else {
        run(&out, source)
    };
    std::process::exit(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("\nab-demo failed: {e}");
            1
        }
    });
}

fn usage() -> ! {
    eprintln!(
        "usage: ab-demo [--out DIR] [--from-registry | --node-image]\n  \
         --out DIR        disk, bundles and logs (default target/ab-demo)\n  \
         --from-registry  take the upgrades from a loopback OCI registry that\n                   \
         os-image oci --push published them to, instead of plain HTTP\n  \
         --node-image     the real Debian node image (systemd, containerd) instead\n                   \
         of the busybox demo root (default out target/ab-demo-node)"
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

/// `make demo-node`: Debian node roots v1, v2 and a broken v3 (cached in
/// /var/cache/ab-os-test), then `e2e::node_demo`'s scenario and its timeline.
fn run_node_image(out: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let out = &std::fs::canonicalize(out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("building os-image, os-init, os-agent and Debian node bundles v1, v2, v3 (containerd broken) ...");
    let started = Instant::now();
    let images = e2e::node_image::build(out);
    println!(
        "  {:.0} s ({} built, cached: {:?})",
        started.elapsed().as_secs_f64(),
        3 - images.cached.len(),
        images.cached
    );
    for b in &images.bundles {
        let compressed = std::fs::metadata(&b.image).map(|m| m.len()).unwrap_or(0);
        println!(
            "  v{}: root image {} MiB, bundle {} MiB, {}",
            b.version,
            b.size >> 20,
            compressed >> 20,
            b.digest
        );
    }
    let disk = out.join("node.img");
    let logs = out.join("logs");
    let report = e2e::node_demo::run_scenario(&images, &disk, &logs, &mut |l| println!("{l}"))?;
    println!("\n=== timeline ===");
    print!("{}", e2e::node_demo::timeline(&report));
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
