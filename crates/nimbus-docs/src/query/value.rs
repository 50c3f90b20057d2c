//! Values during evaluation: JSON plus `undefined`, borrowed from the items where possible.
//!
//! Numbers follow JavaScript's model (Cosmos DB's): one number type. We keep integers exact as
//! `i64` while both operands are integers and the result fits, and otherwise compute in `f64`; a
//! float result that is integral (and within ±2^53) is written as an integer, so `1 + 2` is `3`,
//! `6 / 3` is `2`, `7 / 2` is `3.5` and `3.0` prints as `3`, as JavaScript would. Results that are
//! not finite (`1 / 0`, `SQRT(-1)`) are `undefined`: JSON cannot hold them.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V<'a> {
    Undef,
    Ref(&'a Value),
    Own(Value),
}

impl<'a> V<'a> {
    pub(crate) fn get(&self) -> Option<&Value> {
        match self {
            V::Undef => None,
            V::Ref(v) => Some(v),
            V::Own(v) => Some(v),
        }
    }

    pub(crate) fn is_undef(&self) -> bool {
        matches!(self, V::Undef)
    }

    pub(crate) fn bool(b: bool) -> V<'a> {
        V::Own(Value::Bool(b))
    }

    /// `Some(b)` only for a boolean.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        self.get().and_then(Value::as_bool)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        self.get().and_then(Value::as_str)
    }

    pub(crate) fn num(&self) -> Option<Num> {
        match self.get() {
            Some(Value::Number(n)) => Some(Num::of(n)),
            _ => None,
        }
    }

    /// A property of an object; `undefined` for anything else.
    pub(crate) fn prop(self, key: &str) -> V<'a> {
        match self {
            V::Ref(Value::Object(m)) => m.get(key).map_or(V::Undef, V::Ref),
            V::Own(Value::Object(mut m)) => m.remove(key).map_or(V::Undef, V::Own),
            _ => V::Undef,
        }
    }

    /// An element of an array; `undefined` out of range or for anything else.
    pub(crate) fn index(self, i: usize) -> V<'a> {
        match self {
            V::Ref(Value::Array(a)) => a.get(i).map_or(V::Undef, V::Ref),
            V::Own(Value::Array(mut a)) if i < a.len() => V::Own(a.swap_remove(i)),
            _ => V::Undef,
        }
    }
}

/// A number as the evaluator computes with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    I(i64),
    F(f64),
}

impl Num {
    pub(crate) fn of(n: &Number) -> Num {
        match n.as_i64() {
            Some(i) => Num::I(i),
            None => Num::F(n.as_f64().unwrap_or(f64::NAN)),
        }
    }

    pub(crate) fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    /// The JSON number, or `None` (undefined) when not finite.
    pub(crate) fn to_value(self) -> Option<Value> {
        match self {
            Num::I(i) => Some(Value::from(i)),
            Num::F(f) if f.is_finite() => Some(float_value(f)),
            Num::F(_) => None,
        }
    }

    pub(crate) fn v<'a>(self) -> V<'a> {
        self.to_value().map_or(V::Undef, V::Own)
    }

    /// As an exact integer (for indexes and counts).
    pub(crate) fn as_int(self) -> Option<i64> {
        match self {
            Num::I(i) => Some(i),
            Num::F(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE => Some(f as i64),
            Num::F(_) => None,
        }
    }

    /// Whether a 64-bit signed integer, as IS_INTEGER asks: integral and within the range of `i64`.
    pub(crate) fn is_i64(self) -> bool {
        match self {
            Num::I(_) => true,
            Num::F(f) => f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f),
        }
    }

    /// JavaScript's ToInt32, for bitwise operators: truncated, then wrapped into 32 bits.
    pub(crate) fn to_int32(self) -> i32 {
        match self {
            Num::I(i) => i as i32,
            Num::F(f) if f.is_finite() => f.trunc().rem_euclid(4_294_967_296.0) as u32 as i32,
            Num::F(_) => 0,
        }
    }

    pub(crate) fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            (Num::I(a), Num::F(b)) => cmp_int_float(a, b),
            (Num::F(a), Num::I(b)) => cmp_int_float(b, a).map(Ordering::reverse),
            (Num::F(a), Num::F(b)) => a.partial_cmp(&b),
        }
    }
}

const MAX_SAFE: f64 = 9_007_199_254_740_992.0;
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

fn cmp_int_float(a: i64, b: f64) -> Option<Ordering> {
    if b.is_nan() {
        return None;
    }
    if b >= 9.3e18 {
        return Some(Ordering::Less);
    }
    if b <= -9.3e18 {
        return Some(Ordering::Greater);
    }
    let bi = b.floor() as i64;
    Some(match a.cmp(&bi) {
        Ordering::Equal if b > b.floor() => Ordering::Less,
        o => o,
    })
}

/// A float as JSON, written as an integer when it is one (JavaScript prints `3`, not `3.0`).
pub(crate) fn float_value(f: f64) -> Value {
    float_number(f).map_or(Value::Null, Value::Number)
}

/// [`float_value`]'s number; `None` when not finite.
pub(crate) fn float_number(f: f64) -> Option<Number> {
    if f.fract() == 0.0 && f.abs() < MAX_SAFE { Some(Number::from(f as i64)) } else { Number::from_f64(f) }
}

/// Cosmos DB's order of types, for ORDER BY, MIN/MAX and DISTINCT: undefined, null, booleans,
/// numbers, strings, arrays, objects.
fn type_rank(v: Option<&Value>) -> u8 {
    match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// The total order used to sort: by type (see [`type_rank`]), then within the type (false < true,
/// numbers numerically, strings by code point, arrays element by element, objects by their sorted
/// properties).
pub(crate) fn total_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => Num::of(x).cmp(Num::of(y)).unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for (p, q) in x.iter().zip(y) {
                let o = total_cmp(Some(p), Some(q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Some(Value::Object(x)), Some(Value::Object(y))) => cmp_objects(x, y),
        _ => Ordering::Equal,
    }
}

fn cmp_objects(x: &Map<String, Value>, y: &Map<String, Value>) -> Ordering {
    let mut xs: Vec<_> = x.iter().collect();
    let mut ys: Vec<_> = y.iter().collect();
    xs.sort_by(|a, b| a.0.cmp(b.0));
    ys.sort_by(|a, b| a.0.cmp(b.0));
    for ((kx, vx), (ky, vy)) in xs.iter().zip(&ys) {
        let o = kx.cmp(ky).then_with(|| total_cmp(Some(vx), Some(vy)));
        if o != Ordering::Equal {
            return o;
        }
    }
    xs.len().cmp(&ys.len())
}

/// Equality as `=` defines it: same type and same value (numbers numerically, arrays and objects
/// deeply); `None` (undefined) across types or with undefined.
pub(crate) fn equals(a: Option<&Value>, b: Option<&Value>) -> Option<bool> {
    let (a, b) = (a?, b?);
    if type_rank(Some(a)) != type_rank(Some(b)) {
        return None;
    }
    Some(deep_eq(a, b))
}

/// Deep equality with numbers compared numerically (`1 = 1.0`).
pub(crate) fn deep_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Num::of(x).cmp(Num::of(y)) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| deep_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| deep_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `<`, `<=`, `>`, `>=`: numbers, strings and booleans of the same type; undefined otherwise
/// (across types, with null, arrays and objects).
pub(crate) fn compare(a: Option<&Value>, b: Option<&Value>) -> Option<Ordering> {
    match (a?, b?) {
        (Value::Number(x), Value::Number(y)) => Num::of(x).cmp(Num::of(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

/// A key that is equal for values [`deep_eq`] calls equal (and for two undefined), for hashing
/// groups and DISTINCT: the JSON text with numbers normalised and object properties sorted.
pub(crate) fn canonical_key(v: Option<&Value>, out: &mut String) {
    use std::fmt::Write;
    match v {
        None => out.push('~'),
        Some(Value::Null) => out.push('n'),
        Some(Value::Bool(b)) => out.push(if *b { 't' } else { 'f' }),
        Some(Value::Number(n)) => {
            let _ = match Num::of(n) {
                Num::I(i) => write!(out, "#{i};"),
                Num::F(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => write!(out, "#{};", f as i64),
                Num::F(f) => write!(out, "#{f:e};"),
            };
        }
        Some(Value::String(s)) => {
            let _ = write!(out, "{}", Value::String(s.clone()));
        }
        Some(Value::Array(a)) => {
            out.push('[');
            for x in a {
                canonical_key(Some(x), out);
                out.push(',');
            }
            out.push(']');
        }
        Some(Value::Object(m)) => {
            let mut keys: Vec<_> = m.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (k, x) in keys {
                let _ = write!(out, "{}:", Value::String(k.clone()));
                canonical_key(Some(x), out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_javascript() {
        assert_eq!(float_value(3.0), json!(3));
        assert_eq!(float_value(3.5), json!(3.5));
        assert_eq!(Num::F(f64::INFINITY).to_value(), None);
    }

    #[test]
    fn mixed_number_comparison() {
        assert_eq!(Num::I(1).cmp(Num::F(1.0)), Some(Ordering::Equal));
        assert_eq!(Num::I(1).cmp(Num::F(1.5)), Some(Ordering::Less));
        assert_eq!(Num::F(-0.5).cmp(Num::I(-1)), Some(Ordering::Greater));
        assert_eq!(Num::I(i64::MAX).cmp(Num::F(1e19)), Some(Ordering::Less));
    }

    #[test]
    fn type_order() {
        let vals = [None, Some(json!(null)), Some(json!(false)), Some(json!(true)), Some(json!(-1)), Some(json!(2.5))];
        let more = [Some(json!("")), Some(json!("a")), Some(json!([])), Some(json!([1])), Some(json!({}))];
        let all: Vec<_> = vals.iter().chain(more.iter()).collect();
        for w in all.windows(2) {
            assert_eq!(total_cmp(w[0].as_ref(), w[1].as_ref()), Ordering::Less, "{:?} < {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn equality_across_types_is_undefined() {
        assert_eq!(equals(Some(&json!(1)), Some(&json!("1"))), None);
        assert_eq!(equals(Some(&json!(1)), Some(&json!(1.0))), Some(true));
        assert_eq!(equals(Some(&json!({"a": [1, 2]})), Some(&json!({"a": [1, 2.0]}))), Some(true));
        assert_eq!(equals(None, None), None);
        assert_eq!(compare(Some(&json!([1])), Some(&json!([1]))), None);
    }

    #[test]
    fn canonical_keys_match_equality() {
        let key = |v: Value| {
            let mut s = String::new();
            canonical_key(Some(&v), &mut s);
            s
        };
        assert_eq!(key(json!({"a": 1, "b": 2.0})), key(json!({"b": 2, "a": 1.0})));
        assert_ne!(key(json!("1")), key(json!(1)));
    }
}
