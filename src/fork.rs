//! Fork awareness for connection pools.
//!
//! A process that forks after using a pool (gunicorn `--preload`, celery,
//! multiprocessing) hands copies of its pooled sockets to the child. Two
//! processes reading replies from one socket is the same bug as two threads
//! sharing one client: each may read the other's reply. The Python package
//! registers `os.register_at_fork(after_in_child=...)`, which bumps this
//! generation; a client built in an older generation swaps in new pools
//! (and never touches the inherited ones).

use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current fork generation of this process.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Called in the child right after `fork()`.
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}
