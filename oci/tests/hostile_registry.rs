//! The client against scripted loopback servers that answer as a hostile
//! registry (or the hosts it names) would: each server answers every request
//! with one fixed response and keeps the request heads it received, so a
//! test can say where the node's credentials went.

use oci::auth::Credentials;
use oci::{Client, ClientOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BLOB: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// A loopback server answering every request with `response`.
struct Scripted {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start(response: String) -> Scripted {
        Scripted::answering(move |_| response.clone())
    }

    /// A server answering each request head (its body read and dropped) with
    /// what `respond` makes of it.
    fn answering(respond: impl Fn(&str) -> String + Send + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0u64);
                let _ = std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink());
                seen.lock().unwrap().push(head.clone());
                let _ = conn.write_all(respond(&head).as_bytes());
            }
        });
        Scripted { port, heads }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn answer(status: &str, headers: &[String], body: &str) -> String {
    let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

/// A client with credentials for a plain-HTTP registry whose owner lets
/// them go to it in clear (the node's `registry-plain-http`, `os-image
/// --plain-http`).
fn client_with_credentials(registry: &str) -> Client {
    Client::new(
        registry,
        ClientOptions {
            plain_http: true,
            credentials_in_clear: true,
            credentials: Credentials::parse("node:secret"),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// A registry may send a blob fetch to storage elsewhere (S3, a CDN); that
/// host is not the registry, and a 401 from it must not make the node send
/// the registry's credentials to a token realm of that host's choosing.
#[test]
fn a_401_from_a_host_the_registry_redirected_to_gets_no_credentials() {
    let realm = Scripted::start(answer("200 OK", &[], r#"{"token":"t"}"#));
    let storage = Scripted::start(answer(
        "401 Unauthorized",
        &[format!(
            "WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"storage\"",
            realm.host()
        )],
        "",
    ));
    let registry = Scripted::start(answer(
        "307 Temporary Redirect",
        &[format!("Location: http://{}/bucket/blob", storage.host())],
        "",
    ));
    let client = client_with_credentials(&registry.host());
    let e = client.open_blob("os", BLOB, 0).err().expect("refused");
    let leaked: Vec<_> = realm
        .heads()
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().contains("authorization"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the storage host's realm got the registry's credentials: {leaked:?}"
    );
    assert!(
        realm.heads().is_empty(),
        "nothing asks that realm for a token"
    );
    assert!(matches!(e, oci::Error::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains(&storage.host()), "{e}");
}

/// The same for an upload: the registry names where the blob goes
/// (`Location`), and a host other than the registry gets none of its
/// credentials with it.
#[test]
fn an_upload_location_on_another_host_gets_no_credentials() {
    let storage = Scripted::start(answer("201 Created", &[], ""));
    let location = format!("http://{}/upload/1?state=x", storage.host());
    let registry = Scripted::answering(move |head| {
        if head.to_ascii_lowercase().contains("authorization: basic") {
            answer("202 Accepted", &[format!("Location: {location}")], "")
        } else {
            let challenge = "WWW-Authenticate: Basic realm=\"registry\"".to_owned();
            answer("401 Unauthorized", &[challenge], "")
        }
    });
    let client = client_with_credentials(&registry.host());
    let body = b"abc";
    client
        .push_blob("os", BLOB, body.len() as u64, &mut &body[..])
        .unwrap();
    let puts = storage.heads();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert!(
        puts[0].starts_with("PUT /upload/1?state=x&digest=sha256%3A"),
        "{puts:?}"
    );
    assert!(
        !puts[0].to_ascii_lowercase().contains("authorization"),
        "the upload host got the registry's credentials: {puts:?}"
    );
}
