//! A real OCI/Docker registry on loopback for the tests: Debian's
//! `docker-registry` (distribution 2.8), started from a config written here
//! into a test's directory, on 127.0.0.1 at a free port, and killed on drop.
//!
//! Variants ([`RegistryOptions`]): plain HTTP or HTTPS with a private CA made
//! by the openssl CLI (leaf for IP 127.0.0.1 and DNS localhost), and
//! anonymous, htpasswd (bcrypt) basic auth, or token auth. For token auth the
//! harness runs its own token server (plain HTTP on loopback, a std thread)
//! that checks HTTP Basic credentials and hands out ES256 JWTs signed with an
//! openssl-made P-256 key whose self-signed certificate is the registry's
//! `rootcertbundle` and travels in the token's `x5c` header; each token grants
//! exactly the `scope`s the request asked for.
//!
//! Images are pushed with `skopeo copy` ([`Registry::skopeo_push`]).
//!
//! Notes on distribution 2.8.2: htpasswd auth works over plain HTTP too (its
//! documentation asks for TLS, the code does not enforce it); the Go bcrypt
//! accepts the crate's `$2b$` hashes. Token auth checks `iss` against
//! `issuer`, `aud` against `service`, `exp`/`nbf` (with 60 s leeway) and the
//! ES256 signature (raw 64-byte r||s) with the key of the `x5c` certificate,
//! which must chain to `rootcertbundle`; a token whose `access` does not
//! cover the request gets 401 "insufficient scope".

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How clients authenticate to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous pull and push.
    None,
    /// `auth: htpasswd` with one bcrypt-hashed user (the registry answers
    /// `401` with `WWW-Authenticate: Basic realm="ab-os-test"`).
    Htpasswd { user: String, password: String },
    /// `auth: token` against the harness's token server, which knows this
    /// user (more with [`Registry::add_token_user`]).
    Token { user: String, password: String },
}

impl Auth {
    /// `Auth::Htpasswd` for `user`/`password`.
    pub fn htpasswd(user: &str, password: &str) -> Auth {
        Auth::Htpasswd {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `Auth::Token` for `user`/`password`.
    pub fn token(user: &str, password: &str) -> Auth {
        Auth::Token {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The configured user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::None => None,
            Auth::Htpasswd { user, password } | Auth::Token { user, password } => {
                Some((user, password))
            }
        }
    }
}

/// Which registry to start.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// HTTPS with a private CA (see [`Registry::ca_pem`]) instead of HTTP.
    pub tls: bool,
    pub auth: Auth,
}

/// The realm of the htpasswd variant's Basic challenge.
pub const HTPASSWD_REALM: &str = "ab-os-test";
/// The `service` (JWT `aud`) of the token variant.
pub const TOKEN_SERVICE: &str = "ab-os-test-registry";
/// The JWT `iss` of the token variant.
pub const TOKEN_ISSUER: &str = "ab-os-test-token-server";

/// A running `docker-registry serve`, killed on drop. Everything it needs
/// (config, storage, certificates, log) lives in the directory given to
/// [`Registry::start`].
pub struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
    opts: RegistryOptions,
    ca_pem: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    token: Option<TokenServer>,
}

impl Registry {
    /// Starts a registry with its files in `dir` (which should be empty and
    /// outlive the registry) and waits until `GET /v2/` answers 200 or 401.
    /// Panics with the registry's log if it does not come up.
    pub fn start(dir: &Path, opts: RegistryOptions) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_path_buf();
        let mut tls_yaml = String::new();
        let (mut ca_pem, mut cert_dir) = (None, None);
        if opts.tls {
            make_tls(&dir);
            ca_pem = Some(dir.join("ca.pem"));
            // skopeo's --dest-cert-dir: a directory holding `ca.crt`.
            let certs = dir.join("certs.d");
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(dir.join("ca.pem"), certs.join("ca.crt")).unwrap();
            cert_dir = Some(certs);
            let d = dir.display();
            tls_yaml =
                format!("  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n");
        }
        let mut token = None;
        let auth_yaml = match &opts.auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                // Cost 4 (the minimum) keeps every request fast; the Go side
                // accepts the `$2b$` hashes of the bcrypt crate.
                let hash = bcrypt::hash(password, 4).unwrap();
                let path = dir.join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: {HTPASSWD_REALM}\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token { user, password } => {
                let server = TokenServer::start(&dir, user, password);
                let yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    dir.join("token-signer.pem").display()
                );
                token = Some(server);
                yaml
            }
        };
        let d = dir.display();
        let mut last_log = String::new();
        // The free port is only probed, so another process may take it before
        // the registry binds it: try again with a new one then.
        for _ in 0..3 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: ab-os-test-secret\n{tls_yaml}{auth_yaml}"
            );
            std::fs::write(dir.join("config.yml"), config).unwrap();
            let log = File::create(dir.join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry not installed (apt-get install docker-registry)");
            let mut registry = Registry {
                child,
                dir: dir.clone(),
                port,
                opts: opts.clone(),
                ca_pem: ca_pem.clone(),
                cert_dir: cert_dir.clone(),
                token: None,
            };
            if registry.wait_ready() {
                registry.token = token;
                return registry;
            }
            last_log = registry.log();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    /// Polls `GET /v2/` until it answers 200 or 401 (true), the registry
    /// exits or 20 s pass (false).
    fn wait_ready(&mut self) -> bool {
        let agent = self.agent();
        let url = format!("{}/v2/", self.base_url());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(resp) = agent.get(&url).call() {
                if matches!(resp.status().as_u16(), 200 | 401) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The private CA that signed the registry's certificate (TLS only).
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// A directory holding the CA as `ca.crt`, for skopeo's `--*cert-dir`
    /// and containers' `certs.d` convention (TLS only).
    pub fn cert_dir(&self) -> Option<&Path> {
        self.cert_dir.as_deref()
    }

    /// The token server's realm URL (token auth only).
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// Tokens the token server issued so far (0 without token auth).
    pub fn token_requests(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.state.issued.load(Ordering::Relaxed))
    }

    /// Token requests the token server refused with 401 (bad or missing
    /// credentials) so far.
    pub fn token_refusals(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.state.refused.load(Ordering::Relaxed))
    }

    /// Lets one more user get tokens (token auth only; panics otherwise).
    pub fn add_token_user(&self, user: &str, password: &str) {
        let t = self.token.as_ref().expect("not a token-auth registry");
        t.state
            .users
            .lock()
            .unwrap()
            .push((user.into(), password.into()));
    }

    /// The registry's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The blob GETs the registry answered so far (see [`blob_gets`]).
    pub fn blob_gets(&self) -> Vec<BlobGet> {
        blob_gets(&self.log())
    }

    /// A ureq agent that trusts the registry's CA (when TLS) and returns
    /// error statuses as responses instead of errors.
    pub fn agent(&self) -> ureq::Agent {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &self.ca_pem {
            let pem = std::fs::read(ca).unwrap();
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item.unwrap() {
                    ureq::tls::PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    /// `skopeo copy` from `src` (e.g. `oci:/path/layout:tag`) to
    /// `docker://HOST/REPO:TAG` with the configured credentials and TLS
    /// trust; panics with skopeo's and the registry's output on failure.
    pub fn skopeo_push(&self, src: &str, repo_tag: &str) {
        if let Err(e) = self.try_skopeo_push(src, repo_tag, self.opts.auth.credentials()) {
            panic!("{e}\nregistry log:\n{}", self.log());
        }
    }

    /// Like [`Registry::skopeo_push`] with explicit credentials (`None`:
    /// anonymous); returns skopeo's stdout, or a description of the failure
    /// including its stderr.
    pub fn try_skopeo_push(
        &self,
        src: &str,
        repo_tag: &str,
        creds: Option<(&str, &str)>,
    ) -> Result<String, String> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--retry-times", "0"]);
        match &self.cert_dir {
            Some(dir) => cmd.arg("--dest-cert-dir").arg(dir),
            // Plain HTTP: containers/image only falls back from HTTPS when
            // TLS verification is off.
            None => cmd.arg("--dest-tls-verify=false"),
        };
        match creds {
            Some((u, p)) => cmd.arg("--dest-creds").arg(format!("{u}:{p}")),
            None => cmd.arg("--dest-no-creds"),
        };
        cmd.arg(src)
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            // Never pick up the invoking user's registry logins.
            .env("REGISTRY_AUTH_FILE", self.dir.join("no-auth.json"));
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run skopeo (apt-get install skopeo): {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{cmd:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Writes a docker-style auth file
    /// `{"auths":{"HOST":{"auth":"base64(user:password)"}}}` for this
    /// registry into `dir` and returns its path.
    pub fn auth_file(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let json = serde_json::json!({
            "auths": { self.host(): { "auth": STANDARD.encode(format!("{user}:{password}")) } }
        });
        let path = dir.join(format!("auth-{}.json", self.port));
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        path
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /v2/REPO/blobs/DIGEST` a registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGet {
    pub repo: String,
    pub digest: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

/// The blob GETs in a registry's access log: its
/// `"GET /v2/REPO/blobs/DIGEST HTTP/1.1" STATUS BYTES` lines.
pub fn blob_gets(log: &str) -> Vec<BlobGet> {
    log.lines()
        .filter_map(|l| {
            let (request, rest) = l.split_once("\"GET /v2/")?.1.split_once('"')?;
            let path = request.split_whitespace().next()?;
            let (repo, digest) = path.split_once("/blobs/")?;
            let mut fields = rest.split_whitespace();
            Some(BlobGet {
                repo: repo.to_owned(),
                digest: digest.to_owned(),
                status: fields.next()?.parse().ok()?,
                bytes: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed P-256 certificate `NAME.pem` with its key `NAME.key`.
fn self_signed(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

/// `ca.pem`/`ca.key` and the server's `server.pem`/`server.key` signed by it,
/// for IP 127.0.0.1 and DNS localhost.
pub fn make_tls(dir: &Path) {
    self_signed(dir, "ca", "ab-os test registry CA");
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
}

struct TokenState {
    users: Mutex<Vec<(String, String)>>,
    issued: AtomicU64,
    refused: AtomicU64,
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// The signing certificate, standard base64 of its DER, for `x5c`.
    x5c: String,
}

/// The token server: `GET /token?service=..&scope=..` with HTTP Basic
/// credentials of a known user gets `{"token", "access_token",
/// "expires_in"}`; anything else gets 401. Its thread lives as long as the
/// process.
struct TokenServer {
    port: u16,
    state: Arc<TokenState>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        self_signed(dir, "token-signer", "ab-os test token signer");
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "token-signer.key",
                "-outform",
                "DER",
                "-out",
                "token-signer.pk8",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token-signer.pem",
                "-outform",
                "DER",
                "-out",
                "token-signer.der",
            ],
        );
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = std::fs::read(dir.join("token-signer.pk8")).unwrap();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &rng,
        )
        .expect("token signing key");
        let der = std::fs::read(dir.join("token-signer.der")).unwrap();
        let state = Arc::new(TokenState {
            users: Mutex::new(vec![(user.into(), password.into())]),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            key,
            rng,
            x5c: STANDARD.encode(der),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve_token(stream, &s);
                });
            }
        });
        TokenServer { port, state }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

/// One request per connection (answered with `Connection: close`).
fn serve_token(stream: TcpStream, s: &TokenState) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let user = authorization.as_deref().and_then(|a| basic_user(a, s));
    let Some(user) = user else {
        s.refused.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad or missing credentials"}]}"#;
        out.write_all(
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ab-os-test-token\"\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        return Ok(());
    };
    let mut service = TOKEN_SERVICE.to_owned();
    let mut access = Vec::new();
    for (name, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        let value = percent_decode(value);
        match name {
            "service" => service = value,
            // Several scopes come as repeated parameters (GET) or separated
            // by spaces.
            "scope" => access.extend(value.split(' ').filter_map(scope_access)),
            _ => {}
        }
    }
    let token = sign_token(s, &user, &service, access);
    s.issued.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": rfc3339_now(),
    })
    .to_string();
    out.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    out.flush()
}

/// The user of a valid `Basic` authorization, if it is one.
fn basic_user(authorization: &str, s: &TokenState) -> Option<String> {
    let (scheme, b64) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    let users = s.users.lock().unwrap();
    users
        .iter()
        .any(|(u, p)| u == user && p == password)
        .then(|| user.to_owned())
}

/// `TYPE:NAME:ACTION,ACTION` (NAME may hold `:` only in theory; the actions
/// are after the last one) as a JWT `access` entry granting all of them.
fn scope_access(scope: &str) -> Option<serde_json::Value> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({ "type": typ, "name": name, "actions": actions }))
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = unix_now();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A compact ES256 JWT as distribution's token verifier wants it: `x5c`
/// with the signing certificate (chained to `rootcertbundle`), `iss` =
/// the configured issuer, `aud` = the service, valid now, and `access`.
fn sign_token(s: &TokenState, user: &str, service: &str, access: Vec<serde_json::Value>) -> String {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let now = unix_now();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [s.x5c] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": user,
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{}-{now}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = s.key.sign(&s.rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}
