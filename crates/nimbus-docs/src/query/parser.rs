//! Recursive descent for the clauses, precedence climbing for expressions.
//!
//! Precedence, loosest first: `? :`, `??`, `OR`, `AND`, `NOT`, comparisons (`= != <> < <= > >=`,
//! `IN`, `BETWEEN`, `LIKE`), `||`, `|`, `^`, `&`, shifts, `+ -`, `* / %`, unary `- + ~`, then
//! property access (`.name`, `[expr]`).
//!
//! The tree's depth is limited ([`MAX_DEPTH`]), counting every node (so `1+1+…+1` is as deep as
//! its terms are many), which bounds the recursion of the parser, the evaluator and even `Drop`.

use serde_json::Value;

use super::QueryError;
use super::ast::{AggFn, BinOp, Count, Expr, From, Join, Projection, Select, Step, UnOp};
use super::functions::Func;
use super::lexer::{Kw, Spanned, Tok, tokenize};

/// Deepest expression tree accepted.
pub const MAX_DEPTH: u32 = 128;

/// Comparison level: what `NOT` applies to, and above which BETWEEN's bounds are parsed.
const CMP: u8 = 6;

pub(crate) fn parse(text: &str) -> Result<Select, QueryError> {
    let toks = tokenize(text)?;
    let mut p = Parser { text, toks, i: 0, level: 0 };
    let select = p.select()?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("end of query"));
    }
    Ok(select)
}

type R = Result<(Expr, u32), QueryError>;

struct Parser<'t> {
    text: &'t str,
    toks: Vec<Spanned>,
    i: usize,
    /// Current recursion depth.
    level: u32,
}

fn bin(op: BinOp, (a, da): (Expr, u32), (b, db): (Expr, u32)) -> (Expr, u32) {
    (Expr::Binary(op, Box::new(a), Box::new(b)), da.max(db) + 1)
}

impl<'t> Parser<'t> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i].pos
    }

    fn bump(&mut self) -> Tok {
        let t = self.toks[self.i].tok.clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, k: Kw) -> bool {
        self.eat(&Tok::Kw(k))
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> QueryError {
        QueryError::syntax(self.text, pos, msg)
    }

    fn unexpected(&self, expected: &str) -> QueryError {
        self.err(self.pos(), format!("expected {expected}, found {}", self.peek().describe()))
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), QueryError> {
        if self.eat(&t) { Ok(()) } else { Err(self.unexpected(what)) }
    }

    fn expect_kw(&mut self, k: Kw) -> Result<(), QueryError> {
        if self.eat_kw(k) { Ok(()) } else { Err(self.unexpected(k.name())) }
    }

    fn ident(&mut self, what: &str) -> Result<String, QueryError> {
        match self.peek() {
            Tok::Ident(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// A property name after `.`: an identifier or a keyword, as written.
    fn name_after_dot(&mut self) -> Result<String, QueryError> {
        let t = &self.toks[self.i];
        match &t.tok {
            Tok::Ident(_) | Tok::Kw(_) => {
                let s = self.text[t.pos..t.end].to_string();
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected("a property name")),
        }
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.level += 1;
        if self.level > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.level -= 1;
    }

    fn too_deep(&self) -> QueryError {
        self.err(self.pos(), format!("expression nested too deeply (more than {MAX_DEPTH} levels)"))
    }

    fn check(&self, node: (Expr, u32)) -> R {
        if node.1 > MAX_DEPTH { Err(self.too_deep()) } else { Ok(node) }
    }

    // ---- clauses ----

    fn select(&mut self) -> Result<Select, QueryError> {
        self.expect_kw(Kw::Select)?;
        let distinct = self.eat_kw(Kw::Distinct);
        let top = if self.eat_kw(Kw::Top) { Some(self.count("TOP")?) } else { None };
        let projection = self.projection()?;
        let from = if self.eat_kw(Kw::From) { Some(self.from()?) } else { None };
        let filter = if self.eat_kw(Kw::Where) { Some(self.expr()?.0) } else { None };
        let mut group_by = Vec::new();
        if self.eat_kw(Kw::Group) {
            self.expect_kw(Kw::By)?;
            loop {
                group_by.push(self.expr()?.0);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let mut order_by = Vec::new();
        if self.eat_kw(Kw::Order) {
            self.expect_kw(Kw::By)?;
            loop {
                let e = self.expr()?.0;
                let desc = if self.eat_kw(Kw::Desc) {
                    true
                } else {
                    self.eat_kw(Kw::Asc);
                    false
                };
                order_by.push((e, desc));
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let offset_limit = if self.eat_kw(Kw::Offset) {
            let offset = self.count("OFFSET")?;
            self.expect_kw(Kw::Limit)?;
            Some((offset, self.count("LIMIT")?))
        } else {
            None
        };
        Ok(Select { distinct, top, projection, from, filter, group_by, order_by, offset_limit })
    }

    fn count(&mut self, clause: &str) -> Result<Count, QueryError> {
        let pos = self.pos();
        match self.bump() {
            Tok::Num(n) if n.as_u64().is_some() => Ok(Count::Literal(n.as_u64().unwrap_or(0))),
            Tok::Param(p) => Ok(Count::Param(p)),
            _ => Err(self.err(pos, format!("{clause} takes a non-negative integer or a parameter"))),
        }
    }

    fn projection(&mut self) -> Result<Projection, QueryError> {
        if self.eat(&Tok::Star) {
            return Ok(Projection::Star);
        }
        if self.eat_kw(Kw::Value) {
            if self.peek() == &Tok::Star {
                return Err(self.err(self.pos(), "SELECT VALUE * is not valid; use SELECT *"));
            }
            let e = self.expr()?.0;
            // Cosmos DB accepts (and ignores) an alias after VALUE's expression.
            if self.eat_kw(Kw::As) {
                self.ident("an alias")?;
            }
            return Ok(Projection::Value(e));
        }
        let mut fields: Vec<(String, Expr)> = Vec::new();
        let mut unnamed = 0;
        loop {
            if self.peek() == &Tok::Star {
                return Err(self.err(self.pos(), "'*' must be the only item of the projection"));
            }
            let pos = self.pos();
            let e = self.expr()?.0;
            let name = if self.eat_kw(Kw::As) {
                Some(self.ident("an alias after AS")?)
            } else if let Tok::Ident(s) = self.peek() {
                let s = s.clone();
                self.bump();
                Some(s)
            } else {
                None
            };
            let name = match name.or_else(|| derived_name(&e)) {
                Some(n) => n,
                None => {
                    unnamed += 1;
                    format!("${unnamed}")
                }
            };
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(self.err(pos, format!("duplicate property name '{name}' in the projection")));
            }
            fields.push((name, e));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        Ok(Projection::Fields(fields))
    }

    fn from(&mut self) -> Result<From, QueryError> {
        let (alias, path, iterate) = if matches!(self.peek(), Tok::Ident(_)) && self.peek_at(1) == &Tok::Kw(Kw::In) {
            let alias = self.ident("an alias")?;
            self.bump();
            self.ident("a container name")?;
            (alias, self.source_path()?, true)
        } else {
            let container = self.ident("a container name after FROM")?;
            let path = self.source_path()?;
            let alias = if self.eat_kw(Kw::As) {
                self.ident("an alias after AS")?
            } else if let Tok::Ident(s) = self.peek() {
                let s = s.clone();
                self.bump();
                s
            } else if path.is_empty() {
                container
            } else {
                return Err(self.unexpected("an alias for the FROM path"));
            };
            (alias, path, false)
        };
        let mut joins: Vec<Join> = Vec::new();
        while self.eat_kw(Kw::Join) {
            let pos = self.pos();
            if self.peek() == &Tok::LParen && self.peek_at(1) == &Tok::Kw(Kw::Select) {
                return Err(self.err(pos, "subqueries in JOIN are not supported"));
            }
            let join = if matches!(self.peek(), Tok::Ident(_)) && self.peek_at(1) == &Tok::Kw(Kw::In) {
                let name = self.ident("an alias after JOIN")?;
                self.bump();
                Join { alias: name, source: self.expr()?.0, iterate: true }
            } else {
                let source = self.expr()?.0;
                let name = if self.eat_kw(Kw::As) {
                    self.ident("an alias after AS")?
                } else if let Tok::Ident(s) = self.peek() {
                    let s = s.clone();
                    self.bump();
                    s
                } else {
                    derived_name(&source).unwrap_or_default()
                };
                Join { alias: name, source, iterate: false }
            };
            if !join.alias.is_empty() && (join.alias == alias || joins.iter().any(|j| j.alias == join.alias)) {
                return Err(self.err(pos, format!("alias '{}' is declared twice", join.alias)));
            }
            joins.push(join);
        }
        Ok(From { alias, path, iterate, joins })
    }

    fn source_path(&mut self) -> Result<Vec<Step>, QueryError> {
        let mut path = Vec::new();
        loop {
            if self.eat(&Tok::Dot) {
                path.push(Step::Prop(self.name_after_dot()?));
            } else if self.eat(&Tok::LBracket) {
                let pos = self.pos();
                match self.bump() {
                    Tok::Str(s) => path.push(Step::Prop(s)),
                    Tok::Num(n) if n.as_u64().is_some() => {
                        path.push(Step::Index(n.as_u64().unwrap_or(0) as usize));
                    }
                    _ => return Err(self.err(pos, "expected a property name or an array index")),
                }
                self.expect(Tok::RBracket, "']'")?;
            } else {
                return Ok(path);
            }
        }
    }

    // ---- expressions ----

    pub(crate) fn expr(&mut self) -> R {
        self.enter()?;
        let cond = self.binary(0)?;
        let out = if self.eat(&Tok::Question) {
            let then = self.expr()?;
            self.expect(Tok::Colon, "':' of the conditional expression")?;
            let other = self.expr()?;
            let depth = cond.1.max(then.1).max(other.1) + 1;
            self.check((Expr::Ternary(Box::new(cond.0), Box::new(then.0), Box::new(other.0)), depth))?
        } else {
            cond
        };
        self.leave();
        Ok(out)
    }

    /// Binary operators of at least level `min` (0 = `??`).
    fn binary(&mut self, min: u8) -> R {
        let mut lhs = self.prefix(min)?;
        loop {
            let (level, op) = match self.peek() {
                Tok::Coalesce => (1, Some(BinOp::Coalesce)),
                Tok::Kw(Kw::Or) => (3, Some(BinOp::Or)),
                Tok::Kw(Kw::And) => (4, Some(BinOp::And)),
                Tok::Eq => (CMP, Some(BinOp::Eq)),
                Tok::Ne => (CMP, Some(BinOp::Ne)),
                Tok::Lt => (CMP, Some(BinOp::Lt)),
                Tok::Le => (CMP, Some(BinOp::Le)),
                Tok::Gt => (CMP, Some(BinOp::Gt)),
                Tok::Ge => (CMP, Some(BinOp::Ge)),
                Tok::Kw(Kw::In | Kw::Between | Kw::Like) => (CMP, None),
                Tok::Kw(Kw::Not) if matches!(self.peek_at(1), Tok::Kw(Kw::In | Kw::Between | Kw::Like)) => (CMP, None),
                Tok::Concat => (7, Some(BinOp::Concat)),
                Tok::BitOr => (8, Some(BinOp::BitOr)),
                Tok::BitXor => (9, Some(BinOp::BitXor)),
                Tok::BitAnd => (10, Some(BinOp::BitAnd)),
                Tok::Shl => (11, Some(BinOp::Shl)),
                Tok::Shr => (11, Some(BinOp::Shr)),
                Tok::ShrZero => (11, Some(BinOp::ShrZero)),
                Tok::Plus => (12, Some(BinOp::Add)),
                Tok::Minus => (12, Some(BinOp::Sub)),
                Tok::Star => (13, Some(BinOp::Mul)),
                Tok::Slash => (13, Some(BinOp::Div)),
                Tok::Percent => (13, Some(BinOp::Mod)),
                _ => break,
            };
            if level < min {
                break;
            }
            let node = match op {
                Some(op) => {
                    self.bump();
                    // `??` is right-associative; the others are left-associative.
                    let rhs = if op == BinOp::Coalesce { self.binary(level)? } else { self.binary(level + 1)? };
                    bin(op, lhs, rhs)
                }
                None => self.predicate(lhs)?,
            };
            lhs = self.check(node)?;
        }
        Ok(lhs)
    }

    /// `[NOT] IN (…)`, `[NOT] BETWEEN a AND b`, `[NOT] LIKE p [ESCAPE e]` after their operand.
    fn predicate(&mut self, (lhs, dl): (Expr, u32)) -> R {
        let negated = self.eat_kw(Kw::Not);
        let expr = Box::new(lhs);
        match self.bump() {
            Tok::Kw(Kw::In) => {
                self.expect(Tok::LParen, "'(' after IN")?;
                if matches!(self.peek(), Tok::Kw(Kw::Select)) {
                    return Err(self.err(self.pos(), "subqueries are not supported"));
                }
                let mut list = Vec::new();
                let mut depth = dl;
                loop {
                    let (e, d) = self.expr()?;
                    depth = depth.max(d);
                    list.push(e);
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect(Tok::RParen, "')' closing the IN list")?;
                Ok((Expr::In { expr, list, negated }, depth + 1))
            }
            Tok::Kw(Kw::Between) => {
                let (low, d1) = self.binary(CMP + 1)?;
                self.expect_kw(Kw::And)?;
                let (high, d2) = self.binary(CMP + 1)?;
                let depth = dl.max(d1).max(d2) + 1;
                Ok((Expr::Between { expr, low: Box::new(low), high: Box::new(high), negated }, depth))
            }
            Tok::Kw(Kw::Like) => {
                let (pattern, d1) = self.binary(CMP + 1)?;
                let (escape, d2) = if self.eat_kw(Kw::Escape) {
                    let (e, d) = self.binary(CMP + 1)?;
                    (Some(Box::new(e)), d)
                } else {
                    (None, 0)
                };
                let depth = dl.max(d1).max(d2) + 1;
                Ok((Expr::Like { expr, pattern: Box::new(pattern), escape, negated }, depth))
            }
            _ => Err(self.err(self.toks[self.i.saturating_sub(1)].pos, "expected IN, BETWEEN or LIKE after NOT")),
        }
    }

    fn prefix(&mut self, min: u8) -> R {
        let op = match self.peek() {
            Tok::Kw(Kw::Not) => UnOp::Not,
            Tok::Minus => UnOp::Neg,
            Tok::Plus => UnOp::Plus,
            Tok::BitNot => UnOp::BitNot,
            _ => return self.postfix(),
        };
        self.bump();
        self.enter()?;
        // NOT applies to a whole comparison; the arithmetic signs to one operand.
        let (e, d) = if op == UnOp::Not { self.binary(CMP.max(min))? } else { self.prefix(14)? };
        self.leave();
        // A negative number literal stays a literal (so it can be a TOP count, an IN list value…).
        if op == UnOp::Neg
            && let Expr::Const(c) = &e
            && let Value::Number(n) = c.as_ref()
        {
            let neg = match n.as_i64() {
                Some(i) if i != 0 => i.checked_neg().map(Value::from),
                _ => None,
            };
            if let Some(v) = neg {
                return Ok((Expr::constant(v), d));
            }
        }
        self.check((Expr::Unary(op, Box::new(e)), d + 1))
    }

    fn postfix(&mut self) -> R {
        let mut node = self.primary()?;
        loop {
            if self.eat(&Tok::Dot) {
                let name = self.name_after_dot()?;
                node = (Expr::Prop(Box::new(node.0), name), node.1 + 1);
            } else if self.peek() == &Tok::LBracket {
                self.bump();
                let (idx, d) = self.expr()?;
                self.expect(Tok::RBracket, "']'")?;
                node = (Expr::Index(Box::new(node.0), Box::new(idx)), node.1.max(d) + 1);
            } else {
                return Ok(node);
            }
            node = self.check(node)?;
        }
    }

    fn primary(&mut self) -> R {
        let pos = self.pos();
        match self.bump() {
            Tok::Num(n) => Ok((Expr::constant(Value::Number(n)), 1)),
            Tok::Str(s) => Ok((Expr::constant(Value::String(s)), 1)),
            Tok::Kw(Kw::True) => Ok((Expr::constant(Value::Bool(true)), 1)),
            Tok::Kw(Kw::False) => Ok((Expr::constant(Value::Bool(false)), 1)),
            Tok::Kw(Kw::Null) => Ok((Expr::constant(Value::Null), 1)),
            Tok::Kw(Kw::Undefined) => Ok((Expr::Undefined, 1)),
            Tok::Param(p) => Ok((Expr::Param(p), 1)),
            Tok::Ident(name) => {
                if self.peek() == &Tok::LParen {
                    self.call(name, pos)
                } else if self.peek() == &Tok::Dot
                    && name.eq_ignore_ascii_case("udf")
                    && matches!(self.peek_at(2), Tok::LParen)
                {
                    Err(self.err(pos, "user-defined functions are not supported"))
                } else {
                    Ok((Expr::Ident(name, pos), 1))
                }
            }
            Tok::LParen => {
                if matches!(self.peek(), Tok::Kw(Kw::Select)) {
                    return Err(self.err(self.pos(), "subqueries are not supported"));
                }
                let e = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::LBracket => {
                let mut items = Vec::new();
                let mut depth = 0;
                if !self.eat(&Tok::RBracket) {
                    loop {
                        let (e, d) = self.expr()?;
                        depth = depth.max(d);
                        items.push(e);
                        if !self.eat(&Tok::Comma) {
                            break;
                        }
                    }
                    self.expect(Tok::RBracket, "',' or ']' in the array")?;
                }
                self.check((Expr::Array(items), depth + 1))
            }
            Tok::LBrace => {
                let mut fields: Vec<(String, Expr)> = Vec::new();
                let mut depth = 0;
                if !self.eat(&Tok::RBrace) {
                    loop {
                        let kpos = self.pos();
                        let key = match self.bump() {
                            Tok::Str(s) | Tok::Ident(s) => s,
                            _ => return Err(self.err(kpos, "expected a property name in the object")),
                        };
                        self.expect(Tok::Colon, "':' after the property name")?;
                        let (e, d) = self.expr()?;
                        depth = depth.max(d);
                        if fields.iter().any(|(k, _)| *k == key) {
                            return Err(self.err(kpos, format!("duplicate property name '{key}' in the object")));
                        }
                        fields.push((key, e));
                        if !self.eat(&Tok::Comma) {
                            break;
                        }
                    }
                    self.expect(Tok::RBrace, "',' or '}' in the object")?;
                }
                self.check((Expr::Object(fields), depth + 1))
            }
            Tok::Kw(Kw::Exists | Kw::Array) if self.peek() == &Tok::LParen => {
                Err(self.err(pos, "subqueries are not supported"))
            }
            Tok::Kw(Kw::Select) => Err(self.err(pos, "subqueries are not supported")),
            other => {
                self.i -= usize::from(other != Tok::Eof);
                Err(self.unexpected("an expression"))
            }
        }
    }

    fn call(&mut self, name: String, pos: usize) -> R {
        self.expect(Tok::LParen, "'('")?;
        let agg = [
            ("COUNT", AggFn::Count),
            ("SUM", AggFn::Sum),
            ("AVG", AggFn::Avg),
            ("MIN", AggFn::Min),
            ("MAX", AggFn::Max),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, a)| a);
        if let Some(agg) = agg {
            let arg = if agg == AggFn::Count && self.eat(&Tok::Star) {
                (Expr::constant(Value::from(1)), 1)
            } else {
                self.expr()?
            };
            self.expect(Tok::RParen, &format!("')': {name} takes one argument"))?;
            return self.check((Expr::Agg(agg, Box::new(arg.0), pos), arg.1 + 1));
        }
        let Some((func, min, max)) = Func::lookup(&name) else {
            return Err(self.err(pos, format!("unknown function '{name}'")));
        };
        let mut args = Vec::new();
        let mut depth = 0;
        if !self.eat(&Tok::RParen) {
            loop {
                let (e, d) = self.expr()?;
                depth = depth.max(d);
                args.push(e);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
            self.expect(Tok::RParen, "',' or ')' after the argument")?;
        }
        if args.len() < min || args.len() > max {
            let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
            let n = args.len();
            return Err(self.err(pos, format!("{} takes {want} arguments, not {n}", func.name())));
        }
        self.check((Expr::Call(func, args), depth + 1))
    }
}

/// The output name Cosmos DB gives a projected expression without an alias: the last property
/// name of a path (`c.a.b` → `b`, `c["x"]` → `x`), or the alias itself for `SELECT c`.
fn derived_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Prop(_, name) => Some(name.clone()),
        Expr::Index(_, idx) => idx.const_str().map(str::to_owned),
        Expr::Ident(name, _) => Some(name.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn clauses_in_order() {
        let s =
            parse("SELECT DISTINCT TOP 5 c.id FROM c WHERE c.a = 1 GROUP BY c.id ORDER BY c.id DESC OFFSET 1 LIMIT 2")
                .unwrap();
        assert!(s.distinct);
        assert_eq!(s.top, Some(Count::Literal(5)));
        assert_eq!(s.group_by.len(), 1);
        assert!(s.order_by[0].1);
        assert_eq!(s.offset_limit, Some((Count::Literal(1), Count::Literal(2))));
    }

    #[test]
    fn precedence() {
        let s = parse("SELECT VALUE 1 + 2 * 3 = 7 AND NOT false OR false").unwrap();
        let Projection::Value(Expr::Binary(BinOp::Or, lhs, _)) = s.projection else { panic!() };
        let Expr::Binary(BinOp::And, cmp, not) = *lhs else { panic!() };
        assert!(matches!(*cmp, Expr::Binary(BinOp::Eq, ..)));
        assert!(matches!(*not, Expr::Unary(UnOp::Not, _)));
    }

    #[test]
    fn projection_names() {
        let s = parse("SELECT c.a.b, c[\"x y\"], c.arr[0], 1 + 1, c.d AS e, c.f g FROM c").unwrap();
        let Projection::Fields(f) = s.projection else { panic!() };
        let names: Vec<_> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "x y", "$1", "$2", "e", "g"]);
    }

    #[test]
    fn from_forms() {
        assert_eq!(parse("SELECT * FROM root r").unwrap().from.unwrap().alias, "r");
        assert_eq!(parse("SELECT * FROM Families").unwrap().from.unwrap().alias, "Families");
        let f = parse("SELECT * FROM Families.children[0] c").unwrap().from.unwrap();
        assert_eq!(f.path, vec![Step::Prop("children".into()), Step::Index(0)]);
        let f = parse("SELECT * FROM c IN Families.children").unwrap().from.unwrap();
        assert!(f.iterate);
        let f = parse("SELECT c.x FROM f JOIN c IN f.children JOIN p IN c.pets").unwrap().from.unwrap();
        assert_eq!(f.joins.len(), 2);
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(err("SELECT * FORM c"), "syntax error at 1:10: expected end of query, found identifier 'FORM'");
        assert_eq!(
            err("SELECT c.id\nFROM c\nWHERE c.a = "),
            "syntax error at 3:13: expected an expression, found end of query"
        );
        assert_eq!(err("SELECT\n  FOO(c) FROM c"), "syntax error at 2:3: unknown function 'FOO'");
        assert_eq!(err("SELECT 'abc FROM c"), "syntax error at 1:8: unterminated string");
        assert!(err("SELECT TOP -1 * FROM c").contains("TOP takes a non-negative integer"));
        assert!(err("SELECT LOWER(c.a, 1) FROM c").contains("LOWER takes 1 arguments, not 2"));
        assert!(err("SELECT c.a, c.a FROM c").contains("duplicate property name 'a'"));
        assert!(err("SELECT VALUE * FROM c").contains("SELECT VALUE *"));
    }

    #[test]
    fn depth_is_limited() {
        let deep = format!("SELECT VALUE {}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(err(&deep).contains("nested too deeply"));
        let long = format!("SELECT VALUE 1{}", " + 1".repeat(100_000));
        assert!(err(&long).contains("nested too deeply"));
        let neg = format!("SELECT VALUE {}1", "- ".repeat(100_000));
        assert!(err(&neg).contains("nested too deeply"));
        let nots = format!("SELECT VALUE {}true", "NOT ".repeat(100_000));
        assert!(err(&nots).contains("nested too deeply"));
        let arr = format!("SELECT VALUE {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&arr).contains("nested too deeply"));
        let path = format!("SELECT VALUE c{} FROM c", ".a".repeat(100_000));
        assert!(err(&path).contains("nested too deeply"));
        let ok = format!("SELECT VALUE {}1{}", "(".repeat(60), ")".repeat(60));
        assert!(parse(&ok).is_ok());
    }
}
