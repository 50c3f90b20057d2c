//! The embedded backend: one SQLite file in WAL mode. One writer connection serialises writes
//! (SQLite allows one writer at a time anyway, and holding it makes read-check-write atomic);
//! a few read-only connections serve reads beside it. Every call runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::migrate::{Migration, pending};
use crate::{
    BackendKind, Expect, Lease, Op, Record, Result, Store, StoreError, Write, millis_to_time, validate_key,
    validate_lease, validate_namespace, validate_writes,
};

const READERS: usize = 4;

pub(crate) struct SqliteStore {
    location: String,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path, migrations: &[Migration]) -> Result<Self> {
        let path = path.to_path_buf();
        let migrations = migrations.to_vec();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &migrations))
            .await
            .map_err(|e| StoreError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(path: &Path, migrations: &[Migration]) -> Result<Self> {
        let location = path.display().to_string();
        let open_err = |e: rusqlite::Error| StoreError::Open { path: location.clone(), reason: e.to_string() };
        let mut writer = Connection::open(path).map_err(open_err)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open { path: location, reason: format!("cannot use WAL mode (got {mode})") });
        }
        // NORMAL in WAL mode never corrupts the file and survives a killed process; only an OS
        // crash or power loss may drop the last commits.
        writer
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        migrate(&mut writer, migrations)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA busy_timeout = 5000;")?;
                Ok(Mutex::new(c))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(open_err)?;
        Ok(Self {
            location,
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let readers = self.readers.clone();
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // Take a free reader if there is one, else wait for the one round-robin picked.
            let n = readers.len();
            for i in 0..n {
                if let Ok(conn) = readers[(first + i) % n].try_lock() {
                    return f(&conn);
                }
            }
            let conn = readers[first % n].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS nimbus_schema (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )?;
    let applied: BTreeMap<String, i64> = tx
        .prepare("SELECT component, version FROM nimbus_schema")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for m in pending(&applied, migrations)? {
        tracing::info!(component = m.component, version = m.version, "applying sqlite migration");
        tx.execute_batch(m.sqlite)
            .map_err(|e| StoreError::Backend(format!("migration {} v{} failed: {e}", m.component, m.version)))?;
        tx.execute(
            "INSERT INTO nimbus_schema (component, version, applied_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at",
            params![m.component, m.version, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record { ns: r.get(0)?, key: r.get(1)?, value: r.get(2)?, version: r.get::<_, i64>(3)? as u64 })
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| Ok(c.query_row("SELECT count(*) FROM nimbus_schema", [], |_| Ok(()))?)).await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        validate_key(ns, key)?;
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT ns, key, value, version FROM nimbus_kv WHERE ns = ?1 AND key = ?2")?
                .query_row(params![ns, key], row_to_record)
                .optional()?)
        })
        .await
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Record>> {
        for key in keys {
            validate_key(ns, key)?;
        }
        let (ns, keys) = (ns.to_owned(), keys.to_vec());
        self.read(move |c| {
            let mut out = Vec::with_capacity(keys.len());
            // In chunks below SQLite's limit on bound parameters; the statement per chunk size is cached.
            for chunk in keys.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT ns, key, value, version FROM nimbus_kv WHERE ns = ? AND key IN ({marks})"
                ))?;
                let params = std::iter::once(&ns).chain(chunk.iter());
                let rows = stmt.query_map(rusqlite::params_from_iter(params), row_to_record)?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, ns: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        validate_namespace(ns)?;
        let (ns, prefix, after) = (ns.to_owned(), prefix.to_owned(), after.unwrap_or("").to_owned());
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(move |c| {
            // Keys with the prefix are contiguous from `prefix` on; stop at the first that lacks it.
            let mut stmt = c.prepare_cached(
                "SELECT ns, key, value, version FROM nimbus_kv
                 WHERE ns = ?1 AND key >= ?2 AND key > ?3 ORDER BY key LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![ns, prefix, after, limit], row_to_record)?;
            let mut out = Vec::new();
            for row in rows {
                let record = row?;
                if !record.key.starts_with(&prefix) {
                    break;
                }
                out.push(record);
            }
            Ok(out)
        })
        .await
    }

    async fn changes(&self, ns: &str, prefix: &str, after: u64, limit: usize) -> Result<crate::Changes> {
        validate_namespace(ns)?;
        let (ns, prefix) = (ns.to_owned(), prefix.to_owned());
        let (after_i, limit_i) = (after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64);
        let rows = self
            .read(move |c| {
                // Every row of the namespace above `after` counts toward the limit; only those with
                // the prefix (substr, not LIKE: a prefix may hold % and _) carry their value.
                let mut stmt = c.prepare_cached(
                    "SELECT key, version, CASE WHEN substr(key, 1, length(?3)) = ?3 THEN value END
                     FROM nimbus_kv WHERE ns = ?1 AND version > ?2 ORDER BY version LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![ns, after_i, prefix, limit_i], |row| {
                    let (key, version): (String, i64) = (row.get(0)?, row.get(1)?);
                    let value: Option<Vec<u8>> = row.get(2)?;
                    let record = value.map(|value| Record { ns: ns.clone(), key, value, version: version as u64 });
                    Ok((record, version as u64))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
            })
            .await?;
        Ok(crate::Changes::from_examined(rows, after, limit))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        validate_writes(&writes)?;
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(writes.len());
            for (index, w) in writes.into_iter().enumerate() {
                let actual: Option<u64> = tx
                    .prepare_cached("SELECT version FROM nimbus_kv WHERE ns = ?1 AND key = ?2")?
                    .query_row(params![w.ns, w.key], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|v| v as u64);
                let ok = match w.expect {
                    Expect::Any => true,
                    Expect::Absent => actual.is_none(),
                    Expect::Version(v) => actual == Some(v),
                };
                if !ok {
                    return Err(StoreError::Conflict { index, ns: w.ns, key: w.key, expected: w.expect, actual });
                }
                match w.op {
                    Op::Put(value) => {
                        let version: i64 = tx.query_row(
                            "UPDATE nimbus_sequence SET value = value + 1 WHERE id = 1 RETURNING value",
                            [],
                            |r| r.get(0),
                        )?;
                        tx.prepare_cached(
                            "INSERT INTO nimbus_kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version",
                        )?
                        .execute(params![w.ns, w.key, value, version])?;
                        out.push(Some(version as u64));
                    }
                    Op::Delete => {
                        tx.prepare_cached("DELETE FROM nimbus_kv WHERE ns = ?1 AND key = ?2")?
                            .execute(params![w.ns, w.key])?;
                        out.push(None);
                    }
                    Op::Check => out.push(None),
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn claim(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease(name, holder, ttl)?;
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |c| {
            let now = now_ms();
            let row = c
                .prepare_cached(
                    "INSERT INTO nimbus_leases (name, holder, token, expires_at) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (name) DO UPDATE
                        SET holder = excluded.holder, token = nimbus_leases.token + 1, expires_at = excluded.expires_at
                        WHERE nimbus_leases.expires_at <= ?4 OR nimbus_leases.holder = excluded.holder
                     RETURNING token, expires_at",
                )?
                .query_row(params![name, holder, now.saturating_add(ttl_ms(ttl)), now], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?;
            Ok(row.map(|(token, expires)| Lease {
                name,
                holder,
                token: token as u64,
                expires_at: millis_to_time(expires),
            }))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease(&lease.name, &lease.holder, ttl)?;
        let lease = lease.clone();
        self.write(move |c| {
            let now = now_ms();
            let expires = c
                .prepare_cached(
                    "UPDATE nimbus_leases SET expires_at = ?1
                     WHERE name = ?2 AND holder = ?3 AND token = ?4 AND expires_at > ?5 RETURNING expires_at",
                )?
                .query_row(
                    params![now.saturating_add(ttl_ms(ttl)), lease.name, lease.holder, lease.token as i64, now],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            Ok(expires.map(|e| Lease { expires_at: millis_to_time(e), ..lease }))
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let lease = lease.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE nimbus_leases SET expires_at = 0
                     WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > ?4",
                )?
                .execute(params![lease.name, lease.holder, lease.token as i64, now_ms()])?;
            Ok(n == 1)
        })
        .await
    }
}
