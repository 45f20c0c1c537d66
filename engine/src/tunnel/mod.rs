//! The mutual-TLS tunnel between mover's peers.
//!
//! TLS 1.3 only, one process-wide crypto provider (aws-lc-rs, AES-GCM), client certificates
//! required and verified against the migration's CA during the handshake: a peer without a
//! certificate, or with one from another CA, is rejected before any application byte flows.
//! Servers send no session tickets (a client that closes without reading them would reset the
//! connection); sessions end with an explicit application-level acknowledgement instead.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::certs::{Identity, Role};

mod counted;
mod fetch;
mod proxy;
mod server_name;

pub use counted::{Counted, ReadCount};
pub use fetch::fetch_chain;
pub use proxy::{Proxy, ProxyError};
pub use server_name::split_server_name;

/// How long a TCP connect plus TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Tunnel errors, each naming the peer.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TLS configuration could not be built from the certificates.
    #[error("invalid certificates for mutual TLS")]
    Config(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("invalid CA certificate")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// TCP connect failed.
    #[error("cannot reach `{addr}`")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, no certificate, not a mover agent).
    #[error("mutual TLS handshake with `{addr}` failed")]
    Handshake {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The proxy hop failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The TLS handshake failed inside a proxy tunnel: the proxy relayed bytes, but the peer's
    /// certificate was not from the migration's CA.
    #[error(
        "mutual TLS handshake with `{addr}` through the proxy `{proxy}` failed: the proxy may be intercepting TLS \
         (it must relay CONNECT traffic untouched), or `{addr}` is not a mover agent of this migration"
    )]
    HandshakeViaProxy {
        /// The agent.
        addr: String,
        /// The proxy (password masked).
        proxy: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The name before `@` in `SERVER_NAME@HOST:PORT` is not a DNS name, so it cannot be sent as
    /// the TLS server name a router picks the agent by.
    #[error("`{addr}`: the server name before `@` must be a DNS name (a route's host), to be sent as TLS SNI")]
    ServerName {
        /// The address.
        addr: String,
    },
    /// Connect or handshake took too long.
    #[error("timed out connecting to `{addr}` after {}s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout {
        /// The address.
        addr: String,
    },
}

impl TunnelError {
    /// True when a later attempt may succeed (network trouble, not a certificate problem).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TunnelError::Connect { .. }
                | TunnelError::Timeout { .. }
                | TunnelError::Proxy(ProxyError::Unreachable { .. } | ProxyError::TargetUnreachable { .. })
        )
    }
}

/// The process-wide crypto provider: aws-lc-rs.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>, TunnelError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca.clone()).map_err(TunnelError::Config)?;
    Ok(Arc::new(roots))
}

/// The server side of the tunnel: requires and verifies client certificates.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TunnelError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(TunnelError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TunnelError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(TunnelError::Config)?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of the tunnel: presents our certificate, trusts only the migration's CA, and
/// takes only a certificate for the agent role, whatever server name a dial sends (see
/// [`server_name`]).
pub fn client_config(identity: &Identity) -> Result<Arc<ClientConfig>, TunnelError> {
    let verifier = server_name::PinnedAgentName::new(roots(identity)?).map_err(TunnelError::Verifier)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TunnelError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(TunnelError::Config)?;
    Ok(Arc::new(config))
}

/// A client-side tunnel.
pub type ClientStream = client::TlsStream<TcpStream>;
/// A server-side tunnel.
pub type ServerStream = server::TlsStream<TcpStream>;

/// Dials an agent at `addr` (`HOST:PORT`, or `SERVER_NAME@HOST:PORT` through an SNI router:
/// see [`server_name`]) and completes the mutual-TLS handshake. The agent must present a
/// certificate for the agent role from the migration's CA.
///
/// With a `proxy`, the TCP connection is an HTTP CONNECT tunnel through it (to `HOST:PORT`), and
/// mutual TLS runs end to end inside.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    proxy: Option<&Proxy>,
) -> Result<ClientStream, TunnelError> {
    let name = server_name::sni_for(addr).ok_or_else(|| TunnelError::ServerName { addr: addr.to_owned() })?;
    let dial = async {
        let tcp = dial_tcp(split_server_name(addr).1, proxy).await?;
        TlsConnector::from(config).connect(name, tcp).await.map_err(|source| match proxy {
            Some(proxy) => TunnelError::HandshakeViaProxy { addr: addr.to_owned(), proxy: proxy.to_string(), source },
            None => TunnelError::Handshake { addr: addr.to_owned(), source },
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, dial).await.map_err(|_| TunnelError::Timeout { addr: addr.to_owned() })?
}

/// A TCP connection to `addr`, directly or through an HTTP CONNECT `proxy`.
pub(crate) async fn dial_tcp(addr: &str, proxy: Option<&Proxy>) -> Result<TcpStream, TunnelError> {
    let tcp = match proxy {
        Some(proxy) => proxy.connect(addr).await?,
        None => {
            TcpStream::connect(addr).await.map_err(|source| TunnelError::Connect { addr: addr.to_owned(), source })?
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Completes the server side of the handshake on an accepted connection and returns the
/// client's role. A client certificate that verifies but carries no role is refused.
pub async fn accept(tcp: TcpStream, acceptor: &TlsAcceptor, peer: &str) -> Result<(ServerStream, Role), TunnelError> {
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| TunnelError::Timeout { addr: peer.to_owned() })?
        .map_err(|source| TunnelError::Handshake { addr: peer.to_owned(), source })?;
    let role = stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).and_then(role_of);
    match role {
        Some(role) => Ok((stream, role)),
        None => Err(TunnelError::Handshake {
            addr: peer.to_owned(),
            source: std::io::Error::other("client certificate carries no mover role"),
        }),
    }
}

/// The role a (CA-verified) leaf certificate was issued for.
#[must_use]
pub fn role_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<Role> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    [Role::Coordinator, Role::Agent].into_iter().find(|role| {
        let name = ServerName::try_from(role.dns_name()).expect("valid DNS name");
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    })
}
