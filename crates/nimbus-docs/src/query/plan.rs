//! From the syntax tree to an executable query: names resolved to slots, aggregates pulled out,
//! grouped expressions replaced by references to the group's keys, and the checks Cosmos DB makes
//! (projection of a grouped query only from GROUP BY expressions and aggregates, no aggregate in
//! WHERE, `SELECT *` only over one source).

use std::cmp::Ordering;

use serde_json::Value;

use super::QueryError;
use super::ast::{AggFn, Count, Expr, Projection, Select};
use super::functions::{Distance, Func, distance_option};
use super::value::total_cmp;

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub select: Select,
    /// Every aggregate of the projection and ORDER BY: its function and argument (over the row).
    pub aggs: Vec<(AggFn, Expr)>,
    /// How each ORDER BY expression sorts.
    pub sorts: Vec<Sort>,
    /// Whether rows are grouped (GROUP BY, or aggregates in the projection).
    pub grouped: bool,
    /// Every parameter the query uses, once each.
    pub params: Vec<String>,
}

pub(crate) fn plan(text: &str, mut select: Select) -> Result<Plan, QueryError> {
    let mut scope: Vec<String> = Vec::new();
    if let Some(from) = &mut select.from {
        scope.push(from.alias.clone());
        for join in &mut from.joins {
            resolve(text, &mut join.source, &scope)?;
            no_aggregate(text, &join.source, "JOIN")?;
            scope.push(join.alias.clone());
        }
    }
    if let Some(f) = &mut select.filter {
        resolve(text, f, &scope)?;
        no_aggregate(text, f, "WHERE")?;
    }
    for g in &mut select.group_by {
        resolve(text, g, &scope)?;
        no_aggregate(text, g, "GROUP BY")?;
    }
    let mut proj_exprs: Vec<&mut Expr> = match &mut select.projection {
        Projection::Star => Vec::new(),
        Projection::Value(e) => vec![e],
        Projection::Fields(fields) => fields.iter_mut().map(|(_, e)| e).collect(),
    };
    for e in proj_exprs.iter_mut() {
        resolve(text, e, &scope)?;
    }
    for (e, _) in &mut select.order_by {
        resolve(text, e, &scope)?;
    }
    let has_agg = proj_exprs.iter().any(|e| e.any(&|x| matches!(x, Expr::Agg(..))));
    drop(proj_exprs);
    fold_all(&mut select);
    let sorts = select.order_by.iter().map(|(e, desc)| sort(text, e, *desc)).collect::<Result<_, _>>()?;
    let grouped = has_agg || !select.group_by.is_empty();
    let mut aggs = Vec::new();
    if matches!(select.projection, Projection::Star) {
        if grouped {
            return Err(QueryError::invalid(text, None, "SELECT * cannot be used with GROUP BY"));
        }
        if select.from.as_ref().is_none_or(|f| !f.joins.is_empty()) {
            return Err(QueryError::invalid(text, None, "SELECT * needs a FROM clause with exactly one alias"));
        }
    }
    if grouped {
        let keys = select.group_by.clone();
        let mut targets: Vec<&mut Expr> = match &mut select.projection {
            Projection::Star => Vec::new(),
            Projection::Value(e) => vec![e],
            Projection::Fields(fields) => fields.iter_mut().map(|(_, e)| e).collect(),
        };
        targets.extend(select.order_by.iter_mut().map(|(e, _)| e));
        for e in targets {
            to_group_expr(text, e, &keys, &mut aggs)?;
        }
    } else {
        for (e, _) in &select.order_by {
            no_aggregate(text, e, "ORDER BY of a query without aggregates")?;
        }
    }
    let mut params = Vec::new();
    let mut add = |e: &Expr| collect_params(e, &mut params);
    if let Some(f) = &select.from {
        f.joins.iter().for_each(|j| add(&j.source));
    }
    select.filter.iter().for_each(&mut add);
    select.group_by.iter().for_each(&mut add);
    match &select.projection {
        Projection::Star => {}
        Projection::Value(e) => add(e),
        Projection::Fields(fields) => fields.iter().for_each(|(_, e)| add(e)),
    }
    select.order_by.iter().for_each(|(e, _)| add(e));
    aggs.iter().for_each(|(_, e)| add(e));
    let counts = select.top.iter().chain(select.offset_limit.iter().flat_map(|(o, l)| [o, l]));
    for c in counts {
        if let Count::Param(p) = c
            && !params.contains(p)
        {
            params.push(p.clone());
        }
    }
    Ok(Plan { select, aggs, sorts, grouped, params })
}

/// How ORDER BY sorts by one expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sort {
    /// As written: ascending (the default) or descending.
    Written { descending: bool },
    /// `VectorDistance(…)`: most similar first, whatever direction is written. Cosmos DB: "When
    /// `VectorDistance` is used in an `ORDER BY` clause, no direction needs to be specified for the
    /// `ORDER BY` as the results are always sorted in order of most similar (first) to least
    /// similar (last) based on the similarity metric used."
    /// (<https://learn.microsoft.com/azure/cosmos-db/nosql/query/vectordistance>, Remarks.) The
    /// metric comes from the options argument (a literal or a parameter), cosine without one.
    Similarity { options: Option<Expr> },
}

/// How ORDER BY sorts by `e`, written with `descending` (or not). VectorDistance's options must
/// be known before the rows are: one metric orders them all.
fn sort(text: &str, e: &Expr, descending: bool) -> Result<Sort, QueryError> {
    let Expr::Call(Func::VectorDistance, args) = e else { return Ok(Sort::Written { descending }) };
    match args.get(3) {
        None | Some(Expr::Const(_) | Expr::Param(_)) => Ok(Sort::Similarity { options: args.get(3).cloned() }),
        Some(_) => Err(QueryError::invalid(
            text,
            None,
            "VectorDistance in ORDER BY takes its options as an object literal or a parameter",
        )),
    }
}

/// The direction of one ORDER BY key for a run (its parameters known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Direction {
    pub descending: bool,
    /// Undefined after every value whatever the direction: a row without a similarity score is
    /// the least similar (the documentation is silent; ascending would otherwise put it first).
    pub undefined_last: bool,
}

impl Direction {
    pub(crate) fn compare(self, a: Option<&Value>, b: Option<&Value>) -> Ordering {
        if self.undefined_last && a.is_none() != b.is_none() {
            return if a.is_none() { Ordering::Greater } else { Ordering::Less };
        }
        let o = total_cmp(a, b);
        if self.descending { o.reverse() } else { o }
    }
}

/// The direction of each ORDER BY key: as written, or most similar first for `VectorDistance`
/// (higher scores for cosine and dot product, lower distances for euclidean).
pub(crate) fn directions(plan: &Plan, params: &super::Params) -> Vec<Direction> {
    plan.sorts
        .iter()
        .map(|s| match s {
            Sort::Written { descending } => Direction { descending: *descending, undefined_last: false },
            Sort::Similarity { options } => {
                let descending = metric(options.as_ref(), params) != Distance::Euclidean;
                Direction { descending, undefined_last: true }
            }
        })
        .collect()
}

/// The metric VectorDistance's options argument names. Without one, cosine: Cosmos DB would take
/// the container vector policy's `distanceFunction`, and containers here have no vector policy.
/// Options VectorDistance refuses make every score undefined, so their direction does not matter.
fn metric(options: Option<&Expr>, params: &super::Params) -> Distance {
    let options = match options {
        Some(Expr::Const(v)) => Some(v.as_ref()),
        Some(Expr::Param(p)) => params.get(p),
        _ => None,
    };
    match options {
        Some(Value::Object(map)) => distance_option(map).unwrap_or(Distance::Cosine),
        _ => Distance::Cosine,
    }
}

/// Literal arrays and objects of constants become constants, so they are built once, not per row
/// (`VectorDistance(c.v, [1, 2], false, {"distanceFunction": "dotproduct"})`).
fn fold_all(select: &mut Select) {
    if let Some(from) = &mut select.from {
        from.joins.iter_mut().for_each(|j| fold(&mut j.source));
    }
    select.filter.iter_mut().for_each(fold);
    select.group_by.iter_mut().for_each(fold);
    match &mut select.projection {
        Projection::Star => {}
        Projection::Value(e) => fold(e),
        Projection::Fields(fields) => fields.iter_mut().for_each(|(_, e)| fold(e)),
    }
    select.order_by.iter_mut().for_each(|(e, _)| fold(e));
}

fn fold(e: &mut Expr) {
    e.children_mut(&mut |c| fold(c));
    let constant = match e {
        Expr::Array(items) if items.iter().all(|i| matches!(i, Expr::Const(_))) => Value::Array(
            items.iter().filter_map(|i| if let Expr::Const(v) = i { Some(v.as_ref().clone()) } else { None }).collect(),
        ),
        Expr::Object(fields) if fields.iter().all(|(_, f)| matches!(f, Expr::Const(_))) => Value::Object(
            fields
                .iter()
                .filter_map(|(k, f)| if let Expr::Const(v) = f { Some((k.clone(), v.as_ref().clone())) } else { None })
                .collect(),
        ),
        _ => return,
    };
    *e = Expr::constant(constant);
}

/// Identifiers become slots of the scope (the FROM alias, then the JOIN aliases).
fn resolve(text: &str, e: &mut Expr, scope: &[String]) -> Result<(), QueryError> {
    if let Expr::Ident(name, pos) = e {
        return match scope.iter().position(|s| s == name && !s.is_empty()) {
            Some(slot) => {
                *e = Expr::Var(slot);
                Ok(())
            }
            None if scope.is_empty() => Err(QueryError::invalid(
                text,
                Some(*pos),
                format!("identifier '{name}' is unknown: the query has no FROM clause"),
            )),
            None => Err(QueryError::invalid(
                text,
                Some(*pos),
                format!(
                    "identifier '{name}' is unknown; the FROM clause declares {}",
                    scope.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        };
    }
    let mut result = Ok(());
    e.children_mut(&mut |c| {
        if result.is_ok() {
            result = resolve(text, c, scope);
        }
    });
    result
}

fn no_aggregate(text: &str, e: &Expr, clause: &str) -> Result<(), QueryError> {
    let mut found = None;
    find_agg(e, &mut found);
    match found {
        Some(pos) => {
            Err(QueryError::invalid(text, Some(pos), format!("aggregate functions are not allowed in {clause}")))
        }
        None => Ok(()),
    }
}

fn find_agg(e: &Expr, found: &mut Option<usize>) {
    if found.is_some() {
        return;
    }
    if let Expr::Agg(_, _, pos) = e {
        *found = Some(*pos);
        return;
    }
    e.children(&mut |c| find_agg(c, found));
}

/// Rewrites an expression of a grouped query: GROUP BY expressions become `GroupKey`, aggregates
/// `AggRef`; anything else that reads the row is an error.
fn to_group_expr(text: &str, e: &mut Expr, keys: &[Expr], aggs: &mut Vec<(AggFn, Expr)>) -> Result<(), QueryError> {
    if let Some(k) = keys.iter().position(|k| k == e) {
        *e = Expr::GroupKey(k);
        return Ok(());
    }
    match e {
        Expr::Agg(f, arg, _) => {
            no_aggregate(text, arg, "the argument of an aggregate")?;
            let arg = std::mem::replace(arg.as_mut(), Expr::Undefined);
            let i = match aggs.iter().position(|(g, a)| g == f && *a == arg) {
                Some(i) => i,
                None => {
                    aggs.push((*f, arg));
                    aggs.len() - 1
                }
            };
            *e = Expr::AggRef(i);
            Ok(())
        }
        Expr::Var(_) => Err(QueryError::invalid(
            text,
            None,
            "a grouped query may only project GROUP BY expressions, aggregates and constants",
        )),
        _ => {
            let mut result = Ok(());
            e.children_mut(&mut |c| {
                if result.is_ok() {
                    result = to_group_expr(text, c, keys, aggs);
                }
            });
            result
        }
    }
}

fn collect_params(e: &Expr, out: &mut Vec<String>) {
    if let Expr::Param(p) = e
        && !out.contains(p)
    {
        out.push(p.clone());
    }
    e.children(&mut |c| collect_params(c, out));
}

/// Equality constraints every result row satisfies, for the storage to narrow its candidates: the
/// conjuncts of WHERE of the form `alias.path = value` (either side), and `alias.path IN (values)`,
/// where the value is a literal or a parameter. Only over the item itself (no FROM path).
pub(crate) fn equalities(plan: &Plan, params: &super::Params) -> Result<Vec<super::Equality>, QueryError> {
    let mut out = Vec::new();
    let Some(from) = &plan.select.from else { return Ok(out) };
    if !from.path.is_empty() || from.iterate {
        return Ok(out);
    }
    let Some(filter) = &plan.select.filter else { return Ok(out) };
    let mut conjuncts = Vec::new();
    flatten_and(filter, &mut conjuncts);
    for c in conjuncts {
        match c {
            Expr::Binary(super::ast::BinOp::Eq, a, b) => {
                let found = match (item_path(a), item_path(b)) {
                    (Some(p), None) => constant(b, params)?.map(|v| (p, v)),
                    (None, Some(p)) => constant(a, params)?.map(|v| (p, v)),
                    _ => None,
                };
                if let Some((path, value)) = found {
                    out.push((path, vec![value]));
                }
            }
            Expr::In { expr, list, negated: false } => {
                let Some(path) = item_path(expr) else { continue };
                let mut values = Vec::new();
                let mut all = true;
                for item in list {
                    match constant(item, params)? {
                        Some(v) => values.push(v),
                        None => all = false,
                    }
                }
                if all && !values.is_empty() {
                    out.push((path, values));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn flatten_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Binary(super::ast::BinOp::And, a, b) => {
            flatten_and(a, out);
            flatten_and(b, out);
        }
        _ => out.push(e),
    }
}

/// `c.a.b` or `c["a"]["b"]` over the FROM alias (slot 0): `["a", "b"]`.
fn item_path(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Prop(base, name) => {
            let mut p = item_path_or_root(base)?;
            p.push(name.clone());
            Some(p)
        }
        Expr::Index(base, idx) => {
            let mut p = item_path_or_root(base)?;
            p.push(idx.const_str()?.to_owned());
            Some(p)
        }
        _ => None,
    }
}

fn item_path_or_root(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var(0) => Some(Vec::new()),
        _ => item_path(e),
    }
}

fn constant(e: &Expr, params: &super::Params) -> Result<Option<Value>, QueryError> {
    match e {
        Expr::Const(v) => Ok(Some(v.as_ref().clone())),
        Expr::Param(p) => match params.get(p) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(QueryError::missing_param(p)),
        },
        _ => Ok(None),
    }
}

/// A nearest-neighbour query the storage can answer from an in-memory vector index: `SELECT
/// [TOP k] … FROM c ORDER BY VectorDistance(c.path, vector[, …]) [OFFSET o LIMIT l]`, with no
/// WHERE, JOIN, GROUP BY or DISTINCT, so that its rows come from the `want` best-scoring items.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    pub path: Vec<String>,
    pub vector: Vec<f64>,
    pub distance: super::Metric,
    /// Whether the best score highest (cosine, dot product) rather than lowest (euclidean).
    pub descending: bool,
    pub want: usize,
}

pub(crate) fn nearest(plan: &Plan, params: &super::Params) -> Option<Nearest> {
    let s = &plan.select;
    let from = s.from.as_ref()?;
    if !from.path.is_empty()
        || from.iterate
        || !from.joins.is_empty()
        || s.filter.is_some()
        || plan.grouped
        || s.distinct
    {
        return None;
    }
    let [(Expr::Call(Func::VectorDistance, args), _)] = s.order_by.as_slice() else {
        return None;
    };
    let path = item_path(args.first()?)?;
    let vector: Vec<f64> =
        constant(args.get(1)?, params).ok()??.as_array()?.iter().map(Value::as_f64).collect::<Option<_>>()?;
    let distance = match args.get(3) {
        None => super::Metric::Cosine,
        Some(options) => match constant(options, params).ok()?? {
            Value::Object(map) => distance_option(&map)?,
            _ => return None,
        },
    };
    let bound = |c: &Count| match c {
        Count::Literal(n) => Some(*n),
        Count::Param(p) => params.get(p)?.as_u64(),
    };
    let want = match (&s.top, &s.offset_limit) {
        (Some(top), None) => bound(top)?,
        (None, Some((offset, limit))) => bound(offset)?.checked_add(bound(limit)?)?,
        (Some(top), Some((offset, limit))) => bound(top)?.min(bound(offset)?.checked_add(bound(limit)?)?),
        (None, None) => return None,
    };
    let descending = directions(plan, params).first()?.descending;
    Some(Nearest { path, vector, distance, descending, want: usize::try_from(want).ok()? })
}
