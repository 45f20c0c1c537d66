//! A token server for the registry's bearer-token challenge flow (the flow `OpenShift`'s and
//! Docker Hub's registries use): `GET /token?service=S&scope=repository:NAME:ACTIONS` with HTTP
//! Basic credentials answers `{"token": JWT}`, an ES256 JWT carrying the `x5c` certificate that
//! `docker-registry`'s `auth.token.rootcertbundle` trusts.
//!
//! It grants exactly the scopes asked for (so a token for one repository does not let a client
//! mount from another, and the registry answers such a mount with `202`, as real ones do), and
//! records every request's scopes and whether Basic credentials came with it.
//!
//! Besides its own user and password it can accept other credentials
//! ([`TokenServer::also_accept`]): e.g. any user with a password that a simulated cluster issued
//! as a service-account token and that has not expired, as `OpenShift`'s registry accepts a
//! service account's token as the password.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The `service` the registry is configured with.
pub const SERVICE: &str = "mover-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "mover-test-token-issuer";

/// One request the token server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `scope` parameters.
    pub scopes: Vec<String>,
    /// Whether the right Basic credentials came with it.
    pub authenticated: bool,
}

/// A check of other Basic credentials: `(user, password)`, true to accept.
pub type CredentialCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A running token server; stops accepting on drop.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The PEM certificate the registry must trust (`rootcertbundle`).
    pub cert_pem: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    also: Arc<Mutex<Option<CredentialCheck>>>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    also: Arc<Mutex<Option<CredentialCheck>>>,
}

impl TokenServer {
    /// Starts a token server that accepts `user:password` and writes its certificate into `dir`.
    pub fn start(dir: &Path, user: &str, password: &str) -> io::Result<TokenServer> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(io::Error::other)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["mover-test-token-signer".to_owned()]).map_err(io::Error::other)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "mover test token signer");
        let cert = params.self_signed(&key).map_err(io::Error::other)?;
        let cert_pem = dir.join("token-signer.crt");
        std::fs::write(&cert_pem, cert.pem())?;
        let also: Arc<Mutex<Option<CredentialCheck>>> = Arc::new(Mutex::new(None));
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                .map_err(|e| io::Error::other(e.to_string()))?,
            cert_der: cert.der().to_vec(),
            user: user.to_owned(),
            password: password.to_owned(),
            also: Arc::clone(&also),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::Builder::new().name("token-server".into()).spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (signer, seen) = (Arc::clone(&signer), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let _ = serve(stream, &signer, &seen);
                });
            }
        })?;
        Ok(TokenServer { addr, cert_pem, requests, stop, also })
    }

    /// Also accepts the Basic credentials `check` accepts (besides its own user and password).
    pub fn also_accept(&self, check: CredentialCheck) {
        *self.also.lock().expect("check") = Some(check);
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    #[must_use]
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The requests seen so far.
    #[must_use]
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(stream: TcpStream, signer: &Signer, seen: &Mutex<Vec<TokenRequest>>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| percent_decode(v))
        .collect();
    let expected = format!("Basic {}", STANDARD.encode(format!("{}:{}", signer.user, signer.password)));
    let authenticated =
        authorization.as_deref() == Some(expected.as_str()) || accepted_elsewhere(signer, authorization.as_deref());
    seen.lock().expect("requests").push(TokenRequest { scopes: scopes.clone(), authenticated });
    let mut out = stream;
    if !authenticated {
        let body = r#"{"details":"wrong or missing credentials"}"#;
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let token = sign(signer, &scopes)?;
    let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#);
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether [`TokenServer::also_accept`]'s check accepts the Basic credentials of `authorization`.
fn accepted_elsewhere(signer: &Signer, authorization: Option<&str>) -> bool {
    let Some(check) = signer.also.lock().expect("check").clone() else { return false };
    let decoded = authorization
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    decoded.and_then(|pair| pair.split_once(':').map(|(user, password)| check(user, password))).unwrap_or(false)
}

fn sign(signer: &Signer, scopes: &[String]) -> io::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(io::Error::other)?.as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            // `repository:NAME:ACTIONS` (NAME may not contain `:` in these tests).
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&signer.cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": signer.user, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature =
        signer.key.sign(&SystemRandom::new(), signing_input.as_bytes()).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("repository%3Aa%2Fb%3Apull%2Cpush"), "repository:a/b:pull,push");
        assert_eq!(super::percent_decode("a%2"), "a%2");
    }
}
