//! Running a plan over candidate items: FROM (path, iteration, JOINs) → WHERE → GROUP BY and
//! aggregates → projection → DISTINCT → ORDER BY → OFFSET/LIMIT → TOP → the page ([`Window`]).
//!
//! Rows are made one at a time (JOINs expand depth first over the elements, borrowed from the items
//! or owned by the join level that computed the array) and handed on at once. Without ORDER BY or
//! grouping the scan stops as soon as the page is full and one more row is known to exist, or
//! TOP/LIMIT is reached; rows before the page are counted, not projected. ORDER BY with a bound
//! (TOP, OFFSET + LIMIT, or the page's end) keeps only the best `bound` rows as it goes (a partial
//! selection every `2 × bound` rows, O(n) overall) and projects only the page. Values are cloned
//! only for the rows returned. Everything kept (rows waiting for ORDER BY, groups, DISTINCT's keys,
//! the page) is charged to the run's [`Budget`], which every row checks.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::ast::{AggFn, Count, Projection, Step};
use super::budget::{Budget, Limits, NODE, owned_size, size};
use super::eval::{Env, eval};
use super::plan::{Direction, Plan, directions};
use super::value::{Num, V, canonical_key, total_cmp};
use super::{Params, QueryError, Rows, Window};

pub(crate) fn execute<'a, 'i: 'a>(
    plan: &'a Plan,
    items: impl IntoIterator<Item = &'i Value>,
    params: &'a Params,
    window: Window,
    limits: &Limits,
) -> Result<Rows, QueryError> {
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
    let budget = Budget::new(limits);
    let mut emit = Emit::new(&budget, s.distinct, offset, take, window);
    let run = Run { plan, params, budget: &budget, directions: directions(plan, params) };
    if plan.grouped {
        run.grouped(items, &mut emit)?;
    } else if !s.order_by.is_empty() {
        // The sorted rows the page needs: through its end, and one more to tell whether more follow.
        let through = window.skip.saturating_add(window.rows).saturating_add(1).min(take.unwrap_or(u64::MAX));
        run.ordered(items, (!s.distinct).then(|| offset.saturating_add(through)), &mut emit)?;
    } else {
        run.unordered(items, &mut emit)?;
    }
    budget.result()?;
    Ok(Rows { rows: emit.out, more: emit.more })
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

/// Where the next row of the (deduplicated) result goes.
#[derive(Clone, Copy)]
enum Slot {
    /// Before OFFSET and the page: counted only.
    Skip,
    Page,
    /// After a full page: it only says that more follow.
    More,
}

/// The end of the pipeline: DISTINCT, OFFSET/LIMIT/TOP and the page, over the rows in their final
/// order. Tells the producers when to stop.
struct Emit<'b> {
    budget: &'b Budget,
    /// DISTINCT: the canonical keys of the values seen.
    seen: Option<HashSet<String>>,
    /// Rows of the result passed so far.
    index: u64,
    /// The page's first row (OFFSET plus the window's skip) and the result's end (OFFSET plus TOP
    /// or LIMIT).
    start: u64,
    end: u64,
    rows: u64,
    max_bytes: usize,
    out: Vec<Value>,
    bytes: usize,
    more: bool,
}

impl<'b> Emit<'b> {
    fn new(budget: &'b Budget, distinct: bool, offset: u64, take: Option<u64>, w: Window) -> Emit<'b> {
        Emit {
            budget,
            seen: distinct.then(HashSet::new),
            index: 0,
            start: offset.saturating_add(w.skip),
            end: take.map_or(u64::MAX, |t| offset.saturating_add(t)),
            rows: w.rows,
            max_bytes: w.bytes,
            out: Vec::new(),
            bytes: 0,
            more: false,
        }
    }

    fn slot(&self) -> Option<Slot> {
        if self.index >= self.end {
            None
        } else if self.index < self.start {
            Some(Slot::Skip)
        } else if (self.out.len() as u64) < self.rows && (self.out.is_empty() || self.bytes < self.max_bytes) {
            Some(Slot::Page)
        } else {
            Some(Slot::More)
        }
    }

    /// The next row in order: `value` projects it (`None`: left out, as `SELECT VALUE` of
    /// undefined), `omitted` tells that without building it. Answers whether to go on.
    fn offer(
        &mut self,
        value: impl FnOnce() -> Option<Value>,
        omitted: impl FnOnce() -> bool,
    ) -> Result<bool, QueryError> {
        let Some(slot) = self.slot() else { return Ok(false) };
        let value = if self.seen.is_some() || matches!(slot, Slot::Page) {
            match value() {
                Some(v) => Some(v),
                None => return self.budget.result().map(|()| true),
            }
        } else if omitted() {
            return self.budget.result().map(|()| true);
        } else {
            None
        };
        self.budget.result()?;
        if let (Some(seen), Some(v)) = (&mut self.seen, &value) {
            let mut key = String::new();
            canonical_key(Some(v), &mut key);
            if seen.contains(&key) {
                return Ok(true);
            }
            self.budget.keep(NODE + key.len());
            self.budget.result()?;
            seen.insert(key);
        }
        match (slot, value) {
            (Slot::Page, Some(v)) => {
                let n = size(&v);
                self.budget.keep(n);
                self.budget.result()?;
                self.bytes = self.bytes.saturating_add(n);
                self.out.push(v);
            }
            (Slot::More, _) => {
                self.more = true;
                return Ok(false);
            }
            _ => {}
        }
        self.index += 1;
        Ok(self.index < self.end)
    }
}

struct Run<'a, 'b> {
    plan: &'a Plan,
    params: &'a Params,
    budget: &'b Budget,
    /// Of each ORDER BY key.
    directions: Vec<Direction>,
}

/// A row waiting to be ordered: its sort keys, its aliases' values, its arrival number (ties keep
/// arrival order), and what it holds (charged to the budget).
struct Pending<'a> {
    keys: Vec<V<'a>>,
    vars: Vec<V<'a>>,
    seq: usize,
    bytes: usize,
}

/// Called with each row (the aliases' values); answers whether to go on.
type Sink<'s, 'a> = dyn FnMut(&[V<'a>]) -> Result<bool, QueryError> + 's;

impl<'a, 'b> Run<'a, 'b> {
    /// Two rows' ORDER BY keys, in their directions.
    fn compare_keys(&self, a: &[V<'a>], b: &[V<'a>]) -> Ordering {
        let keys = self.directions.iter().zip(a.iter().zip(b));
        keys.map(|(d, (x, y))| d.compare(x.get(), y.get())).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }

    fn env<'r>(&'r self, vars: &'r [V<'a>]) -> Env<'a, 'r> {
        Env { vars, params: self.params, group: None, budget: self.budget }
    }

    /// Calls `f` on each row that passes WHERE, until `f` answers false.
    fn rows(
        &self,
        items: impl IntoIterator<Item = &'a Value>,
        mut f: impl FnMut(&[V<'a>]) -> Result<bool, QueryError>,
    ) -> Result<(), QueryError> {
        let s = &self.plan.select;
        let Some(from) = &s.from else {
            // No FROM: one row with nothing in scope.
            if self.passes(&[])? {
                f(&[])?;
            }
            return Ok(());
        };
        let mut stack: Vec<V<'a>> = Vec::with_capacity(1 + from.joins.len());
        for item in items {
            self.budget.step()?;
            let mut source = V::Ref(item);
            for step in &from.path {
                source = match step {
                    Step::Prop(p) => source.prop(p),
                    Step::Index(i) => source.index(*i),
                };
            }
            let go = match source {
                V::Ref(Value::Array(a)) if from.iterate => self.each(&mut stack, &mut f, a.iter().map(V::Ref))?,
                _ if from.iterate => true,
                V::Undef => true,
                v => self.each(&mut stack, &mut f, std::iter::once(v))?,
            };
            if !go {
                break;
            }
        }
        Ok(())
    }

    /// Binds each element in turn to the next alias and expands the JOINs after it.
    fn each(
        &self,
        stack: &mut Vec<V<'a>>,
        f: &mut Sink<'_, 'a>,
        elements: impl Iterator<Item = V<'a>>,
    ) -> Result<bool, QueryError> {
        for e in elements {
            self.budget.step()?;
            stack.push(e);
            let go = self.join(stack, f);
            stack.pop();
            if !go? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Expands the JOINs after the ones already bound in `stack`, or hands on the row.
    fn join(&self, stack: &mut Vec<V<'a>>, f: &mut Sink<'_, 'a>) -> Result<bool, QueryError> {
        let joins = self.plan.select.from.as_ref().map_or(&[][..], |f| &f.joins[..]);
        let Some(join) = joins.get(stack.len() - 1) else {
            return if self.passes(stack)? { f(stack) } else { Ok(true) };
        };
        // The source lives while its elements are bound; what it cost is given back after.
        let mark = self.budget.mark();
        let value = eval(&join.source, &self.env(stack));
        self.budget.result()?;
        let go = match value {
            V::Undef => Ok(true),
            v if !join.iterate => self.each(stack, f, std::iter::once(v)),
            V::Ref(Value::Array(a)) => self.each(stack, f, a.iter().map(V::Ref)),
            V::Own(Value::Array(a)) => self.each(stack, f, a.into_iter().map(V::Own)),
            _ => Ok(true),
        };
        self.budget.release(mark);
        go
    }

    fn passes(&self, vars: &[V<'a>]) -> Result<bool, QueryError> {
        let Some(w) = &self.plan.select.filter else { return Ok(true) };
        let mark = self.budget.mark();
        let pass = eval(w, &self.env(vars)).as_bool() == Some(true);
        self.budget.release(mark);
        self.budget.result()?;
        Ok(pass)
    }

    /// The projected value of a row, `None` when `SELECT VALUE` gives undefined (or the budget
    /// stopped).
    fn project(&self, env: &Env<'a, '_>) -> Option<Value> {
        let b = self.budget;
        match &self.plan.select.projection {
            Projection::Star => env.vars.first().and_then(|v| b.own(b.copy(v))),
            Projection::Value(e) => b.own(eval(e, env)),
            Projection::Fields(fields) => {
                let mut m = Map::new();
                for (name, e) in fields {
                    if let Some(v) = b.own(eval(e, env)) {
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

    fn unordered(&self, items: impl IntoIterator<Item = &'a Value>, emit: &mut Emit<'_>) -> Result<(), QueryError> {
        self.rows(items, |vars| {
            let mark = self.budget.mark();
            let env = self.env(vars);
            let go = emit.offer(|| self.project(&env), || self.omitted(&env));
            self.budget.release(mark);
            go
        })
    }

    fn ordered(
        &self,
        items: impl IntoIterator<Item = &'a Value>,
        bound: Option<u64>,
        emit: &mut Emit<'_>,
    ) -> Result<(), QueryError> {
        let order = &self.plan.select.order_by;
        let budget = self.budget;
        // A sort cannot be stopped halfway (the comparison must stay consistent); its length is
        // bounded by the rows the budget lets it hold, and the clock is read as it goes.
        let cmp = |a: &Pending<'a>, b: &Pending<'a>| -> Ordering {
            budget.tick();
            self.compare_keys(&a.keys, &b.keys).then(a.seq.cmp(&b.seq))
        };
        let bound = bound.map(|b| b.min(1 << 40) as usize);
        let mut pending: Vec<Pending<'a>> = Vec::new();
        let mut seq = 0;
        if bound != Some(0) {
            self.rows(items, |vars| {
                let mark = budget.mark();
                let env = self.env(vars);
                if self.omitted(&env) {
                    budget.release(mark);
                    return budget.result().map(|()| true);
                }
                let keys: Vec<V<'a>> = order.iter().map(|(e, _)| eval(e, &env)).collect();
                let vars: Vec<V<'a>> = vars.iter().map(|v| budget.copy(v)).collect();
                budget.result()?;
                let bytes = NODE * 4 + keys.iter().chain(&vars).map(owned_size).sum::<usize>();
                budget.release(mark);
                budget.keep(bytes);
                budget.result()?;
                pending.push(Pending { keys, vars, seq, bytes });
                seq += 1;
                if let Some(b) = bound
                    && pending.len() >= 2 * b.max(16)
                {
                    pending.select_nth_unstable_by(b - 1, cmp);
                    pending.drain(b..).for_each(|p| budget.unkeep(p.bytes));
                }
                Ok(true)
            })?;
        }
        pending.sort_unstable_by(cmp);
        budget.result()?;
        if let Some(b) = bound {
            pending.truncate(b);
        }
        for p in &pending {
            let mark = budget.mark();
            let go = emit.offer(|| self.project(&self.env(&p.vars)), || false)?;
            budget.release(mark);
            if !go {
                break;
            }
        }
        Ok(())
    }

    fn grouped(&self, items: impl IntoIterator<Item = &'a Value>, emit: &mut Emit<'_>) -> Result<(), QueryError> {
        let s = &self.plan.select;
        let aggs = &self.plan.aggs;
        let budget = self.budget;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(Vec<V<'a>>, Vec<Acc<'a>>)> = Vec::new();
        self.rows(items, |vars| {
            let mark = budget.mark();
            let env = self.env(vars);
            let keys: Vec<V<'a>> = s.group_by.iter().map(|g| eval(g, &env)).collect();
            let mut k = String::new();
            for key in &keys {
                canonical_key(key.get(), &mut k);
                k.push('|');
            }
            budget.result()?;
            let g = match index.get(&k) {
                Some(&g) => g,
                None => {
                    budget.keep(NODE * (2 + aggs.len()) + k.len() + keys.iter().map(owned_size).sum::<usize>());
                    budget.result()?;
                    groups.push((keys, aggs.iter().map(|(f, _)| Acc::new(*f)).collect()));
                    index.insert(k, groups.len() - 1);
                    groups.len() - 1
                }
            };
            for (acc, (_, arg)) in groups[g].1.iter_mut().zip(aggs) {
                acc.add(eval(arg, &env), budget);
            }
            budget.release(mark);
            budget.result().map(|()| true)
        })?;
        if groups.is_empty() && s.group_by.is_empty() {
            // Aggregates over no rows still give one row: COUNT 0, SUM 0, the others undefined.
            groups.push((Vec::new(), aggs.iter().map(|(f, _)| Acc::new(*f)).collect()));
        }
        let mut rows: Vec<(Vec<V<'a>>, Value)> = Vec::new();
        for (keys, accs) in groups {
            budget.step()?;
            let results: Vec<V<'a>> = accs.into_iter().map(Acc::finish).collect();
            let env = Env { vars: &[], params: self.params, group: Some((&keys, &results)), budget };
            let mark = budget.mark();
            let Some(v) = self.project(&env) else {
                budget.result()?;
                continue;
            };
            let sort: Vec<V<'a>> = s.order_by.iter().map(|(e, _)| eval(e, &env)).collect();
            budget.result()?;
            let bytes = size(&v) + sort.iter().map(owned_size).sum::<usize>();
            budget.release(mark);
            budget.keep(bytes);
            budget.result()?;
            rows.push((sort, v));
        }
        if !s.order_by.is_empty() {
            rows.sort_by(|a, b| {
                budget.tick();
                self.compare_keys(&a.0, &b.0)
            });
            budget.result()?;
        }
        for (_, v) in rows {
            if !emit.offer(|| Some(v), || false)? {
                break;
            }
        }
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

    /// Adds a value; an owned extreme it keeps is charged to the budget.
    fn add(&mut self, v: V<'a>, budget: &Budget) {
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
                    budget.keep(owned_size(&v));
                    if let Some(old) = best.replace(v) {
                        budget.unkeep(owned_size(&old));
                    }
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
