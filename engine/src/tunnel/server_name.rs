//! Agents behind a TLS-passthrough router: the address form `SERVER_NAME@HOST:PORT`, and the
//! server certificate check that stays pinned to the agent role whatever name is sent.
//!
//! An `OpenShift` Route with `tls.termination: passthrough` (or any SNI router) picks its backend
//! by the TLS server name (SNI) of the `ClientHello`, without terminating TLS. To reach an agent
//! through it, mover dials the router at `HOST:PORT` and sends the route's host as SNI:
//! `agent-x-ns.apps.example.com@10.0.0.5:443`. A plain `HOST:PORT` sends the agent role's name
//! ([`Role::dns_name`]), as before. (DNS names hold no `@`, so the form is unambiguous.)
//!
//! The SNI only steers the router. The agent's certificate is verified exactly as for a direct
//! dial: by rustls' `WebPKI` verifier with the migration's CA as the only root, for the agent
//! role's name; [`PinnedAgentName`] hands that verifier the role's name instead of the name
//! sent. So a router that sends the connection elsewhere, or a certificate from another CA,
//! fails the handshake as it would without a router.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::certs::Role;

/// Splits `SERVER_NAME@HOST:PORT` into the name to send as SNI and the address to dial; a
/// plain `HOST:PORT` has no name.
#[must_use]
pub fn split_server_name(addr: &str) -> (Option<&str>, &str) {
    match addr.split_once('@') {
        Some((name, dial)) => (Some(name), dial),
        None => (None, addr),
    }
}

/// The name a dial to `addr` sends as SNI: the route host of `SERVER_NAME@HOST:PORT`, else the
/// agent role's name. `None` when the given name is not a DNS name (an IP address sends no SNI,
/// so no router could pick by it).
pub(crate) fn sni_for(addr: &str) -> Option<ServerName<'static>> {
    let name = split_server_name(addr).0.unwrap_or(Role::Agent.dns_name());
    match ServerName::try_from(name.to_owned()) {
        Ok(name @ ServerName::DnsName(_)) => Some(name),
        _ => None,
    }
}

/// rustls' `WebPKI` server verifier, always asked about the agent role's name.
#[derive(Debug)]
pub(crate) struct PinnedAgentName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl PinnedAgentName {
    pub(crate) fn new(roots: Arc<RootCertStore>) -> Result<Self, rustls::server::VerifierBuilderError> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, super::provider()).build()?;
        let name = ServerName::try_from(Role::Agent.dns_name()).expect("valid DNS name");
        Ok(PinnedAgentName { inner, name })
    }
}

impl ServerCertVerifier for PinnedAgentName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sent: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, Identity};
    use crate::tunnel::{TunnelError, client_config, connect, server_config};
    use tokio::net::TcpListener;

    #[test]
    fn the_server_name_is_what_precedes_the_at() {
        assert_eq!(split_server_name("10.0.0.1:443"), (None, "10.0.0.1:443"));
        assert_eq!(split_server_name("a.apps.sim@10.0.0.1:443"), (Some("a.apps.sim"), "10.0.0.1:443"));
        assert_eq!(sni_for("10.0.0.1:443"), ServerName::try_from(Role::Agent.dns_name()).ok());
        assert_eq!(sni_for("a.apps.sim@h:1"), ServerName::try_from("a.apps.sim").ok());
        assert_eq!(sni_for("10.0.0.9@h:1"), None);
        assert_eq!(sni_for("bad name@h:1"), None);
    }

    /// An agent that accepts one connection and returns the SNI the client sent.
    async fn agent(identity: &Identity) -> (String, tokio::task::JoinHandle<Option<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(identity).unwrap());
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let stream = acceptor.accept(tcp).await.ok()?;
            stream.get_ref().1.server_name().map(str::to_owned)
        });
        (addr, served)
    }

    #[tokio::test]
    async fn the_route_host_is_sent_and_the_agent_name_is_verified() {
        let generated = certs::generate().unwrap();
        let agent_identity = Identity::from_generated(&generated, Role::Agent).unwrap();
        let coordinator = Identity::from_generated(&generated, Role::Coordinator).unwrap();
        let (addr, served) = agent(&agent_identity).await;
        let config = client_config(&coordinator).unwrap();
        connect(&format!("agent-v-ns.apps.target.sim@{addr}"), config.clone(), None).await.unwrap();
        assert_eq!(served.await.unwrap().as_deref(), Some("agent-v-ns.apps.target.sim"));
        // Without a name, the role's name, as before.
        let (addr, served) = agent(&agent_identity).await;
        connect(&addr, config, None).await.unwrap();
        assert_eq!(served.await.unwrap().as_deref(), Some(Role::Agent.dns_name()));
    }

    #[tokio::test]
    async fn an_agent_of_another_ca_is_refused_whatever_name_is_sent() {
        let ours = certs::generate().unwrap();
        let theirs = certs::generate().unwrap();
        let coordinator = Identity::from_generated(&ours, Role::Coordinator).unwrap();
        let stranger = Identity::from_generated(&theirs, Role::Agent).unwrap();
        for name in ["agent-v-ns.apps.target.sim@", ""] {
            let (addr, _served) = agent(&stranger).await;
            let error =
                connect(&format!("{name}{addr}"), client_config(&coordinator).unwrap(), None).await.unwrap_err();
            assert!(matches!(error, TunnelError::Handshake { .. }), "{error:?}");
        }
        // A certificate of our CA for another role (the coordinator's) is no agent either.
        let (addr, _served) = agent(&coordinator).await;
        let error = connect(&format!("coordinator.mover.invalid@{addr}"), client_config(&coordinator).unwrap(), None)
            .await
            .unwrap_err();
        assert!(matches!(error, TunnelError::Handshake { .. }), "{error:?}");
    }
}
