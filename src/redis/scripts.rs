//! The server-side scripts that make read-then-write operations atomic:
//! Redis runs a script alone, so nothing happens between its commands.

use std::sync::LazyLock;

use sha1_smol::Sha1;

use super::resp;

/// A Lua script with one key, sent by its SHA1 (`EVALSHA`) once the
/// server has it.
pub(crate) struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Script {
        Script {
            source,
            sha: Sha1::from(source).digest().to_string(),
        }
    }

    /// Append `EVALSHA sha 1 key args...`, or with `with_source`
    /// `EVAL source 1 key args...`.
    pub(crate) fn invoke(&self, out: &mut Vec<u8>, with_source: bool, key: &[u8], args: &[&[u8]]) {
        let mut command: Vec<&[u8]> = Vec::with_capacity(4 + args.len());
        match with_source {
            true => command.extend_from_slice(&[b"EVAL", self.source.as_bytes()]),
            false => command.extend_from_slice(&[b"EVALSHA", self.sha.as_bytes()]),
        }
        command.extend_from_slice(&[b"1", key]);
        command.extend_from_slice(args);
        resp::command(out, &command);
    }
}

/// `INCRBY` only if the key exists (nil otherwise), keeping its TTL. The
/// new value comes back as an integer within +-2^53, beyond as its digits
/// (`GET`): a Lua number is a double, which holds every integer up to
/// 2^53 exactly and no more (a third `redis.call` for every increment
/// would cost the server a sixth more per call).
pub(crate) static INCR_IF_EXISTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then \
         local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
         if n < 9007199254740992 and n > -9007199254740992 then return n end \
         return redis.call('GET', KEYS[1]) end return false",
    )
});

/// Remove the key's expiry; 1 if the key exists (`PERSIST` says 0 for a
/// key that exists without one).
pub(crate) static PERSIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PERSIST', KEYS[1]) return 1 end return 0")
});

/// Delete the key only while it holds ARGV[1]: 1 if deleted.
pub(crate) static DELETE_IF_EQUAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// Expire the key in ARGV[2] milliseconds only while it holds ARGV[1]: 1
/// if done.
pub(crate) static EXPIRE_IF_EQUAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    )
});

/// Replace ARGV[1] by ARGV[2], keeping the TTL: 1 if replaced, 0 if the
/// key holds something else, nil if it is missing.
pub(crate) static REPLACE_IF_EQUAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local current = redis.call('GET', KEYS[1]) \
         if current == false then return false end \
         if current == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 end \
         return 0",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_go_by_their_sha1_or_their_source() {
        let script = Script::new("return 1");
        // sha1("return 1"), as `SCRIPT LOAD "return 1"` answers.
        assert_eq!(script.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let (mut by_sha, mut by_source) = (Vec::new(), Vec::new());
        script.invoke(&mut by_sha, false, b"k", &[b"a"]);
        script.invoke(&mut by_source, true, b"k", &[b"a"]);
        let mut expected = Vec::new();
        resp::command(&mut expected, &[b"EVALSHA", script.sha.as_bytes(), b"1", b"k", b"a"]);
        assert_eq!(by_sha, expected);
        expected.clear();
        resp::command(&mut expected, &[b"EVAL", b"return 1", b"1", b"k", b"a"]);
        assert_eq!(by_source, expected);
    }
}
