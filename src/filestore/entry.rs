//! The on-disk format of one entry.
//!
//! ```text
//! 0..8    magic "RFCACHE\x01"
//! 8..16   expiry, f64 Unix seconds, little endian (0: never)
//! 16..20  value flags (the Python layer's serializer flags)
//! 20..24  key length
//! 24..32  value length
//! 32..40  xxh3-64 of bytes 0..32, the key and the value
//! 40..    key, value
//! ```
//!
//! A key's file is rewritten in place when its blocks hold the new entry,
//! else replaced by a temp file swapped in (see `store`). A reader that
//! catches a rewrite half done fails the checksum or the length check and
//! reads again. The checksum and exact length also catch a file someone
//! else truncated or scribbled on, which then reads as a miss.

use xxhash_rust::xxh3::Xxh3;

pub const MAGIC: [u8; 8] = *b"RFCACHE\x01";
pub const HEADER_LEN: usize = 40;

/// A decoded entry, borrowing the file's bytes.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    pub expires: f64,
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The fields of a header, before the body is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub expires: f64,
    pub flags: u32,
    pub key_len: usize,
    pub value_len: usize,
    checksum: u64,
}

impl Header {
    pub fn file_len(&self) -> usize {
        HEADER_LEN + self.key_len + self.value_len
    }
}

/// Whether an entry with this expiry is dead at `now`.
pub fn is_expired(expires: f64, now: f64) -> bool {
    expires != 0.0 && expires <= now
}

fn checksum(head: &[u8], key: &[u8], value: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(head);
    hasher.update(key);
    hasher.update(value);
    hasher.digest()
}

/// The bytes of an entry file.
pub fn encode(key: &[u8], flags: u32, value: &[u8], expires: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    let sum = checksum(&out[..32], key, value);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Parse the fixed header; None for anything that is not one.
pub fn parse_header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return None;
    }
    let expires = f64::from_bits(u64_at(bytes, 8));
    if !expires.is_finite() || expires < 0.0 {
        return None;
    }
    let value_len = usize::try_from(u64_at(bytes, 24)).ok()?;
    let key_len = u32_at(bytes, 20) as usize;
    // Bound the lengths so their sum cannot overflow.
    if key_len > 1 << 20 || value_len > 1 << 48 {
        return None;
    }
    Some(Header {
        expires,
        flags: u32_at(bytes, 16),
        key_len,
        value_len,
        checksum: u64_at(bytes, 32),
    })
}

/// Decode a whole file: header, exact length and checksum must agree.
pub fn decode(bytes: &[u8]) -> Option<Entry<'_>> {
    let header = parse_header(bytes)?;
    if bytes.len() != header.file_len() {
        return None;
    }
    let key = &bytes[HEADER_LEN..HEADER_LEN + header.key_len];
    let value = &bytes[HEADER_LEN + header.key_len..];
    if checksum(&bytes[..32], key, value) != header.checksum {
        return None;
    }
    Some(Entry {
        expires: header.expires,
        flags: header.flags,
        key,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode(b"key", 16, b"value", 1234.5);
        let entry = decode(&bytes).unwrap();
        assert_eq!(
            entry,
            Entry {
                expires: 1234.5,
                flags: 16,
                key: b"key",
                value: b"value"
            }
        );
        let empty = encode(b"k", 0, b"", 0.0);
        assert_eq!(decode(&empty).unwrap().value, b"");
    }

    #[test]
    fn damage_is_detected() {
        let bytes = encode(b"key", 1, b"some value", 0.0);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert_eq!(decode(&flipped), None, "flipped byte {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0xff; 100]), None);
    }

    #[test]
    fn expiry() {
        assert!(!is_expired(0.0, 1e12), "0 never expires");
        assert!(is_expired(100.0, 100.0));
        assert!(!is_expired(100.5, 100.0));
    }
}
