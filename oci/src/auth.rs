//! Registry credentials and the challenges that ask for them.
//!
//! Credentials come from a docker-style auth file (`~/.docker/config.json`,
//! containers' `auth.json`): `{"auths": {"HOST[:PORT]": {"auth":
//! "base64(user:password)"}}}`, or `"username"`/`"password"` fields instead
//! of `auth`. Keys may carry a scheme and path (`https://HOST/v1/`).
//!
//! A registry that wants credentials answers 401 with `WWW-Authenticate`:
//! `Bearer realm=…,service=…,scope=…` (get a token from `realm`, with Basic
//! credentials if there are any, anonymously otherwise) or `Basic realm=…`.

use crate::Error;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use miniserde::json::{self, Value};
use std::fmt;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.username)
    }
}

impl Credentials {
    /// `user:password` (the password may contain `:`).
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The entries of a docker-style auth file.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    entries: Vec<(String, Credentials)>,
}

impl AuthFile {
    pub fn load(path: &Path) -> Result<AuthFile, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::File(format!("registry auth file {}: {e}", path.display())))?;
        AuthFile::parse(&text)
            .map_err(|why| Error::File(format!("registry auth file {}: {why}", path.display())))
    }

    pub fn parse(text: &str) -> Result<AuthFile, String> {
        let v: Value = json::from_str(text).map_err(|_| "not valid JSON".to_owned())?;
        let Value::Object(top) = v else {
            return Err("not a JSON object".into());
        };
        let auths = match top.get("auths") {
            Some(Value::Object(a)) => a,
            None => return Ok(AuthFile::default()),
            Some(_) => return Err("`auths` is not an object".into()),
        };
        let mut entries = Vec::new();
        for (key, entry) in auths {
            let Value::Object(e) = entry else {
                return Err(format!("auths[{key:?}] is not an object"));
            };
            let field = |k: &str| match e.get(k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            };
            let creds = if let Some(encoded) = field("auth") {
                let raw = STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| format!("auths[{key:?}].auth is not base64"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("auths[{key:?}].auth is not UTF-8"))?;
                Credentials::parse(&text)
                    .ok_or_else(|| format!("auths[{key:?}].auth is not base64(user:password)"))?
            } else if let (Some(username), Some(password)) = (field("username"), field("password"))
            {
                Credentials { username, password }
            } else {
                continue;
            };
            entries.push((normalize_host(key), creds));
        }
        Ok(AuthFile { entries })
    }

    /// The credentials for a registry host (`host[:port]`), if any.
    pub fn credentials_for(&self, registry: &str) -> Option<Credentials> {
        let want = normalize_host(registry);
        self.entries
            .iter()
            .find(|(host, _)| *host == want)
            .map(|(_, c)| c.clone())
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `HOST:PORT/path` → `HOST:PORT`.
fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = key.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key="value", key2=value2` with commas allowed inside quotes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's
/// `access_token`).
pub fn token_from_response(body: &str) -> Option<String> {
    let Ok(Value::Object(o)) = json::from_str::<Value>(body) else {
        return None;
    };
    ["token", "access_token"]
        .iter()
        .find_map(|k| match o.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_file_forms_and_lookup() {
        let f = AuthFile::parse(
            r#"{"auths":{
              "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
              "https://index.docker.io/v1/":{"username":"hub","password":"pw"},
              "mirror.local":{"identitytoken":"x"}}}"#,
        )
        .unwrap();
        let c = f.credentials_for("127.0.0.1:5000").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(f.credentials_for("docker.io").unwrap().username, "hub");
        assert_eq!(f.credentials_for("mirror.local"), None);
        assert_eq!(f.credentials_for("127.0.0.1:5001"), None);
        assert!(AuthFile::parse(r#"{"auths":{"h":{"auth":"%%%"}}}"#).is_err());
        assert!(AuthFile::parse("{").is_err());
        assert!(
            format!("{c:?}").contains("<password>"),
            "no password in logs"
        );
    }

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:os/node:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:os/node:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            Challenge::parse("Bearer service=x"),
            None,
            "a realm is needed"
        );
        assert_eq!(
            token_from_response(r#"{"access_token":"t"}"#).as_deref(),
            Some("t")
        );
        assert_eq!(token_from_response(r#"{"token":""}"#), None);
    }
}
