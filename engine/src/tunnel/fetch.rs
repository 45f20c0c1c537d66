//! `mover certs fetch`: the seed's `openssl s_client | sed` recipe, built in. Connects to a TLS
//! endpoint *without trusting it*, records the certificate chain it presents, and hands it back
//! to be shown (subject, issuer, validity, SHA-256 fingerprint) and written as a PEM bundle.
//! The chain is recorded inside certificate verification, so it is captured even when the
//! server then insists on a client certificate (as mover agents do).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::{HANDSHAKE_TIMEOUT, Proxy, TunnelError, provider};

/// Records the presented chain and accepts it: used only to *show* certificates, never to
/// send data.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().expect("chain lock");
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|cert| cert.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Connects to `addr` (`HOST:PORT`), through `proxy` when given, and returns the certificate
/// chain the server presents, leaf first. Nothing is verified.
pub async fn fetch_chain(addr: &str, proxy: Option<&Proxy>) -> Result<Vec<CertificateDer<'static>>, TunnelError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_owned()).unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid"));
    let provider = provider();
    let recorder =
        Arc::new(Recorder { chain: Mutex::new(Vec::new()), algorithms: provider.signature_verification_algorithms });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TunnelError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let dial = async {
        let tcp = super::dial_tcp(addr, proxy).await?;
        // The handshake may fail after the certificate was seen (client certificate required):
        // what matters is the recorded chain.
        let result = TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
        Ok::<_, TunnelError>(result.err())
    };
    let failure = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
        .await
        .map_err(|_| TunnelError::Timeout { addr: addr.to_owned() })??;
    let chain = std::mem::take(&mut *recorder.chain.lock().expect("chain lock"));
    if chain.is_empty() {
        return Err(TunnelError::Handshake {
            addr: addr.to_owned(),
            source: failure.unwrap_or_else(|| std::io::Error::other("the server presented no certificate")),
        });
    }
    Ok(chain)
}
