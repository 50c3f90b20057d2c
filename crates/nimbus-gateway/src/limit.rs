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

/// One request's facts a limit key is taken from.
pub(crate) struct Subject<'a> {
    pub ip: std::net::IpAddr,
    pub headers: &'a axum::http::HeaderMap,
    pub claims: Option<&'a serde_json::Value>,
    pub api_key: Option<&'a str>,
}

impl Subject<'_> {
    /// The value a limit counts per. What the request does not carry (no token on an anonymous
    /// route, a missing header) falls back to the client's IP, so it cannot share one bucket.
    pub fn key(&self, key: &LimitKey) -> String {
        let found = match key {
            LimitKey::Ip => None,
            LimitKey::Sub => self.claims.and_then(|c| c.get("sub")).map(claim_text),
            LimitKey::ApiKey => self.api_key.map(str::to_owned),
            LimitKey::Header(name) => self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            LimitKey::Claim(name) => self.claims.and_then(|c| c.get(name)).map(claim_text),
        };
        match found {
            Some(value) => format!("k:{value}"),
            None => format!("ip:{}", self.ip),
        }
    }
}

fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

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
        let (period_id, start, end) = period_bounds(self.period, now);
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
        let (current, _, _) = period_bounds(self.period, now);
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

/// The period containing `now` (Unix seconds): its id (`2026-11-25` or `2026-11`), start and end.
fn period_bounds(period: QuotaPeriod, now: u64) -> (String, u64, u64) {
    let day = now / 86_400;
    let (y, m, d) = civil_from_days(day as i64);
    match period {
        QuotaPeriod::Day => (format!("{y:04}-{m:02}-{d:02}"), day * 86_400, (day + 1) * 86_400),
        QuotaPeriod::Month => {
            let start = (day as i64 - (d as i64 - 1)) as u64 * 86_400;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let end = days_from_civil(ny, nm, 1) as u64 * 86_400;
            (format!("{y:04}-{m:02}"), start, end)
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-25T09:16:32Z
        let now = 1_795_598_192;
        assert_eq!(civil_from_days((now / 86_400) as i64), (2026, 11, 25));
        let (id, start, end) = period_bounds(QuotaPeriod::Day, now);
        assert_eq!((id.as_str(), end - start), ("2026-11-25", 86_400));
        let (id, start, end) = period_bounds(QuotaPeriod::Month, now);
        assert_eq!((id.as_str(), (end - start) / 86_400), ("2026-11", 30));
        assert_eq!(civil_from_days(start as i64 / 86_400), (2026, 11, 1));
        let dec = days_from_civil(2026, 12, 31) as u64 * 86_400;
        let (id, _, end) = period_bounds(QuotaPeriod::Month, dec);
        assert_eq!((id.as_str(), civil_from_days(end as i64 / 86_400)), ("2026-12", (2027, 1, 1)));
        let leap = days_from_civil(2028, 2, 10) as u64 * 86_400;
        let (_, start, end) = period_bounds(QuotaPeriod::Month, leap);
        assert_eq!((end - start) / 86_400, 29);
        for day in [-1000, 0, 59, 60, 365, 11_000, 20_000, 200_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn limit_keys() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-client", axum::http::HeaderValue::from_static("c1"));
        let claims = serde_json::json!({"sub": "u1", "n": 5});
        let subject = Subject { ip: [10, 0, 0, 1].into(), headers: &headers, claims: Some(&claims), api_key: None };
        assert_eq!(subject.key(&LimitKey::Sub), "k:u1");
        assert_eq!(subject.key(&LimitKey::Claim("n".into())), "k:5");
        assert_eq!(subject.key(&LimitKey::ApiKey), "ip:10.0.0.1");
        assert_eq!(subject.key(&LimitKey::Ip), "ip:10.0.0.1");
        assert_eq!(subject.key(&"header:X-Client".parse().unwrap()), "k:c1");
        assert_eq!(subject.key(&"header:x-other".parse().unwrap()), "ip:10.0.0.1");
    }

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
