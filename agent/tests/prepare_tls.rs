//! HTTPS with a private CA and mutual TLS against a real nginx on loopback
//! (`ssl_verify_client on`). Certificates are made by the openssl CLI here;
//! nginx runs in the foreground from a temp prefix and is killed at the end.

mod common;

use agent::prepare::{prepare_with, PrepareError, PrepareRequest, Tls};
use agent::progress::Progress;
use bootctl::record::SlotState;
use common::{bundle, quick_retry, synthetic_image, Node};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

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

/// A CA (`NAME-ca.pem`/`.key`) and a leaf signed by it for each `(leaf, ext)`.
fn make_pki(dir: &Path, ca: &str, leaves: &[(&str, &str)]) {
    let (ca_key, ca_pem) = (format!("{ca}-ca.key"), format!("{ca}-ca.pem"));
    let subj = format!("/CN={ca} test CA");
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
            &ca_key,
            "-out",
            &ca_pem,
            "-days",
            "2",
            "-subj",
            &subj,
        ],
    );
    for (leaf, ext) in leaves {
        let (key, csr, pem, extfile) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.pem"),
            format!("{leaf}.ext"),
        );
        std::fs::write(
            dir.join(&extfile),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
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
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={leaf}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
}

/// nginx in the foreground, killed on drop.
struct Nginx(Child);

impl Nginx {
    fn start(prefix: &Path, port: u16) -> Nginx {
        let p = prefix.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {p}/error.log info;\npid {p}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n  \
             fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n  server {{\n    \
             listen 127.0.0.1:{port} ssl;\n    ssl_certificate {p}/server.pem;\n    ssl_certificate_key {p}/server.key;\n    \
             ssl_client_certificate {p}/good-ca.pem;\n    ssl_verify_client on;\n    root {p}/www;\n  }}\n}}\n"
        );
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &p.to_string(),
                "-e",
                &format!("{p}/error.log"),
                "-c",
                &format!("{p}/nginx.conf"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx not installed (apt-get install nginx-light)");
        let nginx = Nginx(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mtls_against_nginx_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_pki(
        d,
        "good",
        &[
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ],
    );
    make_pki(d, "rogue", &[("intruder", "extendedKeyUsage=clientAuth")]);
    let b = bundle(synthetic_image(300_000, 3), 64 << 10, "2");
    std::fs::create_dir_all(d.join("www/os")).unwrap();
    std::fs::write(d.join("www/os/os-2.img.zst"), &b.zst).unwrap();
    std::fs::write(d.join("www/os/os-2.manifest.json"), &b.meta.manifest).unwrap();
    let port = free_port();
    let _nginx = Nginx::start(d, port);
    let file = |name: &str| Some(d.join(name));
    let tls = |ca: &str, cert: Option<&str>| Tls {
        ca_cert: file(ca),
        client_cert: cert.and_then(|c| file(&format!("{c}.pem"))),
        client_key: cert.and_then(|c| file(&format!("{c}.key"))),
    };
    let req = |tls: Tls| PrepareRequest {
        url: format!("https://127.0.0.1:{port}/os/os-2.img.zst"),
        digest: b.meta.digest.clone(),
        version: Some("2".into()),
        tls,
        allow_http: false,
    };
    let run = |req: PrepareRequest| {
        let node = Node::new(1 << 20);
        let result = prepare_with(
            &node.cfg,
            &req,
            &Progress::default(),
            &AtomicBool::new(false),
            &quick_retry(),
        );
        (node, result)
    };

    let (node, result) = run(req(tls("good-ca.pem", Some("client"))));
    let done = result.expect("right CA and client certificate");
    assert_eq!(
        (done.size, node.record_b().state),
        (300_000, SlotState::Written)
    );
    assert!(node.slot_b()[..300_000] == b.image[..]);
    node.assert_not_armed();

    let failure = |req: PrepareRequest| {
        let (node, result) = run(req);
        let err = result.expect_err("must fail");
        node.assert_untouched();
        let msg = err.to_string();
        (err, msg)
    };
    let (err, msg) = failure(req(tls("good-ca.pem", None)));
    assert!(
        matches!(err, PrepareError::Http { status: 400, .. })
            && msg.contains("No required SSL certificate"),
        "{msg}"
    );
    let (err, msg) = failure(req(tls("good-ca.pem", Some("intruder"))));
    assert!(
        matches!(err, PrepareError::Http { status: 400, .. })
            && msg.contains("SSL certificate error"),
        "{msg}"
    );
    let (err, msg) = failure(req(tls("rogue-ca.pem", Some("client"))));
    assert!(
        matches!(err, PrepareError::Tls { .. }) && msg.contains("UnknownIssuer"),
        "{msg}"
    );
    let (err, msg) = failure(req(Tls {
        client_key: None,
        ..tls("good-ca.pem", Some("client"))
    }));
    assert!(
        matches!(err, PrepareError::TlsFiles { .. }) && msg.contains("client.pem"),
        "{msg}"
    );
    let (err, msg) = failure(req(Tls {
        client_key: file("missing.key"),
        ..tls("good-ca.pem", Some("client"))
    }));
    assert!(
        matches!(err, PrepareError::TlsFiles { .. }) && msg.contains("missing.key"),
        "{msg}"
    );
}
