//! Containers and how items map onto the store's records.
//!
//! Records (all written in one commit per item change, so they never disagree):
//! - `docs` · `<container>/<pk>/<id>`: the item's JSON (without `_etag`/`_lsn`, which are the
//!   record's version: every write gets a new one, store-wide, never reused);
//! - `docs-index` · `<container>/<path>/<value>/<pk>/<id>`: one per declared index path with a
//!   scalar value, so an equality filter reads only the matching items;
//! - `docs-unique` · `<container>/<pk>/<key set>/<values>`: claimed with `Absent`, so two items of
//!   one partition can never share a unique key;
//! - `docs-ttl` · `<expiry seconds, 12 digits>/<container>/<pk>/<id>`: what the purger deletes, in
//!   expiry order;
//! - `docs-gone` · `<container>/<pk>/<id>`: a deleted item's tombstone, for caches that follow the
//!   change feed (kept an hour);
//! - `docs-secret` · `continuations`: the key that signs query continuations (made by the first
//!   node that needs it).
//!
//! `<pk>` and index values are canonical JSON (numbers normalised, so 1 and 1.0 are one key) with
//! `%` and `/` percent-encoded, so no value can forge a key boundary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) const ITEMS: &str = "docs";
pub(crate) const INDEX: &str = "docs-index";
pub(crate) const UNIQUE: &str = "docs-unique";
pub(crate) const TTL: &str = "docs-ttl";
pub(crate) const META: &str = "docs-meta";
/// Tombstones: `<container>/<pk>/<id>` of deleted items (value: when, Unix seconds), so caches
/// that follow the change feed (`vectors.rs`) learn of deletes.
pub(crate) const GONE: &str = "docs-gone";
/// The component's secrets: `continuations`, the key query continuations are signed with.
pub(crate) const SECRET: &str = "docs-secret";

/// Properties the service owns: stripped from what clients send.
pub(crate) const SYSTEM: [&str; 6] = ["_etag", "_lsn", "_ts", "_rid", "_self", "_attachments"];

/// A JSON path as a list of property names: `/a/b` → `["a", "b"]`.
pub type Path = Vec<String>;

/// A container's settings, from the manifest or the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    /// e.g. `/userId`.
    pub partition_key: String,
    /// Seconds; items without their own `ttl` expire this long after their last write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<i64>,
    #[serde(default)]
    pub unique_keys: Vec<Vec<String>>,
    #[serde(default)]
    pub indexes: Vec<String>,
    /// Declared in nimbus.toml (not changeable through the API).
    #[serde(default)]
    pub declared: bool,
}

impl Container {
    pub fn pk_path(&self) -> Path {
        parse_path(&self.partition_key)
    }

    /// Checks a definition that came through the API.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!("\"{}\": container names are 1-63 lowercase letters, digits, `-` and `_`", self.name));
        }
        for path in std::iter::once(&self.partition_key).chain(&self.indexes).chain(self.unique_keys.iter().flatten()) {
            if !valid_path(path) {
                return Err(format!("\"{path}\" is not a JSON path like \"/userId\""));
            }
        }
        if self.unique_keys.iter().any(Vec::is_empty) {
            return Err("each unique key is a non-empty list of JSON paths".into());
        }
        if self.default_ttl.is_some_and(|t| t == 0 || t < -1) {
            return Err("defaultTtl is a number of seconds above 0, or -1 for never".into());
        }
        Ok(())
    }
}

pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_path(path: &str) -> bool {
    path.len() > 1 && path.starts_with('/') && path[1..].split('/').all(|s| !s.is_empty())
}

pub fn parse_path(path: &str) -> Path {
    path.trim_start_matches('/').split('/').map(str::to_owned).collect()
}

/// The value at `path` in `item`, if there is one.
pub fn lookup<'v>(item: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(item, |v, name| v.as_object()?.get(name))
}

/// Canonical JSON text of a value, so equal values share a key: a number normalised (1.0 → 1),
/// objects with their properties sorted at every level (as they were before items kept their
/// order: the keys already stored stay the same).
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => (f as i64).to_string(),
            _ => n.to_string(),
        },
        Value::Object(_) | Value::Array(_) => {
            let mut sorted = value.clone();
            sorted.sort_all_objects();
            sorted.to_string()
        }
        other => other.to_string(),
    }
}

/// `%` and `/` percent-encoded (and control characters), so a part never spans a separator.
pub fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | '/' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`enc`].
pub fn dec(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn item_key(container: &str, pk: &Value, id: &str) -> String {
    format!("{container}/{}/{}", enc(&canonical(pk)), enc(id))
}

pub fn partition_prefix(container: &str, pk: &Value) -> String {
    format!("{container}/{}/", enc(&canonical(pk)))
}

/// The keys of one partition's items, or of the whole container's.
pub fn scope_prefix(container: &str, pk: Option<&Value>) -> String {
    match pk {
        Some(pk) => partition_prefix(container, pk),
        None => format!("{container}/"),
    }
}

pub fn index_prefix(container: &str, path: &str, value: &Value) -> String {
    format!("{container}/{}/{}/", enc(path), enc(&canonical(value)))
}

/// The index records an item has: one per declared path holding a scalar.
pub fn index_keys(c: &Container, pk: &Value, id: &str, item: &Value) -> Vec<String> {
    let tail = format!("{}/{}", enc(&canonical(pk)), enc(id));
    c.indexes
        .iter()
        .filter_map(|path| {
            let value = lookup(item, &parse_path(path))?;
            (!value.is_object() && !value.is_array()).then(|| format!("{}{tail}", index_prefix(&c.name, path, value)))
        })
        .collect()
}

/// The unique-key claims an item makes (a key set whose paths are all missing claims nothing).
pub fn unique_keys(c: &Container, pk: &Value, item: &Value) -> Vec<String> {
    c.unique_keys
        .iter()
        .filter_map(|set| {
            let values: Vec<Option<&Value>> = set.iter().map(|p| lookup(item, &parse_path(p))).collect();
            if values.iter().all(Option::is_none) {
                return None;
            }
            let values: Vec<String> = values.iter().map(|v| v.map_or("undefined".into(), canonical)).collect();
            Some(format!(
                "{}/{}/{}/{}",
                c.name,
                enc(&canonical(pk)),
                enc(&set.join(",")),
                enc(&serde_json::to_string(&values).unwrap_or_default())
            ))
        })
        .collect()
}

/// When the item expires (Unix seconds), from its own `ttl` or the container's default.
pub fn expiry(c: &Container, item: &Value) -> Option<i64> {
    let ts = item.get("_ts")?.as_i64()?;
    let ttl = match item.get("ttl").and_then(Value::as_i64) {
        Some(-1) => return None,
        Some(t) if t > 0 => t,
        _ => c.default_ttl.filter(|t| *t > 0)?,
    };
    Some(ts.saturating_add(ttl))
}

pub fn ttl_key(expires: i64, container: &str, pk: &Value, id: &str) -> String {
    format!("{:012}/{}", expires.max(0), item_key(container, pk, id))
}

/// The item as clients see it: the stored JSON plus `_etag` and `_lsn` (the record's version).
pub fn with_system(mut item: Value, version: u64) -> Value {
    if let Some(map) = item.as_object_mut() {
        map.insert("_etag".into(), Value::String(etag(version)));
        map.insert("_lsn".into(), Value::from(version));
    }
    item
}

pub fn etag(version: u64) -> String {
    format!("\"{version:x}\"")
}

/// The version an `If-Match` ETag names, if it is one of ours.
pub fn version_of(etag: &str) -> Option<u64> {
    u64::from_str_radix(etag.trim().trim_start_matches("W/").trim_matches('"'), 16).ok()
}

/// Deepest nesting of objects and arrays.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The item to store: system properties dropped, `_ts` set.
pub fn prepare(mut map: Map<String, Value>, now: i64) -> Value {
    for key in SYSTEM {
        // `shift_remove`: the other properties keep their order (`remove` would move the last).
        map.shift_remove(key);
    }
    map.insert("_ts".into(), Value::from(now));
    Value::Object(map)
}

/// The manifest's containers; their paths were checked by `nimbus-config` (`JsonPath`), so they
/// are taken as written.
pub fn from_manifest(section: &nimbus_config::DocsSection) -> BTreeMap<String, Container> {
    let written = |paths: &[nimbus_config::JsonPath]| paths.iter().map(|p| p.as_str().to_owned()).collect();
    section
        .containers
        .iter()
        .map(|(name, c)| {
            let container = Container {
                name: name.clone(),
                partition_key: c.partition_key.as_str().to_owned(),
                default_ttl: c.default_ttl.map(|d| d.get().as_secs().max(1) as i64),
                unique_keys: c.unique_keys.iter().map(|set| written(set)).collect(),
                indexes: written(&c.indexes),
                declared: true,
            };
            (name.clone(), container)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_cannot_be_forged_and_numbers_are_canonical() {
        assert_eq!(item_key("c", &json!("a/b"), "x%y"), "c/\"a%2Fb\"/x%25y");
        assert_eq!(item_key("c", &json!(1.0), "i"), item_key("c", &json!(1), "i"));
        assert_ne!(item_key("c", &json!("1"), "i"), item_key("c", &json!(1), "i"));
        let (a, b): (Value, Value) = (
            serde_json::from_str(r#"{"a": [{"x": 1, "y": 2}], "b": 1}"#).unwrap(),
            serde_json::from_str(r#"{"b": 1, "a": [{"y": 2, "x": 1}]}"#).unwrap(),
        );
        assert_eq!(canonical(&a), canonical(&b), "one key whatever the order of properties");
        assert_eq!(canonical(&a), r#"{"a":[{"x":1,"y":2}],"b":1}"#);
        assert_eq!(enc("a\u{0}b"), "a%00b");
        assert_eq!(dec(&enc("a/%b\u{0}é")), "a/%b\u{0}é");
    }

    #[test]
    fn index_unique_and_ttl_follow_the_container() {
        let c = Container {
            name: "c".into(),
            partition_key: "/u".into(),
            default_ttl: Some(60),
            unique_keys: vec![vec!["/email".into()]],
            indexes: vec!["/status".into(), "/nested/x".into(), "/obj".into()],
            declared: false,
        };
        let item = json!({"id": "1", "u": "a", "status": "open", "nested": {"x": 2}, "obj": {}, "_ts": 100});
        assert_eq!(
            index_keys(&c, &json!("a"), "1", &item),
            ["c/%2Fstatus/\"open\"/\"a\"/1", "c/%2Fnested%2Fx/2/\"a\"/1"]
        );
        assert!(unique_keys(&c, &json!("a"), &item).is_empty(), "no email, no claim");
        assert_eq!(expiry(&c, &item), Some(160));
        assert_eq!(expiry(&c, &json!({"_ts": 100, "ttl": 5})), Some(105));
        assert_eq!(expiry(&c, &json!({"_ts": 100, "ttl": -1})), None);
        assert_eq!(version_of(&etag(255)), Some(255));
        assert_eq!(depth(&json!({"a": [1, {"b": 2}]})), 3);
    }
}
