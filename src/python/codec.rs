//! `racefree._core.compress` / `decompress`: value compression for the
//! serializer (`racefree.serialization`), with the GIL released.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::codec::{self, Codec};

fn codec_named(name: &str) -> PyResult<Codec> {
    Codec::named(name).ok_or_else(|| PyValueError::new_err(format!("unknown codec {name:?}: 'zlib' or 'zstd'")))
}

/// `data` compressed with `codec` ("zlib" or "zstd") at `level` (None:
/// the codec's default); ValueError for a level the codec does not have.
#[pyfunction]
#[pyo3(signature = (codec, data, level=None))]
pub fn compress<'py>(py: Python<'py>, codec: &str, data: &[u8], level: Option<i32>) -> PyResult<Bound<'py, PyBytes>> {
    let codec = codec_named(codec)?;
    // Bytes are immutable, and the caller holds them for the whole call.
    let compressed = py.detach(|| codec::compress(codec, level, data))?;
    Ok(PyBytes::new(py, &compressed))
}

/// `data` decompressed with `codec`; ValueError if it is not one complete
/// stream of the codec, or would decompress to more than `limit` bytes.
#[pyfunction]
pub fn decompress<'py>(py: Python<'py>, codec: &str, data: &[u8], limit: usize) -> PyResult<Bound<'py, PyBytes>> {
    let codec = codec_named(codec)?;
    let decompressed = py.detach(|| codec::decompress(codec, data, limit))?;
    Ok(PyBytes::new(py, &decompressed))
}
