//! The syntax tree, as the parser builds it and the planner rewrites it (identifiers become slots,
//! aggregates and grouped expressions become references into a group's values).

use serde_json::Value;

use super::functions::Func;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Plus,
    Not,
    BitNot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Coalesce,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    BitOr,
    BitXor,
    BitAnd,
    Shl,
    Shr,
    ShrZero,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFn {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// Boxed: values are large, and every node (and every parser and evaluator frame holding one)
    /// would pay for it.
    Const(Box<Value>),
    Undefined,
    /// `@name`, with its `@`.
    Param(String),
    /// An identifier and its byte offset; the planner turns it into `Var`.
    Ident(String, usize),
    /// The n-th name in scope (the FROM alias, then each JOIN alias).
    Var(usize),
    Prop(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        escape: Option<Box<Expr>>,
        negated: bool,
    },
    Call(Func, Vec<Expr>),
    /// An aggregate call and its byte offset (for errors about where it may appear).
    Agg(AggFn, Box<Expr>, usize),
    Array(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    /// After planning: the value of the n-th aggregate of the current group.
    AggRef(usize),
    /// After planning: the n-th GROUP BY value of the current group.
    GroupKey(usize),
}

impl Expr {
    pub(crate) fn constant(v: Value) -> Expr {
        Expr::Const(Box::new(v))
    }

    /// The string of a string literal (`c["name"]`).
    pub(crate) fn const_str(&self) -> Option<&str> {
        match self {
            Expr::Const(v) => v.as_str(),
            _ => None,
        }
    }

    /// Calls `f` on every direct child.
    pub(crate) fn children(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            Expr::Const(_)
            | Expr::Undefined
            | Expr::Param(_)
            | Expr::Ident(..)
            | Expr::Var(_)
            | Expr::AggRef(_)
            | Expr::GroupKey(_) => {}
            Expr::Prop(e, _) | Expr::Unary(_, e) | Expr::Agg(_, e, _) => f(e),
            Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                f(a);
                f(b);
            }
            Expr::Ternary(a, b, c) => {
                f(a);
                f(b);
                f(c);
            }
            Expr::In { expr, list, .. } => {
                f(expr);
                list.iter().for_each(f);
            }
            Expr::Between { expr, low, high, .. } => {
                f(expr);
                f(low);
                f(high);
            }
            Expr::Like { expr, pattern, escape, .. } => {
                f(expr);
                f(pattern);
                if let Some(e) = escape {
                    f(e);
                }
            }
            Expr::Call(_, args) | Expr::Array(args) => args.iter().for_each(f),
            Expr::Object(fields) => fields.iter().for_each(|(_, e)| f(e)),
        }
    }

    /// Calls `f` on every direct child, mutably.
    pub(crate) fn children_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        match self {
            Expr::Const(_)
            | Expr::Undefined
            | Expr::Param(_)
            | Expr::Ident(..)
            | Expr::Var(_)
            | Expr::AggRef(_)
            | Expr::GroupKey(_) => {}
            Expr::Prop(e, _) | Expr::Unary(_, e) | Expr::Agg(_, e, _) => f(e),
            Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                f(a);
                f(b);
            }
            Expr::Ternary(a, b, c) => {
                f(a);
                f(b);
                f(c);
            }
            Expr::In { expr, list, .. } => {
                f(expr);
                list.iter_mut().for_each(f);
            }
            Expr::Between { expr, low, high, .. } => {
                f(expr);
                f(low);
                f(high);
            }
            Expr::Like { expr, pattern, escape, .. } => {
                f(expr);
                f(pattern);
                if let Some(e) = escape {
                    f(e);
                }
            }
            Expr::Call(_, args) | Expr::Array(args) => args.iter_mut().for_each(f),
            Expr::Object(fields) => fields.iter_mut().for_each(|(_, e)| f(e)),
        }
    }

    /// Whether any node of the tree satisfies `pred`.
    pub(crate) fn any(&self, pred: &dyn Fn(&Expr) -> bool) -> bool {
        if pred(self) {
            return true;
        }
        let mut found = false;
        self.children(&mut |c| found = found || c.any(pred));
        found
    }
}

/// `TOP`, `OFFSET` and `LIMIT` take a literal or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Count {
    Literal(u64),
    Param(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Projection {
    /// `SELECT *`.
    Star,
    /// `SELECT VALUE expr`.
    Value(Expr),
    /// `SELECT a, b AS x, …`: each with its output name (given, derived from the path, or `$n`).
    Fields(Vec<(String, Expr)>),
}

/// One step of a FROM path: a property or an array position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Prop(String),
    Index(usize),
}

/// The FROM clause: the container (or a path into each item) bound to an alias, then the JOINs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct From {
    /// The alias of each item (slot 0).
    pub alias: String,
    /// Property path inside each item that is the source (`FROM f.children[0] x`), empty for the item.
    pub path: Vec<Step>,
    /// `FROM x IN c.children`: iterate the array at `path`.
    pub iterate: bool,
    /// The JOINs (slots 1, 2, …).
    pub joins: Vec<Join>,
}

/// `JOIN alias IN expr` (each element of the array), or `JOIN expr [AS alias]` (the value itself).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Join {
    pub alias: String,
    pub source: Expr,
    pub iterate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Select {
    pub distinct: bool,
    pub top: Option<Count>,
    pub projection: Projection,
    pub from: Option<From>,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub order_by: Vec<(Expr, bool)>,
    pub offset_limit: Option<(Count, Count)>,
}
