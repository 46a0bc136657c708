//! Server addresses as Django and pymemcache spell them: memcached's own
//! reading of LOCATION into the shared `net::Address`.

use std::path::PathBuf;

pub use crate::net::Address;

use super::error::{Error, Result};

impl Address {
    /// Parse one LOCATION entry: `host`, `host:port`, `[v6]`, `[v6]:port`,
    /// `unix:/path` or `/path`. The port defaults to 11211.
    pub fn parse(spec: &str) -> Result<Address> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::Config("empty memcached server address".into()));
        }
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::Config(format!("no socket path in {spec:?}")));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if spec.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(spec)));
        }
        let (host, port) = if !spec.contains(':') || spec.ends_with(']') {
            (spec, 11211)
        } else {
            // rsplit as pymemcache does, so "::1:11211" is host "::1".
            let (host, port) = spec.rsplit_once(':').unwrap_or((spec, ""));
            let port: u16 = port
                .parse()
                .map_err(|_| Error::Config(format!("bad port in memcached server address {spec:?}")))?;
            (host, port)
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(Error::Config(format!("no host in memcached server address {spec:?}")));
        }
        Ok(Address::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    /// The node name pymemcache's `HashClient` hashes for this server:
    /// `"host:port"` (IPv6 without brackets) or the socket path. Using the
    /// same names gives the same key→server mapping.
    pub fn node_name(&self) -> String {
        match self {
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Unix(path) => path.to_string_lossy().into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_every_form_django_accepts() {
        assert_eq!(Address::parse("127.0.0.1:11211").unwrap(), tcp("127.0.0.1", 11211));
        assert_eq!(Address::parse("localhost").unwrap(), tcp("localhost", 11211));
        assert_eq!(Address::parse("[::1]").unwrap(), tcp("::1", 11211));
        assert_eq!(Address::parse("[::1]:11212").unwrap(), tcp("::1", 11212));
        assert_eq!(
            Address::parse("unix:/run/memcached.sock").unwrap(),
            Address::Unix("/run/memcached.sock".into())
        );
        assert_eq!(
            Address::parse("/run/memcached.sock").unwrap(),
            Address::Unix("/run/memcached.sock".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Address::parse("").is_err());
        assert!(Address::parse("host:notaport").is_err());
        assert!(Address::parse("host:99999").is_err());
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse(":11211").is_err());
    }

    #[test]
    fn node_names_match_pymemcache() {
        assert_eq!(
            Address::parse("127.0.0.1:11211").unwrap().node_name(),
            "127.0.0.1:11211"
        );
        assert_eq!(Address::parse("[::1]:11211").unwrap().node_name(), "::1:11211");
        assert_eq!(Address::parse("localhost").unwrap().node_name(), "localhost:11211");
        assert_eq!(Address::parse("unix:/tmp/mc.sock").unwrap().node_name(), "/tmp/mc.sock");
    }
}
