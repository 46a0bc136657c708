//! Advisory locks on files (flock), with a bounded wait.
//!
//! Each lock opens its own file description, so it excludes other threads
//! of this process as well as other processes, and is released when the
//! guard is dropped or the process dies (SIGKILL included).

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// A held lock; released on drop.
pub(crate) struct Held {
    _file: File,
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Take the lock at `path`, waiting at most `timeout` for a holder to let
/// go. If the lock file's directory is missing, `create_dir` makes it; with
/// no `create_dir`, a missing directory is `Ok(None)`.
pub(crate) fn lock(
    path: &Path,
    timeout: Duration,
    create_dir: Option<&dyn Fn() -> Result<()>>,
) -> Result<Option<Held>> {
    let file = match open_lock_file(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => match create_dir {
            Some(create_dir) => {
                create_dir()?;
                open_lock_file(path).map_err(|e| Error::io("open lock", path, e))?
            }
            None => return Ok(None),
        },
        Err(error) => return Err(Error::io("open lock", path, error)),
    };
    let started = Instant::now();
    let mut pause = Duration::from_micros(20);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(Held { _file: file })),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(error)) => return Err(Error::io("lock", path, error)),
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(Error::LockTimeout {
                path: path.to_owned(),
                waited,
            });
        }
        sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Take the lock only if it is free right now.
pub(crate) fn try_lock(path: &Path) -> Result<Option<Held>> {
    let file = match open_lock_file(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("open lock", path, error)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(Held { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(error)) => Err(Error::io("lock", path, error)),
    }
}
