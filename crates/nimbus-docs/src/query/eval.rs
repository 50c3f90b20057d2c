//! Expression evaluation with Cosmos DB's semantics: `undefined` propagates through operators,
//! comparisons across types are undefined, AND/OR/NOT are three-valued, arithmetic on non-numbers
//! is undefined. What it builds is charged to the run's [`Budget`] first; once the budget has
//! stopped, everything is undefined (and the pipeline answers the budget's error).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::Params;
use super::ast::{BinOp, Expr, UnOp};
use super::budget::{Budget, MAP, MAX_STRING_BYTES, NODE};
use super::functions;
use super::value::{Num, V, compare, equals};

/// What an expression can see: the aliases' values, the parameters, and, when projecting a group,
/// its keys and aggregate results; and the budget it builds within.
pub(crate) struct Env<'a, 'r> {
    pub vars: &'r [V<'a>],
    pub params: &'a Params,
    pub group: Option<(&'r [V<'a>], &'r [V<'a>])>,
    pub budget: &'r Budget,
}

pub(crate) fn eval<'a>(e: &'a Expr, env: &Env<'a, '_>) -> V<'a> {
    let budget = env.budget;
    if !budget.ok() {
        return V::Undef;
    }
    let copy = |v: Option<&V<'a>>| v.map_or(V::Undef, |v| budget.copy(v));
    match e {
        Expr::Const(v) => V::Ref(v),
        Expr::Undefined | Expr::Ident(..) | Expr::Agg(..) => V::Undef,
        Expr::Param(p) => env.params.get(p).map_or(V::Undef, V::Ref),
        Expr::Var(i) => copy(env.vars.get(*i)),
        Expr::AggRef(i) => copy(env.group.and_then(|(_, aggs)| aggs.get(*i))),
        Expr::GroupKey(i) => copy(env.group.and_then(|(keys, _)| keys.get(*i))),
        Expr::Prop(base, name) => eval(base, env).prop(name),
        Expr::Index(base, idx) => {
            let base = eval(base, env);
            let idx = eval(idx, env);
            match idx.get() {
                Some(Value::String(s)) => base.prop(s),
                Some(Value::Number(n)) => match Num::of(n).as_int() {
                    Some(i) if i >= 0 => base.index(i as usize),
                    _ => V::Undef,
                },
                _ => V::Undef,
            }
        }
        Expr::Unary(op, x) => unary(*op, eval(x, env)),
        Expr::Binary(BinOp::And, a, b) => {
            let a = eval(a, env).as_bool();
            if a == Some(false) {
                return V::bool(false);
            }
            match (a, eval(b, env).as_bool()) {
                (_, Some(false)) => V::bool(false),
                (Some(true), Some(true)) => V::bool(true),
                _ => V::Undef,
            }
        }
        Expr::Binary(BinOp::Or, a, b) => {
            let a = eval(a, env).as_bool();
            if a == Some(true) {
                return V::bool(true);
            }
            match (a, eval(b, env).as_bool()) {
                (_, Some(true)) => V::bool(true),
                (Some(false), Some(false)) => V::bool(false),
                _ => V::Undef,
            }
        }
        Expr::Binary(BinOp::Coalesce, a, b) => match eval(a, env) {
            V::Undef => eval(b, env),
            v => v,
        },
        Expr::Binary(op, a, b) => binary(*op, eval(a, env), eval(b, env), budget),
        Expr::Ternary(c, a, b) => match eval(c, env).as_bool() {
            Some(true) => eval(a, env),
            Some(false) => eval(b, env),
            None => V::Undef,
        },
        Expr::In { expr, list, negated } => {
            let x = eval(expr, env);
            let Some(x) = x.get() else { return V::Undef };
            let found = list.iter().any(|item| equals(Some(x), eval(item, env).get()) == Some(true));
            V::bool(found != *negated)
        }
        Expr::Between { expr, low, high, negated } => {
            let x = eval(expr, env);
            let lo = compare(x.get(), eval(low, env).get());
            let hi = compare(x.get(), eval(high, env).get());
            match (lo, hi) {
                (Some(lo), Some(hi)) => V::bool((lo != Ordering::Less && hi != Ordering::Greater) != *negated),
                _ => V::Undef,
            }
        }
        Expr::Like { expr, pattern, escape, negated } => {
            let x = eval(expr, env);
            let p = eval(pattern, env);
            let esc = match escape {
                None => None,
                Some(e) => {
                    let e = eval(e, env);
                    let mut chars = e.as_str().unwrap_or("").chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => Some(c),
                        _ => return V::Undef,
                    }
                }
            };
            match (x.as_str(), p.as_str()) {
                (Some(s), Some(p)) => match like(s, p, esc, budget) {
                    Some(found) => V::bool(found != *negated),
                    None => V::Undef,
                },
                _ => V::Undef,
            }
        }
        Expr::Call(f, args) => {
            if !budget.tick() {
                return V::Undef;
            }
            functions::call(*f, args.iter().map(|a| eval(a, env)).collect(), budget)
        }
        Expr::Array(items) => {
            if !budget.charge(NODE * (1 + items.len())) {
                return V::Undef;
            }
            V::Own(Value::Array(items.iter().filter_map(|i| budget.own(eval(i, env))).collect()))
        }
        Expr::Object(fields) => {
            if !fields.is_empty() && !budget.charge(MAP) {
                return V::Undef;
            }
            let mut m = Map::new();
            for (k, x) in fields {
                if !budget.charge(NODE + k.len()) {
                    return V::Undef;
                }
                if let Some(v) = budget.own(eval(x, env)) {
                    m.insert(k.clone(), v);
                }
            }
            V::Own(Value::Object(m))
        }
    }
}

fn unary<'a>(op: UnOp, x: V<'a>) -> V<'a> {
    match op {
        UnOp::Not => x.as_bool().map_or(V::Undef, |b| V::bool(!b)),
        UnOp::Plus => {
            if x.num().is_some() {
                x
            } else {
                V::Undef
            }
        }
        UnOp::Neg => match x.num() {
            Some(Num::I(i)) => i.checked_neg().map_or(Num::F(-(i as f64)), Num::I).v(),
            Some(Num::F(f)) => Num::F(-f).v(),
            None => V::Undef,
        },
        UnOp::BitNot => match x.num() {
            Some(n) => Num::I((!n.to_int32()).into()).v(),
            None => V::Undef,
        },
    }
}

fn binary<'a>(op: BinOp, a: V<'a>, b: V<'a>, budget: &Budget) -> V<'a> {
    match op {
        BinOp::Eq => equals(a.get(), b.get()).map_or(V::Undef, V::bool),
        BinOp::Ne => equals(a.get(), b.get()).map_or(V::Undef, |e| V::bool(!e)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => match compare(a.get(), b.get()) {
            Some(o) => V::bool(match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::Le => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }),
            None => V::Undef,
        },
        BinOp::Concat => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) if x.len() + y.len() <= MAX_STRING_BYTES && budget.charge(NODE + x.len() + y.len()) => {
                V::Own(Value::String(format!("{x}{y}")))
            }
            _ => V::Undef,
        },
        _ => match (a.num(), b.num()) {
            (Some(x), Some(y)) => arith(op, x, y),
            _ => V::Undef,
        },
    }
}

fn arith<'a>(op: BinOp, x: Num, y: Num) -> V<'a> {
    if let (Num::I(a), Num::I(b)) = (x, y) {
        let exact = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::Div if b != 0 && a.checked_rem(b) == Some(0) => a.checked_div(b),
            BinOp::Mod if b != 0 => a.checked_rem(b),
            _ => None,
        };
        if let Some(r) = exact {
            return Num::I(r).v();
        }
    }
    match op {
        BinOp::Add => Num::F(x.f() + y.f()).v(),
        BinOp::Sub => Num::F(x.f() - y.f()).v(),
        BinOp::Mul => Num::F(x.f() * y.f()).v(),
        BinOp::Div => Num::F(x.f() / y.f()).v(),
        BinOp::Mod => Num::F(x.f() % y.f()).v(),
        // As JavaScript's, which Cosmos DB's follow: on 32-bit integers, the shift count taken
        // modulo 32, `>>>` unsigned.
        BinOp::BitOr | BinOp::BitAnd | BinOp::BitXor | BinOp::Shl | BinOp::Shr | BinOp::ShrZero => {
            let (a, b) = (x.to_int32(), y.to_int32());
            let shift = b as u32 & 31;
            Num::I(match op {
                BinOp::BitOr => (a | b).into(),
                BinOp::BitAnd => (a & b).into(),
                BinOp::BitXor => (a ^ b).into(),
                BinOp::Shl => a.wrapping_shl(shift).into(),
                BinOp::Shr => (a >> shift).into(),
                _ => ((a as u32) >> shift).into(),
            })
            .v()
        }
        _ => V::Undef,
    }
}

/// `LIKE`: `%` any run of characters, `_` one character, `[abc]`, `[a-z]`, `[^…]` one character of
/// (or not of) a set; `escape` makes the next character literal. `None` when the budget stopped it.
pub(crate) fn like(s: &str, pattern: &str, escape: Option<char>, budget: &Budget) -> Option<bool> {
    // The text as characters, the pattern as tokens.
    if !budget.charge(4 * s.len() + NODE * pattern.len()) {
        return None;
    }
    let pat = compile_like(pattern, escape);
    let s: Vec<char> = s.chars().collect();
    // Greedy matching with backtracking to the last `%`: O(len(s) * len(pattern)) at worst, so
    // the budget's clock is looked at as it goes.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0u32;
    while i < s.len() {
        steps = steps.wrapping_add(1);
        if steps.is_multiple_of(4096) && !budget.tick() {
            return None;
        }
        if j < pat.len() && !matches!(pat[j], Like::Any) && pat[j].one(s[i]) {
            i += 1;
            j += 1;
        } else if j < pat.len() && matches!(pat[j], Like::Any) {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return Some(false);
        }
    }
    Some(pat[j..].iter().all(|p| matches!(p, Like::Any)))
}

enum Like {
    Any,
    One,
    Lit(char),
    Set { negated: bool, ranges: Vec<(char, char)> },
}

impl Like {
    fn one(&self, c: char) -> bool {
        match self {
            Like::Any | Like::One => true,
            Like::Lit(l) => *l == c,
            Like::Set { negated, ranges } => ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated,
        }
    }
}

fn compile_like(pattern: &str, escape: Option<char>) -> Vec<Like> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        k += 1;
        if Some(c) == escape {
            if let Some(&n) = chars.get(k) {
                out.push(Like::Lit(n));
                k += 1;
            } else {
                out.push(Like::Lit(c));
            }
            continue;
        }
        match c {
            '%' => {
                if !matches!(out.last(), Some(Like::Any)) {
                    out.push(Like::Any);
                }
            }
            '_' => out.push(Like::One),
            '[' => match chars[k..].iter().position(|&x| x == ']') {
                Some(len) if len > 0 => {
                    let mut body = &chars[k..k + len];
                    k += len + 1;
                    let negated = body.first() == Some(&'^') && body.len() > 1;
                    if negated {
                        body = &body[1..];
                    }
                    let mut ranges = Vec::new();
                    let mut m = 0;
                    while m < body.len() {
                        if m + 2 < body.len() && body[m + 1] == '-' {
                            ranges.push((body[m], body[m + 2]));
                            m += 3;
                        } else {
                            ranges.push((body[m], body[m]));
                            m += 1;
                        }
                    }
                    out.push(Like::Set { negated, ranges });
                }
                _ => out.push(Like::Lit('[')),
            },
            _ => out.push(Like::Lit(c)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::budget::{Budget, Limits};

    fn like(s: &str, pattern: &str, escape: Option<char>) -> bool {
        super::like(s, pattern, escape, &Budget::new(&Limits::default())).unwrap()
    }

    #[test]
    fn like_patterns() {
        assert!(like("Sathem Backpack", "%Backpack", None));
        assert!(like("abc", "a_c", None));
        assert!(!like("abbc", "a_c", None));
        assert!(like("abc", "%", None));
        assert!(like("", "%", None));
        assert!(!like("", "_", None));
        assert!(like("a%c", "a!%c", Some('!')));
        assert!(!like("abc", "a!%c", Some('!')));
        assert!(like("b", "[a-c]", None));
        assert!(!like("d", "[a-c]", None));
        assert!(like("d", "[^a-c]", None));
        assert!(like("xaaaaab", "%a%b", None));
        assert!(!like("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "%a%a%a%a%a%a%a%b", None));
        assert!(like("ünï", "_n_", None));
    }
}
