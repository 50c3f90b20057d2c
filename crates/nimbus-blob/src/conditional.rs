//! What a GET or HEAD of one representation answers (RFC 9110 §13 and §14): the preconditions in
//! §13.2.2's order, then `Range`. The static site and the blob API both answer through
//! [`evaluate`], so they cannot drift apart.
//!
//! - `If-Match` compares strongly, `If-None-Match` weakly (§8.8.3.2, §13.1.1, §13.1.2); `*` matches
//!   any current representation (there is one: a missing object is a 404 before this).
//! - `If-Unmodified-Since` is ignored when `If-Match` is present, `If-Modified-Since` when
//!   `If-None-Match` is (§13.1.3, §13.1.4), and so is a date that is not a valid HTTP-date or a
//!   field given more than once. `If-Modified-Since` applies to GET and HEAD only.
//! - `Range` and `If-Range` apply to GET only (§14.2: "GET is the only method for which range
//!   handling is defined"), so a HEAD answers what the GET without them would. `If-Range` compares
//!   an entity tag strongly, a date by exact match with Last-Modified (§13.1.5); Nimbus's dates are
//!   its own record's (whole seconds), taken as strong validators (§8.8.2.2) as nginx does: only a
//!   key written twice within one second could make one name two contents, and a client that has
//!   the ETag sends that instead.

use std::ops::Range;

use axum::http::{HeaderMap, HeaderName, Method, header};

use crate::range::Ranges;

/// The selected representation's validators and length.
pub(crate) struct Validators<'a> {
    /// The entity tag without its quotes (always strong).
    pub etag: &'a str,
    /// Unix seconds.
    pub last_modified: u64,
    pub size: u64,
    /// Whether several ranges may be answered as `multipart/byteranges`; when not, such a Range is
    /// ignored (§14.2 allows it) and the whole representation is served.
    pub multipart: bool,
}

/// The answer a GET or HEAD gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200 with the whole representation.
    Whole,
    /// 206 with these ranges: one is a single part, more a `multipart/byteranges` body (§14.6).
    Partial(Vec<Range<u64>>),
    /// 304 (§15.4.5).
    NotModified,
    /// 412 (§15.5.13).
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */<size>` (§15.5.17).
    Unsatisfiable,
}

/// §13.2.2: the preconditions in their order, then the Range.
pub(crate) fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Answer {
    let read = method == Method::GET || method == Method::HEAD;
    // 1 and 2: If-Match, or else If-Unmodified-Since.
    match field(headers, &header::IF_MATCH) {
        Some(tags) if !matches(&tags, v.etag, Comparison::Strong) => return Answer::PreconditionFailed,
        Some(_) => {}
        None => {
            if date(headers, &header::IF_UNMODIFIED_SINCE).is_some_and(|since| v.last_modified > since) {
                return Answer::PreconditionFailed;
            }
        }
    }
    // 3 and 4: If-None-Match, or else If-Modified-Since (GET and HEAD only).
    match field(headers, &header::IF_NONE_MATCH) {
        Some(tags) if matches(&tags, v.etag, Comparison::Weak) => {
            return if read { Answer::NotModified } else { Answer::PreconditionFailed };
        }
        Some(_) => {}
        None => {
            if read && date(headers, &header::IF_MODIFIED_SINCE).is_some_and(|since| v.last_modified <= since) {
                return Answer::NotModified;
            }
        }
    }
    // 5: Range, unless If-Range says the client's copy is another representation.
    let Some(range) = headers.get(header::RANGE).filter(|_| method == Method::GET) else { return Answer::Whole };
    if headers.contains_key(header::IF_RANGE) && !if_range(headers, v) {
        return Answer::Whole;
    }
    // A Range that is not text holds no valid ranges-specifier: ignored.
    let Ok(range) = range.to_str() else { return Answer::Whole };
    match crate::range::parse(range, v.size) {
        Ranges::Ignored => Answer::Whole,
        Ranges::Unsatisfiable => Answer::Unsatisfiable,
        Ranges::Satisfiable(ranges) if ranges.len() > 1 && !v.multipart => Answer::Whole,
        Ranges::Satisfiable(ranges) => Answer::Partial(ranges),
    }
}

/// A list field's lines joined into one value (§5.3), or `None` when absent. A line that is not
/// text takes part as nothing that could match.
fn field(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    Some(lines.map(|v| v.to_str().unwrap_or("")).collect::<Vec<_>>().join(", "))
}

/// A date field as Unix seconds; `None` when absent, given more than once, or not an HTTP-date
/// (all three formats of §5.6.7), so that it is ignored (§13.1.3, §13.1.4).
fn date(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut lines = headers.get_all(name).iter();
    let (Some(value), None) = (lines.next(), lines.next()) else { return None };
    let time = httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether an `If-Match` / `If-None-Match` value (`*` or a list of entity tags) matches `etag`
/// (§8.8.3.2: strong comparison needs both tags strong; weak ignores `W/`). Elements that are not
/// entity tags match nothing.
fn matches(value: &str, etag: &str, comparison: Comparison) -> bool {
    if value.trim() == "*" {
        return true;
    }
    entity_tags(value).any(|(weak, tag)| tag == etag && (comparison == Comparison::Weak || !weak))
}

/// The entity tags of a list (`W/"…"` or `"…"`), as (weak, opaque text without quotes). A comma
/// inside quotes is part of its tag; a malformed element is skipped up to the next comma.
fn entity_tags(value: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                return None;
            }
            let (weak, tagged) = match rest.strip_prefix("W/") {
                Some(after) => (true, after),
                None => (false, rest),
            };
            if let Some(open) = tagged.strip_prefix('"')
                && let Some(close) = open.find('"')
            {
                let after = open[close + 1..].trim_start_matches([' ', '\t']);
                if after.is_empty() || after.starts_with(',') {
                    rest = after;
                    return Some((weak, &open[..close]));
                }
            }
            // Not an entity tag: skip this element.
            rest = rest.find(',').map_or("", |at| &rest[at..]);
        }
    })
}

/// §13.1.5: an entity tag must match strongly, a date exactly; anything else is false.
fn if_range(headers: &HeaderMap, v: &Validators) -> bool {
    let mut lines = headers.get_all(header::IF_RANGE).iter();
    let (Some(value), None) = (lines.next(), lines.next()) else { return false };
    let Ok(value) = value.to_str() else { return false };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let mut tags = entity_tags(value);
        return matches!((tags.next(), tags.next()), (Some((false, tag)), None) if tag == v.etag);
    }
    date(headers, &header::IF_RANGE) == Some(v.last_modified)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one range are what is meant
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const ETAG: &str = "abc";
    /// 2024-01-01T00:00:00Z, the representation's Last-Modified.
    const MODIFIED: u64 = 1_704_067_200;
    const AT: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const BEFORE: &str = "Sun, 31 Dec 2023 23:59:59 GMT";
    const AFTER: &str = "Mon, 01 Jan 2024 00:00:01 GMT";

    fn answer(method: Method, fields: &[(&str, &str)]) -> Answer {
        let mut headers = HeaderMap::new();
        for (k, v) in fields {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        evaluate(&method, &headers, &Validators { etag: ETAG, last_modified: MODIFIED, size: 100, multipart: true })
    }

    fn get(fields: &[(&str, &str)]) -> Answer {
        answer(Method::GET, fields)
    }

    use Answer::*;

    #[test]
    fn if_match_compares_strongly() {
        assert_eq!(get(&[("if-match", "\"abc\"")]), Whole);
        assert_eq!(get(&[("if-match", "\"x\", \"abc\"")]), Whole);
        assert_eq!(get(&[("if-match", "\"x\"")]), PreconditionFailed);
        assert_eq!(get(&[("if-match", "W/\"abc\"")]), PreconditionFailed, "weak never matches strongly");
        assert_eq!(get(&[("if-match", "*")]), Whole);
        assert_eq!(get(&[("if-match", "abc")]), PreconditionFailed, "not an entity tag");
        assert_eq!(get(&[("if-match", "\"x\""), ("if-match", "\"abc\"")]), Whole, "field lines combine");
        assert_eq!(get(&[("if-match", "\"a,b\", \"abc\"")]), Whole, "a comma inside a tag");
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert_eq!(get(&[("if-none-match", "\"abc\"")]), NotModified);
        assert_eq!(get(&[("if-none-match", "W/\"abc\"")]), NotModified);
        assert_eq!(get(&[("if-none-match", "\"x\", W/\"abc\"")]), NotModified);
        assert_eq!(get(&[("if-none-match", "*")]), NotModified);
        assert_eq!(get(&[("if-none-match", "\"x\"")]), Whole);
        assert_eq!(answer(Method::HEAD, &[("if-none-match", "\"abc\"")]), NotModified);
        assert_eq!(answer(Method::DELETE, &[("if-none-match", "\"abc\"")]), PreconditionFailed);
    }

    #[test]
    fn dates_compare_and_bad_dates_are_ignored() {
        assert_eq!(get(&[("if-modified-since", AT)]), NotModified);
        assert_eq!(get(&[("if-modified-since", AFTER)]), NotModified, "later than Last-Modified");
        assert_eq!(get(&[("if-modified-since", BEFORE)]), Whole);
        assert_eq!(get(&[("if-modified-since", "Sunday, 31-Dec-23 23:59:59 GMT")]), Whole, "RFC 850 form");
        assert_eq!(get(&[("if-modified-since", "Mon Jan  1 00:00:00 2024")]), NotModified, "asctime form");
        assert_eq!(get(&[("if-modified-since", "yesterday")]), Whole);
        assert_eq!(get(&[("if-modified-since", AT), ("if-modified-since", AT)]), Whole, "more than one");
        assert_eq!(answer(Method::POST, &[("if-modified-since", AT)]), Whole, "GET and HEAD only");
        assert_eq!(get(&[("if-unmodified-since", AT)]), Whole);
        assert_eq!(get(&[("if-unmodified-since", BEFORE)]), PreconditionFailed);
        assert_eq!(get(&[("if-unmodified-since", "not a date")]), Whole);
    }

    #[test]
    fn preconditions_follow_their_precedence() {
        // If-Match decides; If-Unmodified-Since is ignored beside it.
        assert_eq!(get(&[("if-match", "\"abc\""), ("if-unmodified-since", BEFORE)]), Whole);
        assert_eq!(get(&[("if-match", "\"x\""), ("if-unmodified-since", AT)]), PreconditionFailed);
        // If-None-Match decides; If-Modified-Since is ignored beside it.
        assert_eq!(get(&[("if-none-match", "\"abc\""), ("if-modified-since", BEFORE)]), NotModified);
        assert_eq!(get(&[("if-none-match", "\"x\""), ("if-modified-since", AT)]), Whole);
        // 412 before 304; 304 before Range.
        assert_eq!(get(&[("if-match", "\"x\""), ("if-none-match", "\"abc\"")]), PreconditionFailed);
        assert_eq!(get(&[("if-none-match", "\"abc\""), ("range", "bytes=0-1")]), NotModified);
        assert_eq!(get(&[("if-unmodified-since", BEFORE), ("range", "bytes=500-")]), PreconditionFailed);
        assert_eq!(get(&[("if-match", "\"abc\""), ("range", "bytes=0-1")]), Partial(vec![0..2]));
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let range = ("range", "bytes=0-9");
        assert_eq!(get(&[range, ("if-range", "\"abc\"")]), Partial(vec![0..10]));
        assert_eq!(get(&[range, ("if-range", "\"old\"")]), Whole);
        assert_eq!(get(&[range, ("if-range", "W/\"abc\"")]), Whole);
        assert_eq!(get(&[range, ("if-range", AT)]), Partial(vec![0..10]));
        assert_eq!(get(&[range, ("if-range", AFTER)]), Whole, "exact match, not later-or-equal");
        assert_eq!(get(&[range, ("if-range", "garbage")]), Whole);
        assert_eq!(get(&[("range", "bytes=500-"), ("if-range", "\"old\"")]), Whole, "no 416 for another copy");
        assert_eq!(get(&[("if-range", "\"old\"")]), Whole, "ignored without Range");
    }

    #[test]
    fn ranges_are_for_get_only() {
        assert_eq!(get(&[("range", "bytes=0-9")]), Partial(vec![0..10]));
        assert_eq!(get(&[("range", "bytes=0-1,4-5")]), Partial(vec![0..2, 4..6]));
        assert_eq!(get(&[("range", "bytes=500-")]), Unsatisfiable);
        assert_eq!(answer(Method::HEAD, &[("range", "bytes=0-9")]), Whole);
        assert_eq!(answer(Method::HEAD, &[("range", "bytes=500-")]), Whole);
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-1,4-5"));
        let single = Validators { etag: ETAG, last_modified: MODIFIED, size: 100, multipart: false };
        assert_eq!(evaluate(&Method::GET, &headers, &single), Whole, "no multipart for this representation");
    }
}
