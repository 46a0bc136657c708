//! The file store: one directory per cache, one file per entry.
//!
//! ```text
//! LOCATION/
//!   .racefree/state       shared entry count (memory-mapped)
//!   .racefree/cull.lock   one culler at a time
//!   00/ .. ff/            256 shards, chosen by the key's hash
//!     .lock               the shard's lock
//!     <xxh3-128>.rfcache  entries
//!     .tmp-*              entries being written
//! ```
//!
//! Every write holds the shard's lock, and so does everything that decides
//! from what it read (add, incr, touch, delete, removing an expired or
//! damaged file, culling, clear), so no process can slip a fresh value in
//! between the decision and the act. Unrelated keys mostly live in other
//! shards and do not wait for each other.
//!
//! A key's file, once created, is rewritten in place whenever the blocks
//! it already has can hold the new entry: no new inode, no rename, no
//! unlink, so a write costs the file system no journalled metadata but the
//! file's times. (Creating, renaming and unlinking a file per write is what
//! made writes collapse while other processes created files on the same
//! file system; figures in the README.) Other writes go to a temp file
//! that is swapped in.
//!
//! Readers take no lock. A reader that catches an in-place rewrite half
//! done fails the checksum or the length check and reads again; if it
//! keeps failing, it reads under the shard's lock, where no writer is
//! midway. So no read returns a torn value.

use crate::stats::{Counters, Snapshot};
use serde::Deserialize;
use std::borrow::Cow;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use xxhash_rust::xxh3::xxh3_128;

use super::count::SharedCount;
use super::entry::{self, HEADER_LEN, is_expired};
use super::error::{Error, Result};
use super::lock::{self, Held};
use crate::Limits;

pub const SHARDS: usize = 256;
const ENTRY_SUFFIX: &str = ".rfcache";
const TEMP_PREFIX: &str = ".tmp-";
const STATE_DIR: &str = ".racefree";
/// Temp files older than this belong to a writer that died; removed when
/// a cull or clear passes by.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// The value flag the Python layer gives integers (pymemcache's
/// FLAG_INTEGER): only such values can be incremented.
pub const INTEGER_FLAG: u32 = 1 << 1;

/// Integers are stored space-padded to this width (any i128 fits), so an
/// increment keeps the file's size and can be written in place.
const INTEGER_WIDTH: usize = 40;

/// Lock-free reads of a file whose checksum fails before reading it under
/// the shard's lock: a reader may catch an in-place rewrite half done.
const READ_ATTEMPTS: usize = 2;

/// A live value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub flags: u32,
    pub value: Vec<u8>,
}

/// What a read of a key's file found.
enum Found {
    Missing,
    /// A well-formed entry of another key with the same hash.
    Foreign,
    /// Empty, truncated or otherwise not an entry.
    Damaged,
    Expired,
    Live {
        flags: u32,
        value: Vec<u8>,
        expires: f64,
    },
}

struct Location {
    shard: u8,
    path: PathBuf,
}

pub struct FileStore {
    root: PathBuf,
    /// The root was found to be this process user's alone (checked once).
    root_trusted: AtomicBool,
    lock_timeout: Duration,
    count: SharedCount,
    temp_serial: AtomicU64,
    stats: Counters,
}

/// The file backend's OPTIONS of the same names (defaults and checks are
/// Python's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Longest wait for another process's lock before `LockTimeout`.
    #[serde(deserialize_with = "crate::config::seconds")]
    pub lock_timeout: Duration,
}

fn not_found(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR)
}

impl FileStore {
    /// A store in `root`. Nothing is created until the first write.
    pub fn new(root: impl Into<PathBuf>, options: Options) -> FileStore {
        let root = root.into();
        FileStore {
            count: SharedCount::new(root.join(STATE_DIR).join("state")),
            root,
            root_trusted: AtomicBool::new(false),
            lock_timeout: options.lock_timeout,
            temp_serial: AtomicU64::new(0),
            stats: Counters::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`.
    pub fn entry_path(&self, key: &[u8]) -> PathBuf {
        self.location_of(key).path
    }

    fn location_of(&self, key: &[u8]) -> Location {
        let hash = xxh3_128(key);
        let shard = (hash >> 120) as u8;
        let path = self.shard_dir(shard).join(format!("{hash:032x}{ENTRY_SUFFIX}"));
        Location { shard, path }
    }

    /// Where `key` lives, once the root is known to be trusted.
    fn locate(&self, key: &[u8]) -> Result<Location> {
        self.check_root()?;
        Ok(self.location_of(key))
    }

    /// Refuse a directory that another user owns or may write to: whoever
    /// can plant a file in it chooses what pickle loads (the checksum is
    /// not a MAC). Checked once per store, before the first call that reads
    /// or writes; a directory still missing is checked once created.
    pub fn check_root(&self) -> Result<()> {
        if self.root_trusted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let meta = match fs::metadata(&self.root) {
            Ok(meta) => meta,
            Err(error) if not_found(&error) => return Ok(()),
            Err(error) => return Err(Error::io("inspect", &self.root, error)),
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = unsafe { libc::geteuid() };
        let why = if !meta.is_dir() {
            Some("it is not a directory".to_owned())
        } else if meta.uid() != user {
            Some(format!(
                "it belongs to uid {}, not to this process's uid {user}",
                meta.uid()
            ))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "its mode {:o} lets other users write to it",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::UntrustedDirectory {
                path: self.root.clone(),
                why,
            }),
            None => {
                self.root_trusted.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn shard_dir(&self, shard: u8) -> PathBuf {
        self.root.join(format!("{shard:02x}"))
    }

    fn create_dir(&self, dir: &Path) -> Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
        // Another user may have made the root between the check and now.
        self.check_root()
    }

    /// Lock a shard, creating its directory if needed (for writes).
    fn lock_shard(&self, shard: u8) -> Result<Held> {
        let dir = self.shard_dir(shard);
        let create = || self.create_dir(&dir);
        let held = lock::lock(&dir.join(".lock"), self.lock_timeout, Some(&create))?;
        held.ok_or_else(|| Error::io("lock", &dir, io::ErrorKind::NotFound.into()))
    }

    /// Lock a shard that exists; None if its directory does not, since
    /// then no key in it exists either (for removals and updates).
    fn lock_existing_shard(&self, shard: u8) -> Result<Option<Held>> {
        lock::lock(&self.shard_dir(shard).join(".lock"), self.lock_timeout, None)
    }

    /// Read the key's entry without a lock. A file that fails its checksum
    /// is read again, then under the shard's lock; one still damaged there
    /// is not being written, so it is removed and reads as missing.
    fn read(&self, location: &Location, key: &[u8], now: f64) -> Result<Found> {
        for _ in 0..READ_ATTEMPTS {
            let found = self.read_locked(location, key, now)?;
            if !matches!(found, Found::Damaged) {
                return Ok(found);
            }
        }
        let Some(_held) = self.lock_existing_shard(location.shard)? else {
            return Ok(Found::Missing);
        };
        match self.read_locked(location, key, now)? {
            Found::Damaged => {
                self.replace(location, None)?;
                Ok(Found::Missing)
            }
            found => Ok(found),
        }
    }

    /// Read the key's entry once: with the shard's lock held, or as one
    /// attempt of a lock-free `read`.
    fn read_locked(&self, location: &Location, key: &[u8], now: f64) -> Result<Found> {
        let path = &location.path;
        let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(file) => file,
            Err(error) if not_found(&error) => return Ok(Found::Missing),
            Err(error) => return Err(Error::io("open", path, error)),
        };
        let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        let Ok(len) = usize::try_from(len) else {
            return Ok(Found::Damaged);
        };
        if len < HEADER_LEN {
            return Ok(Found::Damaged);
        }
        // A rewrite in place may change the length meanwhile: a short read
        // or a length that disagrees with the header is a torn read.
        let mut bytes = vec![0; len];
        match file.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(Found::Damaged),
            Err(error) => return Err(Error::io("read", path, error)),
        }
        let Some(entry) = entry::decode(&bytes) else {
            return Ok(Found::Damaged);
        };
        if entry.key != key {
            return Ok(Found::Foreign);
        }
        if is_expired(entry.expires, now) {
            return Ok(Found::Expired);
        }
        let (flags, expires) = (entry.flags, entry.expires);
        let start = HEADER_LEN + key.len();
        bytes.drain(..start);
        Ok(Found::Live {
            flags,
            value: bytes,
            expires,
        })
    }

    /// Write a complete entry file next to its final place.
    fn write_temp(&self, shard: u8, bytes: &[u8]) -> Result<PathBuf> {
        let dir = self.shard_dir(shard);
        let name = format!(
            "{TEMP_PREFIX}{}-{}-{:016x}",
            std::process::id(),
            self.temp_serial.fetch_add(1, Ordering::Relaxed),
            fastrand::u64(..)
        );
        let path = dir.join(name);
        let open = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        let mut file = match open() {
            Ok(file) => file,
            Err(error) if not_found(&error) => {
                self.create_dir(&dir)?;
                open().map_err(|e| Error::io("create", &path, e))?
            }
            Err(error) => return Err(Error::io("create", &path, error)),
        };
        if let Err(error) = file.write_all(bytes) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(Error::io("write", &path, error));
        }
        Ok(path)
    }

    fn discard(temp: Option<PathBuf>) {
        if let Some(temp) = temp {
            let _ = fs::remove_file(temp);
        }
    }

    /// Remove a file; false if it was not there.
    fn remove(&self, path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(error) if not_found(&error) => Ok(false),
            Err(error) => Err(Error::io("remove", path, error)),
        }
    }

    /// With the shard lock held: put `temp` in place of the key's file
    /// (or, with None, remove the file), keeping the count.
    fn replace(&self, location: &Location, temp: Option<PathBuf>) -> Result<()> {
        match temp {
            Some(temp) => {
                if !install(&temp, &location.path)? {
                    self.add_count(1)?;
                }
            }
            None => {
                if self.remove(&location.path)? {
                    self.add_count(-1)?;
                }
            }
        }
        Ok(())
    }

    /// With the shard lock held: make `bytes` the key's file, in place if
    /// its file has the room, else swapped in from `temp` (written before
    /// the lock was taken) or from a temp file written now.
    fn write_locked(&self, location: &Location, bytes: &[u8], temp: Option<PathBuf>) -> Result<()> {
        if temp.is_none() && self.overwrite(location, bytes)? {
            return Ok(());
        }
        let temp = match temp {
            Some(temp) => temp,
            None => self.write_temp(location.shard, bytes)?,
        };
        self.replace(location, Some(temp))
    }

    /// With the shard lock held: rewrite the file at `path` in place if the
    /// blocks it has hold `bytes`; false (nothing done) if there is no such
    /// file. Within allocated blocks a write needs no new space, so a full
    /// disk cannot stop it halfway; if it fails anyway, the torn file is
    /// removed rather than left to be read.
    fn overwrite(&self, location: &Location, bytes: &[u8]) -> Result<bool> {
        let path = &location.path;
        let file = match OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(file) => file,
            Err(error) if not_found(&error) || error.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
            Err(error) => return Err(Error::io("open", path, error)),
        };
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if !has_room(&meta, bytes.len()) {
            return Ok(false);
        }
        let len = bytes.len() as u64;
        let written = file
            .write_all_at(bytes, 0)
            .and_then(|()| if meta.len() > len { file.set_len(len) } else { Ok(()) });
        if let Err(error) = written {
            drop(file);
            self.replace(location, None)?;
            return Err(Error::io("write", path, error));
        }
        Ok(true)
    }

    /// Whether the key's file looks like it can be rewritten in place (a
    /// lock-free guess, which `overwrite` confirms under the lock).
    fn looks_roomy(path: &Path, len: usize) -> bool {
        fs::symlink_metadata(path).is_ok_and(|meta| has_room(&meta, len))
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    fn with_count<T>(&self, run: impl Fn(&SharedCount) -> io::Result<T>) -> Result<T> {
        self.check_root()?;
        match run(&self.count) {
            Err(error) if not_found(&error) => {
                self.create_dir(&self.state_dir())?;
                run(&self.count).map_err(|e| Error::io("map", self.state_dir().join("state"), e))
            }
            other => other.map_err(|e| Error::io("map", self.state_dir().join("state"), e)),
        }
    }

    fn add_count(&self, delta: i64) -> Result<()> {
        self.with_count(|count| count.add(delta))
    }

    /// Entries in the cache (an exact count kept in shared memory).
    pub fn count(&self) -> Result<i64> {
        self.with_count(SharedCount::get)
    }

    /// After a lock-free read found an expired file: remove it if it is
    /// still so under the lock (a writer may have replaced it meanwhile).
    /// Best effort: a busy lock or an error leaves it.
    fn clean_up(&self, location: &Location, key: &[u8], now: f64) {
        let lock_path = self.shard_dir(location.shard).join(".lock");
        let Ok(Some(_held)) = lock::try_lock(&lock_path) else {
            return;
        };
        if let Ok(Found::Expired | Found::Damaged) = self.read_locked(location, key, now) {
            let _ = self.replace(location, None);
        }
    }

    pub fn get(&self, key: &[u8], now: f64) -> Result<Option<Value>> {
        self.stats.read(self.get_uncounted(key, now))
    }

    /// The operation counters: hits, misses, sets, deletes, errors.
    pub fn stats(&self) -> Snapshot {
        self.stats.snapshot()
    }

    fn get_uncounted(&self, key: &[u8], now: f64) -> Result<Option<Value>> {
        let location = self.locate(key)?;
        match self.read(&location, key, now)? {
            Found::Live { flags, value, .. } => Ok(Some(Value { flags, value })),
            Found::Missing | Found::Foreign | Found::Damaged => Ok(None),
            Found::Expired => {
                self.clean_up(&location, key, now);
                Ok(None)
            }
        }
    }

    pub fn contains(&self, key: &[u8], now: f64) -> Result<bool> {
        let location = self.locate(key)?;
        Ok(matches!(self.read(&location, key, now)?, Found::Live { .. }))
    }

    /// Store a value; an already expired one deletes the key instead.
    pub fn set(&self, key: &[u8], flags: u32, value: &[u8], expires: f64, now: f64, limits: Limits) -> Result<()> {
        let bytes = encoded(key, flags, value, expires, now);
        self.stats
            .write(retrying_if_removed(|| self.store_once(key, bytes.as_deref(), now, limits, false)).map(|_| ()))
    }

    /// Store only if the key has no live value; true if stored.
    pub fn add(&self, key: &[u8], flags: u32, value: &[u8], expires: f64, now: f64, limits: Limits) -> Result<bool> {
        let bytes = encoded(key, flags, value, expires, now);
        self.stats.stored_if(retrying_if_removed(|| {
            self.store_once(key, bytes.as_deref(), now, limits, true)
        }))
    }

    /// `set`, or with `only_if_absent` `add`, of the entry file `bytes`;
    /// true if stored. None (a value already expired) removes the key's
    /// file instead.
    fn store_once(
        &self,
        key: &[u8],
        bytes: Option<&[u8]>,
        now: f64,
        limits: Limits,
        only_if_absent: bool,
    ) -> Result<bool> {
        self.cull_if_full(limits)?;
        let location = self.locate(key)?;
        // A new file is written before the lock, so that other writers to
        // the shard do not wait for it.
        let temp = match bytes {
            Some(bytes) if !Self::looks_roomy(&location.path, bytes.len()) => {
                Some(self.write_temp(location.shard, bytes)?)
            }
            _ => None,
        };
        let held = self.lock_shard(location.shard).and_then(|held| {
            let live = only_if_absent && matches!(self.read_locked(&location, key, now)?, Found::Live { .. });
            Ok((held, live))
        });
        let (_held, live) = match held {
            Ok(held) => held,
            Err(error) => {
                Self::discard(temp);
                return Err(error);
            }
        };
        if live {
            Self::discard(temp);
            return Ok(false);
        }
        match bytes {
            Some(bytes) => self.write_locked(&location, bytes, temp)?,
            None => self.replace(&location, None)?,
        }
        Ok(true)
    }

    /// Give a live key a new expiry; true if it had a live value.
    pub fn touch(&self, key: &[u8], expires: f64, now: f64) -> Result<bool> {
        self.stats
            .other(retrying_if_removed(|| self.touch_once(key, None, expires, now)))
    }

    /// `touch`, or with `expected` only while the live value is that item.
    fn touch_once(&self, key: &[u8], expected: Option<(u32, &[u8])>, expires: f64, now: f64) -> Result<bool> {
        let location = self.locate(key)?;
        let Some(_held) = self.lock_existing_shard(location.shard)? else {
            return Ok(false);
        };
        match self.read_locked(&location, key, now)? {
            Found::Live { flags, value, .. } if expected.is_some_and(|item| item != (flags, value.as_slice())) => {
                Ok(false)
            }
            Found::Live { flags, value, .. } => {
                if is_expired(expires, now) {
                    self.replace(&location, None)?;
                } else {
                    self.write_locked(&location, &entry::encode(key, flags, &value, expires), None)?;
                }
                Ok(true)
            }
            Found::Expired | Found::Damaged => {
                self.replace(&location, None)?;
                Ok(false)
            }
            Found::Missing | Found::Foreign => Ok(false),
        }
    }

    /// Give `key` a new expiry only while its live value is exactly
    /// `flags`/`value` (a lock's extension, under the shard's lock); true
    /// if done.
    pub fn touch_if(&self, key: &[u8], flags: u32, value: &[u8], expires: f64, now: f64) -> Result<bool> {
        self.stats.other(retrying_if_removed(|| {
            self.touch_once(key, Some((flags, value)), expires, now)
        }))
    }

    /// Delete a key; true if it had a live value.
    pub fn delete(&self, key: &[u8], now: f64) -> Result<bool> {
        self.stats
            .delete(retrying_if_removed(|| self.delete_once(key, None, now)))
    }

    /// Delete `key` only while its live value is exactly `flags`/`value`
    /// (compare-and-delete, under the shard's lock); true if deleted.
    pub fn delete_if(&self, key: &[u8], flags: u32, value: &[u8], now: f64) -> Result<bool> {
        self.stats
            .delete(retrying_if_removed(|| self.delete_once(key, Some((flags, value)), now)))
    }

    fn delete_once(&self, key: &[u8], expected: Option<(u32, &[u8])>, now: f64) -> Result<bool> {
        let location = self.locate(key)?;
        let Some(_held) = self.lock_existing_shard(location.shard)? else {
            return Ok(false);
        };
        match self.read_locked(&location, key, now)? {
            Found::Live { flags, value, .. } if expected.is_some_and(|item| item != (flags, value.as_slice())) => {
                Ok(false)
            }
            Found::Live { .. } => {
                self.replace(&location, None)?;
                Ok(true)
            }
            Found::Expired | Found::Damaged => {
                self.replace(&location, None)?;
                Ok(false)
            }
            Found::Missing | Found::Foreign => Ok(false),
        }
    }

    /// Add `delta` to a stored integer, keeping its expiry; None if the
    /// key has no live value.
    pub fn incr(&self, key: &[u8], delta: i128, now: f64) -> Result<Option<i128>> {
        self.stats
            .other(retrying_if_removed(|| self.incr_once(key, delta, now)))
    }

    fn incr_once(&self, key: &[u8], delta: i128, now: f64) -> Result<Option<i128>> {
        let location = self.locate(key)?;
        let Some(_held) = self.lock_existing_shard(location.shard)? else {
            return Ok(None);
        };
        match self.read_locked(&location, key, now)? {
            Found::Live { flags, value, expires } => {
                if flags != INTEGER_FLAG {
                    return Err(Error::NotAnInteger);
                }
                let current = parse_integer(&value)?;
                let new = current.checked_add(delta).ok_or(Error::Overflow)?;
                let digits = new.to_string();
                let bytes = entry::encode(key, flags, &stored_form(flags, digits.as_bytes()), expires);
                self.write_locked(&location, &bytes, None)?;
                Ok(Some(new))
            }
            Found::Expired | Found::Damaged => {
                self.replace(&location, None)?;
                Ok(None)
            }
            Found::Missing | Found::Foreign => Ok(None),
        }
    }

    /// Read-modify-write a live value under the shard's lock, keeping its
    /// expiry: `change` gets the flags and value and returns new ones (a
    /// signed counter's increment, which the store cannot count with
    /// itself). `Ok(Ok(None))`: no live value. If `change` fails, nothing
    /// is written and its error is returned.
    pub fn update<E>(
        &self,
        key: &[u8],
        now: f64,
        change: impl FnOnce(u32, &[u8]) -> std::result::Result<(u32, Vec<u8>), E>,
    ) -> Result<std::result::Result<Option<Value>, E>> {
        self.stats.other(self.update_uncounted(key, now, change))
    }

    fn update_uncounted<E>(
        &self,
        key: &[u8],
        now: f64,
        change: impl FnOnce(u32, &[u8]) -> std::result::Result<(u32, Vec<u8>), E>,
    ) -> Result<std::result::Result<Option<Value>, E>> {
        let location = self.locate(key)?;
        let Some(_held) = self.lock_existing_shard(location.shard)? else {
            return Ok(Ok(None));
        };
        let outcome = match self.read_locked(&location, key, now)? {
            Found::Live { flags, value, expires } => match change(flags, &value) {
                Ok((flags, value)) => {
                    let bytes = entry::encode(key, flags, &stored_form(flags, &value), expires);
                    self.write_locked(&location, &bytes, None)?;
                    Ok(Some(Value { flags, value }))
                }
                Err(error) => Err(error),
            },
            Found::Expired | Found::Damaged => {
                self.replace(&location, None)?;
                Ok(None)
            }
            Found::Missing | Found::Foreign => Ok(None),
        };
        Ok(outcome)
    }

    /// The shard directories that exist.
    fn shards(&self) -> Result<Vec<u8>> {
        self.check_root()?;
        let listing = match fs::read_dir(&self.root) {
            Ok(listing) => listing,
            Err(error) if not_found(&error) => return Ok(Vec::new()),
            Err(error) => return Err(Error::io("list", &self.root, error)),
        };
        let mut shards = Vec::new();
        for item in listing {
            let item = item.map_err(|e| Error::io("list", &self.root, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 2
                && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && let Ok(shard) = u8::from_str_radix(name, 16)
            {
                shards.push(shard);
            }
        }
        shards.sort_unstable();
        Ok(shards)
    }

    /// Entry files of a shard; stale temp files are removed on the way.
    fn shard_entries(&self, shard: u8) -> Result<Vec<PathBuf>> {
        let dir = self.shard_dir(shard);
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(error) if not_found(&error) => return Ok(Vec::new()),
            Err(error) => return Err(Error::io("list", &dir, error)),
        };
        let mut entries = Vec::new();
        for item in listing {
            let item = item.map_err(|e| Error::io("list", &dir, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(ENTRY_SUFFIX) {
                entries.push(item.path());
            } else if name.starts_with(TEMP_PREFIX) {
                let age = item
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_some_and(|age| age > STALE_TEMP) {
                    let _ = fs::remove_file(item.path());
                }
            }
        }
        Ok(entries)
    }

    /// Remove `paths` of one shard under its lock; returns how many went.
    fn remove_in_shard(&self, shard: u8, paths: &[PathBuf]) -> Result<i64> {
        let Some(_held) = self.lock_existing_shard(shard)? else {
            return Ok(0);
        };
        let mut removed = 0;
        for path in paths {
            if self.remove(path)? {
                removed += 1;
            }
        }
        self.add_count(-removed)?;
        Ok(removed)
    }

    /// Remove every entry (other files in the directory are left alone).
    pub fn clear(&self) -> Result<()> {
        for shard in self.shards()? {
            let entries = self.shard_entries(shard)?;
            self.remove_in_shard(shard, &entries)?;
        }
        Ok(())
    }

    /// Django's culling, before a write: at MAX_ENTRIES entries or more,
    /// remove a random `count / CULL_FREQUENCY` of them (all of them for
    /// 0). The count is shared memory, so only an actual cull lists the
    /// directory.
    fn cull_if_full(&self, limits: Limits) -> Result<()> {
        if self.count()? < limits.max_entries {
            return Ok(());
        }
        // One culler at a time; a writer arriving meanwhile goes ahead.
        let Some(_culling) = lock::try_lock(&self.state_dir().join("cull.lock"))? else {
            return Ok(());
        };
        let mut entries = Vec::new();
        for shard in self.shards()? {
            entries.extend(self.shard_entries(shard)?.into_iter().map(|path| (shard, path)));
        }
        let listed = entries.len() as i64;
        if listed < limits.max_entries {
            // The count ran ahead of the files (a writer died between a
            // rename and its count update): believe the listing.
            self.with_count(|count| count.set(listed))?;
            return Ok(());
        }
        let victims = if limits.cull_frequency <= 0 {
            entries
        } else {
            let amount = usize::try_from(listed / limits.cull_frequency).unwrap_or(0);
            fastrand::choose_multiple(entries, amount)
        };
        let mut by_shard: Vec<Vec<PathBuf>> = vec![Vec::new(); SHARDS];
        for (shard, path) in victims {
            by_shard[usize::from(shard)].push(path);
        }
        for (shard, paths) in by_shard.iter().enumerate() {
            if !paths.is_empty() {
                self.remove_in_shard(shard as u8, paths)?;
            }
        }
        Ok(())
    }
}

/// Whether a regular file's allocated blocks hold `len` bytes, so that
/// rewriting it in place needs no new space.
fn has_room(meta: &fs::Metadata, len: usize) -> bool {
    meta.is_file() && meta.blocks().saturating_mul(512) >= len as u64
}

/// The entry file for a write, or None if the value is already expired.
fn encoded(key: &[u8], flags: u32, value: &[u8], expires: f64, now: f64) -> Option<Vec<u8>> {
    (!is_expired(expires, now)).then(|| entry::encode(key, flags, &stored_form(flags, value), expires))
}

/// How a value is kept on disk: integers padded to a fixed width.
fn stored_form(flags: u32, value: &[u8]) -> Cow<'_, [u8]> {
    if flags == INTEGER_FLAG && value.len() < INTEGER_WIDTH && parse_integer(value).is_ok() {
        let mut padded = value.to_vec();
        padded.resize(INTEGER_WIDTH, b' ');
        Cow::Owned(padded)
    } else {
        Cow::Borrowed(value)
    }
}

/// A write whose directories were removed under it (`rm -rf` of the
/// cache while in use) starts over, recreating them, up to this many times.
const VANISHED_ATTEMPTS: usize = 3;

fn retrying_if_removed<T>(mut operation: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match operation() {
            Err(error) if attempt < VANISHED_ATTEMPTS && error.is_not_found() => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// Atomically put `temp` at `path`; true if it replaced a file (whose
/// content then is gone). Swapping with `renameat2(RENAME_EXCHANGE)` and
/// unlinking the old file costs a fraction of a plain `rename` over an
/// existing file, which ext4 turns into a forced write-back of the new
/// file's data (its `auto_da_alloc` heuristic; figures in the README).
fn install(temp: &Path, path: &Path) -> Result<bool> {
    match exchange(temp, path) {
        Ok(true) => {
            // `temp` now holds the old entry; a leftover is a stale temp.
            let _ = fs::remove_file(temp);
            return Ok(true);
        }
        Ok(false) => {}
        Err(error) if not_found(&error) => {}
        Err(error) => {
            let _ = fs::remove_file(temp);
            return Err(Error::io("swap into", path, error));
        }
    }
    // Nothing there to swap with, or no RENAME_EXCHANGE on this system.
    let existed = fs::symlink_metadata(path).is_ok();
    if let Err(error) = fs::rename(temp, path) {
        let _ = fs::remove_file(temp);
        return Err(Error::io("rename into", path, error));
    }
    Ok(existed)
}

/// Swap two existing paths atomically; Ok(false) where the system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let to_c =
        |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (a, b) = (to_c(a)?, to_c(b)?);
    // SAFETY: two valid NUL-terminated paths relative to the cwd.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

fn parse_integer(digits: &[u8]) -> Result<i128> {
    let text = std::str::from_utf8(digits).map_err(|_| Error::NotAnInteger)?.trim();
    let body = text.strip_prefix('-').unwrap_or(text);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::NotAnInteger);
    }
    text.parse().map_err(|_| Error::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(parse_integer(b"42").unwrap(), 42);
        assert_eq!(parse_integer(b"-7").unwrap(), -7);
        assert!(matches!(parse_integer(b"4.2"), Err(Error::NotAnInteger)));
        assert!(matches!(parse_integer(b""), Err(Error::NotAnInteger)));
        assert!(matches!(parse_integer(b"-"), Err(Error::NotAnInteger)));
        assert!(matches!(parse_integer(&[b'9'; 60]), Err(Error::Overflow)));
    }
}
