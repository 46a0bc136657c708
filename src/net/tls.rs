//! TLS towards one server of a network store: OPTIONS `TLS` as Python
//! hands it over, the rustls configuration made from it (see `crate::tls`)
//! and the name each server's certificate must carry.
//!
//! The configuration is made once, when the client is built: it reads its
//! CA, certificate and key files then, so a file that cannot be read is a
//! configuration error at startup rather than a failure of the first
//! request. Errors are the message alone; each store wraps it in its own
//! error type.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::tls::{self, Identity, Roots, Settings, Verify};

use super::address::Address;

/// OPTIONS `TLS` as Python's option reading hands it over (every field
/// given, `None` where not set).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// `"full"` (chain and name), `"ca"` (chain only) or `"none"`.
    #[serde(deserialize_with = "verify_level")]
    pub verify: Verify,
    /// PEM file of trusted CA certificates.
    #[serde(deserialize_with = "Option::deserialize")]
    pub ca_file: Option<PathBuf>,
    /// Trusted CA certificates in DER (from a Python `ssl.SSLContext`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub ca_certs: Option<Vec<Der>>,
    /// Client certificate chain (PEM), for a server that asks for one.
    #[serde(deserialize_with = "Option::deserialize")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM; encrypted PKCS#8 with `key_password`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub key_file: Option<PathBuf>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub key_password: Option<Secret>,
    /// The name the server's certificate must carry, and the SNI sent
    /// (default: the host in LOCATION).
    #[serde(deserialize_with = "Option::deserialize")]
    pub server_name: Option<String>,
}

fn verify_level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Verify, D::Error> {
    match String::deserialize(deserializer)?.as_str() {
        "full" => Ok(Verify::Full),
        "ca" => Ok(Verify::Chain),
        "none" => Ok(Verify::Nothing),
        other => Err(de::Error::custom(format!(
            "TLS VERIFY must be \"full\", \"ca\" or \"none\", not {other:?}"
        ))),
    }
}

/// A DER certificate, taken from Python `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Der(pub Vec<u8>);

impl<'de> Deserialize<'de> for Der {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Der, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DER certificate as bytes")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }

            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
        }
        deserializer.deserialize_byte_buf(Bytes).map(Der)
    }
}

/// A password: never shown by `Debug`, so no log or error repeats it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<not shown>")
    }
}

/// TLS towards one server: the shared rustls configuration, and the name
/// its certificate must carry.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) name: ServerName<'static>,
}

impl TlsTarget {
    /// This target for the process building its servers (the first, or a
    /// forked child): TLS session resumption gets a store of its own, as a
    /// parent's thread may have held the old store's lock when it forked.
    pub(crate) fn for_this_process(&self) -> TlsTarget {
        let mut config = ClientConfig::clone(&self.config);
        config.resumption = Resumption::default();
        TlsTarget {
            config: Arc::new(config),
            name: self.name.clone(),
        }
    }
}

/// The rustls configuration for OPTIONS `TLS`. Roots: the CA file, else
/// the certificates from an `ssl.SSLContext`, else the system's.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let roots = match (options.verify, &options.ca_file, &options.ca_certs) {
        (Verify::Nothing, _, _) => None,
        (_, Some(file), _) => Some(Roots::File(file.clone())),
        (_, None, Some(ders)) if !ders.is_empty() => Some(Roots::Der(ders.iter().map(|d| d.0.clone()).collect())),
        (_, None, _) => Some(Roots::System),
    };
    let identity = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => Some(Identity {
            cert: cert.clone(),
            key: key.clone(),
            password: options.key_password.as_ref().map(|p| p.0.clone()),
        }),
        (None, None) if options.key_password.is_none() => None,
        _ => {
            return Err("TLS: CERT_FILE and KEY_FILE go together (KEY_PASSWORD only with them)".into());
        }
    };
    let settings = Settings {
        verify: options.verify,
        roots,
        identity,
        crls: Vec::new(),
    };
    tls::client_config(&settings)
}

/// The name a server's certificate must carry: `SERVER_NAME`, else the
/// LOCATION host (a DNS name or an IP address). `product` names the
/// server software in the error for a Unix socket ("memcached"): the
/// stores' servers speak TLS on TCP ports only.
pub(crate) fn server_name(
    address: &Address,
    configured: Option<&str>,
    product: &str,
) -> Result<ServerName<'static>, String> {
    let host = match (address, configured) {
        (Address::Unix(_), _) => {
            return Err(format!(
                "TLS: {product} speaks TLS on TCP ports only, not on the Unix socket {address}"
            ));
        }
        (_, Some(name)) => name,
        (Address::Tcp { host, .. }, None) => host.as_str(),
    };
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("TLS: {host:?} is not a valid server name for a certificate check"))
}
