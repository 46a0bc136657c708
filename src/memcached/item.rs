//! A value as memcached stores it.

/// A stored value with its client flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Vec<u8>,
    pub flags: u32,
}
