//! Rate limits (GCRA through `governor`, per node, in memory) and quotas (requests per calendar
//! day or month in UTC, counted in the store so that they survive restarts and are shared by every
//! node). Both answer with the IETF draft's `RateLimit-Policy` / `RateLimit` headers.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota as GcraQuota, RateLimiter};
use nimbus_config::{LimitKey, QuotaPeriod};
use nimbus_store::{Expect, Store, StoreError, Write};
use sha2::{Digest, Sha256};

const NS: &str = "gateway";

/// A refused request: how long to wait, and the headers that say so.
pub(crate) struct Exceeded {
    pub retry_after: u64,
    pub headers: LimitHeaders,
}

/// `RateLimit-Policy` and `RateLimit` values (draft-ietf-httpapi-ratelimit-headers).
#[derive(Default)]
pub(crate) struct LimitHeaders {
    pub policy: Vec<String>,
    pub state: Vec<String>,
}

impl LimitHeaders {
    pub fn apply(&self, headers: &mut axum::http::HeaderMap) {
        for (name, items) in [("ratelimit-policy", &self.policy), ("ratelimit", &self.state)] {
            if !items.is_empty()
                && let Ok(v) = axum::http::HeaderValue::from_str(&items.join(", "))
            {
                headers.insert(axum::http::HeaderName::from_static(name), v);
            }
        }
    }
}

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub(crate) struct RateLimit {
    pub key: LimitKey,
    limiter: Keyed,
    requests: u32,
    window: u64,
}

impl RateLimit {
    pub fn new(section: &nimbus_config::RateLimit) -> Self {
        let requests: NonZeroU32 = section.requests;
        // At least a nanosecond: `with_period` refuses only a zero period.
        let period = (section.per.get() / requests.get()).max(Duration::from_nanos(1));
        let quota = GcraQuota::with_period(period).expect("a period of 1ns or more is a quota");
        Self {
            key: section.key.clone(),
            limiter: RateLimiter::keyed(quota.allow_burst(requests)).with_middleware::<StateInformationMiddleware>(),
            requests: requests.get(),
            window: section.per.get().as_secs().max(1),
        }
    }

    /// Takes one request from `key`'s allowance.
    pub fn check(&self, key: String, headers: &mut LimitHeaders) -> Result<(), Exceeded> {
        headers.policy.push(format!("\"rate\";q={};w={}", self.requests, self.window));
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // Time until the allowance is whole again.
                let reset = (self.requests - remaining) as u64 * self.window / self.requests as u64;
                headers.state.push(format!("\"rate\";r={remaining};t={reset}"));
                Ok(())
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.state.push(format!("\"rate\";r=0;t={retry_after}"));
                Err(Exceeded { retry_after, headers: std::mem::take(headers) })
            }
        }
    }

    /// Forgets keys whose allowance is whole again, so memory follows active clients only.
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

pub(crate) struct Quota {
    pub key: LimitKey,
    route: String,
    requests: u64,
    period: QuotaPeriod,
    store: Arc<dyn Store>,
}

impl Quota {
    pub fn new(route: &str, section: &nimbus_config::Quota, store: Arc<dyn Store>) -> Self {
        Self {
            key: section.key.clone(),
            route: route.to_owned(),
            requests: section.requests.get(),
            period: section.per,
            store,
        }
    }

    /// Unix seconds by the store's clock, which every node and test agrees on.
    fn now(&self) -> u64 {
        self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Counts one request against `key`'s quota for the current period.
    pub async fn take(&self, key: &str, headers: &mut LimitHeaders) -> Result<Result<(), Exceeded>, StoreError> {
        let now = self.now();
        let (period_id, start, end) = self.period.bounds(now);
        let left_secs = end.saturating_sub(now);
        headers.policy.push(format!("\"quota\";q={};w={}", self.requests, end - start));
        let record_key = format!("quota/{}/{period_id}/{}", digest(&self.route), digest(key));
        // One atomic add that refuses to pass the limit: no read-then-write race between nodes.
        let limit = i64::try_from(self.requests).unwrap_or(i64::MAX);
        match self.store.add(NS, &record_key, 1, Some(limit)).await? {
            Some(count) => {
                let left = limit.saturating_sub(count);
                headers.state.push(format!("\"quota\";r={left};t={left_secs}"));
                Ok(Ok(()))
            }
            None => {
                headers.state.push(format!("\"quota\";r=0;t={left_secs}"));
                Ok(Err(Exceeded { retry_after: left_secs.max(1), headers: std::mem::take(headers) }))
            }
        }
    }

    /// Deletes the counters of periods that are over.
    pub async fn housekeep(&self) -> Result<(), StoreError> {
        let now = self.now();
        let (current, _, _) = self.period.bounds(now);
        let prefix = format!("quota/{}/", digest(&self.route));
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NS, &prefix, after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|r| r.key.clone());
            let old: Vec<Write> = page
                .iter()
                .filter(|r| r.key[prefix.len()..].split('/').next() != Some(current.as_str()))
                .map(|r| Write::delete(NS, &r.key).expect(Expect::Version(r.version)))
                .collect();
            for write in old {
                // A counter written meanwhile is simply kept for the next round.
                match self.store.commit(vec![write]).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if done {
                return Ok(());
            }
        }
    }
}

fn digest(s: &str) -> String {
    nimbus_api::hex(&Sha256::digest(s.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_down_and_refuses() {
        let section = nimbus_config::RateLimit {
            key: LimitKey::Ip,
            requests: NonZeroU32::new(2).unwrap(),
            per: nimbus_config::Duration::from_secs(60),
        };
        let limit = RateLimit::new(&section);
        let mut h = LimitHeaders::default();
        assert!(limit.check("a".into(), &mut h).is_ok());
        assert_eq!(h.state, ["\"rate\";r=1;t=30"]);
        assert!(limit.check("a".into(), &mut LimitHeaders::default()).is_ok());
        let refused = limit.check("a".into(), &mut LimitHeaders::default()).unwrap_err();
        assert!((29..=30).contains(&refused.retry_after), "{}", refused.retry_after);
        assert_eq!(refused.headers.policy, ["\"rate\";q=2;w=60"]);
        assert!(limit.check("b".into(), &mut LimitHeaders::default()).is_ok(), "keys are separate");
    }
}
