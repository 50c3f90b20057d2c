//! The embedded backend: one SQLite file in WAL mode. One writer connection serialises writes
//! (SQLite allows one writer at a time anyway, and holding it makes read-check-write atomic);
//! a few read-only connections serve reads beside it.
//!
//! Each connection lives on a thread of its own: the writer thread takes jobs from the write queue
//! one at a time, in the order they were queued; the reader threads share the read queue, each
//! taking the next job when it is free. A job is a closure on the connection that answers on a
//! oneshot channel. No task per call, no lock per call: a call costs one queue hand-off each way.
//! Dropping the store closes the queues; each thread finishes the jobs already queued, closes its
//! connection and exits, and the drop waits for that.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::migrate::{Migration, pending};
use crate::{
    BackendKind, Clock, Expect, Lease, Op, Record, Result, Store, StoreError, Write, add_to_counter, millis_to_time,
    validate_key, validate_lease, validate_namespace, validate_writes,
};

const READERS: usize = 4;

/// Work for a connection thread: it runs the call and answers the caller itself.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub(crate) struct SqliteStore {
    location: String,
    /// Shared with the jobs on the writer thread, which read now when they run.
    clock: Arc<Clock>,
    // Field order is drop order: the readers close before the writer, so the writer is the last
    // connection and checkpoints the WAL as it closes.
    readers: Threads,
    writer: Threads,
}

/// Threads that each own a connection and serve one shared queue.
struct Threads {
    /// `None` only while dropping: closing the queue is what tells the threads to exit.
    queue: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Threads {
    fn new() -> (Self, Receiver<Job>) {
        let (queue, jobs) = crossbeam_channel::unbounded();
        (Self { queue: Some(queue), threads: Vec::new() }, jobs)
    }

    fn spawn(&mut self, name: String, mut conn: Connection, jobs: Receiver<Job>) -> std::io::Result<()> {
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Ends once the store is dropped and the jobs queued before that are done.
            for job in jobs {
                // Jobs catch their own panics to answer them (`Threads::call`); this only keeps
                // the thread serving whatever happens.
                if catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                    tracing::error!("a sqlite job panicked outside its call");
                }
            }
        })?;
        self.threads.push(thread);
        Ok(())
    }

    /// Runs `f` on the next free connection thread and waits for its result. A panic in `f` is
    /// answered as a backend error; the thread and its connection go on serving (a transaction
    /// left open by the panic was rolled back as it unwound). A read (`abandonable`) whose caller
    /// has gone by the time a thread takes it is skipped; a write always runs, as it would if
    /// the caller had waited.
    async fn call<T: Send + 'static>(
        &self,
        abandonable: bool,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            if abandonable && answer.is_closed() {
                return;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|panic| Err(StoreError::Backend(format!("sqlite task failed: {}", panicked(&*panic)))));
            // The caller may have gone meanwhile; then nobody needs the answer.
            let _ = answer.send(outcome);
        });
        let queue = self.queue.as_ref().ok_or_else(|| StoreError::Backend("sqlite store is closed".into()))?;
        queue.send(job).map_err(|_| StoreError::Backend("sqlite connection threads are gone".into()))?;
        result.await.map_err(|_| StoreError::Backend("sqlite task failed: the connection thread is gone".into()))?
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    match panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)) {
        Some(message) => format!("panicked with message {message:?}"),
        None => "panicked".to_owned(),
    }
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
                Ok(c)
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(open_err)?;
        let spawn_err = |e: std::io::Error| StoreError::Open {
            path: location.clone(),
            reason: format!("cannot start a sqlite connection thread: {e}"),
        };
        // On an error, what was built so far drops: its threads see their queue closed and exit.
        let (mut reader_threads, jobs) = Threads::new();
        for (i, conn) in readers.into_iter().enumerate() {
            reader_threads.spawn(format!("sqlite-reader-{i}"), conn, jobs.clone()).map_err(spawn_err)?;
        }
        let (mut writer_thread, jobs) = Threads::new();
        writer_thread.spawn("sqlite-writer".into(), writer, jobs).map_err(spawn_err)?;
        Ok(Self { location, clock: Arc::new(Clock::new()), readers: reader_threads, writer: writer_thread })
    }

    /// Runs `f` on the writer connection, after every write queued before it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.call(false, f).await
    }

    /// Runs `f` on the first free reader connection.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        self.readers.call(true, move |conn| f(conn)).await
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

/// The wall clock, for bookkeeping (when a migration was applied); leases use the store's clock.
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

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn feed_position(&self) -> Result<u64> {
        // One writer at a time: whatever commits after this read draws a higher version.
        self.read(|c| {
            Ok(c.query_row("SELECT value FROM nimbus_sequence WHERE id = 1", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
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
        let clock = self.clock.clone();
        self.write(move |conn| {
            // IMMEDIATE takes the write lock up front, and this connection is the only writer:
            // no claim, renew or release of a lease can run between a fenced write's check and
            // the commit.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(writes.len());
            for (index, w) in writes.into_iter().enumerate() {
                if let Op::Holding { holder, token } = &w.op {
                    let held = tx
                        .prepare_cached(
                            "SELECT 1 FROM nimbus_leases
                             WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > ?4",
                        )?
                        .exists(params![w.key, holder, *token as i64, clock.now_ms()])?;
                    if !held {
                        return Err(StoreError::LeaseLost { index, name: w.key });
                    }
                    out.push(None);
                    continue;
                }
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
                    Op::Check | Op::Holding { .. } => out.push(None),
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
        let clock = self.clock.clone();
        self.write(move |c| {
            let now = clock.now_ms();
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
        let clock = self.clock.clone();
        self.write(move |c| {
            let now = clock.now_ms();
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
        let clock = self.clock.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE nimbus_leases SET expires_at = 0
                     WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > ?4",
                )?
                .execute(params![lease.name, lease.holder, lease.token as i64, clock.now_ms()])?;
            Ok(n == 1)
        })
        .await
    }

    async fn add(&self, ns: &str, key: &str, delta: i64, max: Option<i64>) -> Result<Option<i64>> {
        validate_key(ns, key)?;
        let (ns, key) = (ns.to_owned(), key.to_owned());
        // Read, decide and write in one transaction of the only writer: nothing runs in between.
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM nimbus_kv WHERE ns = ?1 AND key = ?2")?
                .query_row(params![ns, key], |r| r.get(0))
                .optional()?;
            let Some(new) = add_to_counter(&ns, &key, current.as_deref(), delta, max)? else {
                return Ok(None);
            };
            let version: i64 =
                tx.query_row("UPDATE nimbus_sequence SET value = value + 1 WHERE id = 1 RETURNING value", [], |r| {
                    r.get(0)
                })?;
            tx.prepare_cached(
                "INSERT INTO nimbus_kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version",
            )?
            .execute(params![ns, key, new.to_string().into_bytes(), version])?;
            tx.commit()?;
            Ok(Some(new))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &Path) -> SqliteStore {
        SqliteStore::open(&dir.join("store.db"), crate::CORE_MIGRATIONS).await.expect("open the store")
    }

    #[tokio::test]
    async fn a_panicking_call_answers_an_error_and_its_thread_goes_on_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        // More panics than readers: every reader thread panics at least once.
        for _ in 0..2 * READERS {
            let err = store.read(|_| -> Result<()> { panic!("boom") }).await.unwrap_err();
            assert!(matches!(&err, StoreError::Backend(m) if m.contains("boom")), "{err:?}");
            store.ping().await.unwrap();
        }
        // A panic in the middle of a transaction rolls it back.
        let err = store
            .write(|c| -> Result<()> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute("UPDATE nimbus_sequence SET value = value + 1000 WHERE id = 1", [])?;
                panic!("boom")
            })
            .await
            .unwrap_err();
        assert!(matches!(&err, StoreError::Backend(m) if m.contains("boom")), "{err:?}");
        let versions = store.commit(vec![Write::put("ns", "key", b"v".to_vec())]).await.unwrap();
        assert_eq!(versions, vec![Some(1)]);
        assert_eq!(store.get("ns", "key").await.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn dropping_the_store_closes_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        store.commit(vec![Write::put("ns", "key", b"v".to_vec())]).await.unwrap();
        assert_eq!(store.get("ns", "key").await.unwrap().unwrap().version, 1);
        assert!(dir.path().join("store.db-wal").exists());
        drop(store);
        // The last connection to close (the writer) checkpoints the WAL and removes it.
        assert!(!dir.path().join("store.db-wal").exists());
    }
}
