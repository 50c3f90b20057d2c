//! Invoking a function by name: the port through which a component (durable orchestrations,
//! triggers, the AI gateway, an operator's admin call) runs a non-HTTP function without knowing
//! the functions component. The binary hands components an [`Invoker`]; `nimbus-functions`
//! implements it with the same pools, scaling, metrics, tracing and cancellation as HTTP
//! invocations, and delivers the call as the envelope of PROTOCOL.md §4.
//!
//! Cancellation is Rust's: dropping the future of [`Invoke::invoke`] closes the worker
//! connection, which the worker sees as cancellation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TraceContext;

/// What fires a function, as its worker's index declares it (PROTOCOL.md §2). One enum for every
/// trigger type; an index entry of a type this host does not know is refused, never skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A request on `route` (a path pattern) with one of `methods` (all when empty).
    Http {
        route: String,
        #[serde(default)]
        methods: Vec<String>,
    },
    /// A six-field cron schedule with seconds (NCRONTAB), in `time_zone` (UTC when absent).
    Timer {
        schedule: String,
        #[serde(default)]
        run_on_startup: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
    },
    /// Messages of the queue `queue`, up to `batch_size` at a time.
    Queue {
        queue: String,
        #[serde(default = "one")]
        batch_size: u32,
    },
    /// Created or updated objects matching `path` (`<container>/<pattern>`).
    Blob { path: String },
    /// The change feed of a docs container.
    DocsChanges {
        container: String,
        #[serde(default = "hundred")]
        batch_size: u32,
        #[serde(default)]
        start: FeedStart,
    },
    /// A durable orchestrator, run by the durable engine.
    Orchestrator {},
    /// A durable activity, run by the durable engine.
    Activity {},
}

fn one() -> u32 {
    1
}

fn hundred() -> u32 {
    100
}

/// Where a change-feed trigger starts the first time it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedStart {
    #[default]
    Now,
    Beginning,
}

impl Trigger {
    /// The `type` of the trigger, as the index writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Timer { .. } => "timer",
            Self::Queue { .. } => "queue",
            Self::Blob { .. } => "blob",
            Self::DocsChanges { .. } => "docs_changes",
            Self::Orchestrator {} => "orchestrator",
            Self::Activity {} => "activity",
        }
    }

    /// Checks what the types cannot: a batch size of at least 1, a blob path with a container.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Queue { batch_size: 0, .. } | Self::DocsChanges { batch_size: 0, .. } => {
                Err("`batch_size` must be at least 1".into())
            }
            Self::Queue { queue, .. } if queue.is_empty() => Err("`queue` must name a queue".into()),
            Self::DocsChanges { container, .. } if container.is_empty() => {
                Err("`container` must name a docs container".into())
            }
            Self::Blob { path } if path.split_once('/').is_none_or(|(c, rest)| c.is_empty() || rest.is_empty()) => {
                Err(format!("blob path \"{path}\" must be \"<container>/<pattern>\""))
            }
            Self::Timer { schedule, time_zone, .. } => Schedule::parse(schedule, time_zone.as_deref()).map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// A timer's schedule: six cron fields with seconds (NCRONTAB: `second minute hour day month
/// weekday`, Sunday 0) read by croner, in an IANA time zone (UTC when none).
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        if schedule.split_whitespace().count() != 6 {
            return Err(format!(
                "timer schedule \"{schedule}\" must have six fields (second minute hour day month weekday)"
            ));
        }
        let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Required).build();
        let cron = parser.parse(schedule).map_err(|e| format!("timer schedule \"{schedule}\": {e}"))?;
        let zone = match time_zone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("time_zone \"{name}\" is not an IANA time zone like \"Europe/Paris\""))?,
        };
        Ok(Self { cron, zone })
    }

    /// The first occurrence after `after`.
    pub fn next_after(&self, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The last occurrence at or before `at`.
    pub fn last_at(&self, at: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// A function the node serves, with its trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub trigger: Trigger,
}

/// One invocation by name.
#[derive(Debug, Clone)]
pub struct Call {
    pub function: String,
    /// The payload (`data` in the envelope).
    pub data: Value,
    /// What the delivery adds to the declared trigger in the envelope (a queue message's
    /// `dequeue_count`, a blob's bound path values…).
    pub delivery: serde_json::Map<String, Value>,
    /// The caller's trace, continued by the invocation; a new trace when absent.
    pub trace: Option<TraceContext>,
    /// At most this long; never longer than the function's own timeout.
    pub timeout: Option<Duration>,
    /// Calls with the same key go to the instance that took the last one while it has a free
    /// slot: a worker that keeps state per key (an orchestration's session) finds it there.
    pub affinity: Option<String>,
}

impl Call {
    pub fn new(function: impl Into<String>, data: Value) -> Self {
        Self {
            function: function.into(),
            data,
            delivery: Default::default(),
            trace: None,
            timeout: None,
            affinity: None,
        }
    }
}

/// Why an invocation by name gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeError {
    /// No function has this name.
    UnknownFunction { function: String },
    /// The function will not take this call: an HTTP function, a call too large.
    Refused { function: String, reason: String },
    /// No instance can take it now: the node is shutting down, instances cannot start.
    Unavailable { function: String, reason: String },
    /// At capacity: its queue is full, or no instance freed up within the queue timeout.
    QueueFull { function: String },
    /// It did not answer within the timeout; the worker saw the invocation cancelled.
    Timeout { function: String, after: Duration },
    /// The instance died or closed the connection before answering.
    Crashed { function: String },
    /// The handler raised: the worker's error code and message.
    Failed { function: String, code: String, message: String },
}

impl InvokeError {
    /// A snake_case name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownFunction { .. } => "unknown_function",
            Self::Refused { .. } => "refused",
            Self::Unavailable { .. } => "unavailable",
            Self::QueueFull { .. } => "queue_full",
            Self::Timeout { .. } => "timeout",
            Self::Crashed { .. } => "worker_crashed",
            Self::Failed { .. } => "handler_error",
        }
    }

    /// Whether the same call may succeed later without a change (capacity, crashes, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::QueueFull { .. } | Self::Unavailable { .. } | Self::Timeout { .. } | Self::Crashed { .. })
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownFunction { function } => write!(f, "no function named `{function}`"),
            Self::Refused { function, reason } => write!(f, "function `{function}` cannot take the call: {reason}"),
            Self::Unavailable { function, reason } => write!(f, "function `{function}` is unavailable: {reason}"),
            Self::QueueFull { function } => write!(f, "function `{function}` is at capacity; try again later"),
            Self::Timeout { function, after } => {
                write!(f, "function `{function}` did not answer within {} ms", after.as_millis())
            }
            Self::Crashed { function } => write!(f, "the worker of `{function}` exited before answering"),
            Self::Failed { function, code, message } => write!(f, "function `{function}` failed ({code}): {message}"),
        }
    }
}

impl std::error::Error for InvokeError {}

pub type InvokeFuture = Pin<Box<dyn Future<Output = Result<Value, InvokeError>> + Send>>;

/// Runs functions by name. Implemented by the functions component; handed to other components
/// by the binary.
pub trait Invoke: Send + Sync {
    /// Runs `call` and answers the function's JSON result. Dropping the future cancels it.
    fn invoke(&self, call: Call) -> InvokeFuture;

    /// The functions served now, with their triggers (it follows reloads).
    fn functions(&self) -> Vec<Declared>;
}

pub type Invoker = Arc<dyn Invoke>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Trigger, String> {
        let t: Trigger = serde_json::from_str(json).map_err(|e| e.to_string())?;
        t.check()?;
        Ok(t)
    }

    #[test]
    fn schedules_have_seconds_and_a_time_zone() {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
        let every_five_minutes = Schedule::parse("0 */5 * * * *", None).unwrap();
        assert_eq!(every_five_minutes.next_after(at("2026-12-07T10:02:30Z")), Some(at("2026-12-07T10:05:00Z")));
        assert_eq!(every_five_minutes.next_after(at("2026-12-07T10:05:00Z")), Some(at("2026-12-07T10:10:00Z")));
        assert_eq!(every_five_minutes.last_at(at("2026-12-07T10:05:00Z")), Some(at("2026-12-07T10:05:00Z")));
        // 9:30 in Paris is 8:30 UTC in winter.
        let paris = Schedule::parse("0 30 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(paris.next_after(at("2026-12-07T00:00:00Z")), Some(at("2026-12-07T08:30:00Z")));
        assert!(Schedule::parse("0 */5 * * *", None).unwrap_err().contains("six fields"));
        assert!(Schedule::parse("0 */5 * * * *", Some("Mars/Olympus")).unwrap_err().contains("IANA"));
        assert!(Schedule::parse("0 99 * * * *", None).is_err());
    }

    #[test]
    fn triggers_parse_with_defaults_and_refuse_the_unknown() {
        assert_eq!(
            parse(r#"{"type":"queue","queue":"jobs"}"#).unwrap(),
            Trigger::Queue { queue: "jobs".into(), batch_size: 1 }
        );
        assert_eq!(parse(r#"{"type":"activity"}"#).unwrap(), Trigger::Activity {});
        assert_eq!(
            parse(r#"{"type":"docs_changes","container":"c","start":"beginning"}"#).unwrap(),
            Trigger::DocsChanges { container: "c".into(), batch_size: 100, start: FeedStart::Beginning }
        );
        let t = parse(r#"{"type":"http","route":"/a","methods":["GET"]}"#).unwrap();
        assert_eq!(t.kind(), "http");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"type": "http", "route": "/a", "methods": ["GET"]})
        );
        for bad in [
            r#"{"type":"cosmos"}"#,
            r#"{"type":"queue"}"#,
            r#"{"type":"queue","queue":"q","bogus":1}"#,
            r#"{"type":"queue","queue":"q","batch_size":0}"#,
            r#"{"type":"blob","path":"nocontainer"}"#,
            r#"{"type":"timer","schedule":"*/5 * * * *"}"#,
            r#"{"type":"docs_changes","container":"c","start":"later"}"#,
            r#"{"route":"/a"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
