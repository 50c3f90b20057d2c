//! Partial updates, as Cosmos DB's patch: `set`, `add`, `replace`, `remove`, `incr` and `move`
//! on JSON Pointer paths (RFC 6901: `/a/b/0`, `~1` for `/`, `~0` for `~`).

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOp {
    pub op: String,
    pub path: String,
    #[serde(default)]
    pub value: Option<Value>,
    /// For `move`: where the value comes from.
    #[serde(default)]
    pub from: Option<String>,
}

/// Applies `ops` in order; the first that cannot apply fails them all (the item is a copy).
pub fn apply(item: &mut Value, ops: &[PatchOp]) -> Result<(), String> {
    if ops.is_empty() || ops.len() > 10 {
        return Err("a patch has 1 to 10 operations".into());
    }
    for (i, op) in ops.iter().enumerate() {
        apply_one(item, op).map_err(|e| format!("patch operation {i} ({} {}): {e}", op.op, op.path))?;
    }
    Ok(())
}

fn apply_one(item: &mut Value, op: &PatchOp) -> Result<(), String> {
    let value = || op.value.clone().ok_or_else(|| "needs a \"value\"".to_owned());
    match op.op.as_str() {
        "set" => {
            let v = value()?;
            let (parent, last) = parent(item, &op.path)?;
            put(parent, &last, v, false)
        }
        "add" => {
            let v = value()?;
            let (parent, last) = parent(item, &op.path)?;
            put(parent, &last, v, true)
        }
        "replace" => {
            let v = value()?;
            let target = pointer_mut(item, &op.path)?.ok_or("there is nothing at the path to replace")?;
            *target = v;
            Ok(())
        }
        "remove" => {
            take(item, &op.path)?;
            Ok(())
        }
        "incr" => {
            let by = value()?;
            let by = by.as_number().ok_or("incr needs a number")?.clone();
            let (parent, last) = parent(item, &op.path)?;
            let current = match parent {
                Value::Object(map) => map.get(&last).cloned(),
                Value::Array(items) => index(&last, items.len(), false).ok().and_then(|i| items.get(i).cloned()),
                _ => None,
            };
            let sum = match current {
                None => Value::Number(by),
                Some(Value::Number(n)) => add(&n, &by),
                Some(_) => return Err("the value at the path is not a number".into()),
            };
            put(parent, &last, sum, false)
        }
        "move" => {
            let from = op.from.as_deref().ok_or("needs a \"from\"")?;
            if op.path.starts_with(&format!("{from}/")) {
                return Err("cannot move a value into itself".into());
            }
            let v = take(item, from)?;
            let (parent, last) = parent(item, &op.path)?;
            put(parent, &last, v, false)
        }
        other => Err(format!("unknown operation \"{other}\" (set, add, replace, remove, incr, move)")),
    }
}

fn add(a: &serde_json::Number, b: &serde_json::Number) -> Value {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => Value::from(x + y),
        _ => serde_json::Number::from_f64(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
            .map_or(Value::Null, Value::Number),
    }
}

fn segments(path: &str) -> Result<Vec<String>, String> {
    let rest = path.strip_prefix('/').ok_or("a path starts with /")?;
    if rest.is_empty() {
        return Err("the path names the whole item".into());
    }
    Ok(rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect())
}

fn index(segment: &str, len: usize, append: bool) -> Result<usize, String> {
    if append && segment == "-" {
        return Ok(len);
    }
    let i: usize = segment.parse().map_err(|_| format!("\"{segment}\" is not an array index"))?;
    let limit = if append { len } else { len.saturating_sub(1) };
    if i > limit || (!append && len == 0) {
        return Err(format!("index {i} is outside the array"));
    }
    Ok(i)
}

/// The container holding the path's last segment, which must exist.
fn parent<'v>(item: &'v mut Value, path: &str) -> Result<(&'v mut Value, String), String> {
    let mut segs = segments(path)?;
    let last = segs.pop().unwrap_or_default();
    let mut at = item;
    for s in &segs {
        at = match at {
            Value::Object(map) => map.get_mut(s).ok_or_else(|| format!("\"{s}\" does not exist"))?,
            Value::Array(items) => {
                let i = index(s, items.len(), false)?;
                &mut items[i]
            }
            _ => return Err(format!("\"{s}\" is inside a value that is not an object or array")),
        };
    }
    if !at.is_object() && !at.is_array() {
        return Err("the parent of the path is not an object or array".into());
    }
    Ok((at, last))
}

fn put(parent: &mut Value, last: &str, value: Value, insert: bool) -> Result<(), String> {
    match parent {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
            Ok(())
        }
        Value::Array(items) => {
            let i = index(last, items.len(), insert)?;
            if insert {
                items.insert(i, value);
            } else {
                items[i] = value;
            }
            Ok(())
        }
        _ => Err("the parent is not an object or array".into()),
    }
}

fn pointer_mut<'v>(item: &'v mut Value, path: &str) -> Result<Option<&'v mut Value>, String> {
    let (parent, last) = parent(item, path)?;
    Ok(match parent {
        Value::Object(map) => map.get_mut(&last),
        Value::Array(items) => index(&last, items.len(), false).ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

fn take(item: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent(item, path)?;
    match parent {
        Value::Object(map) => map.shift_remove(&last).ok_or_else(|| "there is nothing at the path".to_owned()),
        Value::Array(items) => {
            let i = index(&last, items.len(), false)?;
            Ok(items.remove(i))
        }
        _ => Err("the parent is not an object or array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Vec<PatchOp> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn applies_cosmos_operations() {
        let mut item = json!({"id": "1", "n": 1, "tags": ["a"], "o": {"x": 1}, "a~b": 0});
        apply(
            &mut item,
            &ops(json!([
                {"op": "set", "path": "/new", "value": true},
                {"op": "incr", "path": "/n", "value": 2},
                {"op": "incr", "path": "/m", "value": 1.5},
                {"op": "add", "path": "/tags/-", "value": "b"},
                {"op": "add", "path": "/tags/0", "value": "z"},
                {"op": "replace", "path": "/o/x", "value": 2},
                {"op": "remove", "path": "/a~0b"},
                {"op": "move", "from": "/new", "path": "/o/moved"},
            ])),
        )
        .unwrap();
        assert_eq!(item, json!({"id": "1", "n": 3, "m": 1.5, "tags": ["z", "a", "b"], "o": {"x": 2, "moved": true}}));
    }

    #[test]
    fn refuses_what_cannot_apply() {
        let item = json!({"id": "1", "s": "text", "arr": [1]});
        for bad in [
            json!([{"op": "replace", "path": "/missing", "value": 1}]),
            json!([{"op": "remove", "path": "/missing"}]),
            json!([{"op": "incr", "path": "/s", "value": 1}]),
            json!([{"op": "set", "path": "/no/parent", "value": 1}]),
            json!([{"op": "set", "path": "/arr/5", "value": 1}]),
            json!([{"op": "set", "path": "", "value": 1}]),
            json!([{"op": "explode", "path": "/s"}]),
            json!([{"op": "set", "path": "/s"}]),
            json!([]),
        ] {
            let mut copy = item.clone();
            assert!(apply(&mut copy, &ops(bad.clone())).is_err(), "{bad}");
        }
    }
}
