//! Versioned schema migrations. Each component owns a numbered list of migrations (1, 2, 3…) with
//! one SQL script per backend; `nimbus_schema` records the version each component reached. A
//! database whose version for some component is beyond what this binary knows is refused: an
//! older binary must not write into a schema it does not understand.

use std::collections::BTreeMap;

use crate::{Result, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The owning component, e.g. `"store"`, `"docs"`.
    pub component: &'static str,
    /// 1 for the first migration of the component, then 2, 3…
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// The tables of the store's own primitives: records and leases.
pub const CORE_MIGRATIONS: &[Migration] = &[
    Migration {
        component: "store",
        version: 1,
        sqlite: "
        CREATE TABLE nimbus_kv (
            ns TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (ns, key)
        ) WITHOUT ROWID;
        CREATE TABLE nimbus_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
        INSERT INTO nimbus_sequence (id, value) VALUES (1, 0);
        CREATE TABLE nimbus_leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID;
    ",
        postgres: r#"
        CREATE TABLE nimbus_kv (
            ns TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            value BYTEA NOT NULL,
            version BIGINT NOT NULL,
            PRIMARY KEY (ns, key)
        );
        CREATE SEQUENCE nimbus_kv_version;
        CREATE TABLE nimbus_leases (
            name TEXT COLLATE "C" PRIMARY KEY,
            holder TEXT NOT NULL,
            token BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        );
    "#,
    },
    Migration {
        component: "store",
        version: 2,
        // The change feed reads a namespace in version order.
        sqlite: "CREATE INDEX nimbus_kv_by_version ON nimbus_kv (ns, version);",
        postgres: "CREATE INDEX nimbus_kv_by_version ON nimbus_kv (ns, version);",
    },
];

/// The migrations still to apply, in order, given the versions the database reports; or the
/// refusal when the database is ahead of this binary.
pub(crate) fn pending<'m>(applied: &BTreeMap<String, i64>, migrations: &'m [Migration]) -> Result<Vec<&'m Migration>> {
    let mut known: BTreeMap<&str, i64> = BTreeMap::new();
    for m in migrations {
        let latest = known.entry(m.component).or_default();
        if m.version != *latest + 1 {
            return Err(StoreError::Invalid(format!(
                "migrations of `{}` must be numbered 1, 2, 3… in order; found {} after {}",
                m.component, m.version, latest
            )));
        }
        *latest = m.version;
    }
    for (component, &found) in applied {
        let supported = known.get(component.as_str()).copied().unwrap_or(0);
        if found > supported {
            return Err(StoreError::SchemaTooNew { component: component.clone(), found, supported });
        }
    }
    Ok(migrations.iter().filter(|m| m.version > applied.get(m.component).copied().unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn m(component: &'static str, version: i64) -> Migration {
        Migration { component, version, sqlite: "", postgres: "" }
    }

    #[test]
    fn pending_skips_applied_and_refuses_newer() {
        let all = [m("store", 1), m("store", 2), m("docs", 1)];
        let applied = BTreeMap::from([("store".to_string(), 1)]);
        let todo: Vec<_> = pending(&applied, &all).unwrap().iter().map(|m| (m.component, m.version)).collect();
        assert_eq!(todo, [("store", 2), ("docs", 1)]);

        let ahead = BTreeMap::from([("store".to_string(), 3)]);
        assert!(matches!(pending(&ahead, &all), Err(StoreError::SchemaTooNew { found: 3, supported: 2, .. })));
        let unknown = BTreeMap::from([("future".to_string(), 1)]);
        assert!(matches!(pending(&unknown, &all), Err(StoreError::SchemaTooNew { .. })));
    }

    #[test]
    fn migrations_must_be_numbered_in_order() {
        assert!(pending(&BTreeMap::new(), &[m("store", 2)]).is_err());
        assert!(pending(&BTreeMap::new(), &[m("store", 1), m("store", 1)]).is_err());
    }
}
