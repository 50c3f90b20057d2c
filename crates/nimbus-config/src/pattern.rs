//! Path patterns, as routes are written in the manifest and in SDK indexes: literal segments,
//! `{param}` segments, and an optional trailing `*` that matches the rest of the path (possibly
//! empty: `/files/*` matches `/files`, `/files/` and `/files/a/b`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
}
