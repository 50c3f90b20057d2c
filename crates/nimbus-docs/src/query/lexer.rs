//! Tokens of the query language: keywords (case-insensitive), identifiers, `@parameters`, numbers,
//! 'single' and "double" quoted strings with JSON-style escapes, operators and `--` line comments.

use serde_json::Number;

use super::QueryError;

/// Reserved words. An identifier spelled like one (in any case) is the keyword; property names after
/// `.` may still be keywords (`c.value`), and `c["select"]` reaches any name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    Select,
    Distinct,
    Top,
    Value,
    As,
    From,
    Join,
    In,
    Where,
    And,
    Or,
    Not,
    Between,
    Like,
    Escape,
    Group,
    Order,
    By,
    Asc,
    Desc,
    Offset,
    Limit,
    True,
    False,
    Null,
    Undefined,
    Exists,
    Array,
}

impl Kw {
    fn from_word(word: &str) -> Option<Kw> {
        const WORDS: &[(&str, Kw)] = &[
            ("select", Kw::Select),
            ("distinct", Kw::Distinct),
            ("top", Kw::Top),
            ("value", Kw::Value),
            ("as", Kw::As),
            ("from", Kw::From),
            ("join", Kw::Join),
            ("in", Kw::In),
            ("where", Kw::Where),
            ("and", Kw::And),
            ("or", Kw::Or),
            ("not", Kw::Not),
            ("between", Kw::Between),
            ("like", Kw::Like),
            ("escape", Kw::Escape),
            ("group", Kw::Group),
            ("order", Kw::Order),
            ("by", Kw::By),
            ("asc", Kw::Asc),
            ("desc", Kw::Desc),
            ("offset", Kw::Offset),
            ("limit", Kw::Limit),
            ("true", Kw::True),
            ("false", Kw::False),
            ("null", Kw::Null),
            ("undefined", Kw::Undefined),
            ("exists", Kw::Exists),
            ("array", Kw::Array),
        ];
        WORDS.iter().find(|(w, _)| w.eq_ignore_ascii_case(word)).map(|(_, k)| *k)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kw::Select => "SELECT",
            Kw::Distinct => "DISTINCT",
            Kw::Top => "TOP",
            Kw::Value => "VALUE",
            Kw::As => "AS",
            Kw::From => "FROM",
            Kw::Join => "JOIN",
            Kw::In => "IN",
            Kw::Where => "WHERE",
            Kw::And => "AND",
            Kw::Or => "OR",
            Kw::Not => "NOT",
            Kw::Between => "BETWEEN",
            Kw::Like => "LIKE",
            Kw::Escape => "ESCAPE",
            Kw::Group => "GROUP",
            Kw::Order => "ORDER",
            Kw::By => "BY",
            Kw::Asc => "ASC",
            Kw::Desc => "DESC",
            Kw::Offset => "OFFSET",
            Kw::Limit => "LIMIT",
            Kw::True => "true",
            Kw::False => "false",
            Kw::Null => "null",
            Kw::Undefined => "undefined",
            Kw::Exists => "EXISTS",
            Kw::Array => "ARRAY",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Kw(Kw),
    /// An identifier, with the word exactly as written (identifiers are case-sensitive).
    Ident(String),
    /// A parameter, with its `@`.
    Param(String),
    /// A number (a `Number`, not a `Value`: tokens stay small, and so the parser's frames).
    Num(Number),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Dot,
    Colon,
    Question,
    Coalesce,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    BitOr,
    BitAnd,
    BitXor,
    BitNot,
    Shl,
    Shr,
    ShrZero,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Kw(k) => format!("keyword {}", k.name()),
            Tok::Ident(s) => format!("identifier '{s}'"),
            Tok::Param(p) => format!("parameter {p}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Eof => "end of query".to_string(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::Colon => ":",
            Tok::Question => "?",
            Tok::Coalesce => "??",
            Tok::Star => "*",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Eq => "=",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Concat => "||",
            Tok::BitOr => "|",
            Tok::BitAnd => "&",
            Tok::BitXor => "^",
            Tok::BitNot => "~",
            Tok::Shl => "<<",
            Tok::Shr => ">>",
            Tok::ShrZero => ">>>",
            _ => "?",
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned {
    pub tok: Tok,
    pub pos: usize,
    pub end: usize,
}

pub(crate) fn tokenize(text: &str) -> Result<Vec<Spanned>, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = |b: u8| bytes.get(i + 1) == Some(&b);
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            b',' => (Tok::Comma, 1),
            b':' => (Tok::Colon, 1),
            b'*' => (Tok::Star, 1),
            b'+' => (Tok::Plus, 1),
            b'-' => (Tok::Minus, 1),
            b'/' => (Tok::Slash, 1),
            b'%' => (Tok::Percent, 1),
            b'=' => (Tok::Eq, 1),
            b'~' => (Tok::BitNot, 1),
            b'^' => (Tok::BitXor, 1),
            b'&' => (Tok::BitAnd, 1),
            b'?' if two(b'?') => (Tok::Coalesce, 2),
            b'?' => (Tok::Question, 1),
            b'!' if two(b'=') => (Tok::Ne, 2),
            b'<' if two(b'>') => (Tok::Ne, 2),
            b'<' if two(b'=') => (Tok::Le, 2),
            b'<' if two(b'<') => (Tok::Shl, 2),
            b'<' => (Tok::Lt, 1),
            b'>' if two(b'>') && bytes.get(i + 2) == Some(&b'>') => (Tok::ShrZero, 3),
            b'>' if two(b'>') => (Tok::Shr, 2),
            b'>' if two(b'=') => (Tok::Ge, 2),
            b'>' => (Tok::Gt, 1),
            b'|' if two(b'|') => (Tok::Concat, 2),
            b'|' => (Tok::BitOr, 1),
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let (v, n) = number(text, i)?;
                (Tok::Num(v), n)
            }
            b'.' => (Tok::Dot, 1),
            b'0'..=b'9' => {
                let (v, n) = number(text, i)?;
                (Tok::Num(v), n)
            }
            b'\'' | b'"' => {
                let (s, n) = string(text, i)?;
                (Tok::Str(s), n)
            }
            b'@' => {
                let n = word_len(text, i + 1);
                if n == 0 {
                    return Err(QueryError::syntax(text, i, "expected a parameter name after '@'"));
                }
                (Tok::Param(text[i..i + 1 + n].to_string()), n + 1)
            }
            _ => {
                let n = word_len(text, i);
                if n == 0 {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return Err(QueryError::syntax(text, i, format!("unexpected character '{ch}'")));
                }
                let word = &text[i..i + n];
                match Kw::from_word(word) {
                    Some(k) => (Tok::Kw(k), n),
                    None => (Tok::Ident(word.to_string()), n),
                }
            }
        };
        out.push(Spanned { tok, pos: start, end: start + len });
        i += len;
    }
    out.push(Spanned { tok: Tok::Eof, pos: text.len(), end: text.len() });
    Ok(out)
}

/// Length in bytes of the identifier starting at `i` (letters, digits, `_`, `$`; not starting with a
/// digit). Non-ASCII letters are allowed.
fn word_len(text: &str, i: usize) -> usize {
    let mut n = 0;
    for (k, ch) in text[i..].char_indices() {
        let ok = ch == '_' || ch == '$' || ch.is_alphabetic() || (k > 0 && ch.is_ascii_digit());
        if !ok {
            break;
        }
        n = k + ch.len_utf8();
    }
    n
}

fn number(text: &str, start: usize) -> Result<(Number, usize), QueryError> {
    let bytes = text.as_bytes();
    let mut i = start;
    if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
        let digits = bytes[i + 2..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(QueryError::syntax(text, start, "expected hexadecimal digits after 0x"));
        }
        let s = &text[i + 2..i + 2 + digits];
        let v = match i64::from_str_radix(s, 16) {
            Ok(n) => Number::from(n),
            Err(_) => {
                return Err(QueryError::syntax(text, start, "hexadecimal number out of range"));
            }
        };
        return Ok((v, 2 + digits));
    }
    let mut float = false;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        float = true;
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        let mut j = i + 1;
        if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
            j += 1;
        }
        if j < bytes.len() && bytes[j].is_ascii_digit() {
            float = true;
            i = j;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let s = &text[start..i];
    let v = if !float && let Ok(n) = s.parse::<i64>() {
        Number::from(n)
    } else {
        match s.parse::<f64>().ok().and_then(super::value::float_number) {
            Some(n) => n,
            None => return Err(QueryError::syntax(text, start, "number out of range")),
        }
    };
    Ok((v, i - start))
}

fn string(text: &str, start: usize) -> Result<(String, usize), QueryError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((k, ch)) = chars.next() {
        let at = start + 1 + k;
        if ch == quote {
            return Ok((out, at + 1 - start));
        }
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        let Some((_, esc)) = chars.next() else { break };
        match esc {
            '\'' | '"' | '\\' | '/' => out.push(esc),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(&mut chars).ok_or_else(|| QueryError::syntax(text, at, "bad \\u escape"))?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    let mut look = chars.clone();
                    let lo = match (look.next(), look.next()) {
                        (Some((_, '\\')), Some((_, 'u'))) => hex4(&mut look),
                        _ => None,
                    };
                    match lo {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            chars = look;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => 0xFFFD,
                    }
                } else {
                    hi
                };
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            other => {
                return Err(QueryError::syntax(text, at, format!("unknown escape '\\{other}' in string")));
            }
        }
    }
    Err(QueryError::syntax(text, start, "unterminated string"))
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Option<u32> {
    let mut code = 0;
    for _ in 0..4 {
        let (_, c) = chars.next()?;
        code = code * 16 + c.to_digit(16)?;
    }
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text).unwrap().into_iter().map(|s| s.tok).collect()
    }

    #[test]
    fn keywords_are_case_insensitive_identifiers_are_not() {
        assert_eq!(toks("sElEcT Foo"), vec![Tok::Kw(Kw::Select), Tok::Ident("Foo".into()), Tok::Eof]);
    }

    #[test]
    fn operators() {
        assert_eq!(
            toks("<> != <= >= >>> >> << || | ?? ? -- comment\n."),
            vec![
                Tok::Ne,
                Tok::Ne,
                Tok::Le,
                Tok::Ge,
                Tok::ShrZero,
                Tok::Shr,
                Tok::Shl,
                Tok::Concat,
                Tok::BitOr,
                Tok::Coalesce,
                Tok::Question,
                Tok::Dot,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn numbers_keep_integers() {
        assert_eq!(toks("42")[0], Tok::Num(42.into()));
        assert_eq!(toks("1.5")[0], Tok::Num(Number::from_f64(1.5).unwrap()));
        assert_eq!(toks("2.0")[0], Tok::Num(2.into()));
        assert_eq!(toks("1e3")[0], Tok::Num(1000.into()));
        assert_eq!(toks(".5")[0], Tok::Num(Number::from_f64(0.5).unwrap()));
        assert_eq!(toks("0x1F")[0], Tok::Num(31.into()));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            toks(r#"'it\'s' "a\"b" '\u00e9\n'"#)[..3],
            [Tok::Str("it's".into()), Tok::Str("a\"b".into()), Tok::Str("é\n".into())]
        );
        assert_eq!(toks(r#"'\ud83d\ude00'"#)[0], Tok::Str("😀".into()));
        assert!(tokenize("'open").is_err());
        assert!(tokenize(r"'\q'").is_err());
    }

    #[test]
    fn parameters() {
        assert_eq!(toks("@name_1")[0], Tok::Param("@name_1".into()));
        assert!(tokenize("@ x").is_err());
    }
}
