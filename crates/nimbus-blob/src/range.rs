//! The `Range` header (RFC 9110 §14.1, §14.2) for one byte range of an object: `bytes=a-b`,
//! `bytes=a-` or `bytes=-n`. A last position past the end means "to the end" and a suffix longer
//! than the object means all of it, however many digits they have; a first position at or past
//! the end (or any range of an empty object, or `-0`) is unsatisfiable (416). Other units and
//! lists of several ranges are ignored (the whole object, as §14.2 allows); a malformed spec, or
//! one whose last position is before its first, is refused with 416. The answer always lies
//! inside the object.

use axum::http::{HeaderMap, header};

use crate::BlobError;

/// The range `start..end` (end exclusive, never empty) a request's `Range` header asks of an
/// object of `size` bytes. `Ok(None)` when the whole object is to be served.
pub(crate) fn requested(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, BlobError> {
    match headers.get(header::RANGE).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(value)) => parse(value, size),
        Some(Err(_)) => Ok(None),
    }
}

/// [`requested`] for the header's text.
pub(crate) fn parse(value: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, BlobError> {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else { return Ok(None) };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.trim().split_once('-').ok_or(BlobError::Range)?;
    let range = match (first, last) {
        ("", suffix) => {
            let n = position(suffix)?;
            if n == 0 {
                return Err(BlobError::Range);
            }
            size.saturating_sub(n)..size
        }
        (first, "") => position(first)?..size,
        (first, last) => {
            let (first, last) = (position(first)?, position(last)?);
            if last < first {
                return Err(BlobError::Range);
            }
            // `last` is inclusive; past the end it means the end (u64::MAX included).
            first..last.saturating_add(1).min(size)
        }
    };
    if range.start >= size { Err(BlobError::Range) } else { Ok(Some(range)) }
}

/// A byte position: 1 or more ASCII digits (no sign, no spaces). Digits beyond what `u64` holds
/// are past the end of any object, so they read as `u64::MAX`.
fn position(digits: &str) -> Result<u64, BlobError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BlobError::Range);
    }
    Ok(digits.bytes().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, BlobError> {
        parse(v, size)
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=95-200", 100).unwrap(), Some(95..100));
        assert_eq!(range("Bytes=1-1", 100).unwrap(), Some(1..2));
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(range("items=1-2", 100).unwrap(), None);
        assert!(range("bytes=100-", 100).is_err());
        assert!(range("bytes=5-1", 100).is_err());
        assert!(range("bytes=x-1", 100).is_err());
        assert!(range("bytes=+1-2", 100).is_err(), "digits only");
        assert!(range("bytes=-0", 100).is_err());
        assert!(range("bytes=0-", 0).is_err(), "nothing of an empty object is satisfiable");
        assert_eq!(range("bytes", 100).unwrap(), None, "not a range spec: ignored");
    }

    #[test]
    fn positions_past_the_end_mean_the_end() {
        assert_eq!(range("bytes=0-18446744073709551615", 13).unwrap(), Some(0..13));
        assert_eq!(range("bytes=0-99999999999999999999999", 13).unwrap(), Some(0..13));
        assert_eq!(range("bytes=-18446744073709551615", 13).unwrap(), Some(0..13));
        assert_eq!(range("bytes=-99999999999999999999999", 13).unwrap(), Some(0..13));
        assert!(range("bytes=18446744073709551615-18446744073709551615", u64::MAX).is_err());
        assert!(range("bytes=99999999999999999999999-", 13).is_err());
        assert_eq!(range("bytes=5-18446744073709551615", u64::MAX).unwrap(), Some(5..u64::MAX));
    }

    /// A position as a client might write it: small, around an object's size, at the edges of
    /// `u64`, or with more digits than `u64` holds.
    fn position_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..300).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (u64::MAX - 3..=u64::MAX).prop_map(|n| n.to_string()),
            "[0-9]{19,30}",
            Just(String::new()),
        ]
    }

    fn header_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (position_text(), position_text()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            1 => "[ -~]{0,40}",
            1 => "bytes=[-0-9, +]{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// No header panics the parser, and every range answered lies inside the object and is
        /// not empty.
        #[test]
        fn answered_ranges_lie_inside_the_object(value in header_text(), size in prop_oneof![0u64..300, any::<u64>()]) {
            if let Ok(Some(r)) = parse(&value, size) {
                prop_assert!(r.start < r.end, "{value:?} on {size}: {r:?}");
                prop_assert!(r.end <= size, "{value:?} on {size}: {r:?}");
            }
        }

        /// A first-last range with a last position at or past the end is the rest of the object.
        #[test]
        fn a_last_position_past_the_end_is_the_end(first in 0u64..300, size in 1u64..300, last in prop_oneof![300u64..1000, any::<u64>()]) {
            let last = last.max(size);
            let answered = parse(&format!("bytes={first}-{last}"), size);
            if first < size {
                prop_assert_eq!(answered.ok().flatten(), Some(first..size));
            } else {
                prop_assert!(answered.is_err());
            }
        }
    }
}
