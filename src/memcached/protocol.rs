//! The memcached meta protocol (memcached ≥ 1.6): building requests and
//! parsing reply lines.
//!
//! Every request carries an opaque token (`O<n>`) that the server echoes;
//! a reply with the wrong token means the stream is out of step, and the
//! connection is thrown away instead of being read further.

use super::error::KeyProblem;

/// Longest key memcached accepts, in bytes.
pub const MAX_KEY_LENGTH: usize = 250;

/// Largest value block accepted from a server (memcached's own ceiling
/// for `-I` is 1 GiB); a larger size means a corrupt stream.
pub const MAX_VALUE_SIZE: usize = 1 << 30;

/// Check a key before it goes anywhere near the wire.
pub fn check_key(key: &[u8]) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(KeyProblem::TooLong);
    }
    if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(KeyProblem::BadCharacter);
    }
    Ok(())
}

/// How `ms` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    /// Store only if absent (memcached `add`).
    Add,
    /// Store only while the item's CAS token is still this one.
    IfUnchanged(u64),
}

fn push_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(n).as_bytes());
}

fn push_opaque(out: &mut Vec<u8>, opaque: u32) {
    out.extend_from_slice(b" O");
    push_num(out, opaque);
}

/// `mg`: with `value`, fetch value and client flags; with `ttl`, also
/// update the expiry (touch); `quiet` suppresses the miss reply.
pub fn meta_get(out: &mut Vec<u8>, key: &[u8], opaque: u32, value: bool, ttl: Option<i64>, quiet: bool) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    if value {
        out.extend_from_slice(b" v f");
    }
    if let Some(ttl) = ttl {
        out.extend_from_slice(b" T");
        push_num(out, ttl);
    }
    if quiet {
        out.extend_from_slice(b" q");
    }
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `ms`: store `value` with client `flags` and expiry `ttl`.
pub fn meta_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], flags: u32, ttl: i64, mode: StoreMode, opaque: u32) {
    out.reserve(key.len() + value.len() + 48);
    out.extend_from_slice(b"ms ");
    out.extend_from_slice(key);
    out.push(b' ');
    push_num(out, value.len());
    out.extend_from_slice(b" T");
    push_num(out, ttl);
    out.extend_from_slice(b" F");
    push_num(out, flags);
    match mode {
        StoreMode::Set => {}
        StoreMode::Add => out.extend_from_slice(b" ME"),
        StoreMode::IfUnchanged(cas) => {
            out.extend_from_slice(b" C");
            push_num(out, cas);
        }
    }
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `mg` for a compare-and-delete or -swap: value, client flags, CAS token
/// and remaining TTL.
pub fn meta_get_with_cas(out: &mut Vec<u8>, key: &[u8], opaque: u32) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" v f c t");
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `md` only while the item's CAS token is still `cas`.
pub fn meta_delete_if_unchanged(out: &mut Vec<u8>, key: &[u8], cas: u64, opaque: u32) {
    out.extend_from_slice(b"md ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" C");
    push_num(out, cas);
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `md`: delete; `quiet` suppresses both the success and the not-found reply.
pub fn meta_delete(out: &mut Vec<u8>, key: &[u8], opaque: u32, quiet: bool) {
    out.extend_from_slice(b"md ");
    out.extend_from_slice(key);
    if quiet {
        out.extend_from_slice(b" q");
    }
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `ma`: increment (or decrement) an existing numeric value, returning it.
/// Without `N`, a missing key is NF, not auto-created.
pub fn meta_arithmetic(out: &mut Vec<u8>, key: &[u8], delta: u64, decrement: bool, opaque: u32) {
    out.extend_from_slice(b"ma ");
    out.extend_from_slice(key);
    if decrement {
        out.extend_from_slice(b" MD");
    }
    out.extend_from_slice(b" D");
    push_num(out, delta);
    out.extend_from_slice(b" v");
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `mn`: the server answers MN after every earlier request on the stream.
pub fn meta_noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"mn\r\n");
}

/// The status of a meta reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `VA <size>`: a value of `size` bytes follows.
    Value(usize),
    /// `HD`: success, no value.
    Stored,
    /// `EN`: miss.
    Miss,
    /// `NF`: not found (delete, arithmetic).
    NotFound,
    /// `NS`: not stored (add of an existing key).
    NotStored,
    /// `EX`: CAS mismatch.
    Exists,
    /// `MN`: end of a pipeline.
    NoOp,
}

/// One parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Meta {
        status: Status,
        flags: u32,
        opaque: Option<u32>,
        /// The item's CAS token, when asked for (`c`).
        cas: Option<u64>,
        /// The item's remaining TTL in seconds (-1: none), when asked for (`t`).
        ttl: Option<i64>,
    },
    ClientError(String),
    ServerError(String),
    /// A line that is not a meta reply: the stream cannot be trusted.
    Garbage(String),
}

fn lossy(line: &[u8]) -> String {
    let shown = &line[..line.len().min(120)];
    String::from_utf8_lossy(shown).into_owned()
}

fn parse_num<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parse a reply line (without its CRLF).
pub fn parse_reply(line: &[u8]) -> Reply {
    if let Some(rest) = line.strip_prefix(b"CLIENT_ERROR") {
        return Reply::ClientError(lossy(rest).trim().to_owned());
    }
    if let Some(rest) = line.strip_prefix(b"SERVER_ERROR") {
        return Reply::ServerError(lossy(rest).trim().to_owned());
    }
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let Some(code) = tokens.next() else {
        return Reply::Garbage(lossy(line));
    };
    let status = match code {
        b"VA" => match tokens.next().and_then(parse_num::<usize>) {
            Some(size) if size <= MAX_VALUE_SIZE => Status::Value(size),
            _ => return Reply::Garbage(lossy(line)),
        },
        b"HD" => Status::Stored,
        b"EN" => Status::Miss,
        b"NF" => Status::NotFound,
        b"NS" => Status::NotStored,
        b"EX" => Status::Exists,
        b"MN" => Status::NoOp,
        _ => return Reply::Garbage(lossy(line)),
    };
    let mut flags = 0;
    let mut opaque = None;
    let mut cas = None;
    let mut ttl = None;
    for token in tokens {
        let (letter, value) = (token[0], &token[1..]);
        match letter {
            b'f' => match parse_num(value) {
                Some(f) => flags = f,
                None => return Reply::Garbage(lossy(line)),
            },
            b'O' => match parse_num(value) {
                Some(o) => opaque = Some(o),
                None => return Reply::Garbage(lossy(line)),
            },
            b'c' => match parse_num(value) {
                Some(c) => cas = Some(c),
                None => return Reply::Garbage(lossy(line)),
            },
            b't' => match parse_num(value) {
                Some(t) => ttl = Some(t),
                None => return Reply::Garbage(lossy(line)),
            },
            _ => {}
        }
    }
    Reply::Meta {
        status,
        flags,
        opaque,
        cas,
        ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_requests() {
        let mut out = Vec::new();
        meta_get(&mut out, b"k", 7, true, None, false);
        meta_get(&mut out, b"k", 8, false, Some(-1), true);
        meta_set(&mut out, b"k", b"val", 16, 300, StoreMode::Add, 9);
        meta_delete(&mut out, b"k", 10, true);
        meta_arithmetic(&mut out, b"k", 5, true, 11);
        meta_noop(&mut out);
        assert_eq!(
            out,
            b"mg k v f O7\r\nmg k T-1 q O8\r\nms k 3 T300 F16 ME O9\r\nval\r\nmd k q O10\r\nma k MD D5 v O11\r\nmn\r\n"
        );
    }

    #[test]
    fn parses_replies() {
        assert_eq!(
            parse_reply(b"VA 3 f16 O7"),
            Reply::Meta {
                status: Status::Value(3),
                flags: 16,
                opaque: Some(7),
                cas: None,
                ttl: None
            }
        );
        assert_eq!(
            parse_reply(b"EN O5"),
            Reply::Meta {
                status: Status::Miss,
                flags: 0,
                opaque: Some(5),
                cas: None,
                ttl: None
            }
        );
        assert_eq!(
            parse_reply(b"MN"),
            Reply::Meta {
                status: Status::NoOp,
                flags: 0,
                opaque: None,
                cas: None,
                ttl: None
            }
        );
        assert_eq!(
            parse_reply(b"VA 2 f1 c4294967296 t-1 O3"),
            Reply::Meta {
                status: Status::Value(2),
                flags: 1,
                opaque: Some(3),
                cas: Some(4_294_967_296),
                ttl: Some(-1)
            }
        );
        assert_eq!(
            parse_reply(b"SERVER_ERROR object too large for cache"),
            Reply::ServerError("object too large for cache".into())
        );
        assert!(matches!(parse_reply(b"CLIENT_ERROR bad"), Reply::ClientError(_)));
        assert!(matches!(parse_reply(b"VALUE foo 0 3"), Reply::Garbage(_)));
        assert!(matches!(parse_reply(b"VA x"), Reply::Garbage(_)));
        assert!(matches!(parse_reply(b"VA 18446744073709551615"), Reply::Garbage(_)));
        assert!(matches!(parse_reply(b"VA 1073741825"), Reply::Garbage(_)));
        assert!(matches!(parse_reply(b"HD Ox"), Reply::Garbage(_)));
        assert!(matches!(parse_reply(b""), Reply::Garbage(_)));
    }

    #[test]
    fn checks_keys() {
        assert_eq!(check_key(b"a:1:b"), Ok(()));
        assert_eq!(check_key("clé".as_bytes()), Ok(()));
        assert_eq!(check_key(b""), Err(KeyProblem::Empty));
        assert_eq!(check_key(&[b'a'; 250]), Ok(()));
        assert_eq!(check_key(&[b'a'; 251]), Err(KeyProblem::TooLong));
        for bad in [&b"a b"[..], b"a\r\nb", b"a\0", b"a\x7f", b"\tb"] {
            assert_eq!(check_key(bad), Err(KeyProblem::BadCharacter));
        }
    }
}
