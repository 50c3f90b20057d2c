//! Errors that point into the manifest: `nimbus.toml:12:5: message`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::validate::Seg;

/// One problem in a manifest, located by line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn at(file: &Path, text: &str, offset: usize, message: String) -> Self {
        let offset = offset.min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self { file: file.to_path_buf(), line, column, message }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("app folder {} does not exist or is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    /// The located problems (empty for I/O errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a message that suggests the
/// closest valid name; other messages pass through with their first line only.
pub(crate) fn explain(message: &str) -> String {
    let message = message.trim();
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((unknown, tail)) = rest.split_once('`') else {
            continue;
        };
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let mut out = format!("unknown {what} `{unknown}`");
        if let Some(best) = closest(unknown, &valid) {
            out.push_str(&format!("; did you mean `{best}`?"));
        }
        if !valid.is_empty() {
            out.push_str(&format!(" (valid: {})", valid.join(", ")));
        }
        return out;
    }
    // serde names Rust types; say what a manifest author can act on.
    message
        .replace("expected u16", "expected a whole number from 0 to 65535")
        .replace("expected u32", "expected a whole number from 0 to 4294967295")
        .replace("expected u64", "expected a whole number, 0 or more")
        .replace("expected a nonzero u32", "expected a whole number from 1 to 4294967295")
        .replace("expected a nonzero u64", "expected a whole number, 1 or more")
        .replace("expected a boolean", "expected true or false")
}

fn closest<'a>(unknown: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(unknown, v), *v))
        .filter(|(score, _)| *score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// Byte offset of the key (or array element) at `path` in the parsed document, as near as exists.
pub(crate) fn offset_of(doc: &toml::Spanned<toml::de::DeTable<'_>>, path: &[Seg]) -> Option<usize> {
    use toml::de::DeValue;
    let mut table = doc.get_ref();
    let mut best = None;
    let mut segs = path.iter().peekable();
    while let Some(seg) = segs.next() {
        let Seg::Key(key) = seg else { return best };
        let (k, v) = table.get_key_value(key.as_str())?;
        best = Some(k.span().start);
        let mut value = v;
        while let Some(Seg::Index(i)) = segs.peek() {
            let DeValue::Array(items) = value.get_ref() else {
                return best;
            };
            value = items.get(*i)?;
            best = Some(value.span().start);
            segs.next();
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return best,
        }
    }
    best
}

/// The key path of what sits at byte `offset`: the deepest value whose span holds it, or, when the
/// offset is on a key (an unknown key), the table that key is in. Header tables (`[a.b]`) span
/// only their header, so every table is searched, not just the ones whose span holds the offset.
pub(crate) fn path_at(doc: &toml::Spanned<toml::de::DeTable<'_>>, offset: usize) -> Vec<Seg> {
    use toml::de::{DeTable, DeValue};
    fn in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>, best: &mut Vec<Seg>) {
        for (key, value) in table.iter() {
            if key.span().contains(&offset) {
                if path.len() > best.len() {
                    *best = path.clone();
                }
                continue;
            }
            path.push(Seg::Key(key.get_ref().to_string()));
            in_value(value, offset, path, best);
            path.pop();
        }
    }
    fn in_value(value: &toml::Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Seg>, best: &mut Vec<Seg>) {
        if value.span().contains(&offset) && path.len() > best.len() {
            *best = path.clone();
        }
        match value.get_ref() {
            DeValue::Table(t) => in_table(t, offset, path, best),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    in_value(item, offset, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = Vec::new();
    in_table(doc.get_ref(), offset, &mut Vec::new(), &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_key_path_of_an_offset() {
        let text = "[functions.x]\ntimeout = \"forever\"\n\n[[routes]]\npath = \"/a\"\n\n[[routes]]\n\
                    rate_limit = { key = \"everyone\", requests = 1 }\nzz = 1\n";
        let doc = toml::de::DeTable::parse(text).unwrap();
        let at = |needle: &str| crate::validate::path_string(&path_at(&doc, text.find(needle).unwrap()));
        assert_eq!(at("\"forever"), "functions.x.timeout");
        assert_eq!(at("[functions.x]"), "functions.x");
        assert_eq!(at("\"everyone"), "routes[1].rate_limit.key");
        assert_eq!(at("requests"), "routes[1].rate_limit", "a key is placed in its table");
        assert_eq!(at("zz"), "routes[1]");
        assert_eq!(at("\"/a"), "routes[0].path");
    }

    #[test]
    fn suggests_the_closest_key() {
        let m = explain("unknown field `min_instance`, expected one of `min_instances`, `max_instances`, `timeout`");
        assert_eq!(
            m,
            "unknown key `min_instance`; did you mean `min_instances`? (valid: min_instances, max_instances, timeout)"
        );
        let m = explain("unknown variant `pyton`, expected one of `python`, `node`, `command`");
        assert!(m.starts_with("unknown value `pyton`; did you mean `python`?"), "{m}");
        let m = explain("unknown field `zzz`, expected `path`");
        assert_eq!(m, "unknown key `zzz` (valid: path)");
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let d = Diagnostic::at(Path::new("n.toml"), "a = 1\nbé = 2\n", 10, "m".into());
        assert_eq!((d.line, d.column), (2, 4));
        assert_eq!(d.to_string(), "n.toml:2:4: m");
    }
}
