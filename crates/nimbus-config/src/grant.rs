//! A function's grants (`[functions.<name>] grants`): what its worker instances may reach through
//! the platform API with their scoped token. `docs:<container>:r|rw`, `blob:<container>:r|rw`,
//! `durable:<orchestration>:r|rw`, `queues:<queue>:r|rw` and `ai:<model>`; `*` as the name means any.
//! Grants for components this version does not have are refused rather than kept and never honoured.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// One parsed grant; `Display` and `Debug` write it as in the manifest.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// `docs`, `blob` or `durable`.
    pub component: String,
    /// The container (the orchestration, for `durable`); `*` for any.
    pub name: String,
    /// Writes allowed too (`rw`), not only reads (`r`).
    pub write: bool,
}

impl Grant {
    pub fn parse(grant: &str) -> Result<Self, String> {
        // `ai:<model>` (or `ai:*`): calling the AI gateway for that model; model names may hold `:`.
        if let Some(model) = grant.strip_prefix("ai:")
            && !model.is_empty()
        {
            return Ok(Self { component: "ai".into(), name: model.to_owned(), write: true });
        }
        let parts: Vec<&str> = grant.split(':').collect();
        match parts.as_slice() {
            [component @ ("docs" | "blob" | "durable" | "queues"), name, access @ ("r" | "rw")] if !name.is_empty() => {
                Ok(Self { component: (*component).to_owned(), name: (*name).to_owned(), write: *access == "rw" })
            }
            _ => Err(format!(
                "invalid grant \"{grant}\": expected \"docs:<container>:r|rw\", \"blob:<container>:r|rw\", \"durable:<orchestration>:r|rw\", \"queues:<queue>:r|rw\" or \"ai:<model>\""
            )),
        }
    }

    /// Whether this grant lets its holder read (or, with `write`, change) `name` of `component`.
    pub fn allows(&self, component: &str, name: &str, write: bool) -> bool {
        self.component == component && (self.name == "*" || self.name == name) && (self.write || !write)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.component == "ai" {
            return write!(f, "ai:{}", self.name);
        }
        write!(f, "{}:{}:{}", self.component, self.name, if self.write { "rw" } else { "r" })
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::from_str(deserializer, Grant::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let g = Grant::parse("blob:uploads:r").unwrap();
        assert!(g.allows("blob", "uploads", false));
        assert!(!g.allows("blob", "uploads", true));
        assert!(!g.allows("blob", "other", false));
        assert!(!g.allows("docs", "uploads", false));
        let any = Grant::parse("docs:*:rw").unwrap();
        assert!(any.allows("docs", "conversations", true));
        assert_eq!(any.to_string(), "docs:*:rw");
        assert_eq!(format!("{g:?}"), "\"blob:uploads:r\"");
        for bad in ["blob:uploads", "blob::rw", "docs:x:w", "files:x:r", "docs:x:rw:y", ""] {
            assert!(Grant::parse(bad).unwrap_err().starts_with("invalid grant"), "{bad}");
        }
        assert!(Grant::parse("queues:jobs:rw").unwrap().allows("queues", "jobs", true));
        assert!(Grant::parse("queues:jobs").unwrap_err().starts_with("invalid grant"));
        let ai = Grant::parse("ai:llama3:8b").unwrap();
        assert!(ai.allows("ai", "llama3:8b", true) && !ai.allows("ai", "gpt-4o", true));
        assert_eq!(ai.to_string(), "ai:llama3:8b");
        assert!(Grant::parse("ai:*").unwrap().allows("ai", "gpt-4o", true));
        assert!(Grant::parse("ai:").is_err() && Grant::parse("ai").is_err());
    }
}
