//! The cluster side's container images (issue 17): `os-image container`
//! packs the static musl os-operator and os-proxy into OCI image layouts,
//! pushes them to a loopback docker-registry, and `skopeo` reads them back:
//! entrypoint, user (the operator's non-root 6552), the layer holding the
//! very binary that was built, which runs.

use e2e::registry::{Auth, Registry, RegistryOptions};
use std::path::Path;
use std::process::Command;

fn skopeo(args: &[&str]) -> String {
    e2e::run(Command::new("skopeo").args(args))
}

fn field<'a>(json: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(json, |v, k| &v[*k])
}

/// Builds the image of `package`'s `bin`, pushes it, and checks what the
/// registry serves.
fn image(registry: &Registry, dir: &Path, package: &str, bin: &str, user: Option<&str>) {
    let binary = e2e::musl_binary(package, bin);
    let os_image = e2e::host_binary("image-builder", "os-image");
    let layout = dir.join(bin);
    let target = format!("{}/ab-os/{bin}:0.1.0", registry.host());
    let mut cmd = Command::new(&os_image);
    cmd.arg("container")
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", "0.1.0", "--push", &target, "--plain-http"])
        .arg("--layout")
        .arg(&layout)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    let digest = e2e::run(&mut cmd);
    let digest = digest.trim().lines().last().unwrap().to_owned();

    let src = format!("docker://{target}");
    let config: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &src,
    ]))
    .unwrap();
    assert_eq!(
        field(&config, &["config", "Entrypoint"]),
        &serde_json::json!([format!("/usr/local/bin/{bin}")]),
        "{config}"
    );
    assert_eq!(
        field(&config, &["config", "User"]).as_str(),
        user,
        "{config}"
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &src])).unwrap();
    assert_eq!(
        inspect["Digest"].as_str(),
        Some(digest.as_str()),
        "{inspect}"
    );

    // The same bytes from the registry and from the layout, and the binary
    // in the layer is the one built, and it runs.
    let copied = dir.join(format!("{bin}-copied"));
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &src,
        &format!("oci:{}:0.1.0", copied.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(digest.as_str())
    );
    let rootfs = dir.join(format!("{bin}-rootfs"));
    std::fs::create_dir_all(&rootfs).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            copied
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    e2e::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(
                copied
                    .join("blobs/sha256")
                    .join(layer.trim_start_matches("sha256:")),
            )
            .arg("-C")
            .arg(&rootfs),
    );
    let inside = rootfs.join("usr/local/bin").join(bin);
    assert_eq!(
        std::fs::read(&inside).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    let help = e2e::run(Command::new(&inside).arg("--help"));
    assert!(help.to_lowercase().contains("usage"), "{help}");
    if let Some(u) = user {
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains(&format!("{bin}:x:{u}:")), "{passwd}");
    }
}

#[test]
fn operator_and_proxy_images_push_to_a_registry_and_read_back() {
    let dir = e2e::fixture_dir().join("images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry = Registry::start(
        &dir.join("registry"),
        RegistryOptions {
            tls: false,
            auth: Auth::None,
        },
    );
    image(
        &registry,
        &dir,
        "operator",
        "os-operator",
        Some("6552:6552"),
    );
    image(&registry, &dir, "proxy", "os-proxy", None);
}
