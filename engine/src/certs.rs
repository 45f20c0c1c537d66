//! Per-migration certificates: one CA, and leaf certificates that carry a role.
//!
//! The role is carried as a DNS subject alternative name under the reserved `.invalid` domain:
//! [`Role::Agent`] certificates name `agent.mover.invalid` (and `localhost`, `127.0.0.1`),
//! [`Role::Coordinator`] certificates name `coordinator.mover.invalid`. A TLS client always
//! verifies the server as `agent.mover.invalid`; a server checks which name the client's
//! certificate is valid for. Both names are checked by webpki against the migration's CA, so a
//! role cannot be claimed without a certificate the CA signed for it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Who holds a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `mover` CLI: may open sessions and ask agents to push.
    Coordinator,
    /// A `mover-agent`: serves volumes, and pushes into sessions a coordinator opened.
    Agent,
}

impl Role {
    /// The DNS name that marks the role in a certificate.
    #[must_use]
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator.mover.invalid",
            Role::Agent => "agent.mover.invalid",
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file_stem())
    }
}

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating a key or certificate failed.
    #[error("could not generate certificates")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("`{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file exists and replacing was not asked for.
    #[error("`{0}` already exists")]
    Exists(PathBuf),
    /// A certificate directory or file that others may write.
    #[error(
        "`{}` can be written by users other than its owner (mode {mode:04o}): they could replace the \
         migration's certificates; run `chmod go-w {}`",
        path.display(),
        path.display()
    )]
    Writable {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM file held nothing usable.
    #[error("`{path}` holds no {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// PEM given as bytes held nothing usable.
    #[error("the {part} PEM holds no {what}")]
    NoPem {
        /// Which of the identity's parts.
        part: PemPart,
        /// What was expected.
        what: &'static str,
    },
}

/// The parts of an [`Identity`] given as PEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemPart {
    /// The migration CA's certificate.
    Ca,
    /// The holder's certificate chain.
    Certificate,
    /// The holder's private key.
    Key,
}

impl std::fmt::Display for PemPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemPart::Ca => "CA certificate",
            PemPart::Certificate => "certificate",
            PemPart::Key => "private key",
        })
    }
}

/// An identity's PEM, as bytes: from files, a Kubernetes Secret, or generated.
#[derive(Debug, Clone, Copy)]
pub struct IdentityPem<'a> {
    /// The migration CA's certificate (the first one is used).
    pub ca: &'a [u8],
    /// The holder's certificate chain.
    pub cert: &'a [u8],
    /// The holder's private key.
    pub key: &'a [u8],
}

/// A PEM certificate and key.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key (PKCS#8), PEM.
    pub key: String,
}

/// A freshly generated set of certificates for one migration.
#[derive(Debug, Clone)]
pub struct MigrationCerts {
    /// The CA.
    pub ca: PemPair,
    /// The agents' certificate.
    pub agent: PemPair,
    /// The coordinator's certificate.
    pub coordinator: PemPair,
}

/// How long generated certificates are valid.
pub const VALIDITY_DAYS: i64 = 90;

fn leaf(role: Role, issuer: &Issuer<'_, KeyPair>) -> Result<PemPair, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("mover {role}"));
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::DnsName(role.dns_name().try_into()?)];
    if role == Role::Agent {
        params.subject_alt_names.push(SanType::DnsName("localhost".try_into()?));
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    let cert = params.signed_by(&key, issuer)?;
    Ok(PemPair { cert: cert.pem(), key: key.serialize_pem() })
}

fn set_validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    params.not_before = (now - day).into();
    params.not_after = (now + day * u32::try_from(VALIDITY_DAYS).expect("small")).into();
}

/// Generates a CA and the agent and coordinator certificates.
pub fn generate() -> Result<MigrationCerts, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "mover migration CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params);
    let ca_cert = params.self_signed(&ca_key)?;
    let ca = PemPair { cert: ca_cert.pem(), key: ca_key.serialize_pem() };
    let issuer = Issuer::new(params, ca_key);
    Ok(MigrationCerts { agent: leaf(Role::Agent, &issuer)?, coordinator: leaf(Role::Coordinator, &issuer)?, ca })
}

/// The files [`write_dir`] writes, in order, with their modes.
#[must_use]
pub fn file_names() -> [(&'static str, u32); 6] {
    [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("agent.crt", 0o644),
        ("agent.key", 0o600),
        ("coordinator.crt", 0o644),
        ("coordinator.key", 0o600),
    ]
}

/// The files a node that runs an agent needs, and all it should hold: `ca.key` would let it
/// mint certificates, `coordinator.key` act as the coordinator.
pub const NODE_FILES: [&str; 3] = ["ca.crt", "agent.crt", "agent.key"];

/// Writes a migration's certificates into `dir` (created mode 0700 if needed). Refuses to replace
/// existing files unless `force`. Returns the paths written.
pub fn write_dir(dir: &Path, certs: &MigrationCerts, force: bool) -> Result<Vec<PathBuf>, CertError> {
    write_files(dir, &files(certs), force)
}

/// Writes only the [`NODE_FILES`] into `dir`, as [`write_dir`] does: the set to copy to nodes.
pub fn write_agent_dir(dir: &Path, certs: &MigrationCerts, force: bool) -> Result<Vec<PathBuf>, CertError> {
    let node: Vec<_> = files(certs).into_iter().filter(|(name, ..)| NODE_FILES.contains(name)).collect();
    write_files(dir, &node, force)
}

/// Each file of a migration with its mode and content.
fn files(certs: &MigrationCerts) -> Vec<(&'static str, u32, &str)> {
    let contents = [
        &certs.ca.cert,
        &certs.ca.key,
        &certs.agent.cert,
        &certs.agent.key,
        &certs.coordinator.cert,
        &certs.coordinator.key,
    ];
    file_names().into_iter().zip(contents).map(|((name, mode), content)| (name, mode, content.as_str())).collect()
}

fn write_files(dir: &Path, files: &[(&str, u32, &str)], force: bool) -> Result<Vec<PathBuf>, CertError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Io { path: dir.to_owned(), source })?;
    check_not_writable_by_others(dir)?;
    // All or nothing: no file is written when one is in the way.
    if !force {
        for (name, ..) in files {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(CertError::Exists(path));
            }
        }
    }
    let mut written = Vec::new();
    for (name, mode, content) in files {
        let path = dir.join(name);
        write_file(&path, content.as_bytes(), *mode, force)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `contents` to `path` with `mode` through a temporary file beside it and a rename: a key
/// is never readable by others, even for a moment, and a symlink at `path` (dangling or not) is
/// replaced, never followed. Without `replace`, anything already at `path` is left alone and
/// reported as [`CertError::Exists`], atomically (no check-then-write window).
pub fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_owned(), source };
    let name = path.file_name().ok_or_else(|| io(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    // `create_new` is O_EXCL: it neither follows nor reuses whatever sits at the temporary name.
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let installed = written.and_then(|()| if replace { fs::rename(&tmp, path) } else { rename_new(&tmp, path) });
    if let Err(error) = installed {
        let _ = fs::remove_file(&tmp);
        return Err(if error.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.to_owned())
        } else {
            io(error)
        });
    }
    Ok(())
}

/// Renames `from` to `to` unless something is at `to` (`AlreadyExists`). File systems without
/// `RENAME_NOREPLACE` (NFS) get a hard link and an unlink, which refuse an existing name too.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        result => result.map_err(std::io::Error::from),
    }
}

/// Refuses a certificate file or directory that users other than its owner may write: whoever
/// can write the directory can rename another `ca.crt` into it, whoever can write a file can
/// rewrite it. A sticky directory (mode 1777, as Kubernetes mounts a Secret: root's symlinks
/// into a 0755 directory) passes: there, others cannot rename or remove entries they do not
/// own. Symlinks are followed, and the directory a file really lies in is checked too.
fn check_not_writable_by_others(path: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = fs::metadata(path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
    let mode = metadata.permissions().mode() & 0o7777;
    let sticky_dir = metadata.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(CertError::Writable { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Checks a file [`Identity::load`] reads, and the directory it really lies in.
fn check_loaded_file(path: &Path) -> Result<(), CertError> {
    check_not_writable_by_others(path)?;
    let real = fs::canonicalize(path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
    match real.parent() {
        Some(parent) => check_not_writable_by_others(parent),
        None => Ok(()),
    }
}

/// Everything one side needs for mutual TLS: its chain and key, and the migration's CA.
#[derive(Debug)]
pub struct Identity {
    /// Our role.
    pub role: Role,
    /// Our certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
    /// The migration CA.
    pub ca: CertificateDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { role: self.role, chain: self.chain.clone(), key: self.key.clone_key(), ca: self.ca.clone() }
    }
}

impl Identity {
    /// Loads `ca.crt` and the role's certificate and key from a certificate directory.
    /// Refuses a directory or file that others may write ([`CertError::Writable`]).
    pub fn load(dir: &Path, role: Role) -> Result<Identity, CertError> {
        check_not_writable_by_others(dir)?;
        let names = ["ca.crt".to_owned(), format!("{}.crt", role.file_stem()), format!("{}.key", role.file_stem())];
        for name in &names {
            check_loaded_file(&dir.join(name))?;
        }
        let read = |path: &Path| fs::read(path).map_err(|source| CertError::Io { path: path.to_owned(), source });
        let paths = names.map(|name| dir.join(name));
        let [ca, cert, key] = [read(&paths[0])?, read(&paths[1])?, read(&paths[2])?];
        Identity::from_pem(role, IdentityPem { ca: &ca, cert: &cert, key: &key }).map_err(|error| match error {
            CertError::NoPem { part, what } => {
                let file = match part {
                    PemPart::Ca => 0,
                    PemPart::Certificate => 1,
                    PemPart::Key => 2,
                };
                CertError::Empty { path: paths[file].clone(), what }
            }
            other => other,
        })
    }

    /// Builds an identity from PEM bytes (a Kubernetes Secret's, say); fails, naming the part,
    /// when one holds nothing usable.
    pub fn from_pem(role: Role, pem: IdentityPem<'_>) -> Result<Identity, CertError> {
        let certs = |part, bytes: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().unwrap_or_default();
            if certs.is_empty() { Err(CertError::NoPem { part, what: "PEM certificate" }) } else { Ok(certs) }
        };
        let ca = certs(PemPart::Ca, pem.ca)?.remove(0);
        let chain = certs(PemPart::Certificate, pem.cert)?;
        let key = PrivateKeyDer::from_pem_slice(pem.key)
            .map_err(|_| CertError::NoPem { part: PemPart::Key, what: "PEM private key" })?;
        Ok(Identity { role, chain, key, ca })
    }

    /// Builds an identity from generated PEM (the in-process copy uses ephemeral ones).
    pub fn from_generated(certs: &MigrationCerts, role: Role) -> Result<Identity, CertError> {
        let pair = match role {
            Role::Agent => &certs.agent,
            Role::Coordinator => &certs.coordinator,
        };
        let pem = IdentityPem { ca: certs.ca.cert.as_bytes(), cert: pair.cert.as_bytes(), key: pair.key.as_bytes() };
        Identity::from_pem(role, pem)
    }

    /// The migration id: the first 8 bytes of the blake3 of the CA certificate, in hex.
    #[must_use]
    pub fn migration_id(&self) -> String {
        blake3::hash(&self.ca).to_hex()[..16].to_string()
    }
}

/// Reads all certificates of a PEM file; fails when there is none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = fs::read(path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().unwrap_or_default();
    if certs.is_empty() {
        return Err(CertError::Empty { path: path.to_owned(), what: "PEM certificate" });
    }
    Ok(certs)
}

/// What a user needs to see before trusting a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity (RFC 2822).
    pub not_before: String,
    /// End of validity (RFC 2822).
    pub not_after: String,
    /// SHA-256 of the DER, as colon-separated upper-case hex (as `openssl x509 -fingerprint`).
    pub sha256: String,
}

/// Describes a DER certificate; `None` if it does not parse as X.509.
#[must_use]
pub fn describe(der: &CertificateDer<'_>) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let sha256 = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let validity = cert.validity();
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: validity.not_before.to_rfc2822().unwrap_or_else(|e| e),
        not_after: validity.not_after.to_rfc2822().unwrap_or_else(|e| e),
        sha256,
    })
}

/// Why a certificate chain did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Signed by another CA (another `mover certs init`).
    #[error("not issued by this migration's CA (`ca.crt`): it comes from another `mover certs init`")]
    OtherCa,
    /// Past its validity.
    #[error("expired")]
    Expired,
    /// Before its validity.
    #[error("not valid yet (check the clocks)")]
    NotYetValid,
    /// Anything else webpki refuses.
    #[error("does not verify: {0}")]
    Invalid(String),
}

impl From<webpki::Error> for ChainError {
    fn from(error: webpki::Error) -> Self {
        match error {
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => ChainError::OtherCa,
            webpki::Error::CertExpired { .. } => ChainError::Expired,
            webpki::Error::CertNotValidYet { .. } => ChainError::NotYetValid,
            other => ChainError::Invalid(format!("{other:?}")),
        }
    }
}

/// Checks that `chain` (leaf first) chains to the migration CA `ca`, is valid at `at`, and is
/// usable for `role` (server authentication for agents, client authentication for coordinators).
pub fn verify_chain(
    ca: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    role: Role,
    at: std::time::SystemTime,
) -> Result<(), ChainError> {
    let anchor = webpki::anchor_from_trusted_cert(ca)?;
    let leaf = chain.first().ok_or(ChainError::Invalid("empty chain".into()))?;
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let usage = match role {
        Role::Agent => webpki::KeyUsage::server_auth(),
        Role::Coordinator => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &chain[1..],
        rustls::pki_types::UnixTime::since_unix_epoch(since_epoch),
        usage,
        None,
        None,
    )?;
    Ok(())
}

/// When a certificate stops being valid; `None` if it does not parse.
#[must_use]
pub fn not_after(der: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// PEM text of a certificate.
#[must_use]
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity from PEM bytes (a Secret's) is the one the files give.
    #[test]
    fn an_identity_from_pem_bytes_equals_the_one_from_files() {
        let generated = generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        write_dir(&certs_dir, &generated, false).unwrap();
        let pair = &generated.agent;
        let pem =
            IdentityPem { ca: generated.ca.cert.as_bytes(), cert: pair.cert.as_bytes(), key: pair.key.as_bytes() };
        let from_pem = Identity::from_pem(Role::Agent, pem).unwrap();
        let from_files = Identity::load(&certs_dir, Role::Agent).unwrap();
        assert_eq!(from_pem.role, Role::Agent);
        assert_eq!(from_pem.ca, from_files.ca);
        assert_eq!(from_pem.chain, from_files.chain);
        assert_eq!(from_pem.key.secret_der(), from_files.key.secret_der());
        assert_eq!(from_pem.migration_id(), from_files.migration_id());
    }

    /// Bytes with nothing usable name the part; a file with nothing usable names the file.
    #[test]
    fn empty_pem_names_the_part_or_the_file() {
        let generated = generate().unwrap();
        let pair = &generated.coordinator;
        let ca = generated.ca.cert.as_bytes();
        let no_key = IdentityPem { ca, cert: pair.cert.as_bytes(), key: b"not a key" };
        let error = Identity::from_pem(Role::Coordinator, no_key).unwrap_err();
        assert!(matches!(error, CertError::NoPem { part: PemPart::Key, .. }), "{error}");
        assert_eq!(error.to_string(), "the private key PEM holds no PEM private key");
        let no_ca = IdentityPem { ca: b"", cert: pair.cert.as_bytes(), key: pair.key.as_bytes() };
        let error = Identity::from_pem(Role::Coordinator, no_ca).unwrap_err();
        assert!(matches!(error, CertError::NoPem { part: PemPart::Ca, .. }), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        write_dir(&certs_dir, &generated, false).unwrap();
        write_file(&certs_dir.join("coordinator.key"), b"garbage", 0o600, true).unwrap();
        match Identity::load(&certs_dir, Role::Coordinator).unwrap_err() {
            CertError::Empty { path, what } => {
                assert_eq!(path, certs_dir.join("coordinator.key"));
                assert_eq!(what, "PEM private key");
            }
            other => panic!("unexpected error: {other}"),
        }
    }
}
