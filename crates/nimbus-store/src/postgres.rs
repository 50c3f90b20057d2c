//! The PostgreSQL backend (and PostgreSQL-compatible databases), for several nodes sharing one
//! database. Conditional writes are single statements whose `WHERE` carries the condition, so
//! they stay correct under concurrency at READ COMMITTED; lease times come from the database's
//! clock so that nodes with skewed clocks still agree on who holds what, plus the store's
//! [`Clock`] offset (passed in milliseconds) so that tests can move time forward.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::migrate::{Migration, pending};
use crate::{
    BackendKind, Clock, Expect, Lease, Op, Record, Result, Store, StoreError, Write, add_to_counter, millis_to_time,
    redact, validate_key, validate_lease, validate_namespace, validate_writes,
};

const POOL_SIZE: usize = 16;
/// Serialises migrations of nodes starting at once (an arbitrary, fixed advisory-lock key).
const MIGRATION_LOCK: i64 = 0x6e69_6d62_7573; // "nimbus"
/// The database's clock in milliseconds since the epoch; statements add the store's clock offset
/// to it (`now_ms!() + $n`, the offset in milliseconds).
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

pub(crate) struct PgStore {
    pool: Pool,
    location: String,
    clock: Clock,
}

const PUT: &str = "INSERT INTO nimbus_kv (ns, key, value, version) VALUES ($1, $2, $3, nextval('nimbus_kv_version'))
     ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version RETURNING version";
const PUT_IF_ABSENT: &str =
    "INSERT INTO nimbus_kv (ns, key, value, version) VALUES ($1, $2, $3, nextval('nimbus_kv_version'))
     ON CONFLICT (ns, key) DO NOTHING RETURNING version";
const PUT_IF_VERSION: &str = "UPDATE nimbus_kv SET value = $3, version = nextval('nimbus_kv_version')
     WHERE ns = $1 AND key = $2 AND version = $4 RETURNING version";
const DELETE: &str = "DELETE FROM nimbus_kv WHERE ns = $1 AND key = $2";
const DELETE_IF_VERSION: &str = "DELETE FROM nimbus_kv WHERE ns = $1 AND key = $2 AND version = $3 RETURNING 1";
const CHECK: &str = "SELECT version FROM nimbus_kv WHERE ns = $1 AND key = $2 FOR SHARE";
const VERSION_OF: &str = "SELECT version FROM nimbus_kv WHERE ns = $1 AND key = $2";
/// $1 name, $2 holder, $3 token, $4 clock offset (ms). See `commit_with` for why FOR SHARE.
const HOLDING: &str = concat!(
    "SELECT 1 FROM nimbus_leases WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > ",
    now_ms!(),
    " + $4 FOR SHARE"
);

/// $1 name, $2 holder, $3 ttl (ms), $4 clock offset (ms).
const CLAIM: &str = concat!(
    "INSERT INTO nimbus_leases (name, holder, token, expires_at) VALUES ($1, $2, 1, ",
    now_ms!(),
    " + $4 + $3)
     ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, token = nimbus_leases.token + 1, expires_at = EXCLUDED.expires_at
        WHERE nimbus_leases.expires_at <= ",
    now_ms!(),
    " + $4 OR nimbus_leases.holder = EXCLUDED.holder
     RETURNING token, expires_at"
);
/// $1 name, $2 holder, $3 token, $4 ttl (ms), $5 clock offset (ms).
const RENEW: &str = concat!(
    "UPDATE nimbus_leases SET expires_at = ",
    now_ms!(),
    " + $5 + $4 WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > ",
    now_ms!(),
    " + $5 RETURNING expires_at"
);
/// $1 name, $2 holder, $3 token, $4 clock offset (ms).
const RELEASE: &str = concat!(
    "UPDATE nimbus_leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > ",
    now_ms!(),
    " + $4"
);

/// The counter a record holds, as numeric, or NULL when its bytes are not `^-?[0-9]{1,19}$` (the
/// text `parse_counter` accepts; the bigint range is checked on the sum). `encode(…, 'escape')`
/// never fails (non-ASCII and NUL bytes become `\nnn`, which the pattern refuses), unlike
/// `convert_from` on bytes that are not UTF-8; CASE makes sure the cast only sees digits.
macro_rules! counter_sum {
    () => {
        "(CASE WHEN encode(kv.value, 'escape') ~ '^-?[0-9]{1,19}$'
               THEN encode(kv.value, 'escape')::numeric END + $3::bigint)"
    };
}
/// The condition of an add on an existing record: a counter, a sum within bigint, at most $4.
macro_rules! counter_fits {
    () => {
        concat!(
            counter_sum!(),
            " BETWEEN -9223372036854775808 AND 9223372036854775807 AND ($4::bigint IS NULL OR ",
            counter_sum!(),
            " <= $4::bigint)"
        )
    };
}
/// $1 ns, $2 key, $3 delta, $4 max (NULL for none), $5 delta's text (the value of a new record,
/// which is within `max`). One statement: ON CONFLICT locks the existing row and then checks the
/// condition on its latest version, so concurrent adds serialise on the row and none is lost.
const ADD: &str = concat!(
    "INSERT INTO nimbus_kv AS kv (ns, key, value, version) VALUES ($1, $2, $5, nextval('nimbus_kv_version'))
     ON CONFLICT (ns, key) DO UPDATE
        SET value = convert_to(",
    counter_sum!(),
    "::bigint::text, 'UTF8'), version = EXCLUDED.version
        WHERE ",
    counter_fits!(),
    " RETURNING kv.value"
);
/// For an add whose delta alone exceeds `max`: an absent record (0) must stay absent, so only an
/// existing one may change. Parameters as for [`ADD`], without $5.
const ADD_EXISTING: &str = concat!(
    "UPDATE nimbus_kv AS kv SET value = convert_to(",
    counter_sum!(),
    "::bigint::text, 'UTF8'), version = nextval('nimbus_kv_version')
     WHERE kv.ns = $1 AND kv.key = $2 AND ",
    counter_fits!(),
    " RETURNING kv.value"
);
const VALUE_OF: &str = "SELECT value FROM nimbus_kv WHERE ns = $1 AND key = $2";

/// The advisory lock ordered commits take (an arbitrary constant: "nimbus" in ASCII).
const FEED_LOCK: i64 = 0x6e696d627573;

impl PgStore {
    /// One transaction; `ordered` takes the feed's advisory lock first, so that versions become
    /// visible in the order they were drawn (see [`Store::commit_ordered`]).
    async fn commit_with(&self, writes: Vec<Write>, ordered: bool) -> Result<Vec<Option<u64>>> {
        validate_writes(&writes)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Statements come from the connection's cache: given as text, each would cost a round trip
        // to prepare it, every time (and, for ordered commits, under the lock).
        if ordered {
            tx.execute(&tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await?, &[&FEED_LOCK]).await?;
        }
        let mut out = Vec::with_capacity(writes.len());
        for (index, w) in writes.into_iter().enumerate() {
            let (ns, key) = (w.ns.as_str(), w.key.as_str());
            let version = |row: tokio_postgres::Row| row.get::<_, i64>(0) as u64;
            // Each statement applies only when its condition holds; `None` means it did not.
            let done: Option<Option<u64>> = match (&w.op, w.expect) {
                (Op::Put(value), Expect::Any) => {
                    let st = tx.prepare_cached(PUT).await?;
                    Some(Some(version(tx.query_one(&st, &[&ns, &key, value]).await?)))
                }
                (Op::Put(value), Expect::Absent) => {
                    let st = tx.prepare_cached(PUT_IF_ABSENT).await?;
                    tx.query_opt(&st, &[&ns, &key, value]).await?.map(|r| Some(version(r)))
                }
                (Op::Put(value), Expect::Version(v)) => {
                    let st = tx.prepare_cached(PUT_IF_VERSION).await?;
                    tx.query_opt(&st, &[&ns, &key, value, &(v as i64)]).await?.map(|r| Some(version(r)))
                }
                (Op::Delete, Expect::Any) => {
                    tx.execute(&tx.prepare_cached(DELETE).await?, &[&ns, &key]).await?;
                    Some(None)
                }
                (Op::Delete, Expect::Version(v)) => {
                    let st = tx.prepare_cached(DELETE_IF_VERSION).await?;
                    tx.query_opt(&st, &[&ns, &key, &(v as i64)]).await?.map(|_| None)
                }
                (Op::Delete, Expect::Absent) => {
                    return Err(StoreError::Invalid("deleting a record that must be absent makes no sense".into()));
                }
                (Op::Holding { holder, token }, _) => {
                    // Fencing at READ COMMITTED: the check and the lock are one step. FOR SHARE
                    // waits for a claim, renew or release of the row in flight, then re-checks the
                    // row as that transaction left it (the WHERE is re-evaluated on the newest
                    // version), so a takeover committed before this point fails the commit. Once
                    // the row is share-locked, every claim, renew or release of it (each updates
                    // the row, which conflicts with FOR SHARE) waits until this transaction ends:
                    // no takeover can commit between the check and our commit, so these writes
                    // land while the lease is held — if its time runs out meanwhile, the takeover
                    // is ordered after them. Fenced commits of one holder share the lock and do
                    // not wait for each other. Where the check sits in the commit does not matter:
                    // the writes before it are invisible to others until the commit.
                    let st = tx.prepare_cached(HOLDING).await?;
                    let held =
                        tx.query_opt(&st, &[&key, holder, &(*token as i64), &self.clock.offset_ms()]).await?.is_some();
                    if !held {
                        return Err(StoreError::LeaseLost { index, name: w.key });
                    }
                    Some(None)
                }
                (Op::Check, Expect::Any) => Some(None),
                (Op::Check, expect) => {
                    // FOR SHARE holds the row's version until commit. An absent row cannot be
                    // locked: a concurrent insert may land after this check (see ARCHITECTURE.md).
                    let st = tx.prepare_cached(CHECK).await?;
                    let actual = tx.query_opt(&st, &[&ns, &key]).await?.map(version);
                    let ok = match expect {
                        Expect::Absent => actual.is_none(),
                        Expect::Version(v) => actual == Some(v),
                        Expect::Any => true,
                    };
                    ok.then_some(None)
                }
            };
            match done {
                Some(version) => out.push(version),
                None => {
                    let st = tx.prepare_cached(VERSION_OF).await?;
                    let actual = tx.query_opt(&st, &[&ns, &key]).await?.map(version);
                    return Err(StoreError::Conflict { index, ns: w.ns, key: w.key, expected: w.expect, actual });
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn open(url: &str, migrations: &[Migration]) -> Result<Self> {
        let location = redact(url);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Invalid(format!("invalid PostgreSQL URL {location}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("nimbus");
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Invalid(format!("cannot build a connection pool for {location}: {e}")))?;
        let mut client = pool.get().await.map_err(|e| StoreError::Unreachable {
            url: location.clone(),
            reason: match e {
                deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => e.to_string(),
                },
                other => other.to_string(),
            },
        })?;
        migrate(&mut client, migrations).await?;
        drop(client);
        Ok(Self { pool, location, clock: Clock::new() })
    }
}

async fn migrate(client: &mut tokio_postgres::Client, migrations: &[Migration]) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS nimbus_schema (
            component TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: BTreeMap<String, i64> = tx
        .query("SELECT component, version FROM nimbus_schema", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for m in pending(&applied, migrations)? {
        tracing::info!(component = m.component, version = m.version, "applying postgres migration");
        tx.batch_execute(m.postgres).await.map_err(|e| {
            StoreError::Backend(format!("migration {} v{} failed: {}", m.component, m.version, StoreError::from(e)))
        })?;
        tx.execute(
            "INSERT INTO nimbus_schema (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, applied_at = now()",
            &[&m.component, &m.version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

fn to_record(r: &tokio_postgres::Row) -> Record {
    Record { ns: r.get(0), key: r.get(1), value: r.get(2), version: r.get::<_, i64>(3) as u64 }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Postgres
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn ping(&self) -> Result<()> {
        self.pool.get().await?.simple_query("SELECT count(*) FROM nimbus_schema").await?;
        Ok(())
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        validate_key(ns, key)?;
        let client = self.pool.get().await?;
        let stmt =
            client.prepare_cached("SELECT ns, key, value, version FROM nimbus_kv WHERE ns = $1 AND key = $2").await?;
        Ok(client.query_opt(&stmt, &[&ns, &key]).await?.as_ref().map(to_record))
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Record>> {
        for key in keys {
            validate_key(ns, key)?;
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT ns, key, value, version FROM nimbus_kv WHERE ns = $1 AND key = ANY($2)")
            .await?;
        Ok(client.query(&stmt, &[&ns, &keys]).await?.iter().map(to_record).collect())
    }

    async fn list(&self, ns: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        validate_namespace(ns)?;
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT ns, key, value, version FROM nimbus_kv
                 WHERE ns = $1 AND key >= $2 AND key > $3 AND ($5::text IS NULL OR key < $5) ORDER BY key LIMIT $4",
            )
            .await?;
        let limit = limit.min(i64::MAX as usize) as i64;
        // The first key past the prefix bounds the scan, so the server reads no rows beyond it.
        let end = crate::prefix_end(prefix);
        let rows = client.query(&stmt, &[&ns, &prefix, &after.unwrap_or(""), &limit, &end]).await?;
        Ok(rows.iter().map(to_record).take_while(|r| r.key.starts_with(prefix)).collect())
    }

    async fn feed_position(&self) -> Result<u64> {
        // Under the ordered commits' lock none of them is in flight: any later one draws above.
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(&tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await?, &[&FEED_LOCK]).await?;
        let row = tx.query_one("SELECT last_value, is_called FROM nimbus_kv_version", &[]).await?;
        tx.commit().await?;
        let (last, called): (i64, bool) = (row.get(0), row.get(1));
        Ok(if called { last as u64 } else { 0 })
    }

    async fn changes(&self, ns: &str, prefix: &str, after: u64, limit: usize) -> Result<crate::Changes> {
        validate_namespace(ns)?;
        let client = self.pool.get().await?;
        // Every row of the namespace above `after` counts toward the limit; only those with the
        // prefix carry their value over the wire.
        let stmt = client
            .prepare_cached(
                "SELECT key, version, CASE WHEN left(key, length($3)) = $3 THEN value END
                 FROM nimbus_kv WHERE ns = $1 AND version > $2 ORDER BY version LIMIT $4",
            )
            .await?;
        let (after_i, limit_i) = (after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64);
        let rows = client.query(&stmt, &[&ns, &after_i, &prefix, &limit_i]).await?;
        let examined = rows
            .iter()
            .map(|row| {
                let (key, version): (String, i64) = (row.get(0), row.get(1));
                let value: Option<Vec<u8>> = row.get(2);
                let record = value.map(|value| Record { ns: ns.to_owned(), key, value, version: version as u64 });
                (record, version as u64)
            })
            .collect();
        Ok(crate::Changes::from_examined(examined, after, limit))
    }

    async fn commit_ordered(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        self.commit_with(writes, true).await
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        self.commit_with(writes, false).await
    }

    async fn claim(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease(name, holder, ttl)?;
        let client = self.pool.get().await?;
        let st = client.prepare_cached(CLAIM).await?;
        let row = client.query_opt(&st, &[&name, &holder, &ttl_ms(ttl), &self.clock.offset_ms()]).await?;
        Ok(row.map(|r| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token: r.get::<_, i64>(0) as u64,
            expires_at: millis_to_time(r.get(1)),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease(&lease.name, &lease.holder, ttl)?;
        let client = self.pool.get().await?;
        let st = client.prepare_cached(RENEW).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&lease.name, &lease.holder, &(lease.token as i64), &ttl_ms(ttl), &self.clock.offset_ms()];
        let row = client.query_opt(&st, &params).await?;
        Ok(row.map(|r| Lease { expires_at: millis_to_time(r.get(0)), ..lease.clone() }))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(RELEASE).await?;
        let n =
            client.execute(&st, &[&lease.name, &lease.holder, &(lease.token as i64), &self.clock.offset_ms()]).await?;
        Ok(n == 1)
    }

    async fn add(&self, ns: &str, key: &str, delta: i64, max: Option<i64>) -> Result<Option<i64>> {
        validate_key(ns, key)?;
        let client = self.pool.get().await?;
        let row = if max.is_some_and(|max| delta > max) {
            let st = client.prepare_cached(ADD_EXISTING).await?;
            client.query_opt(&st, &[&ns, &key, &delta, &max]).await?
        } else {
            let st = client.prepare_cached(ADD).await?;
            client.query_opt(&st, &[&ns, &key, &delta, &max, &delta.to_string().into_bytes()]).await?
        };
        if let Some(row) = row {
            let value: Vec<u8> = row.get(0);
            return crate::parse_counter(&value)
                .map(Some)
                .ok_or_else(|| StoreError::Backend(format!("the counter {ns}/{key} was written as {value:?}")));
        }
        // Nothing changed: the record was not a counter, or the sum was beyond i64 or above `max`.
        // Which one is read back from the record as it is now (a write racing in between can
        // change the explanation, never the outcome: nothing was written either way).
        let st = client.prepare_cached(VALUE_OF).await?;
        let current: Option<Vec<u8>> = client.query_opt(&st, &[&ns, &key]).await?.map(|r| r.get(0));
        match add_to_counter(ns, key, current.as_deref(), delta, max)? {
            None => Ok(None),
            // It would fit now, so the record changed since the statement refused it: `max` is
            // the likely reason when there is one; without one, only a non-counter or an
            // overflow refuses.
            Some(_) if max.is_some() => Ok(None),
            Some(_) => Err(StoreError::Invalid(format!(
                "the record {ns}/{key} was not a counter or adding {delta} to it overflowed (it has changed since); \
                 nothing was added"
            ))),
        }
    }
}
