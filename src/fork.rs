//! Fork awareness: what a process builds for itself.
//!
//! A process that forks after using a pool (gunicorn `--preload`, celery,
//! multiprocessing) hands copies of its pooled sockets to the child. Two
//! processes reading replies from one socket is the same bug as two threads
//! sharing one client: each may read the other's reply. The Python package
//! registers `os.register_at_fork(after_in_child=...)`, which bumps this
//! generation; a `PerProcess` value built in an older generation is
//! replaced in the child, and the inherited one is never touched again.

use std::convert::Infallible;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwapOption, Guard};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current fork generation of this process.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Called in the child right after `fork()`.
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// A value built by, and used only in, the process that built it (pools,
/// runtimes). Lock-free to read, so a lock a parent thread held at the
/// fork cannot hang the child.
pub(crate) struct PerProcess<T>(ArcSwapOption<Built<T>>);

/// A `PerProcess` value with the generation it was built in.
pub(crate) struct Built<T> {
    generation: u64,
    value: T,
}

impl<T> Deref for Built<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> PerProcess<T> {
    /// Nothing built yet: the first `get` builds.
    pub(crate) const fn new() -> Self {
        PerProcess(ArcSwapOption::const_empty())
    }

    /// This process's value, built by `build` on first use here.
    pub(crate) fn get(&self, mut build: impl FnMut() -> T) -> Arc<Built<T>> {
        let Ok(built) = self.get_or_try(|| Ok::<T, Infallible>(build()));
        built
    }

    /// `get` with a build that may fail (nothing is kept then; the next
    /// call tries again).
    pub(crate) fn get_or_try<E>(&self, mut build: impl FnMut() -> Result<T, E>) -> Result<Arc<Built<T>>, E> {
        let generation = generation();
        loop {
            let current = match self.0.load_full() {
                Some(built) if built.generation == generation => return Ok(built),
                other => other,
            };
            let fresh = Arc::new(Built {
                generation,
                value: build()?,
            });
            let previous = Guard::into_inner(self.0.compare_and_swap(&current, Some(fresh)));
            if previous.as_ref().map(Arc::as_ptr) == current.as_ref().map(Arc::as_ptr) {
                // Ours went in. The parent's value is the parent's: its
                // sockets may not be closed from here (closing a PostgreSQL
                // connection ends the parent's session), nor its locks
                // taken (a parent thread may have held one at the fork).
                std::mem::forget(previous);
            }
            // Otherwise another thread of this process swapped first, and
            // `fresh` is dropped unused. Either way, read what went in.
        }
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        // Dropped in a forked child: an inherited value is forgotten, as in
        // `get_or_try`.
        if let Some(built) = self.0.swap(None)
            && built.generation != generation()
        {
            std::mem::forget(built);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its drops.
    struct Counted<'a>(&'a AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_child_builds_its_own_and_never_drops_the_parents() {
        let (builds, drops) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let build = || {
            builds.fetch_add(1, Ordering::Relaxed);
            Counted(&drops)
        };
        let holder = PerProcess::new();
        let first = holder.get(build);
        assert!(Arc::ptr_eq(&first, &holder.get(build)), "built once");
        drop(first);
        after_fork_in_child();
        let second = holder.get(build);
        assert_eq!(builds.load(Ordering::Relaxed), 2, "rebuilt after the fork");
        assert_eq!(drops.load(Ordering::Relaxed), 0, "the inherited one is not dropped");
        drop(second);
        drop(holder);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "its own is dropped with it");
        let failing = PerProcess::<u8>::new();
        assert_eq!(
            failing.get_or_try(|| Err("no")).err(),
            Some("no"),
            "a failed build is not kept"
        );
        assert_eq!(failing.get_or_try(|| Ok::<u8, &str>(7)).map(|built| **built), Ok(7));
    }
}
