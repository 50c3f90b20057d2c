//! The usage ledger: per hour (UTC), model, backend, user and API key, counters of requests and of
//! prompt and completion tokens, in the store (`u/<hour>/<model>/<backend>/<user>/<key>/<n|p|c>`),
//! kept [`RETENTION`]. Requests add to counters in memory, written every [`FLUSH`] (and at shutdown)
//! as one add per counter: a busy gateway makes a few writes a second, not three per request; a node
//! killed outright loses at most the last second of the ledger (never a limit's accounting, which is
//! settled per request). [`report`] sums the counters for the admin API (`/_nimbus/admin/usage`) and
//! the CLI (`nimbus ai usage`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use nimbus_store::{Expect, Store, StoreError, Write};
use serde_json::{Value, json};

use crate::limits::NS;

/// How long hourly usage is kept.
pub const RETENTION: Duration = Duration::from_secs(400 * 86_400);

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    Model,
    Backend,
    User,
    Key,
}

impl Dimension {
    pub const ALL: [Self; 4] = [Self::Model, Self::Backend, Self::User, Self::Key];

    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Backend => "backend",
            Self::User => "user",
            Self::Key => "key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// One request's usage, as [`record`] stores it.
pub(crate) struct Entry<'a> {
    pub model: &'a str,
    pub backend: &'a str,
    pub user: Option<&'a str>,
    pub key: Option<&'a str>,
    pub prompt: u64,
    pub completion: u64,
}

/// How often the counters gathered in memory are written.
pub(crate) const FLUSH: Duration = Duration::from_secs(1);

/// The counters not written yet, by key.
pub(crate) struct Ledger {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<String, i64>>,
}

impl Ledger {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, pending: Mutex::new(HashMap::new()) }
    }

    /// Adds one request (in memory until the next flush).
    pub fn record(&self, entry: &Entry<'_>) {
        let now = self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let base = format!(
            "u/{}/{}/{}/{}/{}",
            hour(now),
            escape(entry.model),
            escape(entry.backend),
            escape(entry.user.unwrap_or("-")),
            escape(entry.key.unwrap_or("-"))
        );
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (field, n) in [("n", 1), ("p", entry.prompt), ("c", entry.completion)] {
            if n > 0 {
                *pending.entry(format!("{base}/{field}")).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
    }

    /// Writes what was gathered; what cannot be written now is kept for the next flush.
    pub async fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failed: Vec<(String, i64)> = Vec::new();
        for (key, n) in pending {
            if !failed.is_empty() {
                failed.push((key, n));
                continue;
            }
            if let Err(e) = self.store.add(NS, &key, n, None).await {
                tracing::warn!(error = %e, "cannot record AI usage; it will be tried again");
                failed.push((key, n));
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (key, n) in failed {
            *pending.entry(key).or_default() += n;
        }
    }
}

/// `2026-12-07T17`: the hour (UTC) containing `secs`.
fn hour(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}T{:02}", t.year(), u8::from(t.month()), t.day(), t.hour())
}

/// A key segment: `%` and `/` escaped (model names may hold `/`).
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// Usage since `since` (Unix seconds; whole hours, from the one containing it), summed by the
/// dimensions in `by` (none: one total), the largest token counts first.
pub async fn report(store: &dyn Store, since: u64, by: &[Dimension]) -> Result<Value, StoreError> {
    let mut groups: BTreeMap<Vec<String>, [u64; 3]> = BTreeMap::new();
    let mut after = Some(format!("u/{}", hour(since)));
    loop {
        let page = store.list(NS, "u/", after.as_deref(), 1000).await?;
        let done = page.len() < 1000;
        after = page.last().map(|r| r.key.clone());
        for record in &page {
            // u / hour / model / backend / user / key / field
            let parts: Vec<&str> = record.key.split('/').collect();
            let [_, _, model, backend, user, key, field] = parts[..] else { continue };
            let value = std::str::from_utf8(&record.value).ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            let group = by
                .iter()
                .map(|d| {
                    unescape(match d {
                        Dimension::Model => model,
                        Dimension::Backend => backend,
                        Dimension::User => user,
                        Dimension::Key => key,
                    })
                })
                .collect();
            let sums = groups.entry(group).or_default();
            let i = match field {
                "n" => 0,
                "p" => 1,
                "c" => 2,
                _ => continue,
            };
            sums[i] += u64::try_from(value).unwrap_or(0);
        }
        if done {
            break;
        }
    }
    let mut rows: Vec<(Vec<String>, [u64; 3])> = groups.into_iter().collect();
    rows.sort_by_key(|(group, sums)| (std::cmp::Reverse(sums[1] + sums[2]), group.clone()));
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(group, [requests, prompt, completion])| {
            let mut row = json!({"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion});
            for (d, value) in by.iter().zip(group) {
                row[d.name()] = json!(value);
            }
            row
        })
        .collect();
    Ok(json!({"since": hour(since) + ":00:00Z", "by": by.iter().map(|d| d.name()).collect::<Vec<_>>(), "rows": rows}))
}

/// Deletes the hours older than [`RETENTION`].
pub(crate) async fn housekeep(store: &dyn Store) -> Result<(), StoreError> {
    let now = store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let cutoff = format!("u/{}", hour(now.saturating_sub(RETENTION.as_secs())));
    loop {
        let page = store.list(NS, "u/", None, 500).await?;
        let old: Vec<_> = page.iter().take_while(|r| r.key < cutoff).collect();
        if old.is_empty() {
            return Ok(());
        }
        for record in old {
            let write = Write::delete(NS, &record.key).expect(Expect::Version(record.version));
            match store.commit(vec![write]).await {
                Ok(_) => {}
                // Written meanwhile (a late settlement): left for the next round.
                Err(StoreError::Conflict { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_segments() {
        // 2026-11-25T09:16:32Z
        assert_eq!(hour(1_795_598_192), "2026-11-25T09");
        assert_eq!(escape("meta-llama/Llama-3%"), "meta-llama%2FLlama-3%25");
        assert_eq!(unescape(&escape("a/b%2Fc")), "a/b%2Fc");
    }
}
