//! The registry harness (`e2e::registry`) against the real `docker-registry`:
//! for each variant, push a tiny hand-made OCI layout with skopeo, then read
//! the manifest back with ureq doing the registry auth dance itself (Basic
//! for htpasswd, a token from the realm for token auth) and check its
//! `Docker-Content-Digest`; wrong credentials get 401.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use e2e::registry::{Auth, Registry, RegistryOptions, HTPASSWD_REALM, TOKEN_SERVICE};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Writes an OCI image layout with one ab-os bundle manifest tagged `tag`
/// into `dir`; returns the manifest's bytes and digest.
fn write_layout(dir: &Path, tag: &str) -> (Vec<u8>, String) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |data: &[u8]| {
        let digest = sha256(data);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), data).unwrap();
        (digest, data.len())
    };
    let layer: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let (layer_digest, layer_size) = blob(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "version": tag,
        "image": { "digest": layer_digest, "size": layer_size },
    }))
    .unwrap();
    let (config_digest, config_size) = blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": "application/vnd.ab-os.bundle.v1",
        "config": {
            "mediaType": "application/vnd.ab-os.bundle.manifest.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.ab-os.image.layer.v1.ext4+zstd",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = blob(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    (manifest, manifest_digest)
}

/// The auth-parameters of a `WWW-Authenticate` challenge
/// (`Scheme k="v",k="v"`, values may hold commas), with the scheme first.
fn challenge(header: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key, value.to_owned()));
        rest = tail.trim();
    }
    (scheme.to_owned(), params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

struct Fetched {
    status: u16,
    digest: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// The registry's challenge on the first, unauthenticated request.
    challenge: Option<String>,
}

/// A bearer token from the token server for `scope`, or its error status.
fn fetch_token(
    agent: &ureq::Agent,
    realm: &str,
    service: &str,
    scope: &str,
    creds: (&str, &str),
) -> Result<String, u16> {
    let url = format!(
        "{realm}?service={}&scope={}",
        url_encode(service),
        url_encode(scope)
    );
    let mut resp = agent
        .get(&url)
        .header("Authorization", basic(creds.0, creds.1))
        .call()
        .unwrap();
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
    Ok(json["token"].as_str().expect("token").to_owned())
}

/// `GET /v2/REPO/manifests/REFERENCE` doing the auth dance with `creds`
/// (when given) after a 401: Basic for a Basic challenge, a token from the
/// challenge's realm for a Bearer one.
fn get_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> Fetched {
    let agent = reg.agent();
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.base_url());
    let call = |authorization: Option<String>| {
        let mut req = agent.get(&url).header("Accept", MANIFEST_TYPE);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        req.call().unwrap()
    };
    let mut resp = call(None);
    let mut first_challenge = None;
    if resp.status() == 401 {
        let header = resp
            .headers()
            .get("www-authenticate")
            .expect("401 without a challenge")
            .to_str()
            .unwrap()
            .to_owned();
        first_challenge = Some(header.clone());
        if let Some((user, password)) = creds {
            let (scheme, params) = challenge(&header);
            let authorization = if scheme.eq_ignore_ascii_case("basic") {
                basic(user, password)
            } else {
                assert!(scheme.eq_ignore_ascii_case("bearer"), "{header}");
                let token = fetch_token(
                    &agent,
                    param(&params, "realm").expect("realm"),
                    param(&params, "service").expect("service"),
                    param(&params, "scope").expect("scope"),
                    (user, password),
                );
                match token {
                    Ok(token) => format!("Bearer {token}"),
                    Err(status) => {
                        return Fetched {
                            status,
                            digest: None,
                            content_type: None,
                            body: Vec::new(),
                            challenge: first_challenge,
                        }
                    }
                }
            };
            resp = call(Some(authorization));
        }
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (digest, content_type) = (header("docker-content-digest"), header("content-type"));
    Fetched {
        status: resp.status().as_u16(),
        digest,
        content_type,
        body: resp.body_mut().read_to_vec().unwrap(),
        challenge: first_challenge,
    }
}

/// Starts `opts`, pushes a fresh layout as `ab-os/node:v1` with skopeo and
/// checks that the right credentials (if any) read the same manifest back.
fn start_and_push(dir: &Path, opts: RegistryOptions) -> (Registry, String) {
    let (manifest, digest) = write_layout(&dir.join("layout"), "v1");
    let reg = Registry::start(&dir.join("registry"), opts);
    let src = format!("oci:{}:v1", dir.join("layout").display());
    reg.skopeo_push(&src, "ab-os/node:v1");
    let creds = reg.options().auth.credentials();
    for reference in ["v1", digest.as_str()] {
        let got = get_manifest(&reg, "ab-os/node", reference, creds);
        assert_eq!(got.status, 200, "{reference}: {}", reg.log());
        assert_eq!(got.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(got.content_type.as_deref(), Some(MANIFEST_TYPE));
        assert!(got.body == manifest, "skopeo rewrote the manifest");
    }
    (reg, digest)
}

/// `skopeo inspect --raw` through a docker auth file made by the harness.
fn inspect_with_auth_file(reg: &Registry, auth_file: &Path) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--retry-times", "0", "--authfile"])
        .arg(auth_file);
    match reg.cert_dir() {
        Some(d) => cmd.arg("--cert-dir").arg(d),
        None => cmd.arg("--tls-verify=false"),
    };
    let out = cmd
        .arg(format!("docker://{}/ab-os/node:v1", reg.host()))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn plain_http_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = start_and_push(
        dir.path(),
        RegistryOptions {
            tls: false,
            auth: Auth::None,
        },
    );
    assert!(reg.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(reg.ca_pem(), None);
    assert_eq!(reg.token_requests(), 0);
    let missing = get_manifest(&reg, "ab-os/node", "v2", None);
    assert_eq!(missing.status, 404);
    assert!(
        reg.log().contains("listening on 127.0.0.1:"),
        "{}",
        reg.log()
    );
}

#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = start_and_push(
        dir.path(),
        RegistryOptions {
            tls: true,
            auth: Auth::None,
        },
    );
    assert!(reg.base_url().starts_with("https://127.0.0.1:"));
    let ca = reg.ca_pem().expect("a CA");
    assert!(std::fs::read_to_string(ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    // Without the private CA the registry is not trusted.
    let untrusting: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[]))
                .build(),
        )
        .build()
        .into();
    let err = untrusting
        .get(format!("{}/v2/", reg.base_url()))
        .call()
        .expect_err("untrusted certificate");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
    // Nor does skopeo get in without the CA.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--retry-times", "0"])
        .arg(format!("docker://{}/ab-os/node:v1", reg.host()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn htpasswd_basic_auth_over_https() {
    htpasswd_basic_auth(true);
}

#[test]
fn htpasswd_basic_auth_over_plain_http() {
    htpasswd_basic_auth(false);
}

fn htpasswd_basic_auth(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (reg, digest) = start_and_push(
        dir.path(),
        RegistryOptions {
            tls,
            auth: Auth::htpasswd("builder", "s3cret pass:word"),
        },
    );
    let anonymous = get_manifest(&reg, "ab-os/node", "v1", None);
    assert_eq!(anonymous.status, 401);
    let (scheme, params) = challenge(anonymous.challenge.as_deref().unwrap());
    assert_eq!(scheme, "Basic");
    assert_eq!(param(&params, "realm"), Some(HTPASSWD_REALM));
    let wrong = get_manifest(&reg, "ab-os/node", "v1", Some(("builder", "nope")));
    assert_eq!(wrong.status, 401);
    let stranger = get_manifest(
        &reg,
        "ab-os/node",
        "v1",
        Some(("nobody", "s3cret pass:word")),
    );
    assert_eq!(stranger.status, 401);

    let src = format!("oci:{}:v1", dir.path().join("layout").display());
    let err = reg
        .try_skopeo_push(&src, "ab-os/node:v2", Some(("builder", "nope")))
        .expect_err("wrong password");
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    reg.try_skopeo_push(&src, "ab-os/node:v2", None)
        .expect_err("anonymous");

    let good = reg.auth_file(&dir.path().join("auth"), "builder", "s3cret pass:word");
    let raw = inspect_with_auth_file(&reg, &good).expect("auth file");
    assert_eq!(sha256(&raw), digest);
    let bad = reg.auth_file(&dir.path().join("bad-auth"), "builder", "nope");
    inspect_with_auth_file(&reg, &bad).expect_err("wrong password in the auth file");
}

#[test]
fn token_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, digest) = start_and_push(
        dir.path(),
        RegistryOptions {
            tls: false,
            auth: Auth::token("builder", "t0ken-pass"),
        },
    );
    let pushed = reg.token_requests();
    assert!(pushed >= 1, "skopeo got no token");

    let anonymous = get_manifest(&reg, "ab-os/node", "v1", None);
    assert_eq!(anonymous.status, 401);
    let (scheme, params) = challenge(anonymous.challenge.as_deref().unwrap());
    assert_eq!(scheme, "Bearer");
    let realm = reg.token_realm().unwrap();
    assert_eq!(param(&params, "realm"), Some(realm.as_str()));
    assert_eq!(param(&params, "service"), Some(TOKEN_SERVICE));
    assert_eq!(param(&params, "scope"), Some("repository:ab-os/node:pull"));

    // Wrong credentials: the token server says 401 and hands out nothing.
    let refused = reg.token_refusals();
    let wrong = get_manifest(&reg, "ab-os/node", "v1", Some(("builder", "nope")));
    assert_eq!(wrong.status, 401);
    assert_eq!(reg.token_refusals(), refused + 1);
    assert_eq!(reg.token_requests(), pushed);

    // A second user, and a token for another repository does not open this one.
    reg.add_token_user("reader", "r3ad");
    let agent = reg.agent();
    let other = fetch_token(
        &agent,
        &realm,
        TOKEN_SERVICE,
        "repository:ab-os/other:pull",
        ("reader", "r3ad"),
    )
    .unwrap();
    let resp = agent
        .get(format!("{}/v2/ab-os/node/manifests/v1", reg.base_url()))
        .header("Authorization", format!("Bearer {other}"))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 401, "token for another repository accepted");
    let got = get_manifest(&reg, "ab-os/node", "v1", Some(("reader", "r3ad")));
    assert_eq!(
        (got.status, got.digest.as_deref()),
        (200, Some(digest.as_str()))
    );
    // The token does open its own (empty) repository, unless its signature
    // is garbled.
    let tags = |token: &str| {
        agent
            .get(format!("{}/v2/ab-os/other/tags/list", reg.base_url()))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
    };
    assert_eq!(tags(&other), 404);
    let (head, _) = other.rsplit_once('.').unwrap();
    assert_eq!(tags(&format!("{head}.AAAA")), 401);

    let src = format!("oci:{}:v1", dir.path().join("layout").display());
    reg.try_skopeo_push(&src, "ab-os/node:v2", Some(("builder", "nope")))
        .expect_err("wrong password");
    let good = reg.auth_file(&dir.path().join("auth"), "builder", "t0ken-pass");
    let raw = inspect_with_auth_file(&reg, &good).expect("auth file");
    assert_eq!(sha256(&raw), digest);
}
