//! Storage for every Nimbus component, on two backends chosen by URL: embedded SQLite (a file in
//! the data dir, WAL) and PostgreSQL (`postgres://…`), so a node can grow from one machine to
//! several sharing one database.
//!
//! What it gives:
//! - [`open`]: connect, apply versioned [`Migration`]s (each component owns its own), refuse a
//!   schema newer than the binary;
//! - records: namespaced keys with byte values and versions, written all-or-nothing with
//!   per-write conditions ([`Store::commit`]);
//! - a change feed of a namespace in version order ([`Store::changes`]);
//! - leases: named, expiring claims with fencing tokens ([`Store::claim`]), safe under
//!   concurrency on both backends, for work that one node at a time must do;
//! - fenced writes: [`Write::holding`] makes a commit require, inside its transaction, that a
//!   lease is still held with its token, so a holder that lost the lease cannot write late;
//! - counters: [`Store::add`] adds to a decimal record in one statement, refusing past an
//!   optional maximum (quotas, token budgets);
//! - a [`Clock`] per store ([`Store::clock`]): the wall clock plus an offset that tests move
//!   forward ([`Clock::advance`]) to expire leases without sleeping.
//!
//! Both backends pass one conformance suite (`tests/conformance.rs`); the `testing` feature
//! exposes the harness so components with their own tables can do the same.

mod clock;
mod error;
mod instrument;
mod migrate;
mod postgres;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use clock::Clock;
pub use error::StoreError;
pub use migrate::{CORE_MIGRATIONS, Migration};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Namespaces and keys are at most this long (bytes).
pub const MAX_NAMESPACE_LEN: usize = 128;
pub const MAX_KEY_LEN: usize = 1024;
/// A record value is at most this large (bytes).
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A stored record. `version` grows with every write anywhere in the store and is never reused,
/// so a version seen once identifies one write (no ABA when a key is deleted and re-created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ns: String,
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
}

/// What a write requires of the record's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    Any,
    /// The record must not exist.
    Absent,
    /// The record must exist with exactly this version.
    Version(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Delete,
    /// Only checks the condition; lets a commit depend on records it does not change.
    Check,
    /// Changes nothing; requires that the lease named by the write's `key` (its `ns` is
    /// [`LEASE_NAMESPACE`], its `expect` is [`Expect::Any`]) is held by `holder` with exactly
    /// `token` and not expired by the store's clock when the commit applies. Otherwise the commit
    /// fails with [`StoreError::LeaseLost`]. Built by [`Write::holding`].
    Holding {
        holder: String,
        token: u64,
    },
}

/// The `ns` of an [`Op::Holding`] write (the namespace lease names are validated in).
pub const LEASE_NAMESPACE: &str = "lease";

/// One write of a [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub ns: String,
    pub key: String,
    pub op: Op,
    pub expect: Expect,
}

impl Write {
    pub fn put(ns: &str, key: &str, value: impl Into<Vec<u8>>) -> Self {
        Self { ns: ns.into(), key: key.into(), op: Op::Put(value.into()), expect: Expect::Any }
    }

    pub fn delete(ns: &str, key: &str) -> Self {
        Self { ns: ns.into(), key: key.into(), op: Op::Delete, expect: Expect::Any }
    }

    pub fn check(ns: &str, key: &str, expect: Expect) -> Self {
        Self { ns: ns.into(), key: key.into(), op: Op::Check, expect }
    }

    /// Fences a commit by `lease`: a write that changes nothing and requires that the lease is
    /// still held by `lease.holder` with exactly `lease.token` and not expired (by the store's
    /// clock) when the commit applies, so work done under a lease cannot land after another holder
    /// took it over. Fails the whole commit with [`StoreError::LeaseLost`] otherwise.
    pub fn holding(lease: &Lease) -> Self {
        Self {
            ns: LEASE_NAMESPACE.into(),
            key: lease.name.clone(),
            op: Op::Holding { holder: lease.holder.clone(), token: lease.token },
            expect: Expect::Any,
        }
    }

    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

/// One page of a change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The records with the prefix, in version order.
    pub records: Vec<Record>,
    /// The highest version examined (the `after` of the next call).
    pub through: u64,
    /// Whether the namespace held nothing more above `through` when read.
    pub caught_up: bool,
}

impl Changes {
    /// From the rows examined, `(record if it has the prefix, version)`, in version order.
    pub(crate) fn from_examined(rows: Vec<(Option<Record>, u64)>, after: u64, limit: usize) -> Self {
        let caught_up = rows.len() < limit;
        let through = rows.last().map_or(after, |(_, v)| *v);
        Self { records: rows.into_iter().filter_map(|(r, _)| r).collect(), through, caught_up }
    }
}

/// A named claim held by one holder until `expires_at` (by the store's [`Clock`]). `token`
/// increases with every successful claim of the name, so work done under a lease can be fenced
/// against a holder that lost it ([`Write::holding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: u64,
    pub expires_at: SystemTime,
}

/// The storage primitives every backend provides.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// This store's notion of now, used by every lease and fenced write; tests move it forward
    /// with [`Clock::advance`] instead of sleeping.
    fn clock(&self) -> &Clock;

    /// Where the data lives, safe to log (no password).
    fn location(&self) -> &str;

    /// Cheap round trip to the backend that also sees the schema, for readiness checks.
    async fn ping(&self) -> Result<()>;

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>>;

    /// The records of `keys` that exist, in no particular order: one round trip for many point
    /// reads (a docs index lookup, the candidates of a vector search).
    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.extend(self.get(ns, key).await?);
        }
        Ok(out)
    }

    /// Records of `ns` whose key starts with `prefix` and sorts after `after` (byte order), at most
    /// `limit` of them, in key order. Pass the last key seen as `after` to read the next page.
    async fn list(&self, ns: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>>;

    /// Applies every write or none, in order. A failed condition answers [`StoreError::Conflict`]
    /// naming the first write that failed; a lease no longer held ([`Write::holding`]) answers
    /// [`StoreError::LeaseLost`]. Returns the new version of each put (`None` for the others).
    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>>;

    /// A change feed: the records of `ns` above version `after`, in version order (the latest
    /// write of each key; deleted keys drop out), of which those whose key starts with `prefix`
    /// are returned. At most `limit` records of the namespace are examined, matching or not, so
    /// a reader of a quiet prefix in a busy namespace still moves on: resume from
    /// [`Changes::through`]. Complete on PostgreSQL for records written with
    /// [`Store::commit_ordered`].
    async fn changes(&self, ns: &str, prefix: &str, after: u64, limit: usize) -> Result<Changes>;

    /// Where a change feed that starts now resumes: a version that every later
    /// [`Store::commit_ordered`] writes above, and that no ordered commit still in flight is below.
    async fn feed_position(&self) -> Result<u64>;

    /// A [`Store::commit`] whose versions are visible in version order: a reader of
    /// [`Store::changes`] that saw version v never later finds a new record below v. SQLite commits
    /// one at a time anyway; PostgreSQL serialises these commits on an advisory lock.
    async fn commit_ordered(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        self.commit(writes).await
    }

    /// Claims `name` for `holder` for `ttl` if it is free or expired (or already held by `holder`).
    /// `None` when someone else holds it.
    async fn claim(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>>;

    /// Extends a lease still held; `None` when it expired or was taken over.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>>;

    /// Gives a lease up; `false` when it was no longer held.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Adds `delta` to the counter at (`ns`, `key`) atomically and returns the new value. A counter
    /// is an ordinary record whose value is the decimal text of an i64 (an optional `-` and 1 to 19
    /// ASCII digits); an absent record counts as 0. Each add draws a new version like a put (it is
    /// not an ordered commit: see [`Store::changes`]). With `max`, an add whose result would exceed
    /// it changes nothing and answers `None`: `add(ns, key, n, Some(limit))` takes `n` of a quota.
    /// A record that is not a counter, or a result beyond i64, answers [`StoreError::Invalid`] and
    /// changes nothing.
    async fn add(&self, ns: &str, key: &str, delta: i64, max: Option<i64>) -> Result<Option<i64>>;

    /// Writes one record without condition; returns its new version.
    async fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<u64> {
        let versions = self.commit(vec![Write::put(ns, key, value)]).await?;
        Ok(versions.first().copied().flatten().unwrap_or_default())
    }

    /// Deletes one record; `false` when it did not exist.
    async fn delete(&self, ns: &str, key: &str) -> Result<bool> {
        // Delete the version just read, so the answer says whether *this* call removed it; a write
        // racing in between is retried.
        loop {
            let Some(record) = self.get(ns, key).await? else { return Ok(false) };
            match self.commit(vec![Write::delete(ns, key).expect(Expect::Version(record.version))]).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where the store lives, from a URL: `sqlite` (the file `nimbus.db` in the data dir),
/// `sqlite:///abs/path.db` or `sqlite://relative/path.db`, `postgres://…` / `postgresql://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl StoreUrl {
    pub fn parse(url: &str, data_dir: &Path) -> Result<Self> {
        if url == "sqlite" || url.is_empty() {
            return Ok(Self::Sqlite(data_dir.join("nimbus.db")));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Invalid(format!("store URL \"{url}\" names no file")));
            }
            let path = Path::new(path);
            return Ok(Self::Sqlite(if path.is_absolute() { path.to_path_buf() } else { data_dir.join(path) }));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(StoreError::Invalid(format!(
            "store URL \"{}\" has an unknown scheme: use \"sqlite\", \"sqlite:///path/file.db\" or \"postgres://…\"",
            redact(url)
        )))
    }
}

/// Opens the store at `url` and brings its schema up to date with `migrations` (which must include
/// [`CORE_MIGRATIONS`]; components add their own).
pub async fn open(url: &str, data_dir: &Path, migrations: &[Migration]) -> Result<Arc<dyn Store>> {
    match StoreUrl::parse(url, data_dir)? {
        StoreUrl::Sqlite(path) => {
            Ok(Arc::new(instrument::Instrumented::new(sqlite::SqliteStore::open(&path, migrations).await?)))
        }
        StoreUrl::Postgres(url) => {
            Ok(Arc::new(instrument::Instrumented::new(postgres::PgStore::open(&url, migrations).await?)))
        }
    }
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => url.split('@').next_back().map(|host| format!("…@{host}")).unwrap_or_default(),
    }
}

/// The least string above every string that starts with `prefix` (in byte order, which UTF-8
/// shares with code point order); `None` when nothing bounds them (an empty prefix, or one of
/// nothing but the last code point).
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(crate) fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN || ns.contains('\0') {
        return Err(StoreError::Invalid(format!("namespace must be 1 to {MAX_NAMESPACE_LEN} bytes, without NUL")));
    }
    Ok(())
}

pub(crate) fn validate_key(ns: &str, key: &str) -> Result<()> {
    validate_namespace(ns)?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(format!("key must be 1 to {MAX_KEY_LEN} bytes")));
    }
    if key.contains('\0') {
        return Err(StoreError::Invalid("keys cannot contain NUL characters".into()));
    }
    Ok(())
}

pub(crate) fn validate_writes(writes: &[Write]) -> Result<()> {
    for w in writes {
        validate_key(&w.ns, &w.key)?;
        match (&w.op, w.expect) {
            (Op::Holding { holder, .. }, expect) => {
                if w.ns != LEASE_NAMESPACE {
                    return Err(StoreError::Invalid(format!(
                        "a write fenced by a lease names the lease in namespace \"{LEASE_NAMESPACE}\", not \"{}\"",
                        w.ns
                    )));
                }
                if expect != Expect::Any {
                    return Err(StoreError::Invalid("a write fenced by a lease takes no other condition".into()));
                }
                validate_holder(holder)?;
            }
            (Op::Put(v), _) if v.len() > MAX_VALUE_LEN => {
                return Err(StoreError::Invalid(format!(
                    "value of {} bytes is over the {MAX_VALUE_LEN}-byte limit",
                    v.len()
                )));
            }
            (Op::Delete, Expect::Absent) => {
                return Err(StoreError::Invalid("deleting a record that must be absent makes no sense".into()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_holder(holder: &str) -> Result<()> {
    if holder.is_empty() || holder.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(format!("lease holder must be 1 to {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

pub(crate) fn validate_lease(name: &str, holder: &str, ttl: Duration) -> Result<()> {
    validate_key(LEASE_NAMESPACE, name)?;
    validate_holder(holder)?;
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 86400) {
        return Err(StoreError::Invalid("lease ttl must be between 1ms and one year".into()));
    }
    Ok(())
}

pub(crate) fn millis_to_time(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The number a counter record holds: an optional `-` and 1 to 19 ASCII digits, within i64.
/// (PostgreSQL's `add` accepts exactly the same text: `^-?[0-9]{1,19}$` within the bigint range.)
pub(crate) fn parse_counter(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// What adding `delta` (at most `max`) to a counter whose record holds `current` gives: the new
/// value, `None` when `max` refuses it, or why the add is invalid. Both backends decide with this
/// (PostgreSQL to explain why its statement changed nothing).
pub(crate) fn add_to_counter(
    ns: &str,
    key: &str,
    current: Option<&[u8]>,
    delta: i64,
    max: Option<i64>,
) -> Result<Option<i64>> {
    let current = match current {
        None => 0,
        Some(value) => parse_counter(value).ok_or_else(|| {
            StoreError::Invalid(format!(
                "the record {ns}/{key} is not a counter (the decimal text of a 64-bit integer)"
            ))
        })?,
    };
    let new = current.checked_add(delta).ok_or_else(|| {
        StoreError::Invalid(format!("adding {delta} to the counter {ns}/{key} ({current}) overflows a 64-bit integer"))
    })?;
    Ok(max.is_none_or(|max| new <= max).then_some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_backends() {
        let dir = Path::new("/data");
        assert_eq!(StoreUrl::parse("sqlite", dir).unwrap(), StoreUrl::Sqlite("/data/nimbus.db".into()));
        assert_eq!(StoreUrl::parse("sqlite:///x/y.db", dir).unwrap(), StoreUrl::Sqlite("/x/y.db".into()));
        assert_eq!(StoreUrl::parse("sqlite://y.db", dir).unwrap(), StoreUrl::Sqlite("/data/y.db".into()));
        assert!(matches!(StoreUrl::parse("postgres://h/db", dir).unwrap(), StoreUrl::Postgres(_)));
        let e = StoreUrl::parse("mysql://u:pw@h/db", dir).unwrap_err().to_string();
        assert!(e.contains("unknown scheme") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn prefixes_end_where_their_keys_do() {
        assert_eq!(prefix_end("a/"), Some("a0".into()));
        assert_eq!(prefix_end("c/\"x\"/"), Some("c/\"x\"0".into()));
        assert_eq!(prefix_end("a\u{D7FF}"), Some("a\u{E000}".into()), "surrogates are skipped");
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn counters_are_decimal_i64_text() {
        for (text, n) in [("0", 0), ("-0", 0), ("42", 42), ("-7", -7), ("007", 7)] {
            assert_eq!(parse_counter(text.as_bytes()), Some(n), "{text}");
        }
        assert_eq!(parse_counter(i64::MAX.to_string().as_bytes()), Some(i64::MAX));
        assert_eq!(parse_counter(i64::MIN.to_string().as_bytes()), Some(i64::MIN));
        for text in [
            "",
            "-",
            "+1",
            " 1",
            "1 ",
            "1\n",
            "1.5",
            "1e3",
            "0x10",
            "1_000",
            "9223372036854775808",
            "00000000000000000001",
        ] {
            assert_eq!(parse_counter(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(parse_counter(&[0xff, b'1']), None);
        assert_eq!(add_to_counter("c", "k", None, 5, Some(5)).unwrap(), Some(5));
        assert_eq!(add_to_counter("c", "k", None, 6, Some(5)).unwrap(), None);
        assert!(add_to_counter("c", "k", Some(b"x"), 1, None).is_err());
        assert!(add_to_counter("c", "k", Some(i64::MAX.to_string().as_bytes()), 1, Some(i64::MAX)).is_err());
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
