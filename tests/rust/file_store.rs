//! The file store on a real file system (temp dirs), with real threads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use racefree::filestore::{Error, FileStore, INTEGER_FLAG, Limits, Options, Value, entry};

const NOW: f64 = 1_000_000.0;
const ROOMY: Limits = Limits {
    max_entries: 1_000_000,
    cull_frequency: 3,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("racefree-fs-{}-{}", std::process::id(), fastrand::u64(..)));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn store(dir: &TempDir) -> FileStore {
    FileStore::new(
        dir.0.join("cache"),
        Options {
            lock_timeout: Duration::from_secs(5),
        },
    )
}

fn value(flags: u32, bytes: &[u8]) -> Option<Value> {
    Some(Value {
        flags,
        value: bytes.to_vec(),
    })
}

/// Integers are kept space-padded to 40 bytes (so increments keep the
/// file size and can be written in place).
fn integer(digits: &[u8]) -> Option<Value> {
    let mut padded = digits.to_vec();
    padded.resize(40, b' ');
    value(INTEGER_FLAG, &padded)
}

#[test]
fn nothing_is_created_before_the_first_write() {
    let dir = TempDir::new();
    let s = store(&dir);
    assert_eq!(s.get(b"k", NOW).unwrap(), None);
    assert!(!s.contains(b"k", NOW).unwrap());
    assert!(!s.delete(b"k", NOW).unwrap());
    s.clear().unwrap();
    assert!(!dir.0.exists());
}

#[test]
fn values_expiry_and_flags() {
    let dir = TempDir::new();
    let s = store(&dir);
    s.set(b"k", 16, b"v", 0.0, NOW, ROOMY).unwrap();
    assert_eq!(s.get(b"k", NOW + 1e9).unwrap(), value(16, b"v"), "0 never expires");
    s.set(b"t", 1, b"v", NOW + 10.0, NOW, ROOMY).unwrap();
    assert_eq!(s.get(b"t", NOW + 9.0).unwrap(), value(1, b"v"));
    assert_eq!(s.get(b"t", NOW + 10.0).unwrap(), None);
    assert!(!s.path_exists(b"t"), "an expired file read is removed");
    assert_eq!(s.count().unwrap(), 1);
    // An already expired set deletes.
    s.set(b"k", 0, b"x", NOW - 1.0, NOW, ROOMY).unwrap();
    assert_eq!(s.get(b"k", NOW).unwrap(), None);
    assert_eq!(s.count().unwrap(), 0);
}

trait Probe {
    fn path_exists(&self, key: &[u8]) -> bool;
}

impl Probe for FileStore {
    fn path_exists(&self, key: &[u8]) -> bool {
        self.entry_path(key).exists()
    }
}

#[test]
fn add_touch_delete_incr() {
    let dir = TempDir::new();
    let s = store(&dir);
    assert!(s.add(b"a", 0, b"1", 0.0, NOW, ROOMY).unwrap());
    assert!(!s.add(b"a", 0, b"2", 0.0, NOW, ROOMY).unwrap());
    assert_eq!(s.get(b"a", NOW).unwrap(), value(0, b"1"));
    s.set(b"e", 0, b"old", NOW + 1.0, NOW, ROOMY).unwrap();
    assert!(
        s.add(b"e", 0, b"new", 0.0, NOW + 2.0, ROOMY).unwrap(),
        "add over an expired value"
    );
    assert!(s.touch(b"a", NOW + 5.0, NOW).unwrap());
    assert_eq!(s.get(b"a", NOW + 6.0).unwrap(), None);
    assert!(!s.touch(b"missing", NOW + 5.0, NOW).unwrap());
    s.set(b"n", INTEGER_FLAG, b"41", NOW + 100.0, NOW, ROOMY).unwrap();
    assert_eq!(s.incr(b"n", 1, NOW).unwrap(), Some(42));
    assert_eq!(s.incr(b"n", -50, NOW).unwrap(), Some(-8));
    assert_eq!(
        s.get(b"n", NOW + 99.0).unwrap(),
        integer(b"-8"),
        "incr keeps the expiry"
    );
    assert_eq!(s.get(b"n", NOW + 100.0).unwrap(), None);
    assert_eq!(s.incr(b"missing", 1, NOW).unwrap(), None);
    s.set(b"text", 16, b"abc", 0.0, NOW, ROOMY).unwrap();
    assert!(matches!(s.incr(b"text", 1, NOW), Err(Error::NotAnInteger)));
    s.set(b"huge", INTEGER_FLAG, i128::MAX.to_string().as_bytes(), 0.0, NOW, ROOMY)
        .unwrap();
    assert!(matches!(s.incr(b"huge", 1, NOW), Err(Error::Overflow)));
    assert!(s.delete(b"text", NOW).unwrap());
    assert!(!s.delete(b"text", NOW).unwrap());
    // a and n expired (and were removed when read); e and huge remain.
    assert_eq!(s.count().unwrap(), 2);
}

/// The read-modify-write and compare-and-delete that signed counters and
/// lock releases use.
#[test]
fn update_and_delete_if() {
    let dir = TempDir::new();
    let s = store(&dir);
    s.set(b"c", 7, b"1", NOW + 100.0, NOW, ROOMY).unwrap();
    let appended = |flags: u32, value: &[u8]| Ok::<_, ()>((flags + 1, [value, b"1"].concat()));
    assert_eq!(s.update(b"c", NOW, appended).unwrap(), Ok(value(8, b"11")));
    assert_eq!(
        s.get(b"c", NOW + 99.0).unwrap(),
        value(8, b"11"),
        "update keeps the expiry"
    );
    assert_eq!(s.update(b"missing", NOW, appended).unwrap(), Ok(None));
    let refused = s.update(b"c", NOW, |_, _| Err::<(u32, Vec<u8>), _>("no")).unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(
        s.get(b"c", NOW).unwrap(),
        value(8, b"11"),
        "a failed change writes nothing"
    );
    // Compare-and-touch (a lock's extension): only the exact item's expiry changes.
    assert!(!s.touch_if(b"c", 8, b"other", NOW + 50.0, NOW).unwrap());
    assert!(!s.touch_if(b"missing", 8, b"11", NOW + 50.0, NOW).unwrap());
    assert_eq!(s.get(b"c", NOW + 60.0).unwrap(), value(8, b"11"));
    assert!(s.touch_if(b"c", 8, b"11", NOW + 50.0, NOW).unwrap());
    assert_eq!(s.get(b"c", NOW + 60.0).unwrap(), None, "expired at its new time");
    s.set(b"c", 8, b"11", NOW + 100.0, NOW, ROOMY).unwrap();
    assert!(!s.delete_if(b"c", 8, b"other", NOW).unwrap());
    assert!(!s.delete_if(b"c", 9, b"11", NOW).unwrap());
    assert!(s.delete_if(b"c", 8, b"11", NOW).unwrap());
    assert!(!s.delete_if(b"c", 8, b"11", NOW).unwrap());
    assert_eq!(s.get(b"c", NOW).unwrap(), None);
}

#[test]
fn damaged_files_read_as_misses_and_are_removed() {
    let dir = TempDir::new();
    let s = store(&dir);
    let valid = {
        s.set(b"k", 0, b"a value of some length", 0.0, NOW, ROOMY).unwrap();
        fs::read(s.entry_path(b"k")).unwrap()
    };
    let damages: Vec<Vec<u8>> = vec![
        Vec::new(),
        valid[..10].to_vec(),
        valid[..valid.len() - 1].to_vec(),
        {
            let mut v = valid.clone();
            v[45] ^= 1;
            v
        },
        (0..300).map(|i| (i * 7) as u8).collect(),
    ];
    for damaged in damages {
        fs::write(s.entry_path(b"k"), &damaged).unwrap();
        assert!(!s.contains(b"k", NOW).unwrap(), "has_key checks the checksum too");
        assert!(!s.path_exists(b"k"), "damaged file removed");
        fs::write(s.entry_path(b"k"), &damaged).unwrap();
        assert_eq!(s.get(b"k", NOW).unwrap(), None);
        assert!(!s.path_exists(b"k"), "damaged file removed");
        assert!(s.add(b"k", 0, b"fresh", 0.0, NOW, ROOMY).unwrap());
        assert_eq!(s.get(b"k", NOW).unwrap(), value(0, b"fresh"));
    }
}

#[test]
fn a_real_io_error_is_an_error_not_a_miss() {
    let dir = TempDir::new();
    let s = store(&dir);
    s.set(b"k", 0, b"v", 0.0, NOW, ROOMY).unwrap();
    let path = s.entry_path(b"k");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(matches!(s.get(b"k", NOW), Err(Error::Io { .. })));
}

#[test]
fn permissions_are_private() {
    let dir = TempDir::new();
    let s = store(&dir);
    s.set(b"k", 0, b"v", 0.0, NOW, ROOMY).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.0), 0o700, "created parents too");
    assert_eq!(mode(&dir.0.join("cache")), 0o700);
    let entry = s.entry_path(b"k");
    assert_eq!(mode(entry.parent().unwrap()), 0o700);
    assert_eq!(mode(&entry), 0o600);
}

#[test]
fn culling_follows_django() {
    // Django's own expectations (tests/cache/tests.py, test_cull and
    // test_zero_cull): 49 sets into MAX_ENTRIES=30 leave 29, or 19 when
    // CULL_FREQUENCY=0 empties the cache.
    for (frequency, expected) in [(3, 29), (0, 19)] {
        let dir = TempDir::new();
        let s = store(&dir);
        let limits = Limits {
            max_entries: 30,
            cull_frequency: frequency,
        };
        for i in 1..50 {
            s.set(format!("cull{i}").as_bytes(), 0, b"value", 0.0, NOW, limits)
                .unwrap();
        }
        let left = (1..50)
            .filter(|i| s.contains(format!("cull{i}").as_bytes(), NOW).unwrap())
            .count();
        assert_eq!(left, expected, "CULL_FREQUENCY={frequency}");
        assert_eq!(s.count().unwrap(), expected as i64);
    }
}

#[test]
fn a_count_that_ran_ahead_is_corrected_by_the_next_cull() {
    let dir = TempDir::new();
    let s = store(&dir);
    for i in 0..10 {
        s.set(format!("k{i}").as_bytes(), 0, b"v", 0.0, NOW, ROOMY).unwrap();
    }
    // Files removed behind the store's back.
    for i in 0..5 {
        fs::remove_file(s.entry_path(format!("k{i}").as_bytes())).unwrap();
    }
    assert_eq!(s.count().unwrap(), 10);
    let limits = Limits {
        max_entries: 8,
        cull_frequency: 2,
    };
    s.set(b"another", 0, b"v", 0.0, NOW, limits).unwrap();
    assert_eq!(s.count().unwrap(), 6, "5 listed, nothing culled, 1 added");
}

#[test]
fn clear_keeps_foreign_files_and_the_directory() {
    let dir = TempDir::new();
    let s = store(&dir);
    for i in 0..20 {
        s.set(format!("k{i}").as_bytes(), 0, b"v", 0.0, NOW, ROOMY).unwrap();
    }
    let foreign = dir.0.join("cache").join("not-a-cache-file");
    fs::write(&foreign, b"mine").unwrap();
    s.clear().unwrap();
    assert!(foreign.exists());
    assert_eq!(s.count().unwrap(), 0);
    assert!((0..20).all(|i| s.get(format!("k{i}").as_bytes(), NOW).unwrap().is_none()));
}

#[test]
fn a_deleted_directory_is_recreated() {
    let dir = TempDir::new();
    let s = store(&dir);
    s.set(b"k", 0, b"v", 0.0, NOW, ROOMY).unwrap();
    fs::remove_dir_all(&dir.0).unwrap();
    assert_eq!(s.get(b"k", NOW).unwrap(), None);
    s.set(b"k", 0, b"again", 0.0, NOW, ROOMY).unwrap();
    assert_eq!(s.get(b"k", NOW).unwrap(), value(0, b"again"));
}

#[test]
fn threads_increment_exactly_and_add_once() {
    let dir = TempDir::new();
    let s = Arc::new(store(&dir));
    s.set(b"n", INTEGER_FLAG, b"0", 0.0, NOW, ROOMY).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let mut won = 0;
                for i in 0..200 {
                    s.incr(b"n", 1, NOW).unwrap().unwrap();
                    if s.add(format!("claim{i}").as_bytes(), 0, &[t], 0.0, NOW, ROOMY).unwrap() {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let won: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(s.get(b"n", NOW).unwrap(), integer(b"1600"));
    assert_eq!(won, 200, "exactly one add per key");
    assert_eq!(s.count().unwrap(), 201);
}

#[test]
fn readers_never_see_a_partial_value() {
    let dir = TempDir::new();
    let s = Arc::new(store(&dir));
    // Sizes that take turns: rewrites in place (growing within the file's
    // blocks, shrinking) and swaps of a new file.
    let blobs: Vec<Vec<u8>> = [64 * 1024, 10_000, 60_000, 100]
        .iter()
        .enumerate()
        .map(|(b, &size)| vec![b as u8; size])
        .collect();
    s.set(b"k", 0, &blobs[0], 0.0, NOW, ROOMY).unwrap();
    let deadline = Instant::now() + Duration::from_millis(700);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (s, blobs) = (Arc::clone(&s), blobs.clone());
            thread::spawn(move || {
                let mut i = w;
                while Instant::now() < deadline {
                    s.set(b"k", 0, &blobs[i % 4], 0.0, NOW, ROOMY).unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    let mut reads = 0;
    while Instant::now() < deadline {
        let got = s.get(b"k", NOW).unwrap().expect("always present").value;
        assert!(blobs.contains(&got), "torn read");
        reads += 1;
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(reads > 10);
}

#[test]
fn a_file_with_room_is_rewritten_in_place() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let s = store(&dir);
    let inode = |s: &FileStore| fs::metadata(s.entry_path(b"k")).unwrap().ino();
    s.set(b"k", 0, &[1; 100], 0.0, NOW, ROOMY).unwrap();
    let first = inode(&s);
    s.set(b"k", 0, &[2; 300], 0.0, NOW, ROOMY).unwrap();
    assert_eq!(inode(&s), first, "grown within its block");
    assert_eq!(s.get(b"k", NOW).unwrap(), value(0, &[2; 300]));
    s.set(b"k", 0, &[3; 20], 0.0, NOW, ROOMY).unwrap();
    assert_eq!(inode(&s), first, "shrunk in place");
    assert_eq!(fs::metadata(s.entry_path(b"k")).unwrap().len(), 40 + 1 + 20);
    assert_eq!(s.get(b"k", NOW).unwrap(), value(0, &[3; 20]));
    s.set(b"k", 0, &[4; 100_000], 0.0, NOW, ROOMY).unwrap();
    assert_ne!(inode(&s), first, "too big for its blocks: a new file swapped in");
    assert_eq!(s.get(b"k", NOW).unwrap(), value(0, &[4; 100_000]));
    assert!(!s.add(b"k", 0, b"x", 0.0, NOW, ROOMY).unwrap());
    assert_eq!(s.count().unwrap(), 1);
    let names: Vec<_> = fs::read_dir(s.entry_path(b"k").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
}

#[test]
fn a_held_lock_times_out_instead_of_hanging() {
    let dir = TempDir::new();
    let s = FileStore::new(
        dir.0.join("cache"),
        Options {
            lock_timeout: Duration::from_millis(200),
        },
    );
    s.set(b"k", INTEGER_FLAG, b"1", 0.0, NOW, ROOMY).unwrap();
    let lock_path = s.entry_path(b"k").parent().unwrap().join(".lock");
    let holder = fs::File::open(&lock_path).unwrap();
    holder.lock().unwrap();
    let started = Instant::now();
    assert!(matches!(s.incr(b"k", 1, NOW), Err(Error::LockTimeout { .. })));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Reads never wait for a lock.
    assert_eq!(s.get(b"k", NOW).unwrap(), integer(b"1"));
    drop(holder);
    assert_eq!(s.incr(b"k", 1, NOW).unwrap(), Some(2));
}

#[test]
fn readers_racing_in_place_increments_see_whole_values() {
    let dir = TempDir::new();
    let s = Arc::new(store(&dir));
    s.set(b"n", INTEGER_FLAG, b"0", 0.0, NOW, ROOMY).unwrap();
    let incrementers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for _ in 0..2000 {
                    s.incr(b"n", 1, NOW).unwrap().unwrap();
                }
            })
        })
        .collect();
    let mut last = 0;
    let mut reads = 0;
    while incrementers.iter().any(|h| !h.is_finished()) {
        let got = s.get(b"n", NOW).unwrap().expect("an integer is always there");
        let n: i128 = std::str::from_utf8(&got.value).unwrap().trim().parse().unwrap();
        assert!(n >= last, "counter went back from {last} to {n}");
        last = n;
        reads += 1;
    }
    for handle in incrementers {
        handle.join().unwrap();
    }
    assert_eq!(s.get(b"n", NOW).unwrap(), integer(b"4000"));
    assert!(reads > 10);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Garbage where an entry file should be (random bytes, with or
    /// without the format's magic) reads as a miss from every operation,
    /// and a new value replaces it.
    #[test]
    fn garbage_files_are_misses_for_every_operation(
        garbage in proptest::collection::vec(any::<u8>(), 0..400),
        with_magic in any::<bool>(),
    ) {
        let dir = TempDir::new();
        let store = store(&dir);
        store.set(b"k", INTEGER_FLAG, b"1", 0.0, NOW, ROOMY).expect("set");
        let path = store.entry_path(b"k");
        let mut bytes = if with_magic { entry::MAGIC.to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&garbage);
        fs::write(&path, &bytes).expect("write garbage");
        prop_assert!(store.get(b"k", NOW).expect("get").is_none());
        prop_assert!(!store.contains(b"k", NOW).expect("contains"));
        prop_assert!(store.incr(b"k", 1, NOW).expect("incr").is_none());
        fs::write(&path, &bytes).expect("write garbage");
        prop_assert!(!store.touch(b"k", 0.0, NOW).expect("touch"));
        store.set(b"k", 0, b"fresh", 0.0, NOW, ROOMY).expect("set over garbage");
        prop_assert_eq!(store.get(b"k", NOW).expect("get").map(|v| v.value), Some(b"fresh".to_vec()));
    }
}
