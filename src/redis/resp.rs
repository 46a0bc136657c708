//! RESP2, the Redis serialization protocol that Redis 7 and Valkey speak by
//! default: building commands and reading replies.
//!
//! Replies are read through `Frames`, a reader of CRLF-terminated lines and
//! of length-prefixed blocks, which is what memcached's connection already
//! offers with its deadlines; so a reply is never trusted beyond what has
//! arrived, and announced sizes are checked before anything is allocated.

use std::io;

/// Redis's own ceiling for a bulk string (`proto-max-bulk-len`, 512 MiB);
/// a larger size means a corrupt stream.
pub const MAX_BULK: usize = 512 << 20;
/// Elements of one array reply accepted (a `MGET` of a batch is far less).
pub const MAX_ELEMENTS: usize = 1 << 20;
/// Nesting accepted in a reply (`EXEC` of pipelines nests two deep).
const MAX_DEPTH: usize = 8;

/// Append one command, as an array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut buffer = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(buffer.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(buffer.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Status(String),
    /// `-ERR ...`: the server refused the command (the stream stays in step).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` and n bytes; `$-1` is `None` (a missing key).
    Bulk(Option<Vec<u8>>),
    /// `*n` and n replies; `*-1` is `None`.
    Array(Option<Vec<Value>>),
}

/// Where replies are read from: lines without their CRLF, and blocks of a
/// known size followed by CRLF.
pub trait Frames {
    fn read_line(&mut self) -> io::Result<&[u8]>;
    fn read_value(&mut self, size: usize) -> io::Result<Vec<u8>>;
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

/// A length after `$` or `*`: -1 for null, else 0..=limit.
fn length(digits: &[u8], limit: usize, line: &[u8]) -> io::Result<Option<usize>> {
    let text = std::str::from_utf8(digits).map_err(|_| invalid(format!("bad length in {:?}", shown(line))))?;
    match text.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 && (n as u64) <= limit as u64 => Ok(Some(n as usize)),
        _ => Err(invalid(format!("bad or too large length in {:?}", shown(line)))),
    }
}

/// Read one complete reply. An `io::ErrorKind::InvalidData` error means
/// the stream is out of step and the connection must be thrown away.
pub fn read(frames: &mut impl Frames) -> io::Result<Value> {
    read_nested(frames, 0)
}

fn read_nested(frames: &mut impl Frames, depth: usize) -> io::Result<Value> {
    let line = frames.read_line()?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(invalid("empty reply line".into()));
    };
    match kind {
        b'+' => Ok(Value::Status(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Value::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => std::str::from_utf8(rest)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Value::Int)
            .ok_or_else(|| invalid(format!("bad integer reply {:?}", shown(line)))),
        b'$' => match length(rest, MAX_BULK, line)? {
            None => Ok(Value::Bulk(None)),
            Some(size) => Ok(Value::Bulk(Some(frames.read_value(size)?))),
        },
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(invalid("reply nested too deep".into()));
            }
            let Some(count) = length(rest, MAX_ELEMENTS, line)? else {
                return Ok(Value::Array(None));
            };
            // Grows with the elements that arrive, not with the count announced.
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                items.push(read_nested(frames, depth + 1)?);
            }
            Ok(Value::Array(Some(items)))
        }
        _ => Err(invalid(format!("unparseable reply {:?}", shown(line)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames over bytes already received.
    struct Received<'a> {
        data: &'a [u8],
        line: Vec<u8>,
    }

    impl<'a> Received<'a> {
        fn new(data: &'a [u8]) -> Self {
            Received { data, line: Vec::new() }
        }
    }

    impl Frames for Received<'_> {
        fn read_line(&mut self) -> io::Result<&[u8]> {
            let end = (self.data.windows(2).position(|w| w == b"\r\n"))
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no line"))?;
            self.line = self.data[..end].to_vec();
            self.data = &self.data[end + 2..];
            Ok(&self.line)
        }

        fn read_value(&mut self, size: usize) -> io::Result<Vec<u8>> {
            if self.data.len() < size + 2 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short block"));
            }
            if &self.data[size..size + 2] != b"\r\n" {
                return Err(invalid("block not terminated by CRLF".into()));
            }
            let value = self.data[..size].to_vec();
            self.data = &self.data[size + 2..];
            Ok(value)
        }
    }

    fn parse(data: &[u8]) -> io::Result<Value> {
        read(&mut Received::new(data))
    }

    #[test]
    fn builds_commands() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"a b\r\n", b"PX", b"100"]);
        command(&mut out, &[b"GET", b""]);
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n$2\r\nPX\r\n$3\r\n100\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn reads_every_reply_kind() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::Status("OK".into()));
        assert_eq!(
            parse(b"-WRONGTYPE Operation against a key\r\n").unwrap(),
            Value::Error("WRONGTYPE Operation against a key".into())
        );
        assert_eq!(parse(b":-5\r\n").unwrap(), Value::Int(-5));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Bulk(None));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Value::Bulk(Some(vec![])));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n").unwrap(),
            Value::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Value::Array(None));
        assert_eq!(
            parse(b"*3\r\n$1\r\nv\r\n$-1\r\n*1\r\n:1\r\n").unwrap(),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"v".to_vec())),
                Value::Bulk(None),
                Value::Array(Some(vec![Value::Int(1)])),
            ]))
        );
    }

    #[test]
    fn refuses_what_is_out_of_step() {
        for bad in [
            &b"VALUE foo 0 3\r\n"[..],
            b"\r\n",
            b":x\r\n",
            b"$-2\r\n",
            b"$536870913\r\n",
            b"*1048577\r\n",
            b"$3\r\nabcd\r\n",
            b"$x\r\n",
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(
                error.kind(),
                io::ErrorKind::InvalidData,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A reply cut short waits for more, it is not garbage.
        assert_eq!(parse(b"*2\r\n:1\r\n").unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
