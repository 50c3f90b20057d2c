//! The store's notion of now: the wall clock plus an offset that only grows, so tests can move
//! time forward (expire a lease, roll a window over) without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The wall clock plus an offset that only grows. Every store owns one (offset 0 when opened);
/// every time the store uses now — lease claims, renewals, releases, fenced writes — includes the
/// offset. SQLite reads [`Clock::now`]; PostgreSQL keeps the database's clock (so nodes agree) and
/// adds the offset to it. Components that need now for store-related decisions ask
/// [`crate::Store::clock`], so one [`Clock::advance`] moves all of them together.
#[derive(Debug, Default)]
pub struct Clock {
    /// Nanoseconds, saturating (an offset of u64::MAX ns is some 584 years).
    offset_ns: AtomicU64,
}

impl Clock {
    /// The wall clock, offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The wall clock plus the offset.
    pub fn now(&self) -> SystemTime {
        let wall = SystemTime::now();
        wall.checked_add(self.offset()).unwrap_or(wall)
    }

    /// For tests: moves this store's notion of now forward by `by`, for every lease, fenced write
    /// and caller that asks `store.clock()`. Never moves it back. Other stores opened on the same
    /// data keep their own clocks.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update only fails when the closure answers None, which it never does.
        let _ = self.offset_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ns| Some(ns.saturating_add(by)));
    }

    /// How far [`Clock::advance`] has moved this clock so far.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }

    /// [`Clock::now`] in milliseconds since the Unix epoch (what the lease tables store).
    pub(crate) fn now_ms(&self) -> i64 {
        self.now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
    }

    /// The offset in whole milliseconds, for PostgreSQL's `NOW_MS + $n`.
    pub(crate) fn offset_ms(&self) -> i64 {
        self.offset().as_millis().min(i64::MAX as u128) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_only() {
        let clock = Clock::new();
        assert_eq!(clock.offset(), Duration::ZERO);
        let before = SystemTime::now();
        clock.advance(Duration::from_secs(3600));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.offset(), Duration::from_millis(3_601_500));
        assert_eq!(clock.offset_ms(), 3_601_500);
        assert!(clock.now() >= before + Duration::from_millis(3_601_500));
        assert!(clock.now() < SystemTime::now() + Duration::from_secs(3602));
        clock.advance(Duration::MAX);
        assert_eq!(clock.offset(), Duration::from_nanos(u64::MAX), "saturates instead of wrapping");
        let _ = clock.now();
    }
}
