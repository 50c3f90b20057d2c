//! The worker index (PROTOCOL.md §2) read into typed functions: each entry's trigger is one
//! [`Trigger`]; an entry the host cannot serve (an unknown trigger type or field, a bad name) is
//! an error that names the function, never skipped.

use nimbus_api::{Declared, Trigger};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Index {
    protocol: Value,
    functions: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: Value,
    trigger: Option<Value>,
}

/// The functions a worker's index declares, or why the index is unusable.
pub(crate) fn parse(answer: Value) -> Result<Vec<Declared>, String> {
    let index: Index = serde_json::from_value(answer).map_err(|e| format!("not an index: {e}"))?;
    if index.protocol != 1 {
        return Err(format!("unsupported protocol {} (this host speaks 1)", index.protocol));
    }
    index.functions.into_iter().map(entry).collect()
}

fn entry(entry: Entry) -> Result<Declared, String> {
    let name = match entry.name {
        Value::String(name) if is_function_name(&name) => name,
        other => {
            return Err(format!(
                "function name {other} is not 1-128 letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_` (it names the function in URLs and headers)"
            ));
        }
    };
    let trigger = entry.trigger.ok_or_else(|| format!("function `{name}` has no trigger"))?;
    let trigger: Trigger = serde_json::from_value(trigger).map_err(|e| format!("function `{name}`: {e}"))?;
    trigger.check().map_err(|e| format!("function `{name}`: {e}"))?;
    Ok(Declared { name, trigger })
}

/// PROTOCOL.md §2: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, safe as a URL segment and a header value.
fn is_function_name(name: &str) -> bool {
    let first = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_trigger_type_and_names_the_function_it_cannot_serve() {
        let declared = parse(json!({"protocol": 1, "sdk": "python/0.1.0", "functions": [
            {"name": "hello", "trigger": {"type": "http", "route": "/hello", "methods": ["GET"]}},
            {"name": "tick", "trigger": {"type": "timer", "schedule": "0 */5 * * * *"}},
            {"name": "plan", "trigger": {"type": "activity"}},
        ]}))
        .unwrap();
        assert_eq!(declared.iter().map(|d| d.trigger.kind()).collect::<Vec<_>>(), ["http", "timer", "activity"]);

        let bad = |functions: Value| parse(json!({"protocol": 1, "functions": functions})).unwrap_err();
        let e = bad(json!([{"name": "x", "trigger": {"type": "cosmos"}}]));
        assert!(e.contains("function `x`") && e.contains("cosmos") && e.contains("docs_changes"), "{e}");
        let e = bad(json!([{"name": "q", "trigger": {"type": "queue", "queue": "jobs", "batch": 3}}]));
        assert!(e.contains("function `q`") && e.contains("batch"), "{e}");
        assert!(bad(json!([{"name": "y"}])).contains("function `y` has no trigger"));
        assert!(bad(json!([{"name": "a b", "trigger": {"type": "activity"}}])).contains("\"a b\""));
        assert!(bad(json!([{"name": ".x", "trigger": {"type": "activity"}}])).contains("\".x\""));
        assert!(bad(json!([{"name": "x".repeat(129), "trigger": {"type": "activity"}}])).contains("1-128"));
        assert!(
            parse(json!({"protocol": 1, "functions": [{"name": "jobs.v2", "trigger": {"type": "activity"}}]})).is_ok()
        );
        assert!(parse(json!({"protocol": 2, "functions": []})).unwrap_err().contains("unsupported protocol 2"));
        assert!(parse(json!({"protocol": 1})).unwrap_err().contains("functions"));
    }
}
