//! Which registry certificates are trusted: the platform's roots plus a CA bundle, and, as Go
//! and skopeo do, a certificate of the bundle for the server that presents exactly it.
//!
//! MTC users make their bundle with `openssl s_client | sed`, which yields the server's own
//! certificate; `mover certs fetch` yields the same when a registry presents its leaf alone; an
//! `openssl req -x509` certificate is a CA used as its own server certificate. None of them
//! builds a chain to a root, so the normal check fails (unknown issuer, or a CA used as an end
//! entity). Such a failure is forgiven only when the presented end-entity certificate is
//! byte-identical to one in the bundle, and then the name and the validity period are still
//! checked. The pinned certificate vouches for nothing else: it is never a root for another
//! certificate. Handshake signatures are verified as always.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

/// The platform verifier with the bundle as extra roots, and the bundle's certificates pinned.
#[derive(Debug)]
pub(super) struct BundleVerifier {
    chain: Arc<dyn ServerCertVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl BundleVerifier {
    /// Trusts the platform's roots, `bundle` as extra roots, and each certificate of `bundle`
    /// for a server presenting exactly it.
    pub(super) fn new(
        bundle: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<BundleVerifier, Error> {
        let chain = rustls_platform_verifier::Verifier::new_with_extra_roots(bundle.clone(), provider)?;
        Ok(BundleVerifier { chain: Arc::new(chain), pinned: bundle })
    }
}

/// Whether the normal check failed only for want of a trusted issuer.
fn no_trusted_issuer(error: &Error) -> bool {
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => true,
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
        }
        _ => false,
    }
}

/// The checks a pinned certificate still passes: it names `server_name` and is valid `now`.
fn check_name_and_time(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    cert.verify_is_valid_for_subject_name(server_name)
        .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now_seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if now_seconds < validity.not_before.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now_seconds > validity.not_after.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(error)
                if no_trusted_issuer(&error) && self.pinned.iter().any(|pin| pin.as_ref() == end_entity.as_ref()) =>
            {
                check_name_and_time(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
