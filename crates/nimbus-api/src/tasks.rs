//! Background work with an owner. Each component keeps one [`Tasks`]; every loop or one-off task it
//! starts goes through it, and its `shutdown(grace)` stops them: loops stop at their next tick
//! (a tick in progress finishes), one-off tasks are cancelled at their next await unless started
//! with [`Tasks::spawn_to_end`], and shutdown waits for all of them, at most the grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks of one component.
#[derive(Clone)]
pub struct Tasks {
    component: &'static str,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new(component: &'static str) -> Self {
        Self { component, stop: CancellationToken::new(), tracker: TaskTracker::new() }
    }

    /// Runs `tick` every `period` (the first at once) until shutdown.
    pub fn every<F, Fut>(&self, what: &'static str, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = self.stop.clone();
        let component = self.component;
        self.tracker.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = interval.tick() => tick().await,
                }
            }
            tracing::debug!(component, task = what, "stopped");
        });
    }

    /// Runs `work` until it ends or shutdown begins, whichever is first.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Runs `work` to its end even when shutdown begins (a mail being sent, a drain): shutdown
    /// waits for it within the grace period.
    pub fn spawn_to_end(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(work);
    }

    /// Resolves once shutdown has begun, for work that stops in its own way.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Stops the loops, cancels what can be cancelled, and waits for every task to end, at most
    /// `grace`. Answers whether they all did.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        if !ended {
            tracing::warn!(
                component = self.component,
                running = self.tracker.len(),
                "background tasks still running after the grace period"
            );
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_loops_cancels_tasks_and_waits_for_work_that_must_end() {
        let tasks = Tasks::new("test");
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        tasks.every("count", Duration::from_secs(1), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let cancelled = Arc::new(AtomicUsize::new(0));
        let flag = cancelled.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            flag.fetch_add(1, Ordering::SeqCst);
        });
        let finished = Arc::new(AtomicUsize::new(0));
        let done = finished.clone();
        tasks.spawn_to_end(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            done.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "ticks at 0 s, 1 s and 2 s");
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(cancelled.load(Ordering::SeqCst), 0, "the long task was cancelled, not finished");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "no tick after shutdown");

        let stuck = Tasks::new("stuck");
        stuck.spawn_to_end(std::future::pending());
        assert!(!stuck.shutdown(Duration::from_secs(1)).await, "the grace period bounds the wait");
    }
}
