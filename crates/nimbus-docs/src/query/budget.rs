//! What one run of a query may use: bytes of intermediate values, time, and a flag that stops it.
//!
//! The evaluator charges what it builds before it builds it (a string a function returns, a copy
//! of an item for the projection, an array literal's elements), and what it keeps across rows (rows
//! waiting for ORDER BY, groups and their aggregates, DISTINCT's keys, the page). What a row builds
//! and drops is given back after the row (`mark`/`release`), so a long scan is not refused for the
//! garbage it made on the way; what is kept stays charged. Past the limit the budget *stops*: the
//! evaluation answers undefined from then on, and the pipeline, which checks after every row,
//! answers the error. Time and cancellation are checked every [`CHECK_EVERY`] ticks (a row, a join
//! element, a function call, a few thousand steps of a quadratic function).
//!
//! Sizes are estimates (the JSON's text plus a word or so per node), not the allocator's count:
//! enough to bound memory within a small factor of the limit.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::Value;

use super::value::V;
use super::{QueryError, QueryErrorKind};

/// Bytes of intermediate values one query may hold at once.
pub const MAX_QUERY_MEMORY: usize = 64 * 1024 * 1024;
/// The longest string a function or `||` builds (bytes; the size of the largest item): a longer
/// result is undefined, as REPLICATE's beyond 10,000 characters is in Cosmos DB.
pub const MAX_STRING_BYTES: usize = 2 * 1024 * 1024;
/// Time and cancellation are looked at once per this many ticks.
const CHECK_EVERY: u32 = 64;
/// What a node of a value costs beyond its text (the enum, a pointer, the map's bookkeeping).
pub(crate) const NODE: usize = 32;
/// What a non-empty object costs beyond its properties (a B-tree leaf holds 11 of them).
pub(crate) const MAP: usize = 640;

/// The limits of one run of a query.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of intermediate values (see the module's documentation).
    pub memory: usize,
    /// When the run stops with [`QueryErrorKind::Timeout`].
    pub deadline: Option<Instant>,
    /// Set by whoever waits for the run (a request whose client left) to stop it with
    /// [`QueryErrorKind::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: MAX_QUERY_MEMORY, deadline: None, cancel: None }
    }
}

impl Limits {
    /// `Err` once the deadline has passed or the run was cancelled (for loops around a run).
    pub fn check(&self) -> Result<(), QueryError> {
        match self.expired() {
            Some(stop) => Err(stop.error(self.memory)),
            None => Ok(()),
        }
    }

    fn expired(&self) -> Option<Stop> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Some(Stop::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Stop::Time);
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Memory,
    Time,
    Cancelled,
}

impl Stop {
    fn error(self, memory: usize) -> QueryError {
        let (kind, message) = match self {
            Stop::Memory => (
                QueryErrorKind::TooExpensive,
                format!(
                    "the query needs more than {} MiB for the values it builds and the rows it holds \
                     (for ORDER BY, GROUP BY, DISTINCT and the page); narrow it with a partition key, \
                     WHERE or TOP",
                    memory.div_ceil(1024 * 1024)
                ),
            ),
            Stop::Time => (QueryErrorKind::Timeout, "the query ran out of time".to_owned()),
            Stop::Cancelled => (QueryErrorKind::Cancelled, "the query was cancelled".to_owned()),
        };
        QueryError { kind, position: None, message }
    }
}

/// The account of one run (single-threaded: the evaluator runs on one thread).
pub(crate) struct Budget {
    limits: Limits,
    /// Bytes built for the row (or join level) in progress; given back by `release`.
    transient: Cell<usize>,
    /// Bytes kept across rows.
    kept: Cell<usize>,
    stop: Cell<Option<Stop>>,
    ticks: Cell<u32>,
}

impl Budget {
    pub(crate) fn new(limits: &Limits) -> Budget {
        Budget {
            limits: limits.clone(),
            transient: Cell::new(0),
            kept: Cell::new(0),
            stop: Cell::new(None),
            ticks: Cell::new(0),
        }
    }

    /// Whether the run may go on.
    pub(crate) fn ok(&self) -> bool {
        self.stop.get().is_none()
    }

    /// The error that stopped the run, if any.
    pub(crate) fn result(&self) -> Result<(), QueryError> {
        match self.stop.get() {
            None => Ok(()),
            Some(stop) => Err(stop.error(self.limits.memory)),
        }
    }

    fn over(&self) -> bool {
        if self.transient.get().saturating_add(self.kept.get()) > self.limits.memory {
            self.stop.set(Some(Stop::Memory));
        }
        self.ok()
    }

    /// Charges `bytes` about to be built for the current row; false (and stopped) past the limit.
    pub(crate) fn charge(&self, bytes: usize) -> bool {
        if !self.ok() {
            return false;
        }
        self.transient.set(self.transient.get().saturating_add(bytes));
        self.over()
    }

    /// Charges `bytes` kept across rows; false (and stopped) past the limit.
    pub(crate) fn keep(&self, bytes: usize) -> bool {
        if !self.ok() {
            return false;
        }
        self.kept.set(self.kept.get().saturating_add(bytes));
        self.over()
    }

    /// Gives back kept bytes (rows a bounded ORDER BY dropped).
    pub(crate) fn unkeep(&self, bytes: usize) {
        self.kept.set(self.kept.get().saturating_sub(bytes));
    }

    /// Where the current row's charges start; see [`Budget::release`].
    pub(crate) fn mark(&self) -> usize {
        self.transient.get()
    }

    /// Gives back what was charged since `mark` (the row's temporary values are gone).
    pub(crate) fn release(&self, mark: usize) {
        if mark < self.transient.get() {
            self.transient.set(mark);
        }
    }

    /// One unit of work; every [`CHECK_EVERY`] looks at the clock and the cancel flag. False once
    /// stopped.
    pub(crate) fn tick(&self) -> bool {
        if !self.ok() {
            return false;
        }
        let t = self.ticks.get().wrapping_add(1);
        self.ticks.set(t);
        if t.is_multiple_of(CHECK_EVERY)
            && let Some(stop) = self.limits.expired()
        {
            self.stop.set(Some(stop));
        }
        self.ok()
    }

    /// `tick`, as a `Result` for the pipeline.
    pub(crate) fn step(&self) -> Result<(), QueryError> {
        self.tick();
        self.result()
    }

    /// The value, owned: a borrowed one is copied, its size charged first. `None` for undefined,
    /// or once over budget.
    pub(crate) fn own(&self, v: V<'_>) -> Option<Value> {
        match v {
            V::Undef => None,
            V::Own(x) => Some(x),
            V::Ref(x) => self.charge(size(x)).then(|| x.clone()),
        }
    }

    /// A copy of a value in scope (an alias, a group's key or aggregate): borrowed ones stay
    /// borrowed; an owned one is copied and charged.
    pub(crate) fn copy<'a>(&self, v: &V<'a>) -> V<'a> {
        match v {
            V::Own(x) if self.charge(size(x)) => V::Own(x.clone()),
            V::Own(_) => V::Undef,
            other => other.clone(),
        }
    }
}

/// The estimated size of a value: its strings, plus [`NODE`] per node and per property, plus
/// [`MAP`] per non-empty object.
pub(crate) fn size(v: &Value) -> usize {
    match v {
        Value::String(s) => NODE + s.len(),
        Value::Array(a) => NODE + a.iter().map(size).sum::<usize>(),
        Value::Object(m) if m.is_empty() => NODE,
        Value::Object(m) => NODE + MAP + m.iter().map(|(k, x)| NODE + k.len() + size(x)).sum::<usize>(),
        _ => NODE,
    }
}

/// What a value during evaluation holds of its own (borrowed ones cost only their slot).
pub(crate) fn owned_size(v: &V<'_>) -> usize {
    match v {
        V::Own(x) => size(x),
        _ => NODE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn charges_stop_at_the_limit_and_rows_give_back() {
        let b = Budget::new(&Limits { memory: 1000, ..Limits::default() });
        let m = b.mark();
        assert!(b.charge(600));
        b.release(m);
        assert!(b.charge(600), "the first row's temporaries were given back");
        assert!(b.keep(300));
        assert!(!b.charge(200), "kept bytes count with the row's");
        assert!(!b.ok());
        assert_eq!(b.result().unwrap_err().kind, QueryErrorKind::TooExpensive);
        assert!(b.result().unwrap_err().message.contains("MiB"));
    }

    #[test]
    fn deadline_and_cancel_stop_within_a_check() {
        let past = Budget::new(&Limits { deadline: Some(Instant::now()), ..Limits::default() });
        assert!((0..CHECK_EVERY).any(|_| !past.tick()));
        assert_eq!(past.result().unwrap_err().kind, QueryErrorKind::Timeout);
        let flag = Arc::new(AtomicBool::new(false));
        let b = Budget::new(&Limits { cancel: Some(flag.clone()), ..Limits::default() });
        assert!((0..CHECK_EVERY).all(|_| b.tick()));
        flag.store(true, Ordering::Relaxed);
        assert!((0..CHECK_EVERY).any(|_| !b.tick()));
        assert_eq!(b.result().unwrap_err().kind, QueryErrorKind::Cancelled);
    }

    #[test]
    fn sizes_grow_with_the_text() {
        assert!(size(&json!("x".repeat(1000))) > 1000);
        assert!(size(&json!({"a": [1, 2, "abc"]})) > size(&json!([1, 2, "abc"])));
    }
}
