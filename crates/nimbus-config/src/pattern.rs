//! Path patterns, as routes are written in the manifest and in SDK indexes: literal segments,
//! `{param}` segments, and an optional trailing `*` that matches the rest of the path (possibly
//! empty: `/files/*` matches `/files`, `/files/` and `/files/a/b`).

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed pattern; `Display` writes it back as it was written.
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    pub wildcard: bool,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(body) = pattern.strip_prefix('/') else {
            return Err(format!("\"{pattern}\" must start with `/`"));
        };
        let (body, wildcard) = match body.strip_suffix('*') {
            Some(rest) if rest.is_empty() || rest.ends_with('/') => (rest.strip_suffix('/').unwrap_or(rest), true),
            Some(_) => return Err(format!("\"{pattern}\": `*` must be a whole last segment, like /files/*")),
            None => (body, false),
        };
        if body.contains('*') {
            return Err(format!("\"{pattern}\": `*` is only allowed at the end"));
        }
        let mut segments = Vec::new();
        if !(body.is_empty() && wildcard) {
            for part in body.split('/') {
                if let Some(inner) = part.strip_prefix('{') {
                    let name = inner
                        .strip_suffix('}')
                        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    let Some(name) = name else {
                        return Err(format!("\"{pattern}\": parameter segment \"{part}\" must look like {{name}}"));
                    };
                    segments.push(Segment::Param(name.to_owned()));
                } else if part.contains(['{', '}']) {
                    return Err(format!("\"{pattern}\": a parameter must be a whole segment, like /items/{{id}}"));
                } else {
                    segments.push(Segment::Literal(part.to_owned()));
                }
            }
        }
        Ok(Self { segments, wildcard })
    }
}

impl PathPattern {
    /// Whether `path` matches, and its parameters as `(name, raw segment)` pairs, the rest matched
    /// by a trailing `*` under the name `*`. `/files/*` matches `/files`, `/files/` and `/files/a/b`.
    pub fn capture<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut params = Vec::new();
        let mut consumed = 0;
        for segment in &self.segments {
            let part = parts.next()?;
            consumed += part.len() + 1;
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        if self.wildcard {
            params.push(("*", rest.get(consumed..).unwrap_or("")));
        } else if parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// Sort key that puts the most specific patterns first: no wildcard, then more literal
    /// segments, then more segments.
    pub fn specificity(&self) -> (bool, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
        let literals = self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        (self.wildcard, std::cmp::Reverse(literals), std::cmp::Reverse(self.segments.len()))
    }

    /// The length of the part of `path` that the segments before a trailing `*` matched (for
    /// prefix rewriting); `None` when the pattern does not match.
    pub fn prefix_len(&self, path: &str) -> Option<usize> {
        self.capture(path)?;
        let mut len = 0;
        for part in path[1..].split('/').take(self.segments.len()) {
            len += part.len() + 1;
        }
        Some(len)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.segments {
            match segment {
                Segment::Literal(lit) => write!(f, "/{lit}")?,
                Segment::Param(name) => write!(f, "/{{{name}}}")?,
            }
        }
        match (self.wildcard, self.segments.is_empty()) {
            (true, _) => f.write_str("/*"),
            (false, true) => f.write_str("/"),
            (false, false) => Ok(()),
        }
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::from_str(deserializer, PathPattern::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let p = PathPattern::parse("/items/{id}/*").unwrap();
        assert_eq!(p.segments, [Segment::Literal("items".into()), Segment::Param("id".into())]);
        assert!(p.wildcard);
        assert_eq!(PathPattern::parse("/*").unwrap(), PathPattern { segments: vec![], wildcard: true });
        for bad in ["hello", "/a*", "/a/*/b", "/a/{b c}", "/a/x{b}", "/a/{}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_as_written() {
        for written in ["/", "/*", "/hello", "/items/{id}/*", "/a/", "/a//b", "/files/*", "/{x}"] {
            assert_eq!(PathPattern::parse(written).unwrap().to_string(), written);
        }
    }

    #[test]
    fn captures() {
        let p = PathPattern::parse("/items/{id}/*").unwrap();
        assert_eq!(p.capture("/items/42/a/b"), Some(vec![("id", "42"), ("*", "a/b")]));
        assert_eq!(p.capture("/items/42"), Some(vec![("id", "42"), ("*", "")]));
        assert_eq!(p.capture("/items//x"), None);
        assert_eq!(p.capture("/other/42"), None);
        assert_eq!(p.prefix_len("/items/42/a/b"), Some(9));
        let exact = PathPattern::parse("/hello").unwrap();
        assert_eq!(exact.capture("/hello"), Some(vec![]));
        assert_eq!(exact.capture("/hello/"), None);
        assert_eq!(exact.capture("/hello/x"), None);
        assert_eq!(exact.capture("hello"), None);
        let all = PathPattern::parse("/*").unwrap();
        assert_eq!(all.capture("/"), Some(vec![("*", "")]));
        assert_eq!(all.capture("/a/b"), Some(vec![("*", "a/b")]));
        assert_eq!(all.prefix_len("/a/b"), Some(0));
        assert!(exact.specificity() < all.specificity());
    }
}
