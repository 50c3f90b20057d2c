//! W3C Trace Context (`traceparent`): the trace id a request carries from the client through the
//! gateway to workers and LLM backends. Each hop keeps the trace id and gets its own span id.

use std::fmt;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This hop's span id (the parent of whatever it calls).
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// Continues the caller's trace when `traceparent` is valid, or starts a new one.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let mut rng = rand::rng();
        let span_id = nonzero(|| rng.random());
        match traceparent.and_then(parse) {
            Some((trace_id, flags)) => Self { trace_id, span_id, flags },
            None => Self { trace_id: nonzero(|| rand::rng().random()), span_id, flags: 0x01 },
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` header for a call made by this hop.
    pub fn traceparent(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", hex(&self.trace_id), hex(&self.span_id), hex(&[self.flags]))
    }
}

fn nonzero<const N: usize>(mut make: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let id = make();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, lowercase hex. Version `ff` and all-zero ids are invalid;
/// versions above 00 may append fields, which are ignored.
fn parse(header: &str) -> Option<([u8; 16], u8)> {
    let mut parts = header.trim().split('-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace_id = unhex::<16>(parts.next()?)?;
    let parent_id = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    let rest = parts.next();
    if version == 0xff || (version == 0 && rest.is_some()) {
        return None;
    }
    if trace_id.iter().all(|b| *b == 0) || parent_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, flags))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex without a formatter call per byte: this runs several times per request.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let ctx = TraceContext::continue_or_start(Some(VALID));
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.flags, 1);
        let header = ctx.traceparent();
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-01"));
        assert_ne!(&header[36..52], "00f067aa0ba902b7", "this hop has its own span id");
    }

    #[test]
    fn invalid_headers_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ctx = TraceContext::continue_or_start(Some(bad));
            assert_ne!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(ctx.traceparent().len(), 55);
        }
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(TraceContext::continue_or_start(Some(future)).trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
