//! `os-image` command line.

use crate::oci::push::{Auth, PushOptions};
use crate::{bundle, debian, demo, disk, oci};
use bootctl::record::ConfirmPolicy;
use bootctl::Slot;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "os-image",
    version,
    about = "Build A/B update bundles and bootable disk images, without root",
    long_about = "Build A/B update bundles and bootable disk images from a root filesystem.\n\n\
                  Needs no root privileges, loop devices or mounts: filesystems are made with \
                  mkfs.ext4 -d and mtools, the GPT with sgdisk, qcow2 with qemu-img.\n\n\
                  Example:\n  \
                  os-image demo-rootfs --version 1 --kernel-deb linux-image-6.1.0-56-amd64.deb --out rootfs-v1\n  \
                  os-image bundle --rootfs rootfs-v1 --version 1 --out bundles\n  \
                  os-image disk --bundle bundles/os-1.manifest.json --out node.img\n  \
                  os-image oci --manifest bundles/os-1.manifest.json --layout oci-layout --push registry.example.com/os"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an update bundle (NAME.img.zst + NAME.manifest.json) from a root filesystem
    Bundle {
        /// Root filesystem: a directory or a tar archive (optionally gzip/zstd compressed)
        #[arg(long)]
        rootfs: PathBuf,
        /// OS version recorded in the manifest; must match VERSION_ID in the rootfs's /etc/os-release
        #[arg(long)]
        version: String,
        /// Output directory (created if missing)
        #[arg(long)]
        out: PathBuf,
        /// Bundle file name stem [default: os-VERSION]
        #[arg(long)]
        name: Option<String>,
        /// Size of the ext4 root image, e.g. 512M or 1G [default: content plus 25%, rounded up to 16 MiB]
        #[arg(long, value_parser = parse_size)]
        root_size: Option<u64>,
        /// The static os-init binary to put in the initramfs as /init [default: os-init beside os-image]
        #[arg(long)]
        os_init: Option<PathBuf>,
        /// Uncompressed bytes per chunk (and zstd frame), e.g. 4M: smaller chunks make smaller deltas, larger ones a slightly smaller bundle (docs/bundle.md)
        #[arg(long, value_parser = parse_size, default_value = "1M")]
        chunk_size: u64,
        /// zstd compression level (1-19)
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
        /// Sign the manifest with this secret key (from `os-image keygen`): writes NAME.manifest.json.sig
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Leave out the dm-verity tree (for kernels without dm-verity; nodes then mount the root unchecked)
        #[arg(long)]
        no_verity: bool,
        /// The previous bundle's NAME.manifest.json: build the root image from its image so that unchanged files keep their blocks and nodes download a small delta
        #[arg(long, value_name = "MANIFEST")]
        base: Option<PathBuf>,
    },
    /// Make a bundle-signing key pair: STEM.key (secret, mode 0600; keep it offline) and STEM.pub (for nodes' /usr/share/os-agent/keys)
    Keygen {
        /// Path and name of the key files without extension, e.g. keys/vendor-2026
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle manifest: writes MANIFEST.sig beside it
    Sign {
        /// Secret key (PEM PKCS#8: `os-image keygen` or `openssl genpkey -algorithm ed25519`)
        #[arg(long)]
        key: PathBuf,
        /// The bundle's NAME.manifest.json
        manifest: PathBuf,
    },
    /// Build a bootable GPT disk (ESP with GRUB, ROOT-A, ROOT-B, PERSIST) from bundles
    Disk {
        /// Bundle manifest for slot A
        #[arg(long)]
        bundle: PathBuf,
        /// Bundle manifest for slot B [default: slot B left empty]
        #[arg(long)]
        bundle_b: Option<PathBuf>,
        /// Arm a trial of this slot (needs --bundle-b for B)
        #[arg(long, value_parser = parse_slot)]
        arm: Option<Slot>,
        /// Trial boots for --arm (1-9)
        #[arg(long, default_value_t = bootctl::state::DEFAULT_TRIES)]
        tries: u8,
        /// Total disk size, e.g. 2G [default: just enough for the layout]
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Size of each root slot [default: the larger bundle's image, rounded up to 64 MiB]
        #[arg(long, value_parser = parse_size)]
        slot_size: Option<u64>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// Extra kernel command line for both slots
        #[arg(long, default_value = disk::DEFAULT_CMDLINE)]
        cmdline: String,
        /// Who confirms trial boots, written into the slot records
        /// [default: the agent when the slot has one, else os-init]
        #[arg(long, value_parser = parse_confirm)]
        confirm: Option<ConfirmPolicy>,
        /// Output disk image
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a bundle as an OCI artifact into an OCI image layout, and optionally push it to a registry
    ///
    /// The artifact is an OCI image manifest whose config blob is NAME.manifest.json and whose one
    /// layer is NAME.img.zst, both byte for byte (docs/oci.md). The layer blob is hard-linked from
    /// the bundle when both are on one filesystem. An existing layout keeps its other tags.
    ///
    /// The last line on stdout is the manifest digest (sha256:...): pin the release as
    /// REGISTRY/REPO@sha256:....
    #[command(verbatim_doc_comment)]
    Oci {
        /// The bundle's NAME.manifest.json (NAME.img.zst beside it)
        #[arg(long)]
        manifest: PathBuf,
        /// OCI image layout directory (created if missing)
        #[arg(long)]
        layout: PathBuf,
        /// Tag in the layout [default: the manifest's os_version]
        #[arg(long)]
        tag: Option<String>,
        /// Also push to this registry repository [default tag: the layout tag]
        #[arg(long, value_name = "REGISTRY/REPO[:TAG]")]
        push: Option<String>,
        /// Speak plain HTTP to the registry (no TLS)
        #[arg(long, requires = "push", conflicts_with = "ca_cert")]
        plain_http: bool,
        /// PEM file of the CA that signs the registry's certificate [default: the web roots]
        #[arg(long, value_name = "PEM", requires = "push")]
        ca_cert: Option<PathBuf>,
        /// Docker-style auth file (~/.docker/config.json, containers' auth.json) to take the registry's credentials from
        #[arg(long, value_name = "FILE", requires = "push", conflicts_with = "creds")]
        auth_file: Option<PathBuf>,
        /// Registry credentials
        #[arg(long, value_name = "USER:PASS", requires = "push")]
        creds: Option<String>,
    },
    /// Build an OCI container image of one static program (os-operator, os-proxy) into an OCI image layout, optionally pushed
    Container {
        /// The static program (e.g. target/x86_64-unknown-linux-musl/release/os-operator)
        #[arg(long)]
        binary: PathBuf,
        /// Its name in the image, at /usr/local/bin/NAME [default: the file's name]
        #[arg(long)]
        name: Option<String>,
        /// Run as UID:GID (added to the image's /etc/passwd) [default: root]
        #[arg(long, value_name = "UID:GID")]
        user: Option<String>,
        /// OCI image layout directory (created if missing)
        #[arg(long)]
        layout: PathBuf,
        /// Tag in the layout
        #[arg(long)]
        tag: String,
        /// Also push to this registry repository [default tag: --tag]
        #[arg(long, value_name = "REGISTRY/REPO[:TAG]")]
        push: Option<String>,
        /// Speak plain HTTP to the registry (no TLS)
        #[arg(long, requires = "push", conflicts_with = "ca_cert")]
        plain_http: bool,
        /// PEM file of the CA that signs the registry's certificate [default: the web roots]
        #[arg(long, value_name = "PEM", requires = "push")]
        ca_cert: Option<PathBuf>,
        /// Docker-style auth file to take the registry's credentials from
        #[arg(long, value_name = "FILE", requires = "push", conflicts_with = "creds")]
        auth_file: Option<PathBuf>,
        /// Registry credentials
        #[arg(long, value_name = "USER:PASS", requires = "push")]
        creds: Option<String>,
    },
    /// Build a node root filesystem (systemd, containerd, os-agent, a kernel) from a recipe
    ///
    /// The base comes from mmdebstrap (Debian package mmdebstrap; --mode=root as root,
    /// --mode=unshare otherwise) and the recipe's mirror; the kernel package is unpacked
    /// without running an initramfs generator. The result goes to `os-image bundle` as it is.
    /// Recipe format: docs/node-image.md. SOURCE_DATE_EPOCH fixes the timestamps.
    #[command(verbatim_doc_comment)]
    Rootfs {
        /// Distribution to build from
        #[arg(long, value_parser = ["debian"])]
        from: String,
        /// The recipe (key = value lines; docs/node-image.md)
        #[arg(long)]
        recipe: PathBuf,
        /// Version written to /etc/os-release (VERSION_ID); give the same to `os-image bundle`
        #[arg(long)]
        version: String,
        /// Output directory (must not exist or be empty)
        #[arg(long)]
        out: PathBuf,
        /// Static os-agent binary [default: the recipe's agent, else os-agent beside os-image]
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Keep and reuse the mmdebstrap base tarball here (debian-<digest of its inputs>.tar)
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Build the minimal demo root filesystem (busybox + a Debian kernel package)
    DemoRootfs {
        /// Version written to /etc/os-release and printed at boot
        #[arg(long)]
        version: String,
        /// Debian kernel package (linux-image-*.deb) to take vmlinuz and modules from
        #[arg(long)]
        kernel_deb: PathBuf,
        /// Output directory (must not exist or be empty)
        #[arg(long)]
        out: PathBuf,
        /// os-agent binary to include [default: os-agent beside os-image, when present]
        #[arg(long)]
        agent: Option<PathBuf>,
        /// A deliberately broken release: its demo service never starts, so the health gate fails its trial
        #[arg(long)]
        broken: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Raw,
    Qcow2,
}

/// Parses `512`, `64K`, `16M`, `1G`, `2GiB` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512M, 1G)"))?;
    let shift = match unit.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// The `--push` flags of `oci` and `container`, when `--push` is given.
fn push_options(
    push: Option<String>,
    plain_http: bool,
    ca_cert: Option<PathBuf>,
    auth_file: Option<PathBuf>,
    creds: Option<String>,
) -> Option<PushOptions> {
    push.map(|target| PushOptions {
        target,
        plain_http,
        ca_cert,
        auth: match (auth_file, creds) {
            (Some(file), _) => Auth::File(file),
            (None, Some(creds)) => Auth::Creds(creds),
            (None, None) => Auth::Anonymous,
        },
    })
}

fn parse_confirm(s: &str) -> Result<ConfirmPolicy, String> {
    ConfirmPolicy::parse(s)
        .ok_or_else(|| format!("`{s}` is not a confirm policy (initramfs or agent)"))
}

fn parse_slot(s: &str) -> Result<Slot, String> {
    Slot::parse(s).ok_or_else(|| format!("`{s}` is not a slot (A or B)"))
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bundle {
            rootfs,
            version,
            out,
            name,
            root_size,
            os_init,
            chunk_size,
            level,
            sign,
            no_verity,
            base,
        } => bundle::run(&bundle::BundleOptions {
            rootfs,
            version,
            out,
            name,
            root_size,
            os_init,
            chunk_size,
            level,
            sign,
            no_verity,
            base,
        })
        .map(|_| ()),
        Command::Keygen { out } => crate::sign::keygen(&out).map(|_| ()),
        Command::Sign { key, manifest } => crate::sign::sign_file(&key, &manifest).map(|_| ()),
        Command::Disk {
            bundle,
            bundle_b,
            arm,
            tries,
            size,
            slot_size,
            format,
            cmdline,
            confirm,
            out,
        } => disk::run(&disk::DiskOptions {
            bundle,
            bundle_b,
            arm,
            tries,
            size,
            slot_size,
            format,
            cmdline,
            confirm,
            out,
        }),
        Command::Oci {
            manifest,
            layout,
            tag,
            push,
            plain_http,
            ca_cert,
            auth_file,
            creds,
        } => oci::run(&oci::OciOptions {
            manifest,
            layout,
            tag,
            push: push_options(push, plain_http, ca_cert, auth_file, creds),
        }),
        Command::Container {
            binary,
            name,
            user,
            layout,
            tag,
            push,
            plain_http,
            ca_cert,
            auth_file,
            creds,
        } => crate::container::run(&crate::container::ContainerOptions {
            binary,
            name,
            user,
            layout,
            tag,
            push: push_options(push, plain_http, ca_cert, auth_file, creds),
        }),
        Command::Rootfs {
            from,
            recipe,
            version,
            out,
            agent,
            cache_dir,
        } => debian::run(&debian::RootfsOptions {
            from,
            recipe,
            out,
            version,
            agent,
            cache_dir,
        }),
        Command::DemoRootfs {
            version,
            kernel_deb,
            out,
            agent,
            broken,
        } => demo::run(&demo::DemoOptions {
            version,
            kernel_deb,
            out,
            agent,
            broken,
        }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("os-image: error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
    }
}
