//! Value compression (`racefree::codec`): what is compressed comes back
//! exactly, zlib is the format Python's `zlib` reads and writes, and any
//! damaged, truncated or hostile input is an error, never a panic or more
//! output than the caller's limit.

use proptest::prelude::*;
use racefree::codec::{Codec, Error, compress, decompress};

const CODECS: [Codec; 2] = [Codec::Zlib, Codec::Zstd];
const LIMIT: usize = 1 << 20;

/// `zlib.compress(b"racefree reads what Python's zlib wrote, " * 3)` from
/// CPython 3.11.
const PYTHON_ZLIB: [u8; 52] = [
    0x78, 0x9c, 0x2b, 0x4a, 0x4c, 0x4e, 0x4d, 0x2b, 0x4a, 0x4d, 0x55, 0x28, 0x4a, 0x4d, 0x4c, 0x29, 0x56, 0x28, 0xcf,
    0x48, 0x2c, 0x51, 0x08, 0xa8, 0x2c, 0xc9, 0xc8, 0xcf, 0x53, 0x2f, 0x56, 0xa8, 0xca, 0xc9, 0x4c, 0x52, 0x28, 0x2f,
    0xca, 0x2f, 0x49, 0xd5, 0x51, 0x28, 0xa2, 0xba, 0x42, 0x00, 0xf1, 0xc7, 0x2c, 0xbf,
];

fn text(size: usize) -> Vec<u8> {
    br#"{"id": 17, "name": "racefree", "tags": ["cache", "django"], "ok": true}, "#
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect()
}

#[test]
fn values_round_trip_at_every_level() {
    for codec in CODECS {
        for level in codec.levels() {
            for size in [0, 1, 399, 400, 401, 10_000, 200_000] {
                let value = text(size);
                let compressed = compress(codec, Some(level), &value).expect("a valid level");
                let read = decompress(codec, &compressed, LIMIT).expect("what compress wrote");
                assert!(read == value, "{codec:?} level {level}, {size} bytes");
            }
        }
    }
}

#[test]
fn compressible_values_shrink_at_the_default_level() {
    for codec in CODECS {
        let value = text(10_000);
        let compressed = compress(codec, None, &value).expect("the default level");
        assert!(
            compressed.len() * 10 < value.len(),
            "{codec:?}: {} bytes",
            compressed.len()
        );
    }
}

#[test]
fn the_default_levels_are_the_libraries_own() {
    assert_eq!(Codec::Zlib.default_level(), 6);
    assert_eq!(Codec::Zstd.default_level(), 3);
    for codec in CODECS {
        let value = text(50_000);
        assert_eq!(
            compress(codec, None, &value),
            compress(codec, Some(codec.default_level()), &value)
        );
    }
}

#[test]
fn a_level_out_of_range_is_an_error() {
    for (codec, level) in [
        (Codec::Zlib, 0),
        (Codec::Zlib, 10),
        (Codec::Zlib, -1),
        (Codec::Zstd, 0),
        (Codec::Zstd, 23),
    ] {
        assert_eq!(
            compress(codec, Some(level), b"value"),
            Err(Error::Level { codec, level })
        );
    }
    let message = compress(Codec::Zlib, Some(10), b"value").unwrap_err().to_string();
    assert_eq!(message, "zlib level 10 is not from 1 to 9");
}

#[test]
fn zlib_reads_what_pythons_zlib_wrote() {
    let expected = b"racefree reads what Python's zlib wrote, ".repeat(3);
    assert_eq!(decompress(Codec::Zlib, &PYTHON_ZLIB, LIMIT), Ok(expected));
}

#[test]
fn zlib_writes_the_format_python_reads() {
    // RFC 1950 as `zlib.decompress` expects it: deflate with a 32 KB
    // window, a header whose check bits hold, and the Adler-32 of the
    // value at the end (big-endian).
    let value = text(5_000);
    let compressed = compress(Codec::Zlib, None, &value).expect("the default level");
    assert_eq!(compressed[0], 0x78);
    assert_eq!(u16::from_be_bytes([compressed[0], compressed[1]]) % 31, 0);
    assert_eq!(compressed[1] & 0x20, 0, "no preset dictionary");
    let adler = {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &value {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    };
    assert_eq!(compressed[compressed.len() - 4..], adler.to_be_bytes());
}

#[test]
fn truncated_streams_are_errors() {
    for codec in CODECS {
        let compressed = compress(codec, None, &text(3_000)).expect("the default level");
        for end in 0..compressed.len() {
            match decompress(codec, &compressed[..end], LIMIT) {
                Err(Error::Corrupt { .. }) => {}
                other => panic!("{codec:?} cut at {end} of {}: {other:?}", compressed.len()),
            }
        }
    }
}

#[test]
fn a_damaged_zlib_stream_is_an_error() {
    let mut compressed = compress(Codec::Zlib, None, &text(3_000)).expect("the default level");
    let last = compressed.len() - 1;
    compressed[last] ^= 1; // the Adler-32
    assert!(matches!(
        decompress(Codec::Zlib, &compressed, LIMIT),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn one_codecs_stream_is_an_error_for_the_other() {
    let value = text(3_000);
    let zlib = compress(Codec::Zlib, None, &value).expect("the default level");
    let zstd = compress(Codec::Zstd, None, &value).expect("the default level");
    assert!(matches!(
        decompress(Codec::Zstd, &zlib, LIMIT),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        decompress(Codec::Zlib, &zstd, LIMIT),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn the_limit_is_enforced_to_the_byte() {
    for codec in CODECS {
        let value = text(100_000);
        let compressed = compress(codec, None, &value).expect("the default level");
        // Lengths only: a failure must not print 100 KB.
        let read = |limit| decompress(codec, &compressed, limit).map(|value| value.len());
        assert_eq!(read(value.len()), Ok(value.len()));
        let limit = value.len() - 1;
        assert_eq!(read(limit), Err(Error::TooLarge { codec, limit }));
        assert_eq!(read(0), Err(Error::TooLarge { codec, limit: 0 }));
    }
}

#[test]
fn zstd_frames_that_do_not_record_their_size_stream_within_the_limit() {
    // What a streaming compressor writes (not racefree): the decoder then
    // cannot size its output from the header.
    let value = text(100_000);
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("a valid level");
    std::io::Write::write_all(&mut encoder, &value).expect("into a Vec");
    let unsized_frame = encoder.finish().expect("into a Vec");
    assert!(matches!(
        zstd::zstd_safe::get_frame_content_size(&unsized_frame),
        Ok(None)
    ));
    let read = |data: &[u8], limit| decompress(Codec::Zstd, data, limit).map(|value| value.len());
    assert_eq!(read(&unsized_frame, value.len()), Ok(value.len()));
    let limit = value.len() - 1;
    assert_eq!(
        read(&unsized_frame, limit),
        Err(Error::TooLarge {
            codec: Codec::Zstd,
            limit
        })
    );
    for end in [0, 1, 10, unsized_frame.len() / 2, unsized_frame.len() - 1] {
        assert!(
            matches!(read(&unsized_frame[..end], LIMIT), Err(Error::Corrupt { .. })),
            "cut at {end}"
        );
    }
}

#[test]
fn a_bomb_stops_at_the_limit() {
    // 32 MiB of zeros compress to tens of KB; decompressing stops at the
    // limit instead of allocating all of it.
    let zeros = vec![0u8; 32 << 20];
    for codec in CODECS {
        let bomb = compress(codec, None, &zeros).expect("the default level");
        assert!(bomb.len() < 64 << 10, "{codec:?}: {} bytes", bomb.len());
        assert_eq!(
            decompress(codec, &bomb, LIMIT),
            Err(Error::TooLarge { codec, limit: LIMIT })
        );
    }
}

proptest! {
    #[test]
    fn any_bytes_round_trip(value in proptest::collection::vec(any::<u8>(), 0..5_000), level in 1i32..=9) {
        for codec in CODECS {
            let compressed = compress(codec, Some(level), &value).expect("a valid level");
            prop_assert_eq!(decompress(codec, &compressed, LIMIT), Ok(value.clone()));
        }
    }

    #[test]
    fn garbage_is_an_error_or_a_value_never_a_panic(garbage in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        for codec in CODECS {
            if let Ok(value) = decompress(codec, &garbage, 4_096) {
                prop_assert!(value.len() <= 4_096);
            }
        }
    }

    #[test]
    fn damage_to_a_stream_is_never_a_panic(
        value in proptest::collection::vec(any::<u8>(), 1..3_000),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        for codec in CODECS {
            let mut compressed = compress(codec, None, &value).expect("the default level");
            let at = at.index(compressed.len());
            compressed[at] ^= flip;
            if let Ok(read) = decompress(codec, &compressed, LIMIT) {
                // Damage zlib's checksum or zstd's cannot catch (a header
                // bit that changes nothing) must still give the value.
                prop_assert_eq!(read, value.clone());
            }
        }
    }
}
