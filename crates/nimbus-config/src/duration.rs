//! Durations written as strings in the manifest: "250ms", "30s", "5m", "1h", "90d".

use std::fmt;

use serde::{Deserialize, Deserializer, de};

/// A duration read from a human string. Bare numbers are refused: "30" could mean anything.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "write a number with a unit, such as \"250ms\", \"30s\", \"5m\", \"1h\" or \"90d\"";
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(format!("empty duration: {hint}"));
        }
        if trimmed.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("duration \"{s}\" has no unit: {hint}"));
        }
        humantime::parse_duration(trimmed).map(Duration).map_err(|_| format!("invalid duration \"{s}\": {hint}"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!("duration {v} has no unit: write it as a string, such as \"{v}s\" or \"{v}ms\"")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("250ms".parse::<Duration>().unwrap(), Duration::from_millis(250));
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::from_secs(30));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!("1h".parse::<Duration>().unwrap(), Duration::from_secs(3600));
        assert_eq!("90d".parse::<Duration>().unwrap(), Duration::from_secs(90 * 86400));
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!("30".parse::<Duration>().unwrap_err().contains("no unit"));
        assert!("soon".parse::<Duration>().unwrap_err().contains("invalid duration"));
        assert!("".parse::<Duration>().unwrap_err().contains("empty"));
        assert!("5 parsecs".parse::<Duration>().is_err());
    }
}
