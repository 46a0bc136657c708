//! TLS client settings shared by the PostgreSQL and memcached stores.
//!
//! rustls with its default provider (aws-lc-rs): a memory-safe protocol
//! stack with no legacy protocol versions or ciphers to turn off (TLS 1.2
//! and 1.3 only) and post-quantum key exchange where the server has it. Three levels of checking,
//! named after libpq's `sslmode`s, cover what both servers' users expect:
//! encryption only (`require`), a certificate chain to a trusted root
//! (`verify-ca`), and the chain plus the server's name (`verify-full`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing (libpq's `require` without a root file).
    Nothing,
    /// The chain must lead to a trusted root; any name (`verify-ca`).
    Chain,
    /// The chain and the name the client connected to (`verify-full`).
    Full,
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store (libpq's `sslrootcert=system`).
    System,
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// DER certificates handed over directly (read from a Python
    /// `ssl.SSLContext`).
    Der(Vec<Vec<u8>>),
}

/// A client certificate and its key, for servers that ask for one.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// PEM: the client certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, PKCS#1 or SEC1, or encrypted PKCS#8 with `password`.
    pub key: PathBuf,
    pub password: Option<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("password", &self.password.as_ref().map(|_| "<not shown>"))
            .finish()
    }
}

/// What a store's TLS connections check and present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub verify: Verify,
    /// Needed unless `verify` is `Nothing`.
    pub roots: Option<Roots>,
    pub identity: Option<Identity>,
    /// PEM files of certificate revocation lists: a server certificate
    /// they list is refused, and so is one whose issuer has no list here
    /// (as OpenSSL's CRL check does). Empty: no revocation check.
    pub crls: Vec<PathBuf>,
}

/// A rustls client configuration for `settings`, or why none can be made
/// (a file that cannot be read, a key that does not match, a check that
/// has nothing to check against). Read once, when a store is built.
pub fn client_config(settings: &Settings) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.verify, &settings.roots) {
        (Verify::Nothing, _) => Arc::new(AnyCertificate(provider.signature_verification_algorithms)),
        (verify, Some(roots)) => {
            let store = Arc::new(root_store(roots)?);
            let mut chain = WebPkiServerVerifier::builder_with_provider(store, provider);
            if !settings.crls.is_empty() {
                chain = chain
                    .with_crls(read_crls(&settings.crls)?)
                    .only_check_end_entity_revocation();
            }
            let chain = chain
                .build()
                .map_err(|e| format!("TLS: cannot check certificates: {e}"))?;
            if verify == Verify::Full {
                chain
            } else {
                Arc::new(AnyName(chain))
            }
        }
        (_, None) => {
            return Err("TLS: checking the server's certificate needs trusted root certificates (a CA file)".into());
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match &settings.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let (certs, key) = read_identity(identity)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!(
                    "TLS: the client certificate {} and key {} do not go together: {e}",
                    identity.cert.display(),
                    identity.key.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

fn root_store(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs = match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!("TLS: no trusted certificates found in the system's store{why}"));
            }
            found.certs
        }
        Roots::File(path) => read_certs(path)?,
        Roots::Der(ders) => ders.iter().map(|der| CertificateDer::from(der.clone())).collect(),
    };
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        let source = match roots {
            Roots::File(path) => path.display().to_string(),
            _ => "the given CA certificates".into(),
        };
        return Err(format!("TLS: no usable CA certificate in {source}"));
    }
    Ok(store)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS: cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS: no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

fn read_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let mut crls = Vec::new();
    for path in paths {
        let found = CertificateRevocationListDer::pem_file_iter(path)
            .and_then(|crls| crls.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("TLS: cannot read revocation lists from {}: {e}", path.display()))?;
        if found.is_empty() {
            return Err(format!("TLS: no PEM revocation list (X509 CRL) in {}", path.display()));
        }
        crls.extend(found);
    }
    Ok(crls)
}

fn read_identity(identity: &Identity) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = read_certs(&identity.cert)?;
    let unreadable = |e: &dyn fmt::Display| format!("TLS: cannot read the key {}: {e}", identity.key.display());
    let pem = std::fs::read(&identity.key).map_err(|e| unreadable(&e))?;
    let key = if let Some(password) = &identity.password {
        decrypt_key(&pem, password).map_err(|e| unreadable(&e))?
    } else {
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            if pem.windows(9).any(|w| w == b"ENCRYPTED") {
                unreadable(&"it is encrypted: give its password (sslpassword)")
            } else {
                unreadable(&e)
            }
        })?
    };
    Ok((certs, key))
}

/// An encrypted PKCS#8 key (`-----BEGIN ENCRYPTED PRIVATE KEY-----`, as
/// `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes) decrypted with `password`.
fn decrypt_key(pem: &[u8], password: &str) -> Result<PrivateKeyDer<'static>, String> {
    use pkcs8::der::Decode;
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let (label, document) =
        pkcs8::Document::from_pem(text).map_err(|e| format!("not an encrypted PKCS#8 PEM key ({e})"))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(format!(
            "a password was given, but the key is {label:?}, not an encrypted PKCS#8 key (ENCRYPTED PRIVATE KEY)"
        ));
    }
    let encrypted = pkcs8::EncryptedPrivateKeyInfo::from_der(document.as_bytes()).map_err(|e| e.to_string())?;
    let plain = encrypted
        .decrypt(password)
        .map_err(|_| "wrong password, or an encryption scheme that is not supported".to_owned())?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plain.as_bytes().to_vec(),
    )))
}

/// Accepts any certificate, but still checks that the server holds the
/// key of the certificate it sent (the handshake's signatures).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The full chain check, except that the certificate may name any host
/// (`verify-ca`). The name is checked last, so a name error means the
/// chain itself was good.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS failure described for a person: rustls's certificate errors say
/// what was wrong ("certificate not valid for name ..."), and an alert
/// from the server says it refused ours.
pub fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "the server's certificate is revoked (listed in the given revocation list)".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            "the server's certificate cannot be checked: no revocation list from its issuer was given".into()
        }
        rustls::Error::InvalidCertificate(why) => format!("the server's certificate was rejected: {why}"),
        rustls::Error::AlertReceived(alert) => format!("the server refused the TLS handshake ({alert:?})"),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_need_roots() {
        let settings = Settings {
            verify: Verify::Full,
            roots: None,
            identity: None,
            crls: Vec::new(),
        };
        let error = client_config(&settings).unwrap_err();
        assert!(error.contains("root certificates"), "{error}");
    }

    #[test]
    fn encryption_only_needs_nothing() {
        let settings = Settings {
            verify: Verify::Nothing,
            roots: None,
            identity: None,
            crls: Vec::new(),
        };
        assert!(client_config(&settings).is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let settings = Settings {
            verify: Verify::Chain,
            roots: Some(Roots::File("/nonexistent/ca.pem".into())),
            identity: None,
            crls: Vec::new(),
        };
        let error = client_config(&settings).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
