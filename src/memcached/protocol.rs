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

/// `mg`: with `value`, fetch value and client flags, else size, client
/// flags (enough to tell a placeholder) and the remaining TTL (before a
/// touch); with `ttl`, also update the expiry (touch); `quiet` suppresses
/// the miss reply.
pub fn meta_get(out: &mut Vec<u8>, key: &[u8], opaque: u32, value: bool, ttl: Option<i64>, quiet: bool) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.extend_from_slice(if value { &b" v f"[..] } else { &b" s f t"[..] });
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

/// `mg` for `get_or_set`: value, client flags, CAS token and remaining
/// TTL, vivifying a miss into a placeholder for `vivify` seconds (`N`), and
/// with `recache`, handing one caller the refresh once the remaining TTL
/// drops below it (`R`). The reply's marks say who computes.
pub fn meta_lease_get(out: &mut Vec<u8>, key: &[u8], opaque: u32, vivify: i64, recache: Option<i64>) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" v f c t N");
    push_num(out, vivify);
    if let Some(recache) = recache {
        out.extend_from_slice(b" R");
        push_num(out, recache);
    }
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `mg` for an item's standing, without its value: size, client flags and
/// CAS token (the marks come with every reply).
pub fn meta_standing(out: &mut Vec<u8>, key: &[u8], opaque: u32) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" s f c");
    push_opaque(out, opaque);
    out.extend_from_slice(b"\r\n");
}

/// `md … I`: mark an item stale instead of deleting it; readers asking for
/// marks see `X`, and the next `mg` gets the win. With `ttl`, also set its
/// remaining life; with `cas`, only while the item is still that one.
pub fn meta_invalidate(out: &mut Vec<u8>, key: &[u8], opaque: u32, ttl: Option<i64>, cas: Option<u64>) {
    out.extend_from_slice(b"md ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" I");
    if let Some(ttl) = ttl {
        out.extend_from_slice(b" T");
        push_num(out, ttl);
    }
    if let Some(cas) = cas {
        out.extend_from_slice(b" C");
        push_num(out, cas);
    }
    push_opaque(out, opaque);
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

/// The stampede marks memcached puts on a meta get's reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// `W`: this caller won the right to (re)compute the item.
    pub win: bool,
    /// `X`: the item was invalidated (marked stale).
    pub stale: bool,
    /// `Z`: another caller already won; it is computing.
    pub taken: bool,
}

impl Marks {
    /// Whether an item with these marks, `size` bytes and client `flags`
    /// is a placeholder left by a vivifying get (`N`) rather than a value:
    /// empty, flags 0, and its win handed out. (A stored empty byte string
    /// looks the same only while its own refresh is under way, and then
    /// reads as a miss, which a cache may always return.)
    pub fn placeholder(self, size: usize, flags: u32) -> bool {
        size == 0 && flags == 0 && (self.win || self.taken)
    }

    /// Whether a plain read must not return the item as current.
    pub fn not_current(self, size: usize, flags: u32) -> bool {
        self.stale || self.placeholder(size, flags)
    }
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
        /// The item's size, when asked for (`s`) without its value.
        size: Option<usize>,
        marks: Marks,
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
    let mut size = None;
    let mut marks = Marks::default();
    for token in tokens {
        let (letter, value) = (token[0], &token[1..]);
        match letter {
            b'W' => marks.win = true,
            b'X' => marks.stale = true,
            b'Z' => marks.taken = true,
            b's' => match parse_num(value) {
                Some(s) => size = Some(s),
                None => return Reply::Garbage(lossy(line)),
            },
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
        size,
        marks,
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
            b"mg k v f O7\r\nmg k s f t T-1 q O8\r\nms k 3 T300 F16 ME O9\r\nval\r\nmd k q O10\r\nma k MD D5 v O11\r\nmn\r\n"
        );
        out.clear();
        meta_lease_get(&mut out, b"k", 1, 11, None);
        meta_lease_get(&mut out, b"k", 2, 11, Some(5));
        meta_standing(&mut out, b"k", 3);
        meta_invalidate(&mut out, b"k", 4, Some(30), None);
        meta_invalidate(&mut out, b"k", 5, None, Some(9));
        assert_eq!(
            out,
            b"mg k v f c t N11 O1\r\nmg k v f c t N11 R5 O2\r\nmg k s f c O3\r\nmd k I T30 O4\r\nmd k I C9 O5\r\n"
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
                ttl: None,
                size: None,
                marks: Marks::default()
            }
        );
        assert_eq!(
            parse_reply(b"EN O5"),
            Reply::Meta {
                status: Status::Miss,
                flags: 0,
                opaque: Some(5),
                cas: None,
                ttl: None,
                size: None,
                marks: Marks::default()
            }
        );
        assert_eq!(
            parse_reply(b"MN"),
            Reply::Meta {
                status: Status::NoOp,
                flags: 0,
                opaque: None,
                cas: None,
                ttl: None,
                size: None,
                marks: Marks::default()
            }
        );
        assert_eq!(
            parse_reply(b"VA 2 f1 c4294967296 t-1 O3"),
            Reply::Meta {
                status: Status::Value(2),
                flags: 1,
                opaque: Some(3),
                cas: Some(4_294_967_296),
                ttl: Some(-1),
                size: None,
                marks: Marks::default()
            }
        );
        // memcached 1.6.18's replies to a vivifying get, a get of the
        // placeholder, and a get of an invalidated item.
        let reply = |line: &[u8]| match parse_reply(line) {
            Reply::Meta {
                status, size, marks, ..
            } => (status, size, marks),
            other => panic!("{other:?}"),
        };
        let marks = |win, stale, taken| Marks { win, stale, taken };
        assert_eq!(
            reply(b"VA 0 f0 c1 t-1 O1 W"),
            (Status::Value(0), None, marks(true, false, false))
        );
        assert_eq!(
            reply(b"HD s0 f0 c10 t30 Z"),
            (Status::Stored, Some(0), marks(false, false, true))
        );
        assert_eq!(
            reply(b"VA 3 f16 c3 t30 O9 Z X"),
            (Status::Value(3), None, marks(false, true, true))
        );
        assert!(marks(true, false, false).placeholder(0, 0));
        assert!(marks(false, false, true).placeholder(0, 0));
        assert!(!marks(false, false, false).placeholder(0, 0));
        assert!(!marks(false, false, true).placeholder(0, 16));
        assert!(marks(false, true, false).not_current(3, 16));
        assert!(matches!(parse_reply(b"HD sx"), Reply::Garbage(_)));
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
