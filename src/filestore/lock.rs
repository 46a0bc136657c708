//! Advisory locks on files (flock), with a bounded wait.
//!
//! Each lock opens its own file description, so it excludes other threads
//! of this process as well as other processes, and is released when the
//! guard is dropped or the process dies (SIGKILL included).
//!
//! The guard unlocks before it closes: a child forked while a thread held
//! the lock has a copy of the descriptor, and closing ours alone would
//! leave the lock held for as long as that child lives.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// A held lock; released on drop.
pub(crate) struct Held {
    file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        // An error would mean a bad descriptor; closing it follows anyway.
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // A planted symlink must not redirect the lock (or create files
        // elsewhere).
        .custom_flags(libc::O_NOFOLLOW)
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
            Ok(()) => return Ok(Some(Held { file })),
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
        Ok(()) => Ok(Some(Held { file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(error)) => Err(Error::io("lock", path, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked while the lock is held, living on after the parent
    /// lets go, must not keep the lock.
    #[test]
    fn a_lock_held_across_fork_is_released_by_the_parent() {
        let dir = std::env::temp_dir().join(format!("racefree-lock-fork-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".lock");
        let held = lock(&path, Duration::from_secs(1), None).unwrap().unwrap();
        // SAFETY: the child only sleeps and exits, touching nothing the
        // test harness's other threads may have locked.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            unsafe {
                libc::sleep(3);
                libc::_exit(0);
            }
        }
        drop(held);
        let again = lock(&path, Duration::from_millis(500), None);
        // SAFETY: plain signal and wait on the child we forked.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(again, Ok(Some(_))),
            "the child kept the lock: {:?}",
            again.err()
        );
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("racefree-lock-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join(".lock")).unwrap();
        let outcome = lock(&dir.join(".lock"), Duration::from_millis(100), None);
        let created = target.exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(outcome, Err(Error::Io { .. })), "{:?}", outcome.is_ok());
        assert!(!created, "the symlink's target was created");
    }
}
