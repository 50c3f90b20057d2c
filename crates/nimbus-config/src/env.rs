//! `${ENV_VAR}` interpolation for values that hold secrets or deployment-specific addresses.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A string whose `${NAME}` references are replaced by environment variables when the manifest is
/// read. `$${` writes a literal `${`. `Debug` shows what the author wrote, never the resolved value.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString {
    written: String,
    value: String,
}

impl EnvString {
    /// The resolved value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The string as written in the manifest (references unresolved); safe to log.
    pub fn written(&self) -> &str {
        &self.written
    }

    pub fn resolve(written: &str) -> Result<Self, String> {
        Self::resolve_with(written, |name| std::env::var(name).ok())
    }

    pub fn resolve_with(written: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut value = String::with_capacity(written.len());
        let mut rest = written;
        while let Some(pos) = rest.find('$') {
            value.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                value.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let end = tail.find('}').ok_or_else(|| {
                    format!("unclosed `${{` in \"{written}\": write `${{NAME}}`, or `$${{` for a literal `${{`")
                })?;
                let name = &tail[..end];
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "`${{{name}}}` is not a valid environment variable name (letters, digits and `_`, not starting with a digit)"
                    ));
                }
                let resolved = lookup(name).ok_or_else(|| {
                    format!("environment variable `{name}` is not set (referenced as `${{{name}}}`); set it before starting nimbus")
                })?;
                value.push_str(&resolved);
                rest = &tail[end + 1..];
            } else {
                value.push('$');
                rest = &after[1..];
            }
        }
        value.push_str(rest);
        Ok(Self { written: written.to_owned(), value })
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.written)
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::from_str(deserializer, EnvString::resolve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cret".into()),
            "HOST" => Some("db.local".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolates_and_escapes() {
        let s = EnvString::resolve_with("postgres://u:${KEY}@${HOST}/x", env).unwrap();
        assert_eq!(s.value(), "postgres://u:s3cret@db.local/x");
        assert_eq!(format!("{s:?}"), "\"postgres://u:${KEY}@${HOST}/x\"");
        assert_eq!(EnvString::resolve_with("a$${KEY}b", env).unwrap().value(), "a${KEY}b");
        assert_eq!(EnvString::resolve_with("cost: $5", env).unwrap().value(), "cost: $5");
    }

    #[test]
    fn unset_and_malformed_references_are_errors() {
        let e = EnvString::resolve_with("${MISSING}", env).unwrap_err();
        assert!(e.contains("`MISSING` is not set"), "{e}");
        assert!(EnvString::resolve_with("${KEY", env).unwrap_err().contains("unclosed"));
        assert!(EnvString::resolve_with("${1X}", env).unwrap_err().contains("not a valid"));
        assert!(EnvString::resolve_with("${}", env).unwrap_err().contains("not a valid"));
    }
}
