//! Where a server listens. How a store's LOCATION spells it (default port
//! and all) is the store's own (see `memcached::address`).

use std::path::PathBuf;

/// Where a server listens: a TCP host and port, or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// How errors name the server: `host:port` (`[v6]:port`) or `unix:/path`.
impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
