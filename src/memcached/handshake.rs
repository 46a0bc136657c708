//! What a new connection goes through before its first request: the TLS
//! handshake (OPTIONS `TLS`), then memcached's ASCII authentication
//! (OPTIONS `USERNAME` and `PASSWORD`, for a server started with `-Y`).
//!
//! Both are set up once, when the client is built: the rustls
//! configuration reads its CA, certificate and key files then, so a file
//! that cannot be read is a configuration error at startup rather than a
//! failure of the first request.

use std::sync::Arc;

use crate::net::{self, Address, Secret, TlsOptions, TlsTarget};

use super::error::{Error, Result};

/// A user of memcached's authfile (`-Y`).
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    password: Secret,
}

impl Credentials {
    fn new(username: &str, password: &Secret) -> Result<Credentials> {
        // The login is one line, "<user> <password>", and the authfile's
        // "user:password": memcached (1.6.18) matches no password with a
        // space in it, and a line break would end the line.
        let unfit = |c: char| c.is_whitespace() || c.is_control();
        if username.is_empty() || username.chars().any(|c| unfit(c) || c == ':') {
            return Err(Error::Config(
                "USERNAME must be non-empty, without spaces, control characters or ':'".into(),
            ));
        }
        if password.0.is_empty() || password.0.chars().any(unfit) {
            return Err(Error::Config(
                "PASSWORD must be non-empty, without spaces or control characters".into(),
            ));
        }
        Ok(Credentials {
            username: username.to_owned(),
            password: password.clone(),
        })
    }

    /// The login request: a `set` whose data is "<user> <password>"
    /// (memcached's authfile scheme; the key is ignored, nothing is
    /// stored).
    pub(crate) fn login_request(&self) -> Vec<u8> {
        let data = format!("{} {}", self.username, self.password.0);
        let mut request = format!("set racefree-login 0 0 {}\r\n", data.len()).into_bytes();
        request.extend_from_slice(data.as_bytes());
        request.extend_from_slice(b"\r\n");
        request
    }
}

/// What a new connection to one server does before its first request.
/// The default is nothing: plain text, no login.
#[derive(Clone, Default)]
pub(crate) struct Handshake {
    pub(crate) tls: Option<TlsTarget>,
    pub(crate) credentials: Option<Arc<Credentials>>,
}

impl Handshake {
    /// This handshake for the process building its servers (the first, or
    /// a forked child): see `TlsTarget::for_this_process`.
    pub(crate) fn for_this_process(&self) -> Handshake {
        Handshake {
            tls: self.tls.as_ref().map(TlsTarget::for_this_process),
            credentials: self.credentials.clone(),
        }
    }

    /// Whether a new connection must be confirmed with a round trip
    /// before it is used: a TLS 1.3 server refuses a client certificate
    /// (or the lack of one) only after the client finished its side of
    /// the handshake, and a login needs to know whether the server asks
    /// for one. Plain connections without a login skip it.
    pub(crate) fn confirms(&self) -> bool {
        self.tls.is_some() || self.credentials.is_some()
    }

    /// One handshake per server (in `addresses`' order), from the TLS and
    /// login settings; every file is read and every name checked here.
    pub(crate) fn for_servers(
        addresses: &[Address],
        tls: Option<&TlsOptions>,
        username: Option<&str>,
        password: Option<&Secret>,
    ) -> Result<Vec<Handshake>> {
        let credentials = match (username, password) {
            (Some(username), Some(password)) => Some(Arc::new(Credentials::new(username, password)?)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "USERNAME and PASSWORD go together: give both or neither".into(),
                ));
            }
        };
        let config = tls.map(net::client_config).transpose().map_err(Error::Config)?;
        addresses
            .iter()
            .map(|address| {
                let tls = match (&config, tls) {
                    (Some(config), Some(options)) => Some(TlsTarget {
                        config: Arc::clone(config),
                        name: net::server_name(address, options.server_name.as_deref(), "memcached")
                            .map_err(Error::Config)?,
                    }),
                    _ => None,
                };
                Ok(Handshake {
                    tls,
                    credentials: credentials.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Verify;

    fn options(verify: Verify) -> TlsOptions {
        TlsOptions {
            verify,
            ca_file: None,
            ca_certs: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            server_name: None,
        }
    }

    fn handshakes(locations: &[&str], tls: Option<&TlsOptions>) -> Result<Vec<Handshake>> {
        let addresses: Vec<Address> = locations.iter().map(|l| Address::parse(l).unwrap()).collect();
        Handshake::for_servers(&addresses, tls, None, None)
    }

    #[test]
    fn tls_names_each_server_by_its_host_unless_told() {
        let plain = options(Verify::Nothing);
        let found = handshakes(&["127.0.0.1:1", "cache.example:2"], Some(&plain)).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|h| h.tls.as_ref().unwrap().name.to_str().into_owned())
            .collect();
        assert_eq!(names, ["127.0.0.1", "cache.example"]);
        let named = TlsOptions {
            server_name: Some("memcached.internal".into()),
            ..options(Verify::Nothing)
        };
        let found = handshakes(&["127.0.0.1:1"], Some(&named)).unwrap();
        assert_eq!(found[0].tls.as_ref().unwrap().name.to_str(), "memcached.internal");
    }

    #[test]
    fn tls_is_refused_on_unix_sockets() {
        let error = handshakes(&["unix:/tmp/mc.sock"], Some(&options(Verify::Nothing)))
            .err()
            .unwrap();
        assert!(error.to_string().contains("Unix socket"), "{error}");
        assert!(handshakes(&["unix:/tmp/mc.sock"], None).is_ok());
    }

    #[test]
    fn a_missing_ca_file_fails_at_once() {
        let tls = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..options(Verify::Full)
        };
        let error = handshakes(&["127.0.0.1:1"], Some(&tls)).err().unwrap();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let tls = TlsOptions {
            cert_file: Some("/tmp/client.pem".into()),
            ..options(Verify::Nothing)
        };
        let error = handshakes(&["127.0.0.1:1"], Some(&tls)).err().unwrap();
        assert!(error.to_string().contains("CERT_FILE and KEY_FILE"), "{error}");
    }

    #[test]
    fn credentials_are_checked_and_never_shown() {
        let addresses = [Address::parse("127.0.0.1:1").unwrap()];
        let secret = Secret("s3cret:pass".into());
        let found = Handshake::for_servers(&addresses, None, Some("alice"), Some(&secret)).unwrap();
        let credentials = found[0].credentials.as_ref().unwrap();
        assert_eq!(
            credentials.login_request(),
            b"set racefree-login 0 0 17\r\nalice s3cret:pass\r\n"
        );
        assert!(!format!("{credentials:?}").contains("s3cret"));
        assert!(Handshake::for_servers(&addresses, None, Some("alice"), None).is_err());
        assert!(Handshake::for_servers(&addresses, None, Some("al ice"), Some(&secret)).is_err());
        let broken = Secret("two words".into());
        let error = Handshake::for_servers(&addresses, None, Some("alice"), Some(&broken))
            .err()
            .unwrap();
        assert!(!error.to_string().contains("words"), "{error}");
    }
}
