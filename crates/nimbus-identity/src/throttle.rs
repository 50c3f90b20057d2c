//! Brakes on guessing and flooding, per key (an account, a source address, a client and source,
//! an e-mail address). Per node and in memory, like the gateway's rate limits: a brake, not a
//! record that must survive. Three kinds:
//! - [`Lockout`]: after `limit` failures within `window`, the key is refused for `lockout`;
//! - [`Backoff`]: the first `free` failures cost nothing; from then on each failure refuses the
//!   key for twice as long as the one before (`base`, 2·`base`, … at most `max`); a key quiet for
//!   `forget` after its last wait starts again. Guessing slows down exponentially, and only for
//!   the key that guesses. A success does not reset it (else a guesser sharing the key with a
//!   busy rightful user would get new free tries after each of the user's successes);
//! - [`Rate`]: at most `limit` events per `window` (a window starts with a key's first event).
//!
//! Time is passed in (`now`, since the Unix epoch, by the store's clock), so tests move it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Above this many keys, a table drops the ones that no longer matter.
const PRUNE_ABOVE: usize = 100_000;

struct Table<E>(Mutex<HashMap<String, E>>);

impl<E> Table<E> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, E>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table, pruned of entries `live` says are over when it has grown large.
    fn pruned(&self, live: impl Fn(&E) -> bool) -> std::sync::MutexGuard<'_, HashMap<String, E>> {
        let mut state = self.lock();
        if state.len() > PRUNE_ABOVE {
            state.retain(|_, e| live(e));
        }
        state
    }
}

fn remaining(until: Duration, now: Duration) -> Option<Duration> {
    until.checked_sub(now).filter(|d| !d.is_zero())
}

pub(crate) struct Lockout {
    limit: u32,
    window: Duration,
    lockout: Duration,
    state: Table<Failures>,
}

struct Failures {
    count: u32,
    since: Duration,
    locked_until: Option<Duration>,
}

impl Lockout {
    pub fn new(limit: u32, window: Duration, lockout: Duration) -> Self {
        Self { limit, window, lockout, state: Table::new() }
    }

    /// How long `key` is still locked out, if it is.
    pub fn locked(&self, key: &str, now: Duration) -> Option<Duration> {
        remaining(self.state.lock().get(key)?.locked_until?, now)
    }

    pub fn failed(&self, key: &str, now: Duration) {
        let window = self.window;
        let mut state =
            self.state.pruned(|e| now.saturating_sub(e.since) < window || e.locked_until.is_some_and(|u| u > now));
        let entry = state.entry(key.to_owned()).or_insert(Failures { count: 0, since: now, locked_until: None });
        if now.saturating_sub(entry.since) >= self.window {
            *entry = Failures { count: 0, since: now, locked_until: None };
        }
        entry.count += 1;
        if entry.count >= self.limit {
            entry.locked_until = Some(now + self.lockout);
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.state.lock().remove(key);
    }
}

pub(crate) struct Backoff {
    free: u32,
    base: Duration,
    max: Duration,
    /// A key quiet this long after its last refusal ends is forgotten.
    forget: Duration,
    state: Table<Tries>,
}

struct Tries {
    failures: u32,
    until: Duration,
    last: Duration,
}

impl Backoff {
    pub fn new(free: u32, base: Duration, max: Duration, forget: Duration) -> Self {
        Self { free, base, max, forget, state: Table::new() }
    }

    /// How long `key` must still wait, if it must.
    pub fn locked(&self, key: &str, now: Duration) -> Option<Duration> {
        remaining(self.state.lock().get(key)?.until, now)
    }

    pub fn failed(&self, key: &str, now: Duration) {
        let forget = self.forget;
        let mut state = self.state.pruned(|e| e.until.max(e.last) + forget > now);
        let entry = state.entry(key.to_owned()).or_insert(Tries { failures: 0, until: now, last: now });
        if entry.until.max(entry.last) + self.forget <= now {
            *entry = Tries { failures: 0, until: now, last: now };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if entry.failures > self.free {
            let doublings = (entry.failures - self.free - 1).min(30);
            entry.until = now + self.base.saturating_mul(1 << doublings).min(self.max);
        }
    }
}

pub(crate) struct Rate {
    limit: u32,
    window: Duration,
    state: Table<Window>,
}

struct Window {
    count: u32,
    start: Duration,
}

impl Rate {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, state: Table::new() }
    }

    /// Counts one event of `key`; when the key has had `limit` in its window already, counts
    /// nothing and answers how long until the window ends.
    pub fn hit(&self, key: &str, now: Duration) -> Result<(), Duration> {
        let window = self.window;
        let mut state = self.state.pruned(|e| e.start + window > now);
        let entry = state.entry(key.to_owned()).or_insert(Window { count: 0, start: now });
        if entry.start + self.window <= now {
            *entry = Window { count: 0, start: now };
        }
        if entry.count >= self.limit {
            return Err(remaining(entry.start + self.window, now).unwrap_or(Duration::from_secs(1)));
        }
        entry.count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(secs: u64) -> Duration {
        T0 + Duration::from_secs(secs)
    }

    #[test]
    fn locks_after_the_limit_and_forgets_on_success() {
        let t = Lockout::new(3, Duration::from_secs(60), Duration::from_secs(60));
        t.failed("a", at(0));
        t.failed("a", at(1));
        assert!(t.locked("a", at(1)).is_none());
        t.failed("a", at(2));
        assert_eq!(t.locked("a", at(2)), Some(Duration::from_secs(60)));
        assert!(t.locked("b", at(2)).is_none());
        assert!(t.locked("a", at(62)).is_none(), "the lockout ends");
        t.failed("a", at(70));
        assert!(t.locked("a", at(70)).is_none(), "a new window");
        t.succeeded("a");
        assert!(t.locked("a", at(70)).is_none());
    }

    #[test]
    fn backs_off_exponentially_per_key_and_forgets() {
        let t = Backoff::new(2, Duration::from_secs(30), Duration::from_secs(900), Duration::from_secs(900));
        t.failed("c|a", at(0));
        t.failed("c|a", at(0));
        assert!(t.locked("c|a", at(0)).is_none(), "the first failures are free");
        t.failed("c|a", at(0));
        assert_eq!(t.locked("c|a", at(0)), Some(Duration::from_secs(30)));
        assert!(t.locked("c|b", at(0)).is_none(), "another source is not held back");
        assert!(t.locked("c|a", at(30)).is_none(), "after the back-off the key may try again");
        t.failed("c|a", at(30));
        assert_eq!(t.locked("c|a", at(30)), Some(Duration::from_secs(60)));
        t.failed("c|a", at(90));
        assert_eq!(t.locked("c|a", at(90)), Some(Duration::from_secs(120)));
        for s in [210, 450, 930, 1830] {
            t.failed("c|a", at(s));
        }
        assert_eq!(t.locked("c|a", at(1830)), Some(Duration::from_secs(900)), "capped at max");
        // A quiet period after the last back-off forgets the key.
        for _ in 0..3 {
            t.failed("c|b", at(0));
        }
        t.failed("c|b", at(30 + 900));
        assert!(t.locked("c|b", at(930)).is_none(), "forgotten: the count starts again");
    }

    #[test]
    fn rates_count_per_window() {
        let r = Rate::new(2, Duration::from_secs(600));
        assert!(r.hit("x", at(0)).is_ok());
        assert!(r.hit("x", at(1)).is_ok());
        assert_eq!(r.hit("x", at(100)), Err(Duration::from_secs(500)));
        assert!(r.hit("y", at(100)).is_ok());
        assert!(r.hit("x", at(600)).is_ok(), "a new window");
    }
}
