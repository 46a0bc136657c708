//! Property tests for everything that parses bytes racefree did not
//! necessarily write itself: cache files on disk, memcached reply lines
//! (the file store's handling of garbage files is in file_store.rs).
//! Any input is a clean answer (a miss, a parse failure), never a panic,
//! and what racefree writes reads back exactly.

use proptest::prelude::*;
use racefree::filestore::entry;
use racefree::memcached::protocol::{Reply, parse_reply};

proptest! {
    #[test]
    fn entries_round_trip(
        key in proptest::collection::vec(any::<u8>(), 0..300),
        value in proptest::collection::vec(any::<u8>(), 0..3000),
        flags in any::<u32>(),
        expires in 0.0f64..1e12,
    ) {
        let bytes = entry::encode(&key, flags, &value, expires);
        let decoded = entry::decode(&bytes).expect("what encode wrote decodes");
        prop_assert_eq!(decoded.key, &key[..]);
        prop_assert_eq!(decoded.value, &value[..]);
        prop_assert_eq!(decoded.flags, flags);
        prop_assert_eq!(decoded.expires, expires);
    }

    #[test]
    fn any_damage_to_an_entry_is_detected(
        key in proptest::collection::vec(any::<u8>(), 1..50),
        value in proptest::collection::vec(any::<u8>(), 0..500),
        flags in any::<u32>(),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = entry::encode(&key, flags, &value, 5.0);
        let mut flipped = bytes.clone();
        flipped[position.index(bytes.len())] ^= 1 << bit;
        prop_assert!(entry::decode(&flipped).is_none(), "a flipped bit went unnoticed");
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(entry::decode(truncated).is_none(), "a truncated file decoded");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_entry_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = entry::parse_header(&bytes);
        let _ = entry::decode(&bytes);
        let mut with_magic = entry::MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = entry::decode(&with_magic);
    }

    #[test]
    fn arbitrary_reply_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_reply(&line);
    }

    #[test]
    fn meta_replies_parse_to_their_fields(flags in any::<u32>(), opaque in any::<u32>(), size in 0usize..1_000_000) {
        let line = format!("VA {size} f{flags} O{opaque}");
        match parse_reply(line.as_bytes()) {
            Reply::Meta { flags: f, opaque: o, .. } => {
                prop_assert_eq!(f, flags);
                prop_assert_eq!(o, Some(opaque));
            }
            other => prop_assert!(false, "{line:?} parsed as {other:?}"),
        }
    }
}
