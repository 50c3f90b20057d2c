//! What the engine keeps, as records of `nimbus-store` (namespace [`NS`]):
//!
//! | key | value |
//! |---|---|
//! | `i/<id>` | the [`Instance`]: status, input, output, the ids it waits for |
//! | `h/<id>/<seq>` | one history event (PROTOCOL.md §7.2), `seq` from 0, appended only (a rewind alone replaces failures by markers) |
//! | `n/<partition>/<id>/<time>-<rand>` | an event delivered to the instance, not yet in its history (its inbox: an instance with one needs a step) |
//! | `a/<partition>/<id>/<task>` | an activity to run ([`Work`]) |
//! | `t/<partition>/<fire ms>/<id>/<timer>` | a timer to fire |
//!
//! Everything about one instance lives in its partition (a hash of its id), and one node at a time
//! works a partition, under a lease that fences its commits.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const NS: &str = "durable";
/// Partitions: the unit of work nodes share (each under a lease).
pub const PARTITIONS: u32 = 8;

/// Durable Functions' `runtimeStatus` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Running,
    Completed,
    ContinuedAsNew,
    Failed,
    Terminated,
    Suspended,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Terminated)
    }

    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::ContinuedAsNew,
        Self::Failed,
        Self::Terminated,
        Self::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::ContinuedAsNew => "ContinuedAsNew",
            Self::Failed => "Failed",
            Self::Terminated => "Terminated",
            Self::Suspended => "Suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// The id of whoever waits for a sub-orchestration's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub instance: String,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub version: String,
    pub status: Status,
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub custom_status: Value,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    pub updated: u64,
    /// Events in its history.
    pub history: u64,
    /// Changes when the history starts over (a restart, `continue_as_new`): a worker holding the
    /// instance in memory from before must not take the new history for its continuation.
    pub execution: String,
    /// Ids of tasks, timers and sub-orchestrations scheduled and not yet answered: a result for any
    /// other id is a duplicate delivery (activities run at least once) and is dropped.
    #[serde(default)]
    pub open: BTreeSet<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
}

/// An activity to run for an instance's task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub name: String,
    pub input: Value,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Not before this time (ms): a retry's back-off.
    #[serde(default)]
    pub not_before: u64,
    /// When it was scheduled (ms), for the backlog's age.
    #[serde(default)]
    pub created: u64,
}

/// A retry policy as the SDKs send it (PROTOCOL.md §7.2): the engine runs the attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub attempts: u32,
    pub first_interval_ms: u64,
    #[serde(default = "double")]
    pub backoff: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
}

fn double() -> f64 {
    2.0
}

impl Retry {
    /// The wait after failed attempt `n` (1-based), or `None` when no attempt is left.
    pub fn delay_after(&self, n: u32) -> Option<u64> {
        if n >= self.attempts {
            return None;
        }
        let delay = self.first_interval_ms as f64 * self.backoff.max(1.0).powi(n.saturating_sub(1) as i32);
        let capped = self.max_interval_ms.map_or(delay, |max| delay.min(max as f64));
        Some(capped.min(u64::MAX as f64) as u64)
    }
}

/// Whether version `a` is newer than `b`: dot-separated parts compared as numbers where both are
/// numbers, else as text ("2" < "10", "1.9" < "1.10", "beta" < "rc").
pub fn is_newer(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        let order = match (a.next(), b.next()) {
            (None, None) => return false,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
        };
        if order != std::cmp::Ordering::Equal {
            return order == std::cmp::Ordering::Greater;
        }
    }
}

pub fn new_execution() -> String {
    nimbus_api::hex(&rand::random::<[u8; 8]>())
}

/// The partition of instance `id`: its work is ordered by that partition's lease.
pub fn partition(id: &str) -> u32 {
    // FNV-1a: stable across processes and versions (std's hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % PARTITIONS
}

pub fn instance_key(id: &str) -> String {
    format!("i/{id}")
}

pub fn history_prefix(id: &str) -> String {
    format!("h/{id}/")
}

pub fn history_key(id: &str, seq: u64) -> String {
    format!("h/{id}/{seq:012}")
}

pub fn inbox_prefix(id: &str) -> String {
    format!("n/{}/{id}/", partition(id))
}

/// Inbox keys sort by arrival (then randomly among the same millisecond), control events
/// (suspend, resume, terminate) before all others: a suspended instance with many events waiting
/// still finds its resume in the first page of its inbox.
pub fn inbox_key(id: &str, event: &Value, now_ms: u64) -> String {
    let control = if is_control(event["type"].as_str().unwrap_or_default()) { "!" } else { "" };
    format!("n/{}/{id}/{control}{now_ms:015}-{}", partition(id), nimbus_api::hex(&rand::random::<[u8; 6]>()))
}

/// Events that act on the instance rather than on its code; they apply while it is suspended.
pub fn is_control(kind: &str) -> bool {
    matches!(kind, "suspended" | "resumed" | "terminated")
}

/// The key after the last of instance `id`'s inbox (`/` + 1 is `0`): a listing resumed from it
/// skips the rest of that inbox.
pub fn after_inbox(id: &str) -> String {
    format!("n/{}/{id}0", partition(id))
}

/// Every inbox of partition `p`: the instances listed there need a step.
pub fn inboxes_prefix(p: u32) -> String {
    format!("n/{p}/")
}

/// The instance whose inbox holds `key`.
pub fn inbox_owner(key: &str) -> Option<&str> {
    key.split('/').nth(2)
}

pub fn work_prefix(p: u32) -> String {
    format!("a/{p}/")
}

pub fn work_key(id: &str, task: u64) -> String {
    format!("a/{}/{id}/{task:010}", partition(id))
}

pub fn timer_prefix(p: u32) -> String {
    format!("t/{p}/")
}

pub fn timer_key(id: &str, timer: u64, fire_ms: u64) -> String {
    format!("t/{}/{fire_ms:015}/{id}/{timer:010}", partition(id))
}

/// The instance and task ids of a work or timer key (its last two segments).
pub fn owner_of(key: &str) -> Option<(&str, u64)> {
    let (rest, id) = key.rsplit_once('/')?;
    let (_, instance) = rest.rsplit_once('/')?;
    Some((instance, id.parse().ok()?))
}

/// Instance ids: what Durable Functions allows, minus `/` (keys are paths) and control characters.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 {
        return Err("an instance id has 1 to 100 characters".into());
    }
    if let Some(c) = id.chars().find(|c| c.is_control() || matches!(c, '/' | '\\' | '#' | '?')) {
        return Err(format!("an instance id may not contain {c:?}"));
    }
    Ok(())
}

/// One history event with its time (PROTOCOL.md §7.2).
pub fn event(kind: &str, at_ms: u64, fields: Value) -> Value {
    let mut event = json!({"type": kind, "at": rfc3339(at_ms)});
    if let (Some(e), Value::Object(fields)) = (event.as_object_mut(), fields) {
        e.extend(fields);
    }
    event
}

pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms.min(i64::MAX as u64) as i64);
    let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// An RFC 3339 time (any offset) as milliseconds since the Unix epoch; `None` before 1970 too.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_parse_back() {
        assert!(history_key("a", 9) < history_key("a", 10));
        let raised = event("event_raised", 5, json!({}));
        assert_eq!(inbox_owner(&inbox_key("order-1", &raised, 5)), Some("order-1"));
        assert!(inbox_key("order-1", &raised, 5).starts_with(&inbox_prefix("order-1")));
        // A later resume sorts before an earlier event; the end of the inbox is past both.
        let resumed = inbox_key("order-1", &event("resumed", 9, json!({})), 9);
        assert!(resumed < inbox_key("order-1", &raised, 5));
        assert!(resumed.as_str() < after_inbox("order-1").as_str());
        assert!(inbox_key("order-1", &raised, u64::MAX / 2) < after_inbox("order-1"));
        assert!(inbox_prefix("order-1").starts_with(&inboxes_prefix(partition("order-1"))));
        assert!(timer_key("a", 1, 999) < timer_key("a", 0, 1000));
        assert_eq!(owner_of(&work_key("order-1", 42)), Some(("order-1", 42)));
        assert_eq!(owner_of(&timer_key("order-1", 7, 5)), Some(("order-1", 7)));
        assert_eq!(partition("x"), partition("x"));
        assert!(check_instance_id("a/b").is_err() && check_instance_id("").is_err());
        assert!(check_instance_id("order-1:sub.2").is_ok());
    }

    #[test]
    fn versions_compare_by_parts() {
        assert!(is_newer("2", "1") && is_newer("10", "9") && is_newer("1.10", "1.9") && is_newer("1.0.1", "1.0"));
        assert!(!is_newer("1", "1") && !is_newer("1.9", "1.10") && !is_newer("1", "1.0"));
        assert!(is_newer("rc", "beta"));
    }

    #[test]
    fn retries_back_off_and_stop() {
        let r = Retry { attempts: 4, first_interval_ms: 100, backoff: 2.0, max_interval_ms: Some(300) };
        assert_eq!(
            [r.delay_after(1), r.delay_after(2), r.delay_after(3), r.delay_after(4)],
            [Some(100), Some(200), Some(300), None]
        );
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_765_000_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        assert_eq!(parse_rfc3339("2026-12-07T10:00:00+00:00"), Some(1_796_637_600_000));
    }
}
