//! The conformance harness: a fresh, isolated store on each backend, and [`conformance_suite!`]
//! which runs one set of test functions against both. SQLite gets a temporary directory;
//! PostgreSQL gets a schema of its own in the database at `NIMBUS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends.
//!
//! A PostgreSQL that does not answer fails the test with instructions: the suite never skips.
//! `scripts/test.sh` starts a throwaway server when none answers.

use std::path::Path;
use std::sync::Arc;

use rand::Rng;

use crate::{CORE_MIGRATIONS, Migration, Result, Store};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("NIMBUS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// One isolated place to keep data for the length of a test.
pub struct TestDb {
    pub backend: Backend,
    url: String,
    data_dir: tempfile::TempDir,
    schema: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let data_dir = tempfile::tempdir().expect("create a temporary directory");
        match backend {
            Backend::Sqlite => Self { backend, url: "sqlite".into(), data_dir, schema: None },
            Backend::Postgres => {
                let base = postgres_url();
                let schema = format!("nimbus_test_{:016x}", rand::rng().random::<u64>());
                let client = admin_client(&base).await;
                client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create a test schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Self { backend, url, data_dir, schema: Some(schema) }
            }
        }
    }

    /// The store URL to give `nimbus up --store` or [`crate::open`].
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Opens (or reopens) the store with the core migrations.
    pub async fn open(&self) -> Arc<dyn Store> {
        self.open_with(CORE_MIGRATIONS).await.expect("open the test store")
    }

    pub async fn open_with(&self, migrations: &[Migration]) -> Result<Arc<dyn Store>> {
        crate::open(&self.url, self.data_dir(), migrations).await
    }

    /// Drops the PostgreSQL schema. (A test that panics leaves its schema behind; the names say
    /// which ones are safe to drop.)
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema {
            let client = admin_client(&postgres_url()).await;
            if let Err(e) = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await {
                eprintln!("could not drop test schema {schema}: {e}");
            }
        }
    }
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!(
            "the PostgreSQL conformance tests need a server at {} and none answered ({e}). \
             Run the tests with scripts/test.sh, which starts a throwaway PostgreSQL when none answers, \
             or set NIMBUS_TEST_POSTGRES_URL.",
            crate::redact(url)
        ),
    }
}

/// Runs each listed `async fn name(db: &TestDb)` once on SQLite and once on PostgreSQL, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! conformance_suite {
    (@on $module:ident, $backend:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = $crate::testing::TestDb::new($crate::testing::Backend::$backend).await;
                    super::$test(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
    ($($test:ident),* $(,)?) => {
        $crate::conformance_suite!(@on sqlite, Sqlite, $($test),*);
        $crate::conformance_suite!(@on postgres, Postgres, $($test),*);
    };
}
