//! Compression of stored values: zlib, in the format of Python's
//! `zlib.compress` (so pymemcache's `CompressedSerde` and racefree read
//! each other's values), and zstd.
//!
//! Decompression reads data anyone with access to the store may have
//! written, so it never panics, and it stops with an error once the output
//! passes the caller's limit instead of allocating what a hostile entry
//! announces.

use std::fmt;
use std::io::Read;
use std::ops::RangeInclusive;

use flate2::{Compression, Decompress, FlushDecompress, Status};

/// A compression format of stored values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// RFC 1950 (a zlib header, deflate, Adler-32), as Python's `zlib`.
    Zlib,
    /// A zstd frame, with its checksum.
    Zstd,
}

impl Codec {
    /// The codec of a `COMPRESS` option's value.
    pub fn named(name: &str) -> Option<Codec> {
        match name {
            "zlib" => Some(Codec::Zlib),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Zlib => "zlib",
            Codec::Zstd => "zstd",
        }
    }

    /// The level used when none is given: each library's own default
    /// (Python's `zlib.compress` uses 6).
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Zlib => 6,
            Codec::Zstd => zstd::DEFAULT_COMPRESSION_LEVEL,
        }
    }

    /// The levels accepted. zlib's 0 stores without compressing (never
    /// smaller), and zstd's negative "fast" levels are left out.
    pub fn levels(self) -> RangeInclusive<i32> {
        match self {
            Codec::Zlib => 1..=9,
            Codec::Zstd => 1..=*zstd::compression_level_range().end(),
        }
    }
}

/// Why a value could not be compressed or decompressed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A level outside `Codec::levels`.
    Level { codec: Codec, level: i32 },
    /// Not a complete stream of the codec: damaged, truncated, or not
    /// compressed with it at all.
    Corrupt { codec: Codec, reason: String },
    /// The output would pass the limit the caller gave.
    TooLarge { codec: Codec, limit: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Level { codec, level } => {
                let levels = codec.levels();
                let (low, high) = (levels.start(), levels.end());
                write!(f, "{} level {level} is not from {low} to {high}", codec.name())
            }
            Error::Corrupt { codec, reason } => write!(f, "not a valid {} stream: {reason}", codec.name()),
            Error::TooLarge { codec, limit } => {
                write!(f, "{} data decompresses to more than {limit} bytes", codec.name())
            }
        }
    }
}

impl std::error::Error for Error {}

/// `data` compressed with `codec` at `level` (`None`: the codec's default).
pub fn compress(codec: Codec, level: Option<i32>, data: &[u8]) -> Result<Vec<u8>, Error> {
    let level = level.unwrap_or(codec.default_level());
    let bad_level = || Error::Level { codec, level };
    if !codec.levels().contains(&level) {
        return Err(bad_level());
    }
    match codec {
        Codec::Zlib => {
            let level = u32::try_from(level).map_err(|_| bad_level())?;
            let mut encoder = flate2::read::ZlibEncoder::new(data, Compression::new(level));
            let mut compressed = Vec::with_capacity(data.len() / 2 + 64);
            // Reading from a slice into a Vec cannot fail.
            encoder.read_to_end(&mut compressed).map_err(|_| bad_level())?;
            Ok(compressed)
        }
        Codec::Zstd => {
            // With the frame's checksum, so damage reads as an error, as
            // zlib's Adler-32 makes it.
            let mut compressor = zstd::bulk::Compressor::new(level).map_err(|_| bad_level())?;
            compressor.include_checksum(true).map_err(|_| bad_level())?;
            compressor.compress(data).map_err(|_| bad_level())
        }
    }
}

/// `data` decompressed with `codec`; an error if it is not one complete
/// stream of the codec or would decompress to more than `limit` bytes.
pub fn decompress(codec: Codec, data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    match codec {
        Codec::Zlib => inflate(data, limit),
        Codec::Zstd => unzstd(data, limit),
    }
}

/// A first output buffer: a few times the input, which most values fit,
/// never past the limit.
fn first_capacity(compressed: usize, limit: usize) -> usize {
    compressed
        .saturating_mul(4)
        .clamp(64, 1 << 20)
        .min(limit.saturating_add(1))
}

fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let codec = Codec::Zlib;
    let corrupt = |reason: &str| Error::Corrupt {
        codec,
        reason: reason.to_owned(),
    };
    // The low-level interface rather than `read::ZlibDecoder`, which ends
    // a truncated stream as if it were complete: here a stream counts only
    // once zlib reports its end (the Adler-32 checked).
    let mut inflater = Decompress::new(true);
    let mut output = Vec::with_capacity(first_capacity(data.len(), limit));
    loop {
        let consumed = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        let before = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress_vec(rest, &mut output, FlushDecompress::Finish)
            .map_err(|error| corrupt(&error.to_string()))?;
        match status {
            Status::StreamEnd if output.len() <= limit => return Ok(output),
            Status::StreamEnd => return Err(Error::TooLarge { codec, limit }),
            _ if output.len() == output.capacity() => {
                if output.len() > limit {
                    return Err(Error::TooLarge { codec, limit });
                }
                // Doubling, up to one byte past the limit: that byte tells
                // a stream of exactly `limit` bytes from a longer one.
                let room = output.capacity().min(limit.saturating_add(1) - output.len()).max(1);
                output.reserve_exact(room);
            }
            // Room left and all input read: the stream stops short.
            _ if inflater.total_in() >= data.len() as u64 => return Err(corrupt("truncated")),
            _ if (inflater.total_in(), inflater.total_out()) == before => return Err(corrupt("no progress")),
            _ => {}
        }
    }
}

fn unzstd(data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let codec = Codec::Zstd;
    let corrupt = |error: std::io::Error| Error::Corrupt {
        codec,
        reason: error.to_string(),
    };
    if data.is_empty() {
        // Not even a frame header (which `upper_bound` would count as no
        // frames of no bytes).
        return Err(Error::Corrupt {
            codec,
            reason: "empty".to_owned(),
        });
    }
    match zstd::bulk::Decompressor::upper_bound(data) {
        // Every frame records its size, as racefree's do: one call into
        // exactly that much room (zstd checks the frames hold as much).
        Some(size) if size <= limit => zstd::bulk::decompress(data, size).map_err(corrupt),
        Some(_) => Err(Error::TooLarge { codec, limit }),
        // Otherwise the streaming decoder, which allocates as output
        // arrives (and its window within zstd's default 128 MiB cap), and
        // reports a truncated frame as an error.
        None => {
            let decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(corrupt)?;
            let mut output = Vec::with_capacity(first_capacity(data.len(), limit));
            let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            decoder.take(cap).read_to_end(&mut output).map_err(corrupt)?;
            if output.len() > limit {
                return Err(Error::TooLarge { codec, limit });
            }
            Ok(output)
        }
    }
}
