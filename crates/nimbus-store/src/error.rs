//! The store's error kinds. Callers act on `Conflict` (retry or report 409/412), `LeaseLost` (stop
//! the work: another holder has the lease) and `Invalid` (report 400); the rest are operational
//! failures reported as 5xx with the detail logged.

use crate::Expect;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach PostgreSQL at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the database schema of `{component}` is at version {found}, newer than this nimbus binary supports ({supported}); \
         upgrade nimbus or point it at another store"
    )]
    SchemaTooNew { component: String, found: i64, supported: i64 },
    #[error("condition failed on {ns}/{key} (write {index}): expected {expected:?}, found {}", match .actual { Some(v) => format!("version {v}"), None => "no record".into() })]
    Conflict { index: usize, ns: String, key: String, expected: Expect, actual: Option<u64> },
    /// A commit fenced by a lease ([`crate::Write::holding`]) found it released, expired or taken
    /// over; nothing was written.
    #[error("lease `{name}` is no longer held (the write at index {index} is fenced by it)")]
    LeaseLost { index: usize, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl StoreError {
    /// A stable, low-cardinality name of the error's kind (metric labels, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::SchemaTooNew { .. } => "schema_too_new",
            Self::Conflict { .. } => "conflict",
            Self::LeaseLost { .. } => "lease_lost",
            Self::Invalid(_) => "invalid",
            Self::Open { .. } => "open",
            Self::Backend(_) => "backend",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display hides the server's message behind "db error"; show it.
        match e.as_db_error() {
            Some(db) => Self::Backend(format!("{}: {}", db.code().code(), db.message())),
            None => Self::Backend(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Backend(other.to_string()),
        }
    }
}
