//! Issue 9 acceptance, node side: os-agent pulls an OS bundle from a real
//! registry (Debian's docker-registry on loopback, see `e2e::registry`) into a
//! file-backed slot, by tag and by digest, over plain HTTP and over TLS with a
//! private CA, anonymously and with token or htpasswd auth, and through a
//! mirror. The bundle is a real os-image bundle written as an OCI layout by
//! `os-image oci` and copied into the registry by skopeo. Wrong digests,
//! missing tags and bad credentials fail with a clear message and leave the
//! running slot, the boot state and the other slot's record untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bootctl::record::{self, SlotState};
use bootctl::store::COPY_PATHS;
use bootctl::Slot;
use e2e::cluster::{Programs, SimNode};
use e2e::demo::{build_bundle, Bundle};
use e2e::registry::{Auth, Registry, RegistryOptions};
use e2e::run;

struct Fixture {
    v1: Bundle,
    v2: Bundle,
    /// OCI image layout holding v2 under tag "2".
    layout: PathBuf,
    /// The sha256 of v2's OCI manifest, as `os-image oci` printed it.
    manifest_digest: String,
    agent: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = e2e::fixture_dir().join("registry-pull");
        let out = dir.join("bundles");
        let _ = std::fs::remove_dir_all(&out);
        let v1 = build_bundle(&dir, &out, "1", false);
        let v2 = build_bundle(&dir, &out, "2", false);
        let layout = dir.join("layout");
        let _ = std::fs::remove_dir_all(&layout);
        let stdout = run(Command::new(e2e::host_binary("image-builder", "os-image"))
            .arg("oci")
            .arg("--manifest")
            .arg(out.join("os-2.manifest.json"))
            .arg("--layout")
            .arg(&layout));
        let manifest_digest = stdout.lines().last().unwrap_or("").trim().to_owned();
        assert!(manifest_digest.starts_with("sha256:"), "{stdout}");
        Fixture {
            v1,
            v2,
            layout,
            manifest_digest,
            agent: e2e::musl_binary("agent", "os-agent"),
        }
    })
}

fn test_dir(name: &str) -> PathBuf {
    let dir = e2e::fixture_dir().join("registry-pull").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A registry of the given kind holding v2 as `os:2`.
fn registry(dir: &Path, tls: bool, auth: Auth) -> Registry {
    let f = fixture();
    let reg = Registry::start(&dir.join("registry"), RegistryOptions { tls, auth });
    reg.skopeo_push(&format!("oci:{}:2", f.layout.display()), "os:2");
    reg
}

/// A node running v1 from slot A; slot B is empty.
struct Node {
    sim: SimNode,
    slot_a: Vec<u8>,
    env: Vec<Vec<u8>>,
}

impl Node {
    fn new(dir: &Path, name: &str, settings: &str) -> Node {
        let f = fixture();
        let programs = Programs {
            agent: f.agent.clone(),
            proxy: PathBuf::from("/nonexistent/os-proxy"),
            kubeconfig: PathBuf::from("/nonexistent/kubeconfig"),
            namespace: "default".into(),
        };
        let size = f.v1.size.max(f.v2.size);
        let sim = SimNode::create(dir, name, size, &f.v1.version, &f.v1.digest, programs);
        std::fs::write(&sim.root_a, b"v1 root filesystem stand-in").unwrap();
        sim.add_agent_settings(settings);
        let slot_a = std::fs::read(&sim.root_a).unwrap();
        let env = COPY_PATHS
            .iter()
            .map(|p| std::fs::read(sim.esp.join(p)).unwrap())
            .collect();
        Node { sim, slot_a, env }
    }

    /// `os-agent upgrade --image HOST/os:2 --digest <v2's manifest digest>`.
    fn pull(&self, host: &str) -> Output {
        let image = format!("{host}/os:2");
        self.upgrade(&["--image", &image, "--digest", &fixture().manifest_digest])
    }

    /// `os-agent upgrade ARGS` (the agent never reboots here: `reboot = no`).
    fn upgrade(&self, args: &[&str]) -> Output {
        let conf = self.sim.write_agent_config();
        Command::new(&fixture().agent)
            .arg("--config")
            .arg(conf)
            .arg("upgrade")
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    fn assert_holds_v2(&self, out: &Output) {
        let f = fixture();
        assert!(out.status.success(), "os-agent failed: {}", text(out));
        let rec = record::read(&self.sim.state, Slot::B).unwrap();
        assert_eq!(rec.state, SlotState::Written, "{}", text(out));
        assert_eq!(rec.digest, f.v2.digest, "slot B holds v2 (by its BLAKE3)");
        assert_eq!(rec.version, f.v2.version);
        assert!(
            rec.source.starts_with("oci://")
                && rec.source.ends_with(&format!("/os@{}", f.manifest_digest)),
            "the record keeps the pinned source: {:?}",
            rec.source
        );
        let image = std::fs::read(&self.sim.root_b).unwrap();
        let want = zstd::decode_all(std::fs::File::open(&f.v2.image).unwrap()).unwrap();
        assert!(image[..want.len()] == want[..], "slot B is v2's root image");
        assert_eq!(
            self.sim.grub_choice(),
            (Slot::B, true),
            "a trial of B is armed"
        );
        assert!(
            std::fs::read(&self.sim.root_a).unwrap() == self.slot_a,
            "slot A changed"
        );
    }

    /// A failure: exit 1, the message contains `why`, and nothing changed.
    fn assert_refused(&self, out: &Output, why: &str) {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
        assert!(
            std::fs::read(&self.sim.root_a).unwrap() == self.slot_a,
            "slot A changed"
        );
        for (p, before) in COPY_PATHS.iter().zip(&self.env) {
            let now = std::fs::read(self.sim.esp.join(p)).unwrap();
            assert!(now == *before, "ESP env {p} changed");
        }
        let rec = record::read(&self.sim.state, Slot::B).unwrap();
        assert_ne!(
            rec.state,
            SlotState::Written,
            "slot B recorded as holding an image"
        );
        assert_eq!(self.sim.grub_choice(), (Slot::A, false));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pulls_by_tag_and_by_digest_from_a_plain_registry() {
    let f = fixture();
    let dir = test_dir("plain");
    let reg = registry(&dir, false, Auth::None);
    let host = reg.host();
    let plain = format!("registry-plain-http = {host}\n");

    let by_tag = Node::new(&dir, "by-tag", &plain);
    let out = by_tag.pull(&host);
    by_tag.assert_holds_v2(&out);

    let by_digest = Node::new(&dir, "by-digest", &plain);
    let out = by_digest.upgrade(&["--image", &format!("{host}/os@{}", f.manifest_digest)]);
    by_digest.assert_holds_v2(&out);

    // The root image's BLAKE3 pins it as well (KubeOS check_sum), here with
    // plain HTTP allowed by the request (flag_safe) instead of the node.
    let by_blake3 = Node::new(&dir, "by-blake3", "");
    let out = by_blake3.upgrade(&[
        "--image",
        &format!("{host}/os:2"),
        "--digest",
        &f.v2.digest,
        "--allow-http",
    ]);
    by_blake3.assert_holds_v2(&out);
}

#[test]
fn token_auth_with_the_nodes_credentials() {
    let dir = test_dir("token");
    // The harness's token endpoint is plain HTTP, so the registry is too: an
    // HTTPS registry whose token endpoint is not HTTPS is refused (below).
    let reg = registry(&dir, false, Auth::token("node", "s3cret"));
    let host = reg.host();
    let plain = format!("registry-plain-http = {host}\n");
    let good = reg.auth_file(&dir, "node", "s3cret");
    let tokens = reg.token_requests();

    let node = Node::new(
        &dir,
        "good",
        &format!("{plain}registry-auth = {}\n", good.display()),
    );
    let out = node.pull(&host);
    node.assert_holds_v2(&out);
    assert!(reg.token_requests() > tokens, "the agent got a token");

    let bad = dir.join("bad-auth");
    std::fs::create_dir_all(&bad).unwrap();
    let bad = reg.auth_file(&bad, "node", "wrong");
    let node = Node::new(
        &dir,
        "bad-credentials",
        &format!("{plain}registry-auth = {}\n", bad.display()),
    );
    let out = node.pull(&host);
    node.assert_refused(&out, "refused the credentials of user \"node\"");

    let node = Node::new(&dir, "no-credentials", &plain);
    let out = node.pull(&host);
    node.assert_refused(&out, "refused anonymous access");
}

#[test]
fn tls_needs_the_nodes_ca_and_an_https_token_realm() {
    let f = fixture();
    let dir = test_dir("tls");
    let reg = registry(&dir, true, Auth::None);
    let (host, ca) = (reg.host(), reg.ca_pem().unwrap().display().to_string());
    let node = Node::new(&dir, "with-ca", &format!("registry-ca = {ca}\n"));
    let out = node.pull(&host);
    node.assert_holds_v2(&out);

    let node = Node::new(&dir, "no-ca", "");
    let out = node.pull(&host);
    node.assert_refused(&out, "TLS failed");

    // HTTPS registry, plain-HTTP token endpoint: no credentials go out in clear.
    let tok = registry(&dir.join("tok"), true, Auth::token("node", "s3cret"));
    let good = tok.auth_file(&dir, "node", "s3cret");
    let before = tok.token_requests() + tok.token_refusals();
    let ca = tok.ca_pem().unwrap().display().to_string();
    let node = Node::new(
        &dir,
        "http-realm",
        &format!("registry-ca = {ca}\nregistry-auth = {}\n", good.display()),
    );
    let out = node.upgrade(&[
        "--image",
        &format!("{}/os:2", tok.host()),
        "--digest",
        &f.manifest_digest,
    ]);
    node.assert_refused(&out, "is not HTTPS");
    assert_eq!(
        tok.token_requests() + tok.token_refusals(),
        before,
        "nothing sent to it"
    );
}

#[test]
fn htpasswd_basic_auth() {
    let dir = test_dir("htpasswd");
    let reg = registry(&dir, true, Auth::htpasswd("node", "pw"));
    let (host, ca) = (reg.host(), reg.ca_pem().unwrap().display().to_string());
    let good = reg.auth_file(&dir, "node", "pw");
    let node = Node::new(
        &dir,
        "good",
        &format!("registry-ca = {ca}\nregistry-auth = {}\n", good.display()),
    );
    let out = node.pull(&host);
    node.assert_holds_v2(&out);

    let bad = dir.join("bad-auth");
    std::fs::create_dir_all(&bad).unwrap();
    let bad = reg.auth_file(&bad, "node", "nope");
    let node = Node::new(
        &dir,
        "bad",
        &format!("registry-ca = {ca}\nregistry-auth = {}\n", bad.display()),
    );
    let out = node.pull(&host);
    node.assert_refused(&out, "credentials rejected");
}

#[test]
fn missing_tags_and_wrong_digests_fail_cleanly() {
    let f = fixture();
    let dir = test_dir("wrong");
    let reg = registry(&dir, false, Auth::None);
    let host = reg.host();
    let plain = format!("registry-plain-http = {host}\n");
    let node = Node::new(&dir, "node", &plain);

    let out = node.upgrade(&["--image", &format!("{host}/os:9"), "--digest", &f.v2.digest]);
    node.assert_refused(&out, "not found");
    let out = node.upgrade(&[
        "--image",
        &format!("{host}/nothing:2"),
        "--digest",
        &f.v2.digest,
    ]);
    node.assert_refused(&out, "not found");

    // A manifest digest the registry does not have (someone else's image).
    let other = format!("sha256:{}", "ab".repeat(32));
    let out = node.upgrade(&["--image", &format!("{host}/os:2"), "--digest", &other]);
    node.assert_refused(&out, "not found");
    // The tag resolves, but to a bundle whose image is not the pinned one.
    let out = node.upgrade(&["--image", &format!("{host}/os:2"), "--digest", &f.v1.digest]);
    node.assert_refused(&out, "image_digest");
    // A tag alone pins nothing.
    let out = node.upgrade(&["--image", &format!("{host}/os:2")]);
    node.assert_refused(&out, "a tag can move");
    // The reference and the digest disagree.
    let out = node.upgrade(&[
        "--image",
        &format!("{host}/os@{}", f.manifest_digest),
        "--digest",
        &other,
    ]);
    node.assert_refused(&out, "disagree");
}

#[test]
fn a_mirror_serves_first_and_the_registry_is_the_fallback() {
    let f = fixture();
    let dir = test_dir("mirror");
    let mirror = registry(&dir.join("m"), false, Auth::None);
    let empty = Registry::start(
        &dir.join("empty"),
        RegistryOptions {
            tls: false,
            auth: Auth::None,
        },
    );
    // The image names a registry nobody listens on; the mirror has it.
    let gone = "127.0.0.1:9";
    let node = Node::new(
        &dir,
        "via-mirror",
        &format!(
            "registry-mirror = {gone}={}\nregistry-plain-http = {}\nregistry-plain-http = {gone}\n",
            mirror.host(),
            mirror.host()
        ),
    );
    let out = node.upgrade(&[
        "--image",
        &format!("{gone}/os:2"),
        "--digest",
        &f.manifest_digest,
    ]);
    node.assert_holds_v2(&out);
    let blob_gets = mirror.blob_gets().iter().filter(|g| g.repo == "os").count();
    assert!(
        blob_gets >= 2,
        "config and layer came from the mirror:\n{}",
        mirror.log()
    );

    // An empty mirror first: the agent moves on to the registry itself.
    let node = Node::new(
        &dir,
        "mirror-misses",
        &format!(
            "registry-mirror = {}={}\nregistry-plain-http = {}\nregistry-plain-http = {}\n",
            mirror.host(),
            empty.host(),
            mirror.host(),
            empty.host()
        ),
    );
    let out = node.upgrade(&[
        "--image",
        &format!("{}/os:2", mirror.host()),
        "--digest",
        &f.manifest_digest,
    ]);
    node.assert_holds_v2(&out);
    assert!(
        text(&out).contains("trying the next endpoint"),
        "{}",
        text(&out)
    );
    assert!(
        empty.log().contains("/v2/os/manifests/"),
        "the mirror was asked first"
    );
}

/// A loopback TCP relay in front of `target` that keeps every byte clients
/// send, so a test can assert on what went over the wire.
struct Recorder {
    addr: String,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(target: String) -> Recorder {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { addr, sent }
    }

    /// Whether any request carried an `Authorization` header.
    fn saw_authorization(&self) -> bool {
        let sent = self.sent.lock().unwrap();
        String::from_utf8_lossy(&sent)
            .to_ascii_lowercase()
            .contains("\r\nauthorization:")
    }
}

#[test]
fn a_request_allowing_plain_http_never_sends_the_nodes_credentials_in_clear() {
    use base64::Engine as _;
    let dir = test_dir("flag-safe-credentials");
    let reg = registry(&dir, false, Auth::htpasswd("node", "pw"));
    let relay = Recorder::start(reg.host());
    let auth = dir.join("relay-auth.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("node:pw");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#, relay.addr),
    )
    .unwrap();
    let with_auth = format!("registry-auth = {}\n", auth.display());
    // The request allows plain HTTP (KubeOS flagSafe); the node does not list
    // the registry as plain HTTP: its credentials stay home.
    let node = Node::new(&dir, "flag-safe", &with_auth);
    let out = node.upgrade(&[
        "--image",
        &format!("{}/os:2", relay.addr),
        "--digest",
        &fixture().manifest_digest,
        "--allow-http",
    ]);
    node.assert_refused(&out, "not sent over plain HTTP");
    assert!(
        !relay.saw_authorization(),
        "credentials went out in clear: {}",
        String::from_utf8_lossy(&relay.sent.lock().unwrap())
    );
    // The node itself lists the registry as plain HTTP: its choice, and the
    // relay does see the header (so the check above can see one).
    let node = Node::new(
        &dir,
        "node-listed",
        &format!("{with_auth}registry-plain-http = {}\n", relay.addr),
    );
    let out = node.pull(&relay.addr);
    node.assert_holds_v2(&out);
    assert!(relay.saw_authorization());
}

#[test]
fn a_plain_http_answer_cannot_send_the_nodes_credentials_to_a_token_realm_it_names() {
    use base64::Engine as _;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Stdio;
    let dir = test_dir("flag-safe-realm");
    // Whoever answers on the plain-HTTP path names an HTTPS token endpoint of
    // their own, with a certificate the node trusts (a public CA signs anyone's
    // own domain; here the node's registry CA signs it). openssl prints what it
    // receives and answers 401.
    let tls = dir.join("realm");
    std::fs::create_dir_all(&tls).unwrap();
    e2e::registry::make_tls(&tls);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut realm = Command::new("openssl")
        .args(["s_server", "-quiet", "-naccept", "1", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(&tls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Sent once the agent connects (it only serves one connection: no probe,
    // so the wait for it reads the kernel's table of listening sockets).
    let mut answer = realm.stdin.take().unwrap();
    answer
        .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let listening = format!("0100007F:{port:04X} 00000000:0000 0A");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .contains(&listening)
    {
        assert!(
            start.elapsed().as_secs() < 10,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The registry as reached over plain HTTP: every answer a 401 naming that realm.
    let path = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = path.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in path.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer \
                     realm=\"https://127.0.0.1:{port}/token\",service=\"registry\"\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    });
    let auth = dir.join("auth.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("node:pw");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{basic}"}}}}}}"#),
    )
    .unwrap();
    let node = Node::new(
        &dir,
        "n",
        &format!(
            "registry-auth = {}\nregistry-ca = {}\n",
            auth.display(),
            tls.join("ca.pem").display()
        ),
    );
    // The request allows plain HTTP (KubeOS flagSafe); the node does not list the host.
    let out = node.upgrade(&[
        "--image",
        &format!("{host}/os:2"),
        "--digest",
        &fixture().manifest_digest,
        "--allow-http",
    ]);
    drop(answer);
    let _ = realm.kill();
    let mut seen = String::new();
    realm
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    let _ = realm.wait();
    assert!(
        seen.contains("GET /token"),
        "the realm was asked (anonymously): {seen:?}\n{}",
        text(&out)
    );
    assert!(
        !seen.to_ascii_lowercase().contains("\nauthorization:"),
        "the node's credentials went to a realm a plain-HTTP answer named: {seen}"
    );
    node.assert_refused(&out, "not sent over plain HTTP");
}
