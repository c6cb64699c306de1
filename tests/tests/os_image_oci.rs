//! `os-image oci` against real tools: a demo bundle written as an OCI image
//! layout is copied by skopeo and pushed by os-image itself to Debian's
//! docker-registry (plain HTTP, TLS with a private CA, htpasswd and token
//! auth); what the registry serves is exactly the artifact os-image pinned
//! (the manifest's sha256 is the printed digest) and the bundle's bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use e2e::registry::{Auth, Registry, RegistryOptions};
use e2e::run;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const TAG: &str = "2";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

struct Fixture {
    os_image: PathBuf,
    manifest: PathBuf,
    image: PathBuf,
    layout: PathBuf,
    /// What `os-image oci --layout` printed.
    digest: String,
}

/// A demo bundle (version 2) and its OCI layout, built once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let os_image = e2e::host_binary("image-builder", "os-image");
        let os_init = e2e::musl_binary("initramfs", "os-init");
        // Beside os-image in its target dir may be a glibc os-agent (another
        // test's host build), which demo-rootfs refuses: name the static one.
        let os_agent = e2e::musl_binary("agent", "os-agent");
        let dir = e2e::fixture_dir().join("os-image-oci");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rootfs = dir.join("rootfs");
        run(Command::new(&os_image)
            .args(["demo-rootfs", "--version", TAG, "--kernel-deb"])
            .arg(e2e::kernel_deb())
            .arg("--agent")
            .arg(&os_agent)
            .arg("--out")
            .arg(&rootfs));
        let bundles = dir.join("bundles");
        run(Command::new(&os_image)
            .args(["bundle", "--version", TAG, "--rootfs"])
            .arg(&rootfs)
            .arg("--out")
            .arg(&bundles)
            .arg("--os-init")
            .arg(&os_init));
        let _ = std::fs::remove_dir_all(&rootfs);
        let manifest = bundles.join(format!("os-{TAG}.manifest.json"));
        let layout = dir.join("layout");
        let out = run(Command::new(&os_image)
            .arg("oci")
            .arg("--manifest")
            .arg(&manifest)
            .arg("--layout")
            .arg(&layout));
        Fixture {
            os_image,
            image: bundles.join(format!("os-{TAG}.img.zst")),
            manifest,
            layout,
            digest: last_line(&out),
        }
    })
}

fn last_line(stdout: &str) -> String {
    let line = stdout.lines().last().unwrap_or("").trim().to_owned();
    assert!(
        line.starts_with("sha256:") && line.len() == 71,
        "the last line of stdout is not a digest: {stdout:?}"
    );
    line
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `os-image oci --push HOST/REPO:TAG` of the fixture's bundle, with `args`.
fn os_image_push(reg: &Registry, repo: &str, args: &[&str]) -> Output {
    let f = fixture();
    Command::new(&f.os_image)
        .arg("oci")
        .arg("--manifest")
        .arg(&f.manifest)
        .arg("--layout")
        .arg(&f.layout)
        .arg("--push")
        .arg(format!("{}/{repo}:{TAG}", reg.host()))
        .args(args)
        .output()
        .unwrap()
}

fn pushed(out: &Output, reg: &Registry) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "os-image oci --push failed:\n{stderr}\nregistry log:\n{}",
        reg.log()
    );
    last_line(&String::from_utf8_lossy(&out.stdout))
}

/// `GET /v2/PATH` with the registry's credentials (Basic, or a pull token).
fn get(reg: &Registry, repo: &str, path: &str, accept: &str) -> Vec<u8> {
    let agent = reg.agent();
    let mut req = agent
        .get(format!("{}/v2/{repo}/{path}", reg.base_url()))
        .header("Accept", accept);
    match &reg.options().auth {
        Auth::None => {}
        Auth::Htpasswd { user, password } => {
            let basic = STANDARD.encode(format!("{user}:{password}"));
            req = req.header("Authorization", format!("Basic {basic}"));
        }
        Auth::Token { user, password } => {
            let token = pull_token(reg, repo, user, password);
            req = req.header("Authorization", format!("Bearer {token}"));
        }
    }
    let mut resp = req.call().unwrap();
    assert_eq!(resp.status(), 200, "GET {repo}/{path}");
    resp.body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap()
}

fn pull_token(reg: &Registry, repo: &str, user: &str, password: &str) -> String {
    let url = format!(
        "{}?service={}&scope=repository:{repo}:pull",
        reg.token_realm().unwrap(),
        e2e::registry::TOKEN_SERVICE
    );
    let basic = STANDARD.encode(format!("{user}:{password}"));
    let mut resp = reg
        .agent()
        .get(&url)
        .header("Authorization", format!("Basic {basic}"))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value =
        serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
    json["token"].as_str().unwrap().to_owned()
}

/// The registry serves `repo:TAG` as exactly the pinned manifest, and its
/// blobs as the bundle's two files.
fn assert_served(reg: &Registry, repo: &str, digest: &str) {
    let f = fixture();
    let manifest = get(reg, repo, &format!("manifests/{TAG}"), MANIFEST_TYPE);
    assert_eq!(
        sha256(&manifest),
        digest,
        "{repo}:{TAG} is the pinned manifest"
    );
    let json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let blob =
        |d: &serde_json::Value| get(reg, repo, &format!("blobs/{}", d.as_str().unwrap()), "*/*");
    assert_eq!(
        blob(&json["config"]["digest"]),
        std::fs::read(&f.manifest).unwrap()
    );
    let layer = blob(&json["layers"][0]["digest"]);
    assert!(
        layer == std::fs::read(&f.image).unwrap(),
        "the layer is the .img.zst"
    );
}

fn registry(dir: &Path, tls: bool, auth: Auth) -> Registry {
    Registry::start(dir, RegistryOptions { tls, auth })
}

#[test]
fn skopeo_copies_the_layout_and_os_image_pushes_the_same_artifact() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), false, Auth::None);

    reg.skopeo_push(
        &format!("oci:{}:{TAG}", f.layout.display()),
        &format!("os:{TAG}"),
    );
    assert_served(&reg, "os", &f.digest);

    let out = os_image_push(&reg, "os2", &["--plain-http"]);
    assert_eq!(
        pushed(&out, &reg),
        f.digest,
        "push prints the layout's digest"
    );
    assert_served(&reg, "os2", &f.digest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("layer: ") && stderr.contains("(100%)"),
        "progress: {stderr}"
    );

    // Pushed again, both blobs are found in the registry and not sent.
    let out = os_image_push(&reg, "os2", &["--plain-http"]);
    assert_eq!(pushed(&out, &reg), f.digest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let skipped = format!("already in {}/os2", reg.host());
    assert_eq!(stderr.matches(&skipped).count(), 2, "{stderr}");
    assert!(!stderr.contains("(100%)"), "{stderr}");
}

#[test]
fn push_over_tls_with_basic_auth_needs_the_ca_and_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), true, Auth::htpasswd("builder", "s3cret"));
    let ca = reg.ca_pem().unwrap().to_str().unwrap().to_owned();

    let out = os_image_push(&reg, "os", &["--creds", "builder:s3cret"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ca-cert"),
        "an untrusted certificate: {stderr}"
    );

    let out = os_image_push(&reg, "os", &["--ca-cert", &ca]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused access") && stderr.contains("--creds"),
        "{stderr}"
    );

    let out = os_image_push(&reg, "os", &["--ca-cert", &ca, "--creds", "builder:s3cret"]);
    assert_eq!(pushed(&out, &reg), fixture().digest);
    assert_served(&reg, "os", &fixture().digest);
}

#[test]
fn push_with_token_auth_takes_credentials_from_an_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("registry"), false, Auth::token("ci", "pw"));
    let auth_file = reg.auth_file(dir.path(), "ci", "pw");
    let auth_file = auth_file.to_str().unwrap();

    let out = os_image_push(&reg, "team/os", &["--plain-http", "--auth-file", auth_file]);
    assert_eq!(pushed(&out, &reg), fixture().digest);
    assert!(reg.token_requests() > 0);
    assert_served(&reg, "team/os", &fixture().digest);
}
