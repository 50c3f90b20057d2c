//! JSON paths of the docs containers (`partition_key`, `indexes`, `unique_keys`): `/a/b` names
//! property `b` of property `a`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A path of one or more non-empty property names, each after a `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JsonPath(String);

impl JsonPath {
    pub fn parse(path: &str) -> Result<Self, String> {
        match path.strip_prefix('/') {
            Some(rest) if !rest.is_empty() && rest.split('/').all(|s| !s.is_empty()) => Ok(Self(path.to_owned())),
            _ => Err(format!("\"{path}\" is not a JSON path like \"/userId\"")),
        }
    }

    /// The path as written, e.g. `/user/id`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The property names, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, JsonPath::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let p = JsonPath::parse("/user/id").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["user", "id"]);
        assert_eq!(p.to_string(), "/user/id");
        for bad in ["", "/", "userId", "/a/", "//a", "/a//b"] {
            assert!(JsonPath::parse(bad).unwrap_err().contains("is not a JSON path"), "{bad}");
        }
    }
}
