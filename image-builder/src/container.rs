//! `os-image container`: an OCI container image of one static program, for
//! the cluster side (os-operator, os-proxy) without Docker: one gzip layer
//! holding the program at `/usr/local/bin/NAME` and, for a non-root user, an
//! `/etc/passwd` and `/etc/group` naming it; the config's entrypoint is the
//! program. Written into an OCI image layout like `os-image oci` does
//! (content-addressed blobs, `index.json` last) and pushed with the same
//! client. Reproducible: every timestamp is SOURCE_DATE_EPOCH (else 0), the
//! gzip header carries no time or name.

use crate::oci::{self, push, BlobWrite, LayoutArtifact};
use ::oci::artifact::{BundleArtifact, Descriptor, OCI_MANIFEST};
use ::oci::digest;
use ::oci::image::{ImageConfig, IMAGE_CONFIG, IMAGE_LAYER_GZIP};
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ContainerOptions {
    /// The static program.
    pub binary: PathBuf,
    /// Its name in the image [default: the file's name].
    pub name: Option<String>,
    /// `UID:GID` to run as [default: root].
    pub user: Option<String>,
    pub layout: PathBuf,
    pub tag: String,
    pub push: Option<push::PushOptions>,
}

/// Where the program lives in the image.
const BIN_DIR: &str = "usr/local/bin";

/// Runs `os-image container`; prints the manifest digest as the last line.
pub fn run(opts: &ContainerOptions) -> Result<()> {
    if let Some(p) = &opts.push {
        ::oci::Reference::parse(&p.target).context("--push")?;
    }
    let written = write(opts)?;
    eprintln!(
        "os-image: {}:{} = {} (layer {:.1} MiB)",
        written.layout.display(),
        written.tag,
        written.digest,
        written.artifact.layer.size as f64 / f64::from(1 << 20),
    );
    if let Some(p) = &opts.push {
        let target = push::push(&written, p)?;
        eprintln!(
            "os-image: pushed {}/{}; pin it as {}/{}@{}",
            target.registry, target.repository, target.registry, target.repository, written.digest
        );
    }
    println!("{}", written.digest);
    Ok(())
}

/// `UID:GID`, both numbers.
fn parse_user(user: &str) -> Result<(u32, u32)> {
    let parsed = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    parsed.ok_or_else(|| anyhow::anyhow!("--user {user:?}: expected UID:GID, two numbers"))
}

/// Writes the image into the layout under the tag.
pub fn write(opts: &ContainerOptions) -> Result<LayoutArtifact> {
    crate::elf::require_static(&opts.binary, "program")?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .binary
            .file_name()
            .and_then(|n| n.to_str())
            .context("--binary has no file name")?
            .to_owned(),
    };
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with('.'),
        "--name {name:?}: letters, digits, . _ - only"
    );
    oci::check_tag(&opts.tag)?;
    let user = opts.user.as_deref().map(parse_user).transpose()?;
    let program =
        std::fs::read(&opts.binary).with_context(|| format!("read {}", opts.binary.display()))?;
    let epoch = source_date_epoch()?;

    let mut tar = Tar::new(epoch);
    tar.dir("etc/")?;
    tar.dir("usr/")?;
    tar.dir("usr/local/")?;
    tar.dir("usr/local/bin/")?;
    tar.dir("tmp/")?;
    if let Some((uid, gid)) = user {
        tar.file(
            "etc/passwd",
            0o644,
            format!(
                "root:x:0:0:root:/:/sbin/nologin\n{name}:x:{uid}:{gid}:{name}:/:/sbin/nologin\n"
            )
            .as_bytes(),
        )?;
        tar.file(
            "etc/group",
            0o644,
            format!("root:x:0:\n{name}:x:{gid}:\n").as_bytes(),
        )?;
    }
    tar.file(&format!("{BIN_DIR}/{name}"), 0o755, &program)?;
    let layer_tar = tar.finish();
    let diff_id = digest::sha256(&layer_tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;

    let config = ImageConfig {
        entrypoint: vec![format!("/{BIN_DIR}/{name}")],
        user: user.map(|(u, g)| format!("{u}:{g}")),
        env: vec![format!("PATH=/{BIN_DIR}")],
        diff_id,
        created: rfc3339(epoch),
        labels: vec![("org.opencontainers.image.title".into(), name.clone())],
    }
    .to_json();

    let layout = &opts.layout;
    let blobs = oci::prepare_layout(layout)?;
    let index = oci::read_index(layout)?;
    let config_digest = digest::sha256(&config);
    let layer_digest = digest::sha256(&layer_gz);
    oci::put_blob_bytes(layout, &config_digest, &config)?;
    oci::put_blob_bytes(layout, &layer_digest, &layer_gz)?;
    let config_desc = Descriptor::new(IMAGE_CONFIG, &config_digest, config.len() as u64);
    let layer_desc = Descriptor::new(IMAGE_LAYER_GZIP, &layer_digest, layer_gz.len() as u64);
    let manifest = ::oci::image::manifest(&config_desc, &layer_desc, &[]);
    let manifest_digest = digest::sha256(&manifest);
    oci::put_blob_bytes(layout, &manifest_digest, &manifest)?;
    oci::sync_dir(&blobs)?;
    let entry = Descriptor::new(OCI_MANIFEST, &manifest_digest, manifest.len() as u64);
    oci::write_index(layout, index, entry, &opts.tag)?;
    Ok(LayoutArtifact {
        layout: layout.clone(),
        tag: opts.tag.clone(),
        // The two blobs the push sends before the manifest.
        artifact: BundleArtifact {
            config: config_desc,
            layer: layer_desc,
            annotations: vec![],
        },
        manifest,
        digest: manifest_digest,
        layer_write: BlobWrite::Copied,
    })
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
fn rfc3339(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A ustar archive of root-owned entries, all with one mtime.
struct Tar {
    out: Vec<u8>,
    mtime: u64,
}

impl Tar {
    fn new(mtime: u64) -> Tar {
        Tar {
            out: Vec::new(),
            mtime,
        }
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> Result<()> {
        if path.len() > 100 {
            bail!("{path}: name longer than 100 bytes");
        }
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}", width = len - 1);
            h[at..at + len - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size);
        octal(&mut h, 136, 12, self.mtime);
        h[148..156].fill(b' ');
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.header(path, 0o755, 0, b'5')
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(path, mode, data.len() as u64, b'0')?;
        self.out.extend_from_slice(data);
        let pad = data.len().next_multiple_of(512) - data.len();
        self.out.resize(self.out.len() + pad, 0);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_365_946), "2026-12-04T06:32:26Z");
    }

    #[test]
    fn users_are_two_numbers() {
        assert_eq!(parse_user("65532:65532").unwrap(), (65532, 65532));
        for bad in ["65532", "a:b", "1:", ":1", "1:2:3"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tar_is_one_gnu_tar_lists_and_extracts() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tar::new(1_700_000_000);
        t.dir("usr/").unwrap();
        t.file("usr/prog", 0o755, b"#!/bin/true\n").unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, t.finish()).unwrap();
        let out = std::process::Command::new("tar")
            .env("TZ", "UTC")
            .args(["-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.contains("-rwxr-xr-x root/root        12 2023-11-14 22:13 usr/prog"),
            "{list}"
        );
        let x = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(x.status.success());
        assert_eq!(
            std::fs::read(dir.path().join("usr/prog")).unwrap(),
            b"#!/bin/true\n"
        );
    }
}
