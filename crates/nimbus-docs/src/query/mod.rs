//! The docs component's query language: a subset of Cosmos DB's NoSQL query language, parsed,
//! planned and evaluated here, once, for every storage backend. The storage only narrows the
//! candidate items ([`Query::equalities`]: partition key, id, declared indexes); [`Query::execute`]
//! decides which of them match and what the result rows are.
//!
//! ```text
//! SELECT [DISTINCT] [TOP n] { * | VALUE expr | expr [[AS] name], … }
//! [FROM container [[AS] alias] | FROM container.path [AS] alias | FROM alias IN container.path]
//! [JOIN alias IN expr …] [WHERE expr] [GROUP BY expr, …] [ORDER BY expr [ASC|DESC], …]
//! [OFFSET n LIMIT m]
//! ```
//!
//! Semantics follow Cosmos DB's documentation: a missing property is `undefined`; a projected
//! property that is undefined is left out, and `SELECT VALUE` of undefined leaves the row out;
//! comparisons across types are undefined and WHERE keeps a row only when its condition is exactly
//! `true`; AND/OR/NOT are three-valued; ORDER BY sorts across types as undefined < null < booleans
//! < numbers < strings < arrays < objects (the SDKs' order), except that `ORDER BY VectorDistance(…)`
//! puts the most similar first whatever direction is written; aggregates skip undefined values;
//! bitwise operators work on 32-bit integers, as JavaScript's. Result objects keep their properties
//! in the order written: the SELECT list's, an object literal's, a stored item's. See `value.rs`
//! for numbers (integers stay integers; floats print like JavaScript's).
//!
//! Choices where the documentation is silent: strings compare by code point; arrays compare
//! element by element and objects by their sorted properties (Cosmos DB compares hashes); rows
//! whose VectorDistance is undefined sort after all others; `x IN (…)` is `false`, not undefined,
//! when `x` is defined and no item equals it; SUM over no rows is 0 and AVG/MIN/MAX are undefined;
//! groups come in the order their first rows arrive; string functions count code points.
//!
//! - `lexer.rs`, `parser.rs`, `ast.rs`: text → syntax tree (depth-limited; errors with line:column);
//! - `plan.rs`: names resolved, aggregates and GROUP BY checked and rewritten, equalities;
//! - `eval.rs`, `functions.rs`, `value.rs`: expressions, system functions, values;
//! - `exec.rs`: the pipeline over the candidate items (bounded selection for TOP/LIMIT + ORDER BY,
//!   early exit once a page is full);
//! - `budget.rs`: what one run may use ([`Limits`]): bytes of intermediate values, a deadline, a
//!   cancel flag.
//!
//! Every run is bounded: strings that functions build are at most [`MAX_STRING_BYTES`] (a longer
//! result is undefined; REPLICATE's at most 10,000 characters, as in Cosmos DB), and what the run
//! builds and keeps at once at most [`Limits::memory`] ([`MAX_QUERY_MEMORY`] by default), else it
//! fails with [`QueryErrorKind::TooExpensive`].
//!
//! Not supported (refused with an error that says so): subqueries (`EXISTS`, `ARRAY(SELECT …)`,
//! `IN (SELECT …)`), user-defined functions, spatial and date-time functions, full-text functions.

mod ast;
mod budget;
mod eval;
mod exec;
mod functions;
mod lexer;
mod parser;
mod plan;
mod value;

#[cfg(test)]
mod cosmos_examples;
#[cfg(test)]
mod fuzz;

use std::fmt;

use serde_json::Value;

pub use budget::{Limits, MAX_QUERY_MEMORY, MAX_STRING_BYTES};
pub use functions::Distance as Metric;
pub use parser::MAX_DEPTH;
pub use plan::Nearest;
pub(crate) use value::canonical_key;

/// Query parameters by name, with the `@` (`"@id"`).
pub type Params = std::collections::HashMap<String, Value>;

/// A path from the item's root (property names) and the values the item may have there.
pub type Equality = (Vec<String>, Vec<Value>);

/// Where in the query text an error is: byte offset, and 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn locate(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { offset, line, column }
    }
}

/// What kind of mistake a [`QueryError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryErrorKind {
    /// The text is not a query of the language.
    Syntax,
    /// Well-formed, but not a valid query (unknown alias, a non-grouped property in a grouped
    /// projection, an aggregate in WHERE…).
    Invalid,
    /// A parameter is missing, or unusable where it is used (`TOP @n` with a string).
    Parameter,
    /// The run needed more memory than its [`Limits::memory`].
    TooExpensive,
    /// The run passed its [`Limits::deadline`].
    Timeout,
    /// The run's [`Limits::cancel`] flag was set.
    Cancelled,
}

/// A query that cannot be parsed or run: the caller's mistake, or a query beyond its [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub kind: QueryErrorKind,
    /// Where, for errors about the text.
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            QueryErrorKind::Syntax => "syntax error",
            QueryErrorKind::Invalid => "invalid query",
            QueryErrorKind::Parameter => "parameter error",
            QueryErrorKind::TooExpensive => "query too expensive",
            QueryErrorKind::Timeout => "query timed out",
            QueryErrorKind::Cancelled => "query cancelled",
        };
        match self.position {
            Some(p) => write!(f, "{what} at {}:{}: {}", p.line, p.column, self.message),
            None => write!(f, "{what}: {}", self.message),
        }
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    pub(crate) fn syntax(text: &str, offset: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            kind: QueryErrorKind::Syntax,
            position: Some(Position::locate(text, offset)),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(text: &str, offset: Option<usize>, message: impl Into<String>) -> QueryError {
        QueryError {
            kind: QueryErrorKind::Invalid,
            position: offset.map(|o| Position::locate(text, o)),
            message: message.into(),
        }
    }

    pub(crate) fn param(message: impl Into<String>) -> QueryError {
        QueryError { kind: QueryErrorKind::Parameter, position: None, message: message.into() }
    }

    pub(crate) fn missing_param(name: &str) -> QueryError {
        QueryError::param(format!("parameter {name} is used by the query but was not given"))
    }
}

/// Which rows of a query's result to answer: after the first `skip`, at most `rows`, and no more
/// once they reach `bytes` (at least one row: a page never stalls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub skip: u64,
    pub rows: u64,
    pub bytes: usize,
}

impl Window {
    /// The whole result.
    pub const ALL: Window = Window { skip: 0, rows: u64::MAX, bytes: usize::MAX };
}

/// The rows of a [`Window`], and whether the result goes on after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: Vec<Value>,
    pub more: bool,
}

/// A parsed and planned query; cheap to run many times with different parameters.
#[derive(Debug, Clone)]
pub struct Query {
    plan: plan::Plan,
}

/// Parses and plans a query.
pub fn parse(text: &str) -> Result<Query, QueryError> {
    let select = parser::parse(text)?;
    Ok(Query { plan: plan::plan(text, select)? })
}

impl Query {
    /// Equality constraints that every result row's item satisfies, for the storage to narrow the
    /// candidates: `(path, values)` where the item's value at `path` (property names from the item's
    /// root, like `["userId"]` or `["address", "city"]`) equals one of `values`. They come from the
    /// top-level AND-ed conditions of WHERE of the form `alias.path = literal-or-parameter` (either
    /// side) and `alias.path IN (literals-or-parameters)`; several entries for one path must all
    /// hold. Numbers compare numerically (`5` matches `5.0`). Errs on a parameter that is not given.
    pub fn equalities(&self, params: &Params) -> Result<Vec<Equality>, QueryError> {
        plan::equalities(&self.plan, params)
    }

    /// Runs the query over the candidate items (each a whole document) and returns the result
    /// rows in order, within the default [`Limits`]. Items that do not match are skipped, so the
    /// candidates may be a superset.
    pub fn execute<'a>(
        &self,
        items: impl IntoIterator<Item = &'a Value>,
        params: &Params,
    ) -> Result<Vec<Value>, QueryError> {
        Ok(self.run(items, params, Window::ALL, &Limits::default())?.rows)
    }

    /// Runs the query for one page of its result: the rows of `window`, and whether more follow.
    /// The work stops once the page is full and one more row is known to exist (unless ORDER BY,
    /// GROUP BY, aggregates or DISTINCT with ORDER BY need every row first), or at `limits`.
    pub fn run<'a>(
        &self,
        items: impl IntoIterator<Item = &'a Value>,
        params: &Params,
        window: Window,
        limits: &Limits,
    ) -> Result<Rows, QueryError> {
        exec::execute(&self.plan, items, params, window, limits)
    }

    /// Whether the query aggregates (aggregate functions or GROUP BY): its result depends on all
    /// matching items at once, so it cannot be paged by running it over a slice of them.
    pub fn is_aggregate(&self) -> bool {
        self.plan.grouped
    }

    /// Whether the query has ORDER BY (the caller cannot page it by item order alone).
    pub fn is_ordered(&self) -> bool {
        !self.plan.select.order_by.is_empty()
    }

    /// The shape of a nearest-neighbour query whose rows come from its `want` best-scoring items
    /// (see [`Nearest`]), for a storage that can find those without reading every item; `None`
    /// for any other query (or parameters that do not fit).
    pub fn nearest(&self, params: &Params) -> Option<Nearest> {
        plan::nearest(&self.plan, params)
    }

    /// The parameters the query uses (with their `@`).
    pub fn parameters(&self) -> &[String] {
        &self.plan.params
    }
}
