//! Token limits (`[ai] token_limit`: tokens per window) and quotas (`[ai] quota`: per calendar
//! day or month), counted in the store so that every node sharing it agrees. A request's estimate
//! (its prompt, counted, plus its `max_tokens`, or [`COMPLETION_RESERVE`]) is *reserved* with one
//! atomic add that refuses to pass the limit (no check-then-increment race), before any backend
//! is called; when it ends it is *settled*: the difference to what it used is added (given back
//! when it used less, all of it when no backend answered). So concurrent requests can overspend a
//! limit only by what they use beyond their reservations.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::StatusCode;
use nimbus_config::{AiSection, LimitKey, QuotaPeriod};
use nimbus_store::{Expect, Store, StoreError, Write};

use crate::error::AiError;

pub(crate) const NS: &str = "ai";
/// Completion tokens reserved for a request that does not bound them with `max_tokens`.
pub(crate) const COMPLETION_RESERVE: u64 = 1024;

enum Period {
    /// A fixed window of this many seconds.
    Window(u64),
    Calendar(QuotaPeriod),
}

struct Limit {
    /// `t` (window) or `q` (quota): the counters' key prefix, and the name in messages.
    kind: &'static str,
    key: LimitKey,
    tokens: u64,
    period: Period,
}

impl Limit {
    /// The counter's id for the period containing `now` (Unix seconds), and the period's end.
    fn period(&self, now: u64) -> (String, u64) {
        match self.period {
            Period::Window(secs) => {
                let index = now / secs;
                (index.to_string(), (index + 1) * secs)
            }
            Period::Calendar(period) => {
                let (id, _, end) = period.bounds(now);
                (id, end)
            }
        }
    }
}

pub(crate) struct Limits {
    limits: Vec<Limit>,
    store: Arc<dyn Store>,
}

/// What a reserved request holds: the counters it added to and how much. Settled once; dropped
/// unsettled (the request was abandoned before an answer), it gives everything back.
pub(crate) struct Reservation {
    counters: Vec<String>,
    reserved: u64,
    store: Arc<dyn Store>,
    settled: bool,
}

/// What a request may still use, for OpenAI's `x-ratelimit-*-tokens` headers.
pub(crate) struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl Limits {
    pub fn new(section: &AiSection, store: Arc<dyn Store>) -> Self {
        let mut limits = Vec::new();
        if let Some(l) = &section.token_limit {
            let period = Period::Window(l.per.get().as_secs().max(1));
            limits.push(Limit { kind: "t", key: l.key.clone(), tokens: l.tokens.get(), period });
        }
        if let Some(q) = &section.quota {
            let period = Period::Calendar(q.per);
            limits.push(Limit { kind: "q", key: q.key.clone(), tokens: q.tokens.get(), period });
        }
        Self { limits, store }
    }

    fn now(&self) -> u64 {
        self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Reserves `tokens` against every limit for `subject`, or refuses with `429` and when to
    /// come back; a store that does not answer refuses with `503` (a limit is never skipped).
    pub async fn reserve(
        &self,
        subject: &nimbus_api::Subject<'_>,
        tokens: u64,
    ) -> Result<(Reservation, Option<Remaining>), AiError> {
        let mut reservation =
            Reservation { counters: Vec::new(), reserved: tokens, store: self.store.clone(), settled: false };
        let mut tightest: Option<Remaining> = None;
        let now = self.now();
        let amount = i64::try_from(tokens).unwrap_or(i64::MAX);
        for limit in &self.limits {
            let (period, end) = limit.period(now);
            let what = if limit.kind == "t" { "token limit" } else { "token quota" };
            if tokens > limit.tokens {
                // Never fits (and a huge estimate would overflow the counter): no store call.
                let message = format!(
                    "this request needs about {tokens} tokens, more than the {what} of {} allows at all; lower max_tokens or the prompt",
                    limit.tokens
                );
                let mut error = AiError::upstream(StatusCode::TOO_MANY_REQUESTS, "tokens_exceeded", message);
                error.retry_after = Some(end.saturating_sub(now).max(1));
                return Err(error);
            }
            let counter = format!("{}/{}/{period}", limit.kind, digest(&subject.key(&limit.key)));
            let max = i64::try_from(limit.tokens).unwrap_or(i64::MAX);
            match self.store.add(NS, &counter, amount, Some(max)).await {
                Ok(Some(total)) => {
                    reservation.counters.push(counter);
                    let remaining = u64::try_from(max - total).unwrap_or(0);
                    if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(Remaining { limit: limit.tokens, remaining, reset_secs: end - now });
                    }
                }
                Ok(None) => {
                    // The reservations made so far go back at once (settled with nothing used).
                    let wait = end.saturating_sub(now).max(1);
                    let message = format!("{what} of {} tokens reached; try again in {wait} s", limit.tokens);
                    let mut error = AiError::upstream(StatusCode::TOO_MANY_REQUESTS, "tokens_exceeded", message);
                    error.retry_after = Some(wait);
                    return Err(error);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reserve AI tokens");
                    return Err(AiError::upstream(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "usage_store_unavailable",
                        "token limits cannot be checked now (the store does not answer); try again shortly",
                    ));
                }
            }
        }
        Ok((reservation, tightest))
    }

    /// Deletes the counters of windows and periods that are over.
    pub async fn housekeep(&self) -> Result<(), StoreError> {
        let now = self.now();
        for limit in &self.limits {
            let (current, _) = limit.period(now);
            let prefix = format!("{}/", limit.kind);
            let mut after: Option<String> = None;
            loop {
                let page = self.store.list(NS, &prefix, after.as_deref(), 500).await?;
                let done = page.len() < 500;
                after = page.last().map(|r| r.key.clone());
                for record in page.iter().filter(|r| r.key.rsplit('/').next() != Some(current.as_str())) {
                    // A counter written meanwhile (a settlement) is kept for the next round.
                    let write = Write::delete(NS, &record.key).expect(Expect::Version(record.version));
                    match self.store.commit(vec![write]).await {
                        Ok(_) | Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if done {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Reservation {
    /// Settles with the tokens the request used.
    pub fn settle(mut self, used: u64) {
        self.settle_with(used);
    }

    fn settle_with(&mut self, used: u64) {
        if std::mem::replace(&mut self.settled, true) || self.counters.is_empty() || used == self.reserved {
            return;
        }
        let delta =
            i64::try_from(used).unwrap_or(i64::MAX).saturating_sub(i64::try_from(self.reserved).unwrap_or(i64::MAX));
        let (store, counters) = (self.store.clone(), std::mem::take(&mut self.counters));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            for counter in counters {
                if let Err(e) = store.add(NS, &counter, delta, None).await {
                    tracing::warn!(counter, delta, error = %e, "cannot settle AI tokens");
                }
            }
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle_with(0);
    }
}

pub(crate) fn digest(s: &str) -> String {
    use sha2::Digest as _;
    nimbus_api::hex(&sha2::Sha256::digest(s.as_bytes())[..16])
}

/// How often old counters are deleted.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_secs(60);
