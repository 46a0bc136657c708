//! The cache's entry count, shared by every process through a small
//! memory-mapped file, so that deciding whether to cull costs an atomic
//! load instead of a directory listing.
//!
//! Writers add or subtract while holding the key's shard lock, so the
//! count is exact but for processes killed between a rename and the
//! update; a cull lists the directory anyway and corrects the count when
//! it finds fewer entries than it says.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

const MAGIC: u64 = u64::from_le_bytes(*b"RFCOUNT1");
const MAP_LEN: u64 = 4096;
/// How often to check that the state file is still the one mapped (a
/// cache directory deleted and recreated gets a new one).
const RECHECK: Duration = Duration::from_secs(1);

struct Mapping {
    map: MmapMut,
    inode: u64,
}

impl Mapping {
    fn open(path: &Path) -> io::Result<Mapping> {
        let file = match open_existing(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                create_complete(path)?;
                open_existing(path)?
            }
            other => other?,
        };
        if file.metadata()?.len() < MAP_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a racefree state file"));
        }
        // A file made sparse (by an older version) gets its blocks now, so
        // that no store into the mapping needs one on a full disk, which
        // would kill the process with SIGBUS instead of raising.
        // SAFETY: plain call on an open descriptor.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, MAP_LEN as libc::off_t) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(error);
            }
        }
        let inode = file.metadata()?.ino();
        // SAFETY: the file is at least MAP_LEN long and racefree never
        // shrinks it; the mapping is only accessed through atomics.
        let map = unsafe { memmap2::MmapOptions::new().len(MAP_LEN as usize).map_mut(&file)? };
        let mapping = Mapping { map, inode };
        // A zeroed file (from an older version): claim it; a racing
        // process may do the same.
        let _ = mapping
            .magic()
            .compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire);
        if mapping.magic().load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a racefree state file"));
        }
        Ok(mapping)
    }

    fn magic(&self) -> &AtomicU64 {
        // SAFETY: page-aligned mapping of MAP_LEN bytes; offset 0 is 8-aligned.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    fn count(&self) -> &AtomicI64 {
        // SAFETY: offset 8 of a page-aligned mapping of MAP_LEN bytes.
        unsafe { &*(self.map.as_ptr().add(8) as *const AtomicI64) }
    }
}

fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Make the state file whole before anyone can see it: written with
/// ordinary writes (a full disk is an error here, not a fault later), then
/// linked into place; if another process got there first, its file stays.
fn create_complete(path: &Path) -> io::Result<()> {
    let mut contents = vec![0u8; MAP_LEN as usize];
    contents[..8].copy_from_slice(&MAGIC.to_le_bytes());
    let temp = path.with_extension(format!("tmp-{}-{:x}", std::process::id(), fastrand::u64(..)));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| file.write_all(&contents));
    let linked = written.and_then(|()| match fs::hard_link(&temp, path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = fs::remove_file(&temp);
    linked
}

/// The shared count of one cache directory, mapped lazily.
pub(crate) struct SharedCount {
    path: PathBuf,
    mapping: RwLock<Option<Arc<Mapping>>>,
    checked_at: RwLock<Instant>,
}

impl SharedCount {
    pub(crate) fn new(path: PathBuf) -> SharedCount {
        SharedCount {
            path,
            mapping: RwLock::new(None),
            checked_at: RwLock::new(Instant::now()),
        }
    }

    fn current(&self) -> io::Result<Arc<Mapping>> {
        let stale = self.checked_at.read().unwrap_or_else(PoisonError::into_inner).elapsed() > RECHECK;
        if !stale && let Some(mapping) = self.mapping.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            return Ok(Arc::clone(mapping));
        }
        let mut slot = self.mapping.write().unwrap_or_else(PoisonError::into_inner);
        let still_ours = match (slot.as_ref(), std::fs::metadata(&self.path)) {
            (Some(mapping), Ok(meta)) => meta.ino() == mapping.inode,
            _ => false,
        };
        if !still_ours {
            *slot = Some(Arc::new(Mapping::open(&self.path)?));
        }
        *self.checked_at.write().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        slot.as_ref()
            .map(Arc::clone)
            .ok_or_else(|| io::Error::other("state file not mapped"))
    }

    pub(crate) fn get(&self) -> io::Result<i64> {
        Ok(self.current()?.count().load(Ordering::Acquire).max(0))
    }

    pub(crate) fn add(&self, delta: i64) -> io::Result<()> {
        if delta != 0 {
            self.current()?.count().fetch_add(delta, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Overwrite after a full listing found fewer entries than counted.
    pub(crate) fn set(&self, value: i64) -> io::Result<()> {
        self.current()?.count().store(value, Ordering::Release);
        Ok(())
    }
}
