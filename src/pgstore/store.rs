//! The PostgreSQL store, on Django's own cache table.
//!
//! Same table, columns and value encoding as Django's `DatabaseCache`
//! (`createcachetable`; `value` is base64 of the pickle, `expires` a
//! timestamptz), so either backend reads the other's entries. Every write
//! is one statement that cannot race: `set` is an upsert, `add` an upsert
//! that only replaces an expired row. Read-modify-write (`update`, behind
//! `incr`/`decr`) runs in a transaction holding a transaction-scoped
//! advisory lock on a 64-bit hash of the key (so it also works behind
//! PgBouncer in transaction mode) and a row lock (so a concurrent `set` is
//! not overwritten with a value computed from the old one). Statements are
//! sent unprepared with typed parameters (`query_typed`): one round trip
//! each, and nothing a transaction-mode pooler could lose.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::fork::{Built, PerProcess};
use crate::stats::{Counters, Snapshot};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};
use xxhash_rust::xxh3::xxh3_64;

use super::connection::{self, Options, PgConnection, Pool};
use super::error::{Error, Result};
use crate::Limits;

/// Django stores "never expires" as `datetime.max` without microseconds;
/// this is the same moment in UTC.
const NEVER_SECONDS: u64 = 253_402_300_799;
/// Django's `cache_key` column is `varchar(255)`.
pub const MAX_KEY_CHARS: usize = 255;
/// Recount at least this often when below the cull threshold.
const RECOUNT: Duration = Duration::from_secs(5);

/// Where the cache is: the server and the table.
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub tls: super::Tls,
    pub table: String,
    pub options: Options,
}

/// An expiry as Unix seconds; 0 means never (Python's convention here).
pub fn expiry(seconds: f64) -> SystemTime {
    if seconds <= 0.0 || !seconds.is_finite() {
        UNIX_EPOCH + Duration::from_secs(NEVER_SECONDS)
    } else {
        UNIX_EPOCH + Duration::from_secs_f64(seconds.min(NEVER_SECONDS as f64))
    }
}

/// A moment as Unix seconds.
pub fn moment(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(seconds.clamp(0.0, NEVER_SECONDS as f64))
}

/// Quote a table name as Django's PostgreSQL backend does, escaping
/// embedded quotes; a name already in double quotes is taken as is.
pub fn quote_table(name: &str) -> String {
    if name.len() >= 2 && name.starts_with('"') && name.ends_with('"') {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.contains('\0') {
        return Err(Error::InvalidKey(
            "contains a NUL character, which PostgreSQL text cannot hold".into(),
        ));
    }
    let chars = key.chars().count();
    if chars > MAX_KEY_CHARS {
        return Err(Error::InvalidKey(format!(
            "is {chars} characters long; the cache table's column holds {MAX_KEY_CHARS}"
        )));
    }
    Ok(())
}

struct Statements {
    get: String,
    get_many: String,
    contains: String,
    set: String,
    add: String,
    set_many: String,
    touch: String,
    touch_if: String,
    delete: String,
    delete_if: String,
    delete_many: String,
    lock_row: String,
    rewrite: String,
    count: String,
    delete_expired: String,
    nth_key: String,
    delete_below: String,
    clear: String,
}

impl Statements {
    fn new(table: &str) -> Statements {
        let t = quote_table(table);
        let upsert = format!(
            "INSERT INTO {t} AS c (\"cache_key\", \"value\", \"expires\") VALUES ($1, $2, $3) \
             ON CONFLICT (\"cache_key\") DO UPDATE SET \"value\" = EXCLUDED.\"value\", \"expires\" = EXCLUDED.\"expires\""
        );
        Statements {
            get: format!("SELECT \"value\" FROM {t} WHERE \"cache_key\" = $1 AND \"expires\" > $2"),
            get_many: format!(
                "SELECT \"cache_key\", \"value\" FROM {t} WHERE \"cache_key\" = ANY($1) AND \"expires\" > $2"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE \"cache_key\" = $1 AND \"expires\" > $2"),
            // xmax = 0 only on a row this statement inserted.
            set: format!("{upsert} RETURNING (xmax = 0)"),
            add: format!("{upsert} WHERE c.\"expires\" <= $4 RETURNING (xmax = 0)"),
            set_many: format!(
                "INSERT INTO {t} AS c (\"cache_key\", \"value\", \"expires\") \
                 SELECT k, v, $3 FROM unnest($1::text[], $2::text[]) AS u(k, v) \
                 ON CONFLICT (\"cache_key\") DO UPDATE SET \"value\" = EXCLUDED.\"value\", \
                 \"expires\" = EXCLUDED.\"expires\" RETURNING (xmax = 0)"
            ),
            touch: format!("UPDATE {t} SET \"expires\" = $2 WHERE \"cache_key\" = $1 AND \"expires\" > $3 RETURNING 1"),
            touch_if: format!(
                "UPDATE {t} SET \"expires\" = $2 WHERE \"cache_key\" = $1 AND \"expires\" > $3 AND \"value\" = $4 \
                 RETURNING 1"
            ),
            delete: format!("DELETE FROM {t} WHERE \"cache_key\" = $1 RETURNING \"expires\" > $2"),
            delete_if: format!(
                "DELETE FROM {t} WHERE \"cache_key\" = $1 AND \"value\" = $2 RETURNING \"expires\" > $3"
            ),
            delete_many: format!(
                "WITH gone AS (DELETE FROM {t} WHERE \"cache_key\" = ANY($1) RETURNING 1) SELECT count(*) FROM gone"
            ),
            lock_row: format!("SELECT \"value\" FROM {t} WHERE \"cache_key\" = $1 AND \"expires\" > $2 FOR UPDATE"),
            rewrite: format!("UPDATE {t} SET \"value\" = $2 WHERE \"cache_key\" = $1"),
            count: format!("SELECT count(*) FROM {t}"),
            delete_expired: format!(
                "WITH gone AS (DELETE FROM {t} WHERE \"expires\" < $1 RETURNING 1) SELECT count(*) FROM gone"
            ),
            // Django's cache_key_culling_sql for PostgreSQL.
            nth_key: format!("SELECT \"cache_key\" FROM {t} ORDER BY \"cache_key\" LIMIT 1 OFFSET $1"),
            delete_below: format!(
                "WITH gone AS (DELETE FROM {t} WHERE \"cache_key\" < $1 RETURNING 1) SELECT count(*) FROM gone"
            ),
            clear: format!("WITH gone AS (DELETE FROM {t} RETURNING 1) SELECT count(*) FROM gone"),
        }
    }
}

/// The entry count: exact after a count, then adjusted by this process's
/// own inserts and deletes, and counted again only near the cull threshold
/// or every few seconds, not on every write.
struct Census {
    known: AtomicI64,
    /// When it was last counted, in milliseconds after `epoch`; 0: never.
    counted_at: AtomicU64,
    epoch: Instant,
}

impl Census {
    fn needs_count(&self, max_entries: i64) -> bool {
        let known = self.known.load(Ordering::Acquire);
        let margin = (max_entries / 16).max(1);
        let counted_at = self.counted_at.load(Ordering::Acquire);
        let stale = counted_at == 0 || self.millis_now().saturating_sub(counted_at) > RECOUNT.as_millis() as u64;
        stale || known.saturating_add(margin) > max_entries
    }

    fn counted(&self, n: i64) {
        self.known.store(n, Ordering::Release);
        self.counted_at.store(self.millis_now().max(1), Ordering::Release);
    }

    fn millis_now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn add(&self, delta: i64) {
        if delta != 0 {
            self.known.fetch_add(delta, Ordering::AcqRel);
        }
    }
}

pub struct PgStore {
    pool: PerProcess<Pool>,
    config: tokio_postgres::Config,
    tls: super::Tls,
    options: Options,
    sql: Statements,
    table: String,
    census: Census,
    round_trips: AtomicU64,
    stats: Counters,
}

fn decode(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text.trim()).ok()
}

fn count_of(rows: &[Row]) -> Result<i64> {
    rows.first()
        .and_then(|row| row.try_get::<_, i64>(0).ok())
        .ok_or_else(|| Error::Database {
            code: String::new(),
            message: "count query returned no number".into(),
        })
}

fn inserted(rows: &[Row]) -> i64 {
    rows.iter()
        .filter(|row| row.try_get::<_, bool>(0).unwrap_or(false))
        .count() as i64
}

impl PgStore {
    /// A store; no connection is made until the first call.
    pub fn new(settings: Settings) -> Result<PgStore> {
        let Settings {
            config,
            tls,
            table,
            options,
        } = settings;
        if options.pool_size == 0 {
            return Err(Error::Config("POOL_SIZE must be at least 1".into()));
        }
        Ok(PgStore {
            pool: PerProcess::new(),
            config,
            tls,
            options,
            sql: Statements::new(&table),
            table,
            census: Census {
                known: AtomicI64::new(-1),
                counted_at: AtomicU64::new(0),
                epoch: Instant::now(),
            },
            round_trips: AtomicU64::new(0),
            stats: Counters::default(),
        })
    }

    /// Statements sent so far (each one round trip).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The operation counters, and the pool: (size, open, idle, dialed).
    pub fn stats(&self) -> (Snapshot, (u32, usize, usize, u64)) {
        let pool = self.pool();
        (
            self.stats.snapshot(),
            (self.options.pool_size, pool.open(), pool.idle(), pool.connects()),
        )
    }

    /// Connections open now (idle and in use).
    pub fn connections(&self) -> u32 {
        self.pool().open() as u32
    }

    /// Close the idle connections; calls in flight finish on theirs, which
    /// go back to the pool. The next call connects again.
    pub fn close_idle(&self) {
        self.pool().close_idle();
    }

    /// This process's pool (a forked child builds its own).
    fn pool(&self) -> Arc<Built<Pool>> {
        self.pool
            .get(|| connection::pool(&self.config, &self.tls, &self.options))
    }

    fn query(&self, conn: &mut PgConnection, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        conn.session.query(sql, params).inspect_err(|error| {
            if error.breaks_connection() {
                conn.lost(error);
            }
        })
    }

    /// Statements without parameters (transaction control), in one round
    /// trip.
    fn batch(&self, conn: &mut PgConnection, sql: &str) -> Result<()> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        conn.session.batch_execute(sql).inspect_err(|error| {
            if error.breaks_connection() {
                conn.lost(error);
            }
        })
    }

    /// Run one statement. `retry`: running it twice is harmless (a read,
    /// or `clear`), so if its connection turns out dead it is sent once
    /// more on a new one. A write is never sent twice: its first attempt
    /// may have committed with only the reply lost, and a second could
    /// overwrite a newer value another client wrote meanwhile, or report a
    /// delete it did as not done. Pooled connections that died while idle
    /// (a restarted server) are weeded out at checkout instead.
    fn statement(&self, retry: bool, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>> {
        let pool = self.pool();
        let result = pool
            .lease()
            .and_then(|mut conn| match self.query(&mut conn, sql, params) {
                Err(error) if retry && error.is_connection_loss() => {
                    drop(conn);
                    let mut conn = pool.lease()?;
                    self.query(&mut conn, sql, params)
                }
                other => other,
            });
        self.stats.other(result)
    }

    fn lock_id(&self, key: &str) -> i64 {
        let mut input = Vec::with_capacity(self.table.len() + 1 + key.len());
        input.extend_from_slice(self.table.as_bytes());
        input.push(0);
        input.extend_from_slice(key.as_bytes());
        xxh3_64(&input) as i64
    }

    pub fn get(&self, key: &str, now: SystemTime) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let rows = self.statement(true, &self.sql.get, &[(&key, Type::TEXT), (&now, Type::TIMESTAMPTZ)])?;
        let found = rows
            .first()
            .and_then(|row| row.try_get::<_, &str>(0).ok())
            .and_then(decode);
        self.stats
            .looked_up(u64::from(found.is_some()), u64::from(found.is_none()));
        Ok(found)
    }

    /// `(key, value)` for the live keys among `keys`, one round trip.
    pub fn get_many(&self, keys: &[&str], now: SystemTime) -> Result<Vec<(String, Vec<u8>)>> {
        keys.iter().try_for_each(|key| check_key(key))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.statement(
            true,
            &self.sql.get_many,
            &[(&keys, Type::TEXT_ARRAY), (&now, Type::TIMESTAMPTZ)],
        )?;
        let found: Vec<(String, Vec<u8>)> = rows
            .iter()
            .filter_map(|row| {
                let key: String = row.try_get(0).ok()?;
                let value = decode(row.try_get::<_, &str>(1).ok()?)?;
                Some((key, value))
            })
            .collect();
        self.stats
            .looked_up(found.len() as u64, (keys.len() - found.len()) as u64);
        Ok(found)
    }

    pub fn contains(&self, key: &str, now: SystemTime) -> Result<bool> {
        check_key(key)?;
        let rows = self.statement(
            true,
            &self.sql.contains,
            &[(&key, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
        )?;
        Ok(!rows.is_empty())
    }

    pub fn set(&self, key: &str, value: &[u8], expires: SystemTime, now: SystemTime, limits: Limits) -> Result<()> {
        check_key(key)?;
        self.cull_if_full(now, limits)?;
        let encoded = BASE64.encode(value);
        let rows = self.statement(
            false,
            &self.sql.set,
            &[
                (&key, Type::TEXT),
                (&encoded, Type::TEXT),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )?;
        self.census.add(inserted(&rows));
        self.stats.stored(1);
        Ok(())
    }

    /// Store only if the key is absent or expired; true if stored.
    pub fn add(&self, key: &str, value: &[u8], expires: SystemTime, now: SystemTime, limits: Limits) -> Result<bool> {
        check_key(key)?;
        self.cull_if_full(now, limits)?;
        let encoded = BASE64.encode(value);
        // Not retried: a lost reply may hide a success, and a second try
        // would then report failure.
        let rows = self.statement(
            false,
            &self.sql.add,
            &[
                (&key, Type::TEXT),
                (&encoded, Type::TEXT),
                (&expires, Type::TIMESTAMPTZ),
                (&now, Type::TIMESTAMPTZ),
            ],
        )?;
        self.census.add(inserted(&rows));
        self.stats.stored(u64::from(!rows.is_empty()));
        Ok(!rows.is_empty())
    }

    /// Store many values with one expiry, one round trip.
    pub fn set_many(
        &self,
        items: &[(&str, &[u8])],
        expires: SystemTime,
        now: SystemTime,
        limits: Limits,
    ) -> Result<()> {
        items.iter().try_for_each(|(key, _)| check_key(key))?;
        if items.is_empty() {
            return Ok(());
        }
        self.cull_if_full(now, limits)?;
        // One row per key, the last value winning (a key twice in one
        // upsert is an error in PostgreSQL).
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (index, (key, _)) in items.iter().enumerate() {
            last.insert(key, index);
        }
        let mut keys = Vec::with_capacity(last.len());
        let mut values = Vec::with_capacity(last.len());
        for (index, (key, value)) in items.iter().enumerate() {
            if last.get(key) == Some(&index) {
                keys.push(*key);
                values.push(BASE64.encode(value));
            }
        }
        let rows = self.statement(
            false,
            &self.sql.set_many,
            &[
                (&keys, Type::TEXT_ARRAY),
                (&values, Type::TEXT_ARRAY),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )?;
        self.census.add(inserted(&rows));
        self.stats.stored(keys.len() as u64);
        Ok(())
    }

    /// New expiry for a live key; true if it had one.
    pub fn touch(&self, key: &str, expires: SystemTime, now: SystemTime) -> Result<bool> {
        check_key(key)?;
        let rows = self.statement(
            true,
            &self.sql.touch,
            &[
                (&key, Type::TEXT),
                (&expires, Type::TIMESTAMPTZ),
                (&now, Type::TIMESTAMPTZ),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// New expiry for a live key only while it holds exactly `value` (a
    /// lock's extension, one statement); true if done.
    pub fn touch_if(&self, key: &str, value: &[u8], expires: SystemTime, now: SystemTime) -> Result<bool> {
        check_key(key)?;
        let encoded = BASE64.encode(value);
        let rows = self.statement(
            true,
            &self.sql.touch_if,
            &[
                (&key, Type::TEXT),
                (&expires, Type::TIMESTAMPTZ),
                (&now, Type::TIMESTAMPTZ),
                (&encoded, Type::TEXT),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// Delete a key; true if it had a live value.
    pub fn delete(&self, key: &str, now: SystemTime) -> Result<bool> {
        check_key(key)?;
        self.delete_one(&self.sql.delete, &[(&key, Type::TEXT), (&now, Type::TIMESTAMPTZ)])
    }

    /// Run a single-row DELETE that returns whether the row was live.
    fn delete_one(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<bool> {
        let rows = self.statement(false, sql, params)?;
        self.census.add(-(rows.len() as i64));
        let deleted = rows
            .first()
            .and_then(|row| row.try_get::<_, bool>(0).ok())
            .unwrap_or(false);
        self.stats.deleted(u64::from(deleted));
        Ok(deleted)
    }

    /// Delete `key` only while it holds exactly `value` (compare-and-delete,
    /// one statement); true if a live value was deleted. Never retried: a
    /// lost reply leaves its outcome unknown, and a retry would report
    /// False for a delete that happened.
    pub fn delete_if(&self, key: &str, value: &[u8], now: SystemTime) -> Result<bool> {
        check_key(key)?;
        let encoded = BASE64.encode(value);
        self.delete_one(
            &self.sql.delete_if,
            &[(&key, Type::TEXT), (&encoded, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
        )
    }

    /// Delete many keys, one round trip.
    pub fn delete_many(&self, keys: &[&str]) -> Result<()> {
        keys.iter().try_for_each(|key| check_key(key))?;
        if keys.is_empty() {
            return Ok(());
        }
        let rows = self.statement(false, &self.sql.delete_many, &[(&keys, Type::TEXT_ARRAY)])?;
        let deleted = count_of(&rows)?;
        self.census.add(-deleted);
        self.stats.deleted(deleted.max(0) as u64);
        Ok(())
    }

    /// Read-modify-write a live value atomically: `change` gets the
    /// current value and returns the new one. `Ok(None)`: no live value.
    /// If `change` fails, nothing is written and its error is returned.
    pub fn update<E>(
        &self,
        key: &str,
        now: SystemTime,
        change: impl FnOnce(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Option<Vec<u8>>, E>> {
        let result = self.update_uncounted(key, now, change);
        match &result {
            Ok(Ok(Some(_))) => self.stats.stored(1),
            Ok(Ok(None)) => self.stats.looked_up(0, 1),
            Ok(Err(_)) => {}
            Err(error) => self.stats.failed(error),
        }
        result
    }

    fn update_uncounted<E>(
        &self,
        key: &str,
        now: SystemTime,
        change: impl FnOnce(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Option<Vec<u8>>, E>> {
        check_key(key)?;
        // BEGIN and the lock in one round trip; the lock id is a number we
        // computed, not a value from the caller.
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({})", self.lock_id(key));
        let pool = self.pool();
        let mut conn = pool.lease()?;
        // The first round trip changes nothing, so a dead pooled connection
        // there is replaced, once.
        if let Err(error) = self.batch(&mut conn, &begin) {
            conn.poison();
            if !error.is_connection_loss() {
                return Err(error);
            }
            drop(conn);
            conn = pool.lease()?;
            self.batch(&mut conn, &begin).inspect_err(|_| conn.poison())?;
        }
        let outcome = self.update_in_transaction(&mut conn, key, now, change);
        let finish = match &outcome {
            Ok(Ok(Some(_))) => "COMMIT",
            _ => "ROLLBACK",
        };
        if let Err(error) = self.batch(&mut conn, finish) {
            // The transaction's fate is unknown to us: never reuse the
            // connection, and report the failure.
            conn.poison();
            if finish == "COMMIT" {
                return Err(error);
            }
        }
        if outcome.is_err() {
            conn.poison();
        }
        outcome
    }

    fn update_in_transaction<E>(
        &self,
        conn: &mut PgConnection,
        key: &str,
        now: SystemTime,
        change: impl FnOnce(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Option<Vec<u8>>, E>> {
        // A new statement after the lock: READ COMMITTED gives it a fresh
        // snapshot, with every increment committed before ours.
        let rows = self.query(
            conn,
            &self.sql.lock_row,
            &[(&key, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
        )?;
        let Some(current) = rows
            .first()
            .and_then(|row| row.try_get::<_, &str>(0).ok())
            .and_then(decode)
        else {
            return Ok(Ok(None));
        };
        let new = match change(&current) {
            Ok(new) => new,
            Err(error) => return Ok(Err(error)),
        };
        let encoded = BASE64.encode(&new);
        self.query(conn, &self.sql.rewrite, &[(&key, Type::TEXT), (&encoded, Type::TEXT)])?;
        Ok(Ok(Some(new)))
    }

    /// Remove every entry.
    pub fn clear(&self) -> Result<()> {
        let rows = self.statement(true, &self.sql.clear, &[])?;
        self.census.add(-count_of(&rows)?);
        Ok(())
    }

    /// Django's culling, before a write: with more than MAX_ENTRIES rows,
    /// delete the expired ones, then if still too many the first
    /// `remaining / CULL_FREQUENCY` in key order (all of them for 0). The
    /// table is counted only near the threshold or every few seconds.
    fn cull_if_full(&self, now: SystemTime, limits: Limits) -> Result<()> {
        if !self.census.needs_count(limits.max_entries) {
            return Ok(());
        }
        let rows = self.statement(true, &self.sql.count, &[])?;
        let count = count_of(&rows)?;
        self.census.counted(count);
        if count <= limits.max_entries {
            return Ok(());
        }
        let pool = self.pool();
        let mut conn = pool.lease()?;
        let result = self.cull(&mut conn, count, now, limits);
        if result.is_err() {
            conn.poison();
        }
        let removed = result?;
        self.census.add(-removed);
        Ok(())
    }

    /// One transaction: it ends with COMMIT whether or not this caller
    /// got the cull lock (an error leaves it open, and the caller discards
    /// the connection).
    fn cull(&self, conn: &mut PgConnection, count: i64, now: SystemTime, limits: Limits) -> Result<i64> {
        self.batch(conn, "BEGIN")?;
        let removed = self.cull_in_transaction(conn, count, now, limits)?;
        self.batch(conn, "COMMIT")?;
        Ok(removed)
    }

    fn cull_in_transaction(&self, conn: &mut PgConnection, count: i64, now: SystemTime, limits: Limits) -> Result<i64> {
        // One culler at a time; anyone else goes on writing.
        let cull_lock = self.lock_id("\0cull") ^ 0x5bd1_e995;
        let got = self.query(
            conn,
            "SELECT pg_try_advisory_xact_lock($1)",
            &[(&cull_lock, Type::INT8)],
        )?;
        if !got
            .first()
            .and_then(|row| row.try_get::<_, bool>(0).ok())
            .unwrap_or(false)
        {
            return Ok(0);
        }
        if limits.cull_frequency <= 0 {
            return count_of(&self.query(conn, &self.sql.clear, &[])?);
        }
        let expired = count_of(&self.query(conn, &self.sql.delete_expired, &[(&now, Type::TIMESTAMPTZ)])?)?;
        let remaining = count - expired;
        let mut culled = 0;
        if remaining > limits.max_entries {
            let offset = remaining / limits.cull_frequency;
            let nth = self.query(conn, &self.sql.nth_key, &[(&offset, Type::INT8)])?;
            if let Some(boundary) = nth.first().and_then(|row| row.try_get::<_, String>(0).ok()) {
                culled = count_of(&self.query(conn, &self.sql.delete_below, &[(&boundary, Type::TEXT)])?)?;
            }
        }
        Ok(expired + culled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_identifiers() {
        assert_eq!(quote_table("my_cache"), "\"my_cache\"");
        assert_eq!(quote_table("test cache table"), "\"test cache table\"");
        assert_eq!(
            quote_table("evil\"; DROP TABLE x; --"),
            "\"evil\"\"; DROP TABLE x; --\""
        );
        assert_eq!(quote_table("\"Already\""), "\"Already\"");
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key(&"a".repeat(255)).is_ok());
        assert!(check_key(&"é".repeat(255)).is_ok(), "characters, not bytes");
        assert!(matches!(check_key(&"a".repeat(256)), Err(Error::InvalidKey(_))));
        assert!(matches!(check_key("a\0b"), Err(Error::InvalidKey(_))));
    }

    #[test]
    fn expiry_conventions() {
        assert_eq!(expiry(0.0), UNIX_EPOCH + Duration::from_secs(NEVER_SECONDS));
        assert_eq!(expiry(10.5), UNIX_EPOCH + Duration::from_secs_f64(10.5));
        assert_eq!(moment(-5.0), UNIX_EPOCH);
    }
}
