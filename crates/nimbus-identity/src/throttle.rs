//! Failed-attempt throttling: after too many failures for one key (an account, an IP address, a
//! client) within a window, the key is locked out for a while. Per node and in memory, like the
//! gateway's rate limits; a lockout is a brake on guessing, not a record that must survive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    limit: u32,
    window: Duration,
    lockout: Duration,
    state: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    pub fn new(limit: u32, window: Duration, lockout: Duration) -> Self {
        Self { limit, window, lockout, state: Mutex::new(HashMap::new()) }
    }

    /// How long `key` is still locked out, if it is.
    pub fn locked(&self, key: &str) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = state.get(key)?.locked_until?;
        until.checked_duration_since(Instant::now())
    }

    pub fn failed(&self, key: &str) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > 100_000 {
            state.retain(|_, e| now.duration_since(e.since) < self.window || e.locked_until.is_some_and(|u| u > now));
        }
        let entry = state.entry(key.to_owned()).or_insert(Entry { failures: 0, since: now, locked_until: None });
        if now.duration_since(entry.since) >= self.window {
            *entry = Entry { failures: 0, since: now, locked_until: None };
        }
        entry.failures += 1;
        if entry.failures >= self.limit {
            entry.locked_until = Some(now + self.lockout);
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_limit_and_forgets_on_success() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(60));
        t.failed("a");
        t.failed("a");
        assert!(t.locked("a").is_none());
        t.failed("a");
        assert!(t.locked("a").is_some());
        assert!(t.locked("b").is_none());
        t.succeeded("a");
        assert!(t.locked("a").is_none());
    }
}
