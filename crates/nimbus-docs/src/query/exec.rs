//! Running a plan over candidate items: FROM (path, iteration, JOINs) → WHERE → GROUP BY and
//! aggregates → projection → DISTINCT → ORDER BY → OFFSET/LIMIT → TOP.
//!
//! Rows borrow from the items; values are cloned only for the rows returned. ORDER BY with a bound
//! (TOP, or OFFSET + LIMIT) keeps only the best `bound` rows as it goes (a partial selection every
//! `2 × bound` rows, O(n) overall) instead of sorting everything; without ORDER BY the scan stops
//! as soon as the bound is reached.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ast::{AggFn, Count, Projection, Step};
use super::eval::{Env, eval};
use super::plan::Plan;
use super::value::{Num, V, canonical_key, total_cmp};
use super::{Params, QueryError};

pub(crate) fn execute<'a, 'i: 'a>(
    plan: &'a Plan,
    items: impl IntoIterator<Item = &'i Value>,
    params: &'a Params,
) -> Result<Vec<Value>, QueryError> {
    let items = items.into_iter().map(|v| -> &'a Value { v });
    for p in &plan.params {
        if !params.contains_key(p) {
            return Err(QueryError::missing_param(p));
        }
    }
    let s = &plan.select;
    let top = s.top.as_ref().map(|c| count(c, params, "TOP")).transpose()?;
    let (offset, limit) = match &s.offset_limit {
        Some((o, l)) => (count(o, params, "OFFSET")?, Some(count(l, params, "LIMIT")?)),
        None => (0, None),
    };
    // The rows wanted after OFFSET: the smaller of LIMIT and TOP.
    let take = match (limit, top) {
        (Some(l), Some(t)) => Some(l.min(t)),
        (l, t) => l.or(t),
    };
    let bound = take.map(|t| t.saturating_add(offset));
    let mut run = Run { plan, params, out: Vec::new() };
    if plan.grouped {
        run.grouped(items)?;
    } else if !s.order_by.is_empty() {
        run.ordered(items, if s.distinct { None } else { bound })?;
    } else {
        run.unordered(items, if s.distinct { None } else { bound })?;
    }
    let mut out = run.out;
    if s.distinct {
        let mut seen = std::collections::HashSet::new();
        out.retain(|v| {
            let mut k = String::new();
            canonical_key(Some(v), &mut k);
            seen.insert(k)
        });
    }
    let out: Vec<Value> = out.into_iter().skip(offset.min(usize::MAX as u64) as usize).collect();
    Ok(match take {
        Some(t) => out.into_iter().take(t.min(usize::MAX as u64) as usize).collect(),
        None => out,
    })
}

fn count(c: &Count, params: &Params, clause: &str) -> Result<u64, QueryError> {
    match c {
        Count::Literal(n) => Ok(*n),
        Count::Param(p) => match params.get(p) {
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0)),
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f < 1.8e19) => {
                Ok(n.as_f64().unwrap_or(0.0) as u64)
            }
            Some(other) => Err(QueryError::param(format!(
                "parameter {p} is used as the {clause} count and must be a non-negative integer, not {other}"
            ))),
            None => Err(QueryError::missing_param(p)),
        },
    }
}

struct Run<'a> {
    plan: &'a Plan,
    params: &'a Params,
    out: Vec<Value>,
}

/// A row waiting to be ordered: its sort keys, its aliases' values, and its arrival number (ties
/// keep arrival order).
struct Pending<'a> {
    keys: Vec<V<'a>>,
    vars: Vec<V<'a>>,
    seq: usize,
}

impl<'a> Run<'a> {
    fn env<'r>(&self, vars: &'r [V<'a>]) -> Env<'a, 'r> {
        Env { vars, params: self.params, group: None }
    }

    /// Calls `f` on each row (the values of the aliases) that passes WHERE; `f` returns false to stop.
    fn rows(
        &self,
        items: impl IntoIterator<Item = &'a Value>,
        mut f: impl FnMut(Vec<V<'a>>) -> Result<bool, QueryError>,
    ) -> Result<(), QueryError> {
        let s = &self.plan.select;
        let Some(from) = &s.from else {
            // No FROM: one row with nothing in scope.
            if self.passes(&[]) {
                f(Vec::new())?;
            }
            return Ok(());
        };
        for item in items {
            let mut source = V::Ref(item);
            for step in &from.path {
                source = match step {
                    Step::Prop(p) => source.prop(p),
                    Step::Index(i) => source.index(*i),
                };
            }
            let starts: Vec<V<'a>> = if from.iterate {
                match source {
                    V::Ref(Value::Array(a)) => a.iter().map(V::Ref).collect(),
                    _ => Vec::new(),
                }
            } else if source.is_undef() {
                Vec::new()
            } else {
                vec![source]
            };
            for start in starts {
                let mut go_on = true;
                self.join(vec![start], &mut |vars| {
                    if self.passes(&vars) {
                        go_on = f(vars)?;
                    }
                    Ok(go_on)
                })?;
                if !go_on {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Expands the JOINs after the ones already bound in `vars`.
    fn join(
        &self,
        vars: Vec<V<'a>>,
        f: &mut dyn FnMut(Vec<V<'a>>) -> Result<bool, QueryError>,
    ) -> Result<bool, QueryError> {
        let joins = &self.plan.select.from.as_ref().map_or(&[][..], |f| &f.joins[..]);
        let Some(join) = joins.get(vars.len() - 1) else { return f(vars) };
        let value = eval(&join.source, &self.env(&vars));
        let elements: Vec<V<'a>> = match value {
            V::Undef => Vec::new(),
            v if !join.iterate => vec![v],
            V::Ref(Value::Array(a)) => a.iter().map(V::Ref).collect(),
            V::Own(Value::Array(a)) => a.into_iter().map(V::Own).collect(),
            _ => Vec::new(),
        };
        for e in elements {
            let mut next = vars.clone();
            next.push(e);
            if !self.join(next, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn passes(&self, vars: &[V<'a>]) -> bool {
        match &self.plan.select.filter {
            None => true,
            Some(w) => eval(w, &self.env(vars)).as_bool() == Some(true),
        }
    }

    /// The projected value of a row, `None` when `SELECT VALUE` gives undefined.
    fn project(&self, env: &Env<'a, '_>) -> Option<Value> {
        match &self.plan.select.projection {
            Projection::Star => env.vars.first().and_then(|v| v.clone().into_value()),
            Projection::Value(e) => eval(e, env).into_value(),
            Projection::Fields(fields) => {
                let mut m = Map::new();
                for (name, e) in fields {
                    if let Some(v) = eval(e, env).into_value() {
                        m.insert(name.clone(), v);
                    }
                }
                Some(Value::Object(m))
            }
        }
    }

    /// Whether the row would be dropped by `SELECT VALUE undefined` (so it must not take a place).
    fn omitted(&self, env: &Env<'a, '_>) -> bool {
        match &self.plan.select.projection {
            Projection::Value(e) => eval(e, env).is_undef(),
            _ => false,
        }
    }

    fn unordered(&mut self, items: impl IntoIterator<Item = &'a Value>, bound: Option<u64>) -> Result<(), QueryError> {
        let mut out = Vec::new();
        self.rows(items, |vars| {
            if let Some(v) = self.project(&self.env(&vars)) {
                out.push(v);
            }
            Ok(bound.is_none_or(|b| (out.len() as u64) < b))
        })?;
        self.out = out;
        Ok(())
    }

    fn ordered(&mut self, items: impl IntoIterator<Item = &'a Value>, bound: Option<u64>) -> Result<(), QueryError> {
        let order = &self.plan.select.order_by;
        let cmp = |a: &Pending<'a>, b: &Pending<'a>| -> Ordering {
            for (i, (_, desc)) in order.iter().enumerate() {
                let o = total_cmp(a.keys[i].get(), b.keys[i].get());
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            a.seq.cmp(&b.seq)
        };
        let bound = bound.map(|b| b.min(1 << 40) as usize);
        let mut pending: Vec<Pending<'a>> = Vec::new();
        let mut seq = 0;
        if bound != Some(0) {
            self.rows(items, |vars| {
                let env = self.env(&vars);
                if self.omitted(&env) {
                    return Ok(true);
                }
                let keys = order.iter().map(|(e, _)| eval(e, &env)).collect();
                pending.push(Pending { keys, vars, seq });
                seq += 1;
                if let Some(b) = bound
                    && pending.len() >= 2 * b.max(16)
                {
                    pending.select_nth_unstable_by(b - 1, cmp);
                    pending.truncate(b);
                }
                Ok(true)
            })?;
        }
        pending.sort_unstable_by(cmp);
        if let Some(b) = bound {
            pending.truncate(b);
        }
        self.out = pending.iter().filter_map(|p| self.project(&self.env(&p.vars))).collect();
        Ok(())
    }

    fn grouped(&mut self, items: impl IntoIterator<Item = &'a Value>) -> Result<(), QueryError> {
        let s = &self.plan.select;
        let aggs = &self.plan.aggs;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(Vec<V<'a>>, Vec<Acc<'a>>)> = Vec::new();
        self.rows(items, |vars| {
            let env = self.env(&vars);
            let keys: Vec<V<'a>> = s.group_by.iter().map(|g| eval(g, &env)).collect();
            let mut k = String::new();
            for key in &keys {
                canonical_key(key.get(), &mut k);
                k.push('|');
            }
            let g = *index.entry(k).or_insert_with(|| {
                groups.push((keys, aggs.iter().map(|(f, _)| Acc::new(*f)).collect()));
                groups.len() - 1
            });
            for (acc, (_, arg)) in groups[g].1.iter_mut().zip(aggs) {
                acc.add(eval(arg, &env));
            }
            Ok(true)
        })?;
        if groups.is_empty() && s.group_by.is_empty() {
            // Aggregates over no rows still give one row: COUNT 0, SUM 0, the others undefined.
            groups.push((Vec::new(), aggs.iter().map(|(f, _)| Acc::new(*f)).collect()));
        }
        let mut rows: Vec<(Vec<V<'a>>, Value)> = Vec::new();
        for (keys, accs) in groups {
            let results: Vec<V<'a>> = accs.into_iter().map(Acc::finish).collect();
            let env = Env { vars: &[], params: self.params, group: Some((&keys, &results)) };
            let Some(v) = self.project(&env) else { continue };
            let sort: Vec<V<'a>> = s.order_by.iter().map(|(e, _)| eval(e, &env)).collect();
            rows.push((sort, v));
        }
        if !s.order_by.is_empty() {
            rows.sort_by(|a, b| {
                for (i, (_, desc)) in s.order_by.iter().enumerate() {
                    let o = total_cmp(a.0[i].get(), b.0[i].get());
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        self.out = rows.into_iter().map(|(_, v)| v).collect();
        Ok(())
    }
}

/// The running state of one aggregate. Undefined values are skipped; SUM and AVG of anything but
/// numbers, and MIN and MAX of arrays or objects, are undefined.
enum Acc<'a> {
    Count(i64),
    Sum { sum: Num, bad: bool },
    Avg { sum: f64, n: u64, bad: bool },
    Extreme { max: bool, best: Option<V<'a>>, bad: bool },
}

impl<'a> Acc<'a> {
    fn new(f: AggFn) -> Acc<'a> {
        match f {
            AggFn::Count => Acc::Count(0),
            AggFn::Sum => Acc::Sum { sum: Num::I(0), bad: false },
            AggFn::Avg => Acc::Avg { sum: 0.0, n: 0, bad: false },
            AggFn::Min => Acc::Extreme { max: false, best: None, bad: false },
            AggFn::Max => Acc::Extreme { max: true, best: None, bad: false },
        }
    }

    fn add(&mut self, v: V<'a>) {
        if v.is_undef() {
            return;
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum { sum, bad } => match v.num() {
                Some(x) => {
                    *sum = match (*sum, x) {
                        (Num::I(a), Num::I(b)) => a.checked_add(b).map_or(Num::F(a as f64 + b as f64), Num::I),
                        (a, b) => Num::F(a.f() + b.f()),
                    }
                }
                None => *bad = true,
            },
            Acc::Avg { sum, n, bad } => match v.num() {
                Some(x) => {
                    *sum += x.f();
                    *n += 1;
                }
                None => *bad = true,
            },
            Acc::Extreme { max, best, bad } => {
                if matches!(v.get(), Some(Value::Array(_) | Value::Object(_))) {
                    *bad = true;
                    return;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let o = total_cmp(v.get(), b.get());
                        if *max { o == Ordering::Greater } else { o == Ordering::Less }
                    }
                };
                if better {
                    *best = Some(v);
                }
            }
        }
    }

    fn finish(self) -> V<'a> {
        match self {
            Acc::Count(n) => Num::I(n).v(),
            Acc::Sum { bad: true, .. } | Acc::Avg { bad: true, .. } | Acc::Extreme { bad: true, .. } => V::Undef,
            Acc::Sum { sum, .. } => sum.v(),
            Acc::Avg { n: 0, .. } => V::Undef,
            Acc::Avg { sum, n, .. } => Num::F(sum / n as f64).v(),
            Acc::Extreme { best, .. } => best.unwrap_or(V::Undef),
        }
    }
}
