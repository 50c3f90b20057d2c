//! One timer function: it fires at each occurrence of its schedule, on one node per occurrence.
//!
//! The occurrence last run is kept in the store (`timers/<function>`); a node runs an occurrence
//! only if it moves that record forward to it (a conditional write), so nodes sharing a database
//! never both run one, and a node that was down finds there what it missed: one catch-up run with
//! `past_due` (not one per missed occurrence). Waiting is in steps of at most a second against the
//! wall clock, and each next occurrence is the cron library's answer from the current time, so a
//! clock that jumps moves the schedule as cron's semantics say instead of drifting.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nimbus_api::{Call, Invoker, Schedule};
use nimbus_store::{Expect, Store, StoreError, Write};
use serde_json::{Value, json};

const NAMESPACE: &str = "timers";
/// The longest single wait: the wall clock is looked at again after it.
const STEP: Duration = Duration::from_secs(1);
/// A run that starts this much after its occurrence is `past_due`.
const LATE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// Attempts at an occurrence whose invocation failed for a passing reason (no instance yet…).
const ATTEMPTS: u32 = 3;

pub(crate) fn describe() {
    metrics::describe_counter!(
        "nimbus_timer_runs_total",
        "Timer occurrences run by this node, by function and outcome (ok, failed, past_due)"
    );
    metrics::describe_histogram!(
        "nimbus_trigger_lag_seconds",
        metrics::Unit::Seconds,
        "From an event (a timer's occurrence) to its invocation's start, by trigger"
    );
}

pub(crate) struct Timer {
    pub function: String,
    pub schedule: Schedule,
    pub schedule_text: String,
    pub run_on_startup: bool,
    pub store: Arc<dyn Store>,
    pub invoker: Invoker,
}

/// What the store keeps of a timer.
struct Status {
    last: Option<DateTime<Utc>>,
    version: Option<u64>,
}

impl Timer {
    pub async fn run(self) {
        let status = self.status().await;
        let mut last = status.as_ref().and_then(|s| s.last);
        // One catch-up run for what was missed while no node ran this timer.
        if let Some(previous) = last
            && let Some(missed) = self.schedule.last_at(Utc::now())
            && missed > previous
        {
            tracing::info!(function = %self.function, occurrence = %missed, "a timer occurrence was missed: running it once, past due");
            self.fire(missed, true).await;
            last = Some(missed);
        }
        if self.run_on_startup {
            self.invoke(Utc::now(), false, last, true).await;
        }
        let mut after = Utc::now().max(last.unwrap_or(DateTime::<Utc>::MIN_UTC));
        loop {
            let Some(next) = self.schedule.next_after(after) else {
                tracing::warn!(function = %self.function, "this timer's schedule has no next occurrence");
                return;
            };
            loop {
                let now = Utc::now();
                if now >= next {
                    break;
                }
                tokio::time::sleep((next - now).to_std().unwrap_or(STEP).min(STEP)).await;
            }
            let late = Utc::now() - next > LATE;
            self.fire(next, late).await;
            // From now: a clock that jumped ahead skips what it jumped over (no burst).
            after = next.max(Utc::now() - chrono::TimeDelta::milliseconds(1));
        }
    }

    /// The stored status (`None` when the schedule changed since, or the store did not answer).
    async fn status(&self) -> Option<Status> {
        match self.store.get(NAMESPACE, &self.function).await {
            Ok(None) => Some(Status { last: None, version: None }),
            Ok(Some(record)) => {
                let value: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
                let same = value["schedule"].as_str() == Some(&self.schedule_text);
                let last = value["last"].as_i64().and_then(|s| DateTime::<Utc>::from_timestamp(s, 0));
                Some(Status { last: last.filter(|_| same), version: Some(record.version) })
            }
            Err(e) => {
                tracing::warn!(function = %self.function, error = %e, "cannot read a timer's status");
                None
            }
        }
    }

    /// Runs `occurrence` if this node is the one to move the stored status to it.
    async fn fire(&self, occurrence: DateTime<Utc>, past_due: bool) {
        let Some(status) = self.status().await else { return };
        if status.last.is_some_and(|last| last >= occurrence) {
            return; // another node ran it
        }
        let value = json!({"last": occurrence.timestamp(), "schedule": self.schedule_text}).to_string();
        let expect = status.version.map_or(Expect::Absent, Expect::Version);
        match self.store.commit(vec![Write::put(NAMESPACE, &self.function, value).expect(expect)]).await {
            Ok(_) => self.invoke(occurrence, past_due, status.last, false).await,
            Err(StoreError::Conflict { .. }) => {} // another node claimed it first
            Err(e) => tracing::warn!(function = %self.function, error = %e, "cannot claim a timer occurrence; skipped"),
        }
    }

    async fn invoke(&self, occurrence: DateTime<Utc>, past_due: bool, last: Option<DateTime<Utc>>, startup: bool) {
        let lag = (Utc::now() - occurrence).to_std().unwrap_or_default();
        metrics::histogram!("nimbus_trigger_lag_seconds", "trigger" => "timer").record(lag.as_secs_f64());
        // Azure's TimerInfo, in snake_case: the handler reads `data["past_due"]`.
        let info = json!({
            "scheduled_time": occurrence.to_rfc3339(),
            "past_due": past_due,
            "run_on_startup": startup,
            "last": last.map(|l| l.to_rfc3339()),
            "next": self.schedule.next_after(occurrence).map(|n| n.to_rfc3339()),
        });
        let mut call = Call::new(self.function.clone(), info.clone());
        if let Value::Object(fields) = info {
            call.delivery = fields;
        }
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.invoker.invoke(call.clone()).await {
                Ok(_) => break "ok",
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(function = %self.function, error = %e, "a timer run failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(function = %self.function, error = %e, occurrence = %occurrence, "a timer run failed");
                    break "failed";
                }
            }
        };
        let outcome = if outcome == "ok" && past_due { "past_due" } else { outcome };
        metrics::counter!("nimbus_timer_runs_total", "function" => self.function.clone(), "outcome" => outcome)
            .increment(1);
    }
}
