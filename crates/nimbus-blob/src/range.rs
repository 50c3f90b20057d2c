//! The `Range` header (RFC 9110 §14.1, §14.2) for byte ranges of one representation:
//! `bytes=a-b`, `bytes=a-`, `bytes=-n`, and lists of them.
//!
//! - A last position past the end means "to the end" and a suffix longer than the representation
//!   means all of it, however many digits they have (§14.1.2).
//! - Specs that cannot be satisfied (a first position at or past the end, `-0`) are dropped; when
//!   none is left the answer is 416 (§14.1.1, §15.5.17).
//! - A malformed spec (not digits, a last position before its first) makes the header invalid,
//!   refused with 416 (§14.2: "ignore or reject"; nginx rejects too).
//! - Ignored, the whole representation is served (§14.2 allows each): another unit (or `bytes`
//!   not followed by `=` at once), a header with no spec at all, an empty representation, more
//!   than [`MAX_PARTS`] specs, or specs that add up to more bytes than the representation
//!   (overlaps: a sign of a broken client or an attack, §17.15; nginx's rule too).
//! - Empty list elements are skipped (§5.6.1.2).
//!
//! Every range answered lies inside the representation and is not empty.

use std::ops::Range;

/// More specs than this are not worth a multipart answer: the whole representation is served.
pub(crate) const MAX_PARTS: usize = 64;

/// What a `Range` header asks of a representation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Serve the whole representation (200).
    Ignored,
    /// Refuse with 416.
    Unsatisfiable,
    /// These ranges (`start..end`, end exclusive), in the order asked.
    Satisfiable(Vec<Range<u64>>),
}

/// The ranges `value` asks of a representation of `size` bytes.
pub(crate) fn parse(value: &str, size: u64) -> Ranges {
    // range-unit "=" range-set, no whitespace around "=" (a token holds none).
    let Some((unit, set)) = value.trim().split_once('=') else { return Ranges::Ignored };
    if !unit.eq_ignore_ascii_case("bytes") || size == 0 {
        return Ranges::Ignored;
    }
    let specs: Vec<&str> = set.split(',').map(|s| s.trim_matches([' ', '\t'])).filter(|s| !s.is_empty()).collect();
    if specs.is_empty() || specs.len() > MAX_PARTS {
        return Ranges::Ignored;
    }
    let mut ranges = Vec::new();
    for spec in specs {
        match satisfiable(spec, size) {
            Err(()) => return Ranges::Unsatisfiable,
            Ok(Some(range)) => ranges.push(range),
            Ok(None) => {}
        }
    }
    if ranges.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let total = ranges.iter().fold(0u64, |sum, r| sum.saturating_add(r.end - r.start));
    if total > size { Ranges::Ignored } else { Ranges::Satisfiable(ranges) }
}

/// One range-spec: `Err` when malformed, `Ok(None)` when valid but outside the representation.
fn satisfiable(spec: &str, size: u64) -> Result<Option<Range<u64>>, ()> {
    let (first, last) = spec.split_once('-').ok_or(())?;
    let range = match (first, last) {
        ("", suffix) => {
            let n = position(suffix)?;
            size.saturating_sub(n)..size
        }
        (first, "") => position(first)?..size,
        (first, last) => {
            let (first, last) = (position(first)?, position(last)?);
            if last < first {
                return Err(());
            }
            // `last` is inclusive; past the end it means the end (u64::MAX included).
            first..last.saturating_add(1).min(size)
        }
    };
    Ok((range.start < range.end).then_some(range))
}

/// A byte position: 1 or more ASCII digits (no sign, no spaces). Digits beyond what `u64` holds
/// are past the end of any representation, so they read as `u64::MAX` (§14.1.2: no overflow).
fn position(digits: &str) -> Result<u64, ()> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(digits.bytes().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one range are what is meant
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn one(v: &str, size: u64) -> Option<Range<u64>> {
        match parse(v, size) {
            Ranges::Satisfiable(r) if r.len() == 1 => Some(r[0].clone()),
            other => panic!("{v:?} on {size}: {other:?}"),
        }
    }

    #[test]
    fn parses_single_ranges() {
        assert_eq!(one("bytes=0-9", 100), Some(0..10));
        assert_eq!(one("bytes=90-", 100), Some(90..100));
        assert_eq!(one("bytes=-10", 100), Some(90..100));
        assert_eq!(one("bytes=95-200", 100), Some(95..100));
        assert_eq!(one("Bytes=1-1", 100), Some(1..2));
        assert_eq!(one("bytes=00-04", 100), Some(0..5), "leading zeros are digits");
        assert_eq!(one("bytes=-200", 100), Some(0..100), "a suffix longer than the whole is the whole");
    }

    #[test]
    fn lists_keep_their_order_and_drop_what_lies_outside() {
        assert_eq!(parse("bytes=0-1,5-6", 100), Ranges::Satisfiable(vec![0..2, 5..7]));
        assert_eq!(parse("bytes=10-20, 0-4", 100), Ranges::Satisfiable(vec![10..21, 0..5]));
        assert_eq!(parse("bytes=0-4,,6-8", 100), Ranges::Satisfiable(vec![0..5, 6..9]), "empty elements");
        assert_eq!(parse("bytes=,0-4", 100), Ranges::Satisfiable(vec![0..5]));
        assert_eq!(parse("bytes=0-4,200-300", 100), Ranges::Satisfiable(vec![0..5]));
        assert_eq!(parse("bytes=0-5,3-8", 100), Ranges::Satisfiable(vec![0..6, 3..9]), "small overlaps are served");
        assert_eq!(parse("bytes=0-60,40-99", 100), Ranges::Ignored, "more bytes than the whole");
        let many = format!("bytes={}", (0..=MAX_PARTS).map(|i| format!("{i}-{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(parse(&many, 1000), Ranges::Ignored);
    }

    #[test]
    fn refuses_or_ignores_what_is_not_a_byte_range_set() {
        assert_eq!(parse("bytes=100-", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=100-200,300-400", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=5-1", 100), Ranges::Unsatisfiable, "invalid: rejected");
        assert_eq!(parse("bytes=x-1", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=0-4,x", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=+1-2", 100), Ranges::Unsatisfiable, "digits only");
        assert_eq!(parse("bytes=1 - 2", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("items=1-2", 100), Ranges::Ignored, "unknown unit");
        assert_eq!(parse("bytes = 1-2", 100), Ranges::Ignored, "not the bytes unit");
        assert_eq!(parse("bytes", 100), Ranges::Ignored);
        assert_eq!(parse("bytes=", 100), Ranges::Ignored, "no spec at all");
        assert_eq!(parse("bytes=0-", 0), Ranges::Ignored, "an empty representation");
        assert_eq!(parse("bytes=-5", 0), Ranges::Ignored);
    }

    #[test]
    fn positions_past_the_end_mean_the_end() {
        assert_eq!(one("bytes=0-18446744073709551615", 13), Some(0..13));
        assert_eq!(one("bytes=0-99999999999999999999999", 13), Some(0..13));
        assert_eq!(one("bytes=-18446744073709551615", 13), Some(0..13));
        assert_eq!(one("bytes=-99999999999999999999999", 13), Some(0..13));
        assert_eq!(parse("bytes=18446744073709551615-18446744073709551615", u64::MAX), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=99999999999999999999999-", 13), Ranges::Unsatisfiable);
        assert_eq!(one("bytes=5-18446744073709551615", u64::MAX), Some(5..u64::MAX));
    }

    /// A position as a client might write it: small, around a representation's size, at the
    /// edges of `u64`, or with more digits than `u64` holds.
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
            2 => proptest::collection::vec((position_text(), position_text()), 1..5)
                .prop_map(|v| format!("bytes={}", v.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(","))),
            1 => "[ -~]{0,40}",
            1 => "bytes=[-0-9, +]{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// No header panics the parser; every range answered lies inside the representation and
        /// is not empty, and together they are no larger than it.
        #[test]
        fn answered_ranges_lie_inside_the_representation(value in header_text(), size in prop_oneof![0u64..300, any::<u64>()]) {
            if let Ranges::Satisfiable(ranges) = parse(&value, size) {
                prop_assert!(!ranges.is_empty() && ranges.len() <= MAX_PARTS);
                let mut total = 0u64;
                for r in &ranges {
                    prop_assert!(r.start < r.end, "{value:?} on {size}: {r:?}");
                    prop_assert!(r.end <= size, "{value:?} on {size}: {r:?}");
                    total = total.saturating_add(r.end - r.start);
                }
                prop_assert!(total <= size);
            }
        }

        /// A first-last range with a last position at or past the end is the rest of the whole.
        #[test]
        fn a_last_position_past_the_end_is_the_end(first in 0u64..300, size in 1u64..300, last in prop_oneof![300u64..1000, any::<u64>()]) {
            let last = last.max(size);
            let answered = parse(&format!("bytes={first}-{last}"), size);
            if first < size {
                prop_assert_eq!(answered, Ranges::Satisfiable(vec![first..size]));
            } else {
                prop_assert_eq!(answered, Ranges::Unsatisfiable);
            }
        }
    }
}
