//! System functions (names case-insensitive). As in Cosmos DB, a function given arguments of the
//! wrong type returns `undefined` rather than failing the query. String positions and lengths count
//! Unicode code points.
//!
//! What a function builds is charged to the run's budget before it is built (or, for results no
//! larger than a small multiple of the arguments, just after). A string result longer than
//! [`MAX_STRING_BYTES`] is undefined, as REPLICATE's beyond [`MAX_REPLICATE_CHARS`] is in Cosmos DB.

use serde_json::{Map, Value};

use super::budget::{Budget, MAX_STRING_BYTES, NODE, size};
use super::value::{Num, V, deep_eq};

/// REPLICATE's longest result, in characters (Cosmos DB's limit).
pub(crate) const MAX_REPLICATE_CHARS: u64 = 10_000;

macro_rules! funcs {
    ($($variant:ident = $name:literal, $min:literal ..= $max:literal;)*) => {
        /// A system function.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func { $($variant),* }

        impl Func {
            /// The function of that name, with its minimum and maximum argument count.
            pub(crate) fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                $(if name.eq_ignore_ascii_case($name) { return Some((Func::$variant, $min, $max)); })*
                None
            }

            pub(crate) fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }
        }
    };
}

funcs! {
    IsDefined = "IS_DEFINED", 1..=1;
    IsNull = "IS_NULL", 1..=1;
    IsString = "IS_STRING", 1..=1;
    IsNumber = "IS_NUMBER", 1..=1;
    IsBool = "IS_BOOL", 1..=1;
    IsArray = "IS_ARRAY", 1..=1;
    IsObject = "IS_OBJECT", 1..=1;
    IsPrimitive = "IS_PRIMITIVE", 1..=1;
    IsFiniteNumber = "IS_FINITE_NUMBER", 1..=1;
    IsInteger = "IS_INTEGER", 1..=1;
    StartsWith = "STARTSWITH", 2..=3;
    EndsWith = "ENDSWITH", 2..=3;
    Contains = "CONTAINS", 2..=3;
    StringEquals = "STRINGEQUALS", 2..=3;
    Lower = "LOWER", 1..=1;
    Upper = "UPPER", 1..=1;
    Length = "LENGTH", 1..=1;
    Substring = "SUBSTRING", 3..=3;
    Concat = "CONCAT", 2..=64;
    IndexOf = "INDEX_OF", 2..=3;
    Replace = "REPLACE", 3..=3;
    Replicate = "REPLICATE", 2..=2;
    Trim = "TRIM", 1..=1;
    LTrim = "LTRIM", 1..=1;
    RTrim = "RTRIM", 1..=1;
    Left = "LEFT", 2..=2;
    Right = "RIGHT", 2..=2;
    Reverse = "REVERSE", 1..=1;
    ToString = "TOSTRING", 1..=1;
    StringToNumber = "STRINGTONUMBER", 1..=1;
    StringToBoolean = "STRINGTOBOOLEAN", 1..=1;
    StringToNull = "STRINGTONULL", 1..=1;
    StringToArray = "STRINGTOARRAY", 1..=1;
    StringToObject = "STRINGTOOBJECT", 1..=1;
    ArrayContains = "ARRAY_CONTAINS", 2..=3;
    ArrayContainsAny = "ARRAY_CONTAINS_ANY", 2..=64;
    ArrayContainsAll = "ARRAY_CONTAINS_ALL", 2..=64;
    ArrayLength = "ARRAY_LENGTH", 1..=1;
    ArraySlice = "ARRAY_SLICE", 2..=3;
    ArrayConcat = "ARRAY_CONCAT", 2..=64;
    SetIntersect = "SETINTERSECT", 2..=2;
    SetUnion = "SETUNION", 2..=2;
    Abs = "ABS", 1..=1;
    Ceiling = "CEILING", 1..=1;
    Floor = "FLOOR", 1..=1;
    Round = "ROUND", 1..=1;
    Trunc = "TRUNC", 1..=1;
    Sign = "SIGN", 1..=1;
    Sqrt = "SQRT", 1..=1;
    Square = "SQUARE", 1..=1;
    Power = "POWER", 2..=2;
    Exp = "EXP", 1..=1;
    Log = "LOG", 1..=2;
    Log10 = "LOG10", 1..=1;
    Pi = "PI", 0..=0;
    Sin = "SIN", 1..=1;
    Cos = "COS", 1..=1;
    Tan = "TAN", 1..=1;
    Cot = "COT", 1..=1;
    Asin = "ASIN", 1..=1;
    Acos = "ACOS", 1..=1;
    Atan = "ATAN", 1..=1;
    Atn2 = "ATN2", 2..=2;
    Degrees = "DEGREES", 1..=1;
    Radians = "RADIANS", 1..=1;
    Iif = "IIF", 3..=3;
    VectorDistance = "VECTORDISTANCE", 2..=4;
}

/// Evaluates a function on its evaluated arguments.
pub(crate) fn call<'a>(f: Func, args: Vec<V<'a>>, budget: &Budget) -> V<'a> {
    use Func::*;
    if !budget.ok() {
        return V::Undef;
    }
    let a0 = args.first().and_then(V::get);
    // A string built whole, charged now (its size is within a small multiple of the arguments').
    let built = |s: String| -> V<'a> {
        if s.len() <= MAX_STRING_BYTES && budget.charge(NODE + s.len()) { V::Own(Value::String(s)) } else { V::Undef }
    };
    // Whether a string of `len` bytes may be built: charged before it is.
    let room = |len: usize| len <= MAX_STRING_BYTES && budget.charge(NODE + len);
    match f {
        IsDefined => V::bool(a0.is_some()),
        IsNull => V::bool(matches!(a0, Some(Value::Null))),
        IsString => V::bool(matches!(a0, Some(Value::String(_)))),
        IsNumber => V::bool(matches!(a0, Some(Value::Number(_)))),
        IsBool => V::bool(matches!(a0, Some(Value::Bool(_)))),
        IsArray => V::bool(matches!(a0, Some(Value::Array(_)))),
        IsObject => V::bool(matches!(a0, Some(Value::Object(_)))),
        IsPrimitive => V::bool(matches!(a0, Some(Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)))),
        IsFiniteNumber => V::bool(matches!(a0, Some(Value::Number(_)))),
        IsInteger => V::bool(args[0].num().is_some_and(Num::is_i64)),
        StartsWith | EndsWith | Contains | StringEquals => string_test(f, &args, budget),
        Lower => str_map(&args, built, |s| s.to_lowercase()),
        Upper => str_map(&args, built, |s| s.to_uppercase()),
        Length => match args[0].as_str() {
            Some(s) => Num::I(s.chars().count() as i64).v(),
            None => V::Undef,
        },
        Substring => match (args[0].as_str(), int_arg(&args[1]), int_arg(&args[2])) {
            (Some(s), Some(start), Some(len)) => {
                let start = start.max(0) as usize;
                let len = len.max(0) as usize;
                built(s.chars().skip(start).take(len).collect())
            }
            _ => V::Undef,
        },
        Concat => {
            let mut len = 0usize;
            for a in &args {
                match a.as_str() {
                    Some(s) => len = len.saturating_add(s.len()),
                    None => return V::Undef,
                }
            }
            if !room(len) {
                return V::Undef;
            }
            let mut out = String::with_capacity(len);
            args.iter().filter_map(V::as_str).for_each(|s| out.push_str(s));
            string(out)
        }
        IndexOf => index_of(&args),
        Replace => match (args[0].as_str(), args[1].as_str(), args[2].as_str()) {
            (Some(s), Some(from), Some(to)) if !from.is_empty() => {
                // The result's length, known before it is built: nested REPLACEs multiply.
                let hits = s.matches(from).count() as u128;
                let len = s.len() as u128 - hits * from.len() as u128 + hits * to.len() as u128;
                if usize::try_from(len).is_ok_and(room) { string(s.replace(from, to)) } else { V::Undef }
            }
            (Some(s), Some(_), Some(_)) => built(s.to_string()),
            _ => V::Undef,
        },
        Replicate => match (args[0].as_str(), int_arg(&args[1])) {
            // Cosmos DB: at most 10,000 characters (the byte length is at most four times that).
            (Some(s), Some(n))
                if n >= 0
                    && (s.chars().count() as u128) * (n as u128) <= MAX_REPLICATE_CHARS as u128
                    && room(s.len() * n as usize) =>
            {
                string(s.repeat(n as usize))
            }
            _ => V::Undef,
        },
        Trim => str_map(&args, built, |s| s.trim().to_string()),
        LTrim => str_map(&args, built, |s| s.trim_start().to_string()),
        RTrim => str_map(&args, built, |s| s.trim_end().to_string()),
        Left => match (args[0].as_str(), int_arg(&args[1])) {
            (Some(s), Some(n)) if n >= 0 => built(s.chars().take(n as usize).collect()),
            _ => V::Undef,
        },
        Right => match (args[0].as_str(), int_arg(&args[1])) {
            (Some(s), Some(n)) if n >= 0 => {
                let count = s.chars().count();
                built(s.chars().skip(count.saturating_sub(n as usize)).collect())
            }
            _ => V::Undef,
        },
        Reverse => str_map(&args, built, |s| s.chars().rev().collect()),
        ToString => match a0 {
            None => V::Undef,
            Some(Value::String(s)) => built(s.clone()),
            Some(other) => built(other.to_string()),
        },
        StringToNumber => match parse_json_string(&args, budget, |v| matches!(v, Value::Number(_))) {
            V::Own(Value::Number(n)) => Num::of(&n).v(),
            _ => V::Undef,
        },
        StringToBoolean => parse_json_string(&args, budget, |v| matches!(v, Value::Bool(_))),
        StringToNull => parse_json_string(&args, budget, |v| matches!(v, Value::Null)),
        StringToArray => parse_json_string(&args, budget, |v| matches!(v, Value::Array(_))),
        StringToObject => parse_json_string(&args, budget, |v| matches!(v, Value::Object(_))),
        ArrayContains => match (a0, args[1].get()) {
            (Some(Value::Array(arr)), Some(needle)) => {
                let partial = args.get(2).and_then(V::as_bool).unwrap_or(false);
                V::bool(arr.iter().any(|x| if partial { partial_match(x, needle) } else { deep_eq(x, needle) }))
            }
            (Some(Value::Array(_)), None) => V::bool(false),
            _ => V::Undef,
        },
        ArrayContainsAny | ArrayContainsAll => match a0 {
            Some(Value::Array(arr)) => {
                let mut hits = args[1..].iter().map(|n| n.get().is_some_and(|n| arr.iter().any(|x| deep_eq(x, n))));
                V::bool(if f == ArrayContainsAny { hits.any(|h| h) } else { hits.all(|h| h) })
            }
            _ => V::Undef,
        },
        ArrayLength => match a0 {
            Some(Value::Array(a)) => Num::I(a.len() as i64).v(),
            _ => V::Undef,
        },
        ArraySlice => array_slice(&args, budget),
        ArrayConcat => {
            let mut bytes = NODE;
            for a in &args {
                match a.get() {
                    Some(Value::Array(items)) => bytes = bytes.saturating_add(items.iter().map(size).sum()),
                    _ => return V::Undef,
                }
            }
            if !budget.charge(bytes) {
                return V::Undef;
            }
            let mut out = Vec::new();
            args.iter().filter_map(V::get).filter_map(Value::as_array).for_each(|a| out.extend(a.iter().cloned()));
            V::Own(Value::Array(out))
        }
        SetIntersect | SetUnion => match (a0, args[1].get()) {
            // Quadratic in the arrays' lengths: the budget's clock is looked at for each element.
            (Some(Value::Array(x)), Some(Value::Array(y))) => {
                let mut out: Vec<Value> = Vec::new();
                for v in x.iter().chain(if f == SetUnion { &y[..] } else { &y[..0] }) {
                    if !budget.tick() {
                        return V::Undef;
                    }
                    let wanted = f == SetUnion || y.iter().any(|w| deep_eq(v, w));
                    if wanted && !out.iter().any(|o| deep_eq(o, v)) {
                        if !budget.charge(size(v)) {
                            return V::Undef;
                        }
                        out.push(v.clone());
                    }
                }
                V::Own(Value::Array(out))
            }
            _ => V::Undef,
        },
        Abs => match args[0].num() {
            Some(Num::I(i)) => i.checked_abs().map_or(Num::F((i as f64).abs()), Num::I).v(),
            Some(n) => Num::F(n.f().abs()).v(),
            None => V::Undef,
        },
        Ceiling => math1(&args, f64::ceil),
        Floor => math1(&args, f64::floor),
        Round => math1(&args, f64::round),
        Trunc => math1(&args, f64::trunc),
        Sign => math1(&args, |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Sqrt => math1(&args, f64::sqrt),
        Square => match args[0].num() {
            Some(Num::I(i)) => i.checked_mul(i).map_or(Num::F((i as f64) * (i as f64)), Num::I).v(),
            Some(n) => Num::F(n.f() * n.f()).v(),
            None => V::Undef,
        },
        Power => match (args[0].num(), args[1].num()) {
            (Some(Num::I(b)), Some(Num::I(e))) if (0..=u32::MAX as i64).contains(&e) => {
                b.checked_pow(e as u32).map_or(Num::F((b as f64).powf(e as f64)), Num::I).v()
            }
            (Some(b), Some(e)) => Num::F(b.f().powf(e.f())).v(),
            _ => V::Undef,
        },
        Exp => math1(&args, f64::exp),
        Log => match (args[0].num(), args.get(1)) {
            (Some(n), None) => Num::F(n.f().ln()).v(),
            (Some(n), Some(base)) => match base.num() {
                Some(b) => Num::F(n.f().ln() / b.f().ln()).v(),
                None => V::Undef,
            },
            _ => V::Undef,
        },
        Log10 => math1(&args, f64::log10),
        Pi => Num::F(std::f64::consts::PI).v(),
        Sin => math1(&args, f64::sin),
        Cos => math1(&args, f64::cos),
        Tan => math1(&args, f64::tan),
        Cot => math1(&args, |x| 1.0 / x.tan()),
        Asin => math1(&args, f64::asin),
        Acos => math1(&args, f64::acos),
        Atan => math1(&args, f64::atan),
        Atn2 => match (args[0].num(), args[1].num()) {
            // Cosmos DB's ATN2(x, y) is the angle of the point (x, y): atan(y / x).
            (Some(x), Some(y)) => Num::F(y.f().atan2(x.f())).v(),
            _ => V::Undef,
        },
        Degrees => math1(&args, f64::to_degrees),
        Radians => math1(&args, f64::to_radians),
        Iif => {
            let mut args = args;
            let pick = if args[0].as_bool() == Some(true) { 1 } else { 2 };
            std::mem::replace(&mut args[pick], V::Undef)
        }
        VectorDistance => vector_distance(&args),
    }
}

fn string<'a>(s: String) -> V<'a> {
    V::Own(Value::String(s))
}

fn str_map<'a>(args: &[V<'a>], built: impl Fn(String) -> V<'a>, f: impl Fn(&str) -> String) -> V<'a> {
    match args[0].as_str() {
        Some(s) => built(f(s)),
        None => V::Undef,
    }
}

fn math1<'a>(args: &[V<'a>], f: impl Fn(f64) -> f64) -> V<'a> {
    match args[0].num() {
        Some(n) => Num::F(f(n.f())).v(),
        None => V::Undef,
    }
}

fn int_arg(v: &V<'_>) -> Option<i64> {
    v.num().and_then(Num::as_int)
}

fn string_test<'a>(f: Func, args: &[V<'a>], budget: &Budget) -> V<'a> {
    let (Some(s), Some(p)) = (args[0].as_str(), args[1].as_str()) else { return V::Undef };
    let ignore_case = match args.get(2) {
        None => false,
        Some(v) => match v.as_bool() {
            Some(b) => b,
            None => return V::Undef,
        },
    };
    // Both strings are copied (lower-cased: up to three times as long).
    if !budget.charge(3 * (s.len() + p.len())) {
        return V::Undef;
    }
    let (s, p) = if ignore_case { (s.to_lowercase(), p.to_lowercase()) } else { (s.to_string(), p.to_string()) };
    V::bool(match f {
        Func::StartsWith => s.starts_with(&p),
        Func::EndsWith => s.ends_with(&p),
        Func::Contains => s.contains(&p),
        _ => s == p,
    })
}

fn index_of<'a>(args: &[V<'a>]) -> V<'a> {
    let (Some(s), Some(p)) = (args[0].as_str(), args[1].as_str()) else { return V::Undef };
    let start = match args.get(2) {
        None => 0,
        Some(v) => match int_arg(v) {
            Some(n) if n >= 0 => n as usize,
            Some(_) => 0,
            None => return V::Undef,
        },
    };
    let Some((byte_start, _)) = s.char_indices().nth(start).or((start == s.chars().count()).then_some((s.len(), ' ')))
    else {
        return Num::I(-1).v();
    };
    match s[byte_start..].find(p) {
        Some(b) => Num::I((start + s[byte_start..byte_start + b].chars().count()) as i64).v(),
        None => Num::I(-1).v(),
    }
}

fn parse_json_string<'a>(args: &[V<'a>], budget: &Budget, accept: impl Fn(&Value) -> bool) -> V<'a> {
    let Some(s) = args[0].as_str() else { return V::Undef };
    // A guess first (values take several times their text), the value's size once known.
    if !budget.charge(8 * s.len()) {
        return V::Undef;
    }
    match serde_json::from_str::<Value>(s.trim()) {
        Ok(v) if accept(&v) && budget.charge(size(&v)) => V::Own(v),
        _ => V::Undef,
    }
}

/// ARRAY_CONTAINS with `partial`: an object matches when it has every property of the needle with
/// an equal value.
fn partial_match(x: &Value, needle: &Value) -> bool {
    match (x, needle) {
        (Value::Object(xo), Value::Object(no)) => no.iter().all(|(k, nv)| xo.get(k).is_some_and(|xv| deep_eq(xv, nv))),
        _ => deep_eq(x, needle),
    }
}

fn array_slice<'a>(args: &[V<'a>], budget: &Budget) -> V<'a> {
    let Some(Value::Array(arr)) = args[0].get() else { return V::Undef };
    let Some(start) = int_arg(&args[1]) else { return V::Undef };
    let n = arr.len() as i64;
    let start = if start < 0 { (n + start).max(0) } else { start.min(n) };
    let end = match args.get(2) {
        None => n,
        Some(v) => match int_arg(v) {
            Some(len) if len < 0 => (n + len).max(start),
            Some(len) => start.saturating_add(len).min(n),
            None => return V::Undef,
        },
    };
    let slice = &arr[start as usize..end.max(start) as usize];
    if !budget.charge(NODE + slice.iter().map(size).sum::<usize>()) {
        return V::Undef;
    }
    V::Own(Value::Array(slice.to_vec()))
}

/// How VectorDistance compares two vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    Cosine,
    DotProduct,
    Euclidean,
}

/// `VectorDistance(a, b [, bruteForce [, {"distanceFunction": …}]])`: cosine similarity (higher is
/// more similar) by default, as Cosmos DB; `dotproduct`: the dot product; `euclidean`: the distance.
/// Undefined for anything but two non-empty numeric arrays of one length.
fn vector_distance<'a>(args: &[V<'a>]) -> V<'a> {
    let (Some(Value::Array(a)), Some(Value::Array(b))) = (args[0].get(), args[1].get()) else { return V::Undef };
    if let Some(force) = args.get(2)
        && force.as_bool().is_none()
    {
        return V::Undef;
    }
    let distance = match args.get(3).map(V::get) {
        None => Distance::Cosine,
        Some(Some(Value::Object(options))) => match distance_option(options) {
            Some(d) => d,
            None => return V::Undef,
        },
        Some(_) => return V::Undef,
    };
    match vector_score(a, b, distance) {
        Some(x) => Num::F(x).v(),
        None => V::Undef,
    }
}

pub(crate) fn distance_option(options: &Map<String, Value>) -> Option<Distance> {
    let mut distance = Distance::Cosine;
    for (k, v) in options {
        if k.eq_ignore_ascii_case("distanceFunction") {
            let name = v.as_str()?;
            distance = if name.eq_ignore_ascii_case("cosine") {
                Distance::Cosine
            } else if name.eq_ignore_ascii_case("dotproduct") {
                Distance::DotProduct
            } else if name.eq_ignore_ascii_case("euclidean") {
                Distance::Euclidean
            } else {
                return None;
            };
        }
        // Other options (dataType) describe storage, not the result.
    }
    Some(distance)
}

pub(crate) fn vector_score(a: &[Value], b: &[Value], distance: Distance) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb, mut sq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (Value::Number(x), Value::Number(y)) = (x, y) else { return None };
        let (x, y) = (x.as_f64()?, y.as_f64()?);
        match distance {
            Distance::Cosine => {
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            Distance::DotProduct => dot += x * y,
            Distance::Euclidean => sq += (x - y) * (x - y),
        }
    }
    let r = match distance {
        Distance::Cosine => {
            if na == 0.0 || nb == 0.0 {
                return None;
            }
            dot / (na.sqrt() * nb.sqrt())
        }
        Distance::DotProduct => dot,
        Distance::Euclidean => sq.sqrt(),
    };
    r.is_finite().then_some(r)
}

/// For tests: compare floats in results without caring for the last bits.
#[cfg(test)]
pub(crate) fn approx(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9 * want.abs().max(1.0))
}
