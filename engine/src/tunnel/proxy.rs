//! Dialing through one HTTP CONNECT proxy (MTC's `stunnel_tcp_proxy`), with Basic proxy
//! authentication.
//!
//! The proxy only relays bytes: mutual TLS runs end to end inside the tunnel, so the proxy sees
//! ciphertext and cannot impersonate either peer. A proxy that intercepts TLS makes the
//! handshake fail (it has no certificate from the migration's CA), and that failure is reported
//! as such. Every error names the hop that failed. The proxy's answer is read with a size limit.
//! The password never appears in `Debug`, `Display` or error output.

use std::fmt;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest proxy response header accepted.
pub const MAX_RESPONSE: usize = 16 * 1024;

/// An HTTP CONNECT proxy: `http://[USER[:PASSWORD]@]HOST:PORT`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proxy {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User for Basic proxy authentication.
    pub user: Option<String>,
    /// Password for Basic proxy authentication (never displayed).
    pub password: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// Shows the proxy as a URL with the password masked.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => write!(f, "http://{user}:***@{host}:{}", self.port),
            (Some(user), None) => write!(f, "http://{user}@{host}:{}", self.port),
            _ => write!(f, "http://{host}:{}", self.port),
        }
    }
}

/// Proxy errors, each naming the hop that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy URL does not parse.
    #[error("invalid proxy `{0}`: expected `http://USER:PASSWORD@HOST:PORT`")]
    Invalid(String),
    /// The proxy itself cannot be reached.
    #[error("cannot reach the proxy `{proxy}`")]
    Unreachable {
        /// The proxy (password masked).
        proxy: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The proxy wants (other) credentials.
    #[error(
        "the proxy `{proxy}` answered {status} {reason}: proxy authentication failed (bad or missing user and password)"
    )]
    Authentication {
        /// The proxy.
        proxy: String,
        /// 407, or 401 from proxies (tinyproxy) that answer CONNECT like an origin server.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The proxy refused to open a tunnel to the target.
    #[error(
        "the proxy `{proxy}` refused CONNECT to `{target}`: {status} {reason} (is that port allowed by the proxy?)"
    )]
    Refused {
        /// The proxy.
        proxy: String,
        /// Where we asked to go.
        target: String,
        /// HTTP status.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The proxy could not reach the target.
    #[error("the proxy `{proxy}` could not reach `{target}`: {status} {reason}")]
    TargetUnreachable {
        /// The proxy.
        proxy: String,
        /// Where we asked to go.
        target: String,
        /// HTTP status.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The proxy's answer was not HTTP, too long, or cut short.
    #[error("the proxy `{proxy}` sent an invalid answer to CONNECT: {what}")]
    BadResponse {
        /// The proxy.
        proxy: String,
        /// What was wrong.
        what: String,
    },
}

impl Proxy {
    /// Parses `http://[USER[:PASSWORD]@]HOST:PORT`.
    pub fn parse(url: &str) -> Result<Proxy, ProxyError> {
        // Never echo the password back, even in the parse error.
        let masked = || match url.rsplit_once('@') {
            Some((_, host)) => format!("http://***@{host}"),
            None => url.to_owned(),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| ProxyError::Invalid(masked()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(|| ProxyError::Invalid(masked()))?;
        let port = port.parse().map_err(|_| ProxyError::Invalid(masked()))?;
        // `[::1]` is how URLs spell an IPv6 address; the socket wants it bare.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains('/') {
            return Err(ProxyError::Invalid(masked()));
        }
        let (user, password) = match credentials {
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (Some(percent_decode(user)), Some(percent_decode(password))),
                None => (Some(percent_decode(credentials)), None),
            },
            None => (None, None),
        };
        Ok(Proxy { host: host.to_owned(), port, user, password })
    }

    /// Opens a TCP tunnel to `target` (`HOST:PORT`) through the proxy.
    pub async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        let proxy = self.to_string();
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Unreachable { proxy: proxy.clone(), source })?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &self.user {
            let credentials = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            request.push_str("Proxy-Authorization: Basic ");
            request.push_str(&encoded);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|source| ProxyError::Unreachable { proxy: proxy.clone(), source })?;
        let head = read_head(&mut stream, &proxy).await?;
        let (status, reason) = parse_status(&head)
            .ok_or_else(|| ProxyError::BadResponse { proxy: proxy.clone(), what: "not an HTTP status line".into() })?;
        match status {
            200..=299 => Ok(stream),
            401 | 407 => Err(ProxyError::Authentication { proxy, status, reason }),
            500..=599 => Err(ProxyError::TargetUnreachable { proxy, target: target.to_owned(), status, reason }),
            _ => Err(ProxyError::Refused { proxy, target: target.to_owned(), status, reason }),
        }
    }
}

/// Reads the response head byte by byte up to the blank line, so no tunnel byte is consumed.
async fn read_head(stream: &mut TcpStream, proxy: &str) -> Result<Vec<u8>, ProxyError> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE {
            return Err(ProxyError::BadResponse {
                proxy: proxy.to_owned(),
                what: format!("header longer than {MAX_RESPONSE} bytes"),
            });
        }
        match stream.read(&mut byte).await {
            Ok(0) => {
                return Err(ProxyError::BadResponse {
                    proxy: proxy.to_owned(),
                    what: "connection closed before the end of the header".into(),
                });
            }
            Ok(_) => head.push(byte[0]),
            Err(source) => return Err(ProxyError::Unreachable { proxy: proxy.to_owned(), source }),
        }
    }
    Ok(head)
}

fn parse_status(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let reason: String = parts.next().unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
    Some((status, reason))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        if bytes[i] == b'%'
            && let Some(value) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let proxy = Proxy::parse("http://alice:s3cr%40t@10.0.0.1:3128").unwrap();
        assert_eq!(proxy.host, "10.0.0.1");
        assert_eq!(proxy.port, 3128);
        assert_eq!(proxy.user.as_deref(), Some("alice"));
        assert_eq!(proxy.password.as_deref(), Some("s3cr@t"));
        assert_eq!(proxy.to_string(), "http://alice:***@10.0.0.1:3128");
        assert!(!format!("{proxy:?}").contains("s3cr"));
        assert_eq!(Proxy::parse("http://proxy:8080/").unwrap().to_string(), "http://proxy:8080");
        let v6 = Proxy::parse("http://u:p@[::1]:3128").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3128));
        assert_eq!(v6.to_string(), "http://u:***@[::1]:3128");
        for bad in ["proxy:8080", "https://p:1", "http://p", "http://:1", "http://u:pw@p:x"] {
            let error = Proxy::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some((200, "Connection established".into()))
        );
        assert_eq!(parse_status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").unwrap().0, 407);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
