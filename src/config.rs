//! Settings as the Python package hands them to a store: one dict per
//! store, read with serde (`pythonize`). Python's option reading
//! (`racefree.backends._options`) owns every name, default and range
//! check; a store's settings struct has no defaults, so a setting Python
//! does not send is an error, not a silent fallback. Here only what Rust
//! needs to stay sound is checked.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error};

/// Longest accepted duration, in seconds (a day): deadlines are the
/// current time plus a duration. Python's option checks use the same
/// limit (`racefree._core.MAX_SECONDS`).
pub const MAX_SECONDS: f64 = 86_400.0;

/// A duration, checked against [`MAX_SECONDS`].
pub fn duration(seconds: f64) -> Result<Duration, String> {
    if (0.0..=MAX_SECONDS).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("{seconds} is not a number of seconds from 0 to {MAX_SECONDS}"))
    }
}

/// Deserialize a duration given in seconds (`#[serde(deserialize_with)]`).
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(f64::deserialize(deserializer)?).map_err(D::Error::custom)
}

/// Deserialize an optional duration given in seconds (None stays None).
pub fn optional_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    Option::<f64>::deserialize(deserializer)?
        .map(duration)
        .transpose()
        .map_err(D::Error::custom)
}
