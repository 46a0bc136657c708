//! libpq's TLS settings (`sslmode` and friends) for the store's connections.
//!
//! tokio-postgres knows `sslmode` disable/prefer/require only, and refuses
//! the other `ssl*` keys of a libpq DSN. So they are taken out of the DSN
//! (and out of Django's `DATABASES[...]["OPTIONS"]`) here and given the
//! meaning libpq gives them: which certificate checks `verify-ca` and
//! `verify-full` make, the root file `~/.postgresql/root.crt` that turns
//! them on by default, and the client certificate and key.

use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;

use crate::tls;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS (unchecked) only if the server refuses plain.
    Allow,
    /// TLS if the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is checked only if a root file exists.
    Require,
    /// TLS with a certificate chain to a root in `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// libpq's spelling.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS side of every connection of a store.
#[derive(Debug, Clone)]
pub struct Tls {
    pub mode: SslMode,
    /// None for `disable`.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

impl Tls {
    pub fn disabled() -> Tls {
        Tls {
            mode: SslMode::Disable,
            client: None,
        }
    }
}

/// The `ssl*` connection parameters, as libpq names them.
#[derive(Debug, Default)]
pub struct SslParams {
    mode: Option<SslMode>,
    rootcert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    password: Option<String>,
    crl: Option<String>,
}

impl SslParams {
    /// Take `name = value` if it is a TLS parameter (Ok(true)); Ok(false)
    /// for any other name; Err for a TLS parameter racefree cannot honour.
    pub fn take(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "sslmode" => self.mode = Some(SslMode::parse(value)?),
            "sslrootcert" => self.rootcert = Some(value.to_owned()),
            "sslcert" => self.cert = Some(value.to_owned()),
            "sslkey" => self.key = Some(value.to_owned()),
            "sslpassword" => self.password = Some(value.to_owned()),
            "sslcrl" => self.crl = Some(value.to_owned()).filter(|path| !path.is_empty()),
            // rustls always sends SNI for a host name, and never for an
            // address, as libpq with its default sslsni=1.
            "sslsni" if value == "1" => {}
            // libpq's default minimum; rustls has nothing older.
            "ssl_min_protocol_version" if matches!(value, "TLSv1" | "TLSv1.1" | "TLSv1.2") => {}
            // Compression was removed from TLS; libpq ignores it too.
            "sslcompression" => {}
            "sslsni"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "sslcrldir"
            | "sslcertmode"
            | "sslnegotiation"
            | "requiressl"
            | "gssencmode" => {
                return Err(format!(
                    "the PostgreSQL connection parameter {name}={value:?} is not supported by racefree's \
                     DatabaseCache (supported: sslmode, sslrootcert, sslcert, sslkey, sslpassword, sslcrl)"
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The TLS settings these parameters and libpq's default files give,
    /// with `home` as the user's home directory (libpq's `~/.postgresql`).
    pub fn tls(&self, home: Option<PathBuf>) -> Result<Tls, String> {
        let mode = self.mode.unwrap_or(SslMode::Prefer);
        if mode == SslMode::Disable {
            return Ok(Tls::disabled());
        }
        let default_file = |name: &str| home.as_ref().map(|home| home.join(".postgresql").join(name));
        let roots = match self.rootcert.as_deref() {
            Some("system") => Some(tls::Roots::System),
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.exists() {
                    return Err(format!("sslrootcert {} does not exist", path.display()));
                }
                Some(tls::Roots::File(path))
            }
            None => default_file("root.crt")
                .filter(|path| path.exists())
                .map(tls::Roots::File),
        };
        if mode.verifies() && roots.is_none() {
            return Err(format!(
                "sslmode={} needs the root certificate(s) to check the server against: give sslrootcert \
                 (a CA file, or \"system\"), or put them in ~/.postgresql/root.crt",
                mode.name()
            ));
        }
        // As libpq: a root file, when there is one, is always used; only
        // verify-full checks the name.
        let verify = match (mode, &roots) {
            (SslMode::VerifyFull, _) => tls::Verify::Full,
            (_, Some(_)) => tls::Verify::Chain,
            (_, None) => tls::Verify::Nothing,
        };
        let identity = self.identity(default_file("postgresql.crt"), default_file("postgresql.key"))?;
        // libpq's default, ~/.postgresql/root.crl, only where certificates
        // are checked at all.
        let crl = match &self.crl {
            Some(path) => Some(PathBuf::from(path)),
            None => default_file("root.crl").filter(|path| path.exists()),
        };
        let crls = match crl {
            Some(path) if verify != tls::Verify::Nothing => {
                if !path.exists() {
                    return Err(format!("sslcrl {} does not exist", path.display()));
                }
                vec![path]
            }
            _ => Vec::new(),
        };
        let settings = tls::Settings {
            verify,
            roots,
            identity,
            crls,
        };
        Ok(Tls {
            mode,
            client: Some(tls::client_config(&settings)?),
        })
    }

    fn identity(
        &self,
        default_cert: Option<PathBuf>,
        default_key: Option<PathBuf>,
    ) -> Result<Option<tls::Identity>, String> {
        let cert = match &self.cert {
            Some(path) => PathBuf::from(path),
            // libpq sends ~/.postgresql/postgresql.crt when it exists.
            None => match default_cert.filter(|path| path.exists()) {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        if !cert.exists() {
            return Err(format!("sslcert {} does not exist", cert.display()));
        }
        let key = match (&self.key, default_key) {
            (Some(path), _) => PathBuf::from(path),
            (None, Some(path)) => path,
            (None, None) => return Err("sslcert is set but sslkey is not".into()),
        };
        if !key.exists() {
            return Err(format!(
                "sslkey {} does not exist (the key of sslcert {})",
                key.display(),
                cert.display()
            ));
        }
        Ok(Some(tls::Identity {
            cert,
            key,
            password: self.password.clone().filter(|password| !password.is_empty()),
        }))
    }
}

/// Split a libpq DSN (key/value or URL form) into the DSN without its TLS
/// parameters, for tokio-postgres, and those parameters.
pub fn split_dsn(dsn: &str) -> Result<(String, SslParams), String> {
    let mut ssl = SslParams::default();
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((dsn.to_owned(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode_str(text)
                    .decode_utf8()
                    .map(|text| text.into_owned())
                    .map_err(|_| format!("invalid percent-encoding in the DSN parameter {name:?}"))
            };
            if !ssl.take(&decode(name)?, &decode(value)?)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ssl));
    }
    let mut kept = String::new();
    for (name, value) in key_values(dsn)? {
        if !ssl.take(&name, &value)? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push_str(&format!("{name}='{quoted}' "));
        }
    }
    Ok((kept.trim_end().to_owned(), ssl))
}

/// The pairs of a key/value DSN: `key = value`, the value bare (backslash
/// escapes) or in single quotes (backslash escapes inside).
fn key_values(dsn: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            name.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("the DSN's parameter {name:?} has no \"=\" and value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("the DSN's value of {name:?} has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_dsns_lose_only_their_tls_parameters() {
        let (rest, ssl) =
            split_dsn("host=db port = 5433 sslmode=verify-full sslrootcert='/etc/my ca.pem' password='it\\'s'")
                .unwrap();
        assert_eq!(rest, "host='db' port='5433' password='it\\'s'");
        assert_eq!(ssl.mode, Some(SslMode::VerifyFull));
        assert_eq!(ssl.rootcert.as_deref(), Some("/etc/my ca.pem"));
    }

    #[test]
    fn url_dsns_lose_only_their_tls_parameters() {
        let (rest, ssl) =
            split_dsn("postgresql://u:p@db/cache?sslmode=require&application_name=x&sslcert=%2Ftmp%2Fc.pem").unwrap();
        assert_eq!(rest, "postgresql://u:p@db/cache?application_name=x");
        assert_eq!(ssl.mode, Some(SslMode::Require));
        assert_eq!(ssl.cert.as_deref(), Some("/tmp/c.pem"));
    }

    #[test]
    fn unknown_modes_and_unsupported_parameters_are_refused() {
        assert!(split_dsn("sslmode=sometimes").unwrap_err().contains("verify-full"));
        assert!(split_dsn("host=db sslcrldir=/x").unwrap_err().contains("sslcrldir"));
        assert!(split_dsn("host=db sslmode").unwrap_err().contains("sslmode"));
    }

    #[test]
    fn verification_needs_a_root_and_defaults_follow_libpq() {
        let mut ssl = SslParams::default();
        ssl.take("sslmode", "verify-full").unwrap();
        assert!(ssl.tls(None).unwrap_err().contains("sslrootcert"));
        let prefer = SslParams::default().tls(None).unwrap();
        assert_eq!(prefer.mode, SslMode::Prefer);
        assert!(prefer.client.is_some());
        let mut off = SslParams::default();
        off.take("sslmode", "disable").unwrap();
        assert!(off.tls(None).unwrap().client.is_none());
    }
}
