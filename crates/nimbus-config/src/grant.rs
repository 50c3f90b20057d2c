//! A function's grants (`[functions.<name>] grants`): what its worker instances may reach through
//! the platform API with their scoped token. `docs:<container>:r|rw`, `blob:<container>:r|rw`,
//! `queues:<name>`, `ai:<model>`, `durable:<orchestration>`; `*` as the name means any.

/// One parsed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `docs`, `blob`, `queues`, `ai` or `durable`.
    pub component: String,
    /// The container, queue, model or orchestration; `*` for any.
    pub name: String,
    /// Writes allowed too (`rw`); grants without an access suffix allow everything.
    pub write: bool,
}

impl Grant {
    pub fn parse(grant: &str) -> Result<Self, String> {
        let parts: Vec<&str> = grant.split(':').collect();
        let parsed = match parts.as_slice() {
            [component @ ("docs" | "blob"), name, access @ ("r" | "rw")] if !name.is_empty() => {
                Some((component, name, *access == "rw"))
            }
            [component @ ("queues" | "ai" | "durable"), name] if !name.is_empty() => Some((component, name, true)),
            _ => None,
        };
        match parsed {
            Some((component, name, write)) => {
                Ok(Self { component: (*component).to_owned(), name: (*name).to_owned(), write })
            }
            None => Err(format!(
                "invalid grant \"{grant}\": expected \"docs:<container>:r|rw\", \"blob:<container>:r|rw\", \"queues:<name>\", \"ai:<model>\" or \"durable:<name>\""
            )),
        }
    }

    /// Whether this grant lets its holder read (or, with `write`, change) `name` of `component`.
    pub fn allows(&self, component: &str, name: &str, write: bool) -> bool {
        self.component == component && (self.name == "*" || self.name == name) && (self.write || !write)
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
        assert!(Grant::parse("ai:chat").unwrap().allows("ai", "chat", true));
        for bad in ["blob:uploads", "blob::rw", "docs:x:w", "files:x:r", "ai", "ai:", "queues:a:b"] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }
}
