//! racefree's RESP2 codec against a real redis-server.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use racefree::redis::resp::{self, Frames, Value};
use racefree::redis::slot::slot;
use support::Redis;

/// Frames over a plain socket (the store will read through its own
/// connection, with deadlines).
struct Wire {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Frames for Wire {
    fn read_line(&mut self) -> io::Result<&[u8]> {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line)?;
        if !self.line.ends_with(b"\r\n") {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut short"));
        }
        self.line.truncate(self.line.len() - 2);
        Ok(&self.line)
    }

    fn read_value(&mut self, size: usize) -> io::Result<Vec<u8>> {
        let mut value = vec![0; size + 2];
        self.reader.read_exact(&mut value)?;
        value.truncate(size);
        Ok(value)
    }
}

fn connect(server: &Redis) -> Wire {
    let socket = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    Wire {
        reader: BufReader::new(socket),
        line: Vec::new(),
    }
}

fn call(wire: &mut Wire, args: &[&[u8]]) -> Value {
    let mut out = Vec::new();
    resp::command(&mut out, args);
    wire.reader.get_mut().write_all(&out).expect("write");
    resp::read(wire).expect("reply")
}

#[test]
fn every_reply_kind_from_a_real_server() {
    let server = Redis::start();
    let mut wire = connect(&server);
    let binary: Vec<u8> = (0..=255).collect();
    assert_eq!(call(&mut wire, &[b"SET", b"k", &binary]), Value::Status("OK".into()));
    assert_eq!(call(&mut wire, &[b"GET", b"k"]), Value::Bulk(Some(binary.clone())));
    assert_eq!(call(&mut wire, &[b"GET", b"missing"]), Value::Bulk(None));
    assert_eq!(call(&mut wire, &[b"SET", b"n", b"41"]), Value::Status("OK".into()));
    assert_eq!(call(&mut wire, &[b"INCRBY", b"n", b"-43"]), Value::Int(-2));
    assert_eq!(
        call(&mut wire, &[b"MGET", b"k", b"missing", b"n"]),
        Value::Array(Some(vec![
            Value::Bulk(Some(binary)),
            Value::Bulk(None),
            Value::Bulk(Some(b"-2".to_vec()))
        ]))
    );
    assert!(matches!(call(&mut wire, &[b"INCR", b"k"]), Value::Error(e) if e.starts_with("ERR")));
    assert!(matches!(call(&mut wire, &[b"NOSUCHCOMMAND"]), Value::Error(_)));
    // An empty key and an empty value are ordinary bulk strings.
    assert_eq!(call(&mut wire, &[b"SET", b"", b""]), Value::Status("OK".into()));
    assert_eq!(call(&mut wire, &[b"GET", b""]), Value::Bulk(Some(vec![])));
    // Pipelined: replies come back in order.
    let mut out = Vec::new();
    for i in 0..100u32 {
        resp::command(
            &mut out,
            &[b"SET", format!("p{i}").as_bytes(), i.to_string().as_bytes()],
        );
        resp::command(&mut out, &[b"GET", format!("p{i}").as_bytes()]);
    }
    wire.reader.get_mut().write_all(&out).expect("write");
    for i in 0..100u32 {
        assert_eq!(resp::read(&mut wire).unwrap(), Value::Status("OK".into()));
        assert_eq!(
            resp::read(&mut wire).unwrap(),
            Value::Bulk(Some(i.to_string().into_bytes()))
        );
    }
}

#[test]
fn a_large_value_round_trips() {
    let server = Redis::start();
    let mut wire = connect(&server);
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(call(&mut wire, &[b"SET", b"big", &big]), Value::Status("OK".into()));
    assert_eq!(call(&mut wire, &[b"GET", b"big"]), Value::Bulk(Some(big)));
}

#[test]
fn slots_agree_with_the_server() {
    let server = Redis::start_cluster_node();
    let mut wire = connect(&server);
    for i in 0..2000 {
        let key = match i % 4 {
            0 => format!(":1:key-{i}"),
            1 => format!("{{tag{}}}:{i}", i % 7),
            2 => format!("x{{}}{i}{{y}}"),
            _ => format!("über:{i}:clé"),
        };
        let expected = call(&mut wire, &[b"CLUSTER", b"KEYSLOT", key.as_bytes()]);
        assert_eq!(expected, Value::Int(i64::from(slot(key.as_bytes()))), "{key:?}");
    }
}
