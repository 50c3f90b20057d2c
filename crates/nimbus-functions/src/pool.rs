//! The instance pool of one function: scale out when every slot is busy, scale in after the idle
//! timeout (down to `min_instances`, possibly zero), a bounded wait queue in front, crashed
//! instances replaced with back-off.
//!
//! All bookkeeping happens under one mutex that is never held across an await; instance starts
//! and stops run in their own tasks and report back by taking the lock again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::access::Access;
use crate::error::InvokeError;
use crate::instance::{Instance, LaunchSpec};

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    pub idle_timeout: Duration,
    pub queue_limit: u32,
    pub queue_timeout: Duration,
}

pub(crate) struct Pool {
    pub function: String,
    spec: LaunchSpec,
    access: Access,
    limits: Limits,
    ids: Arc<AtomicU64>,
    state: Mutex<State>,
    metrics: PoolMetrics,
}

/// Metric handles looked up once: the request path updates them on every acquire and release.
struct PoolMetrics {
    instances: metrics::Gauge,
    starting: metrics::Gauge,
    in_flight: metrics::Gauge,
    queue_depth: metrics::Gauge,
    cold_starts: metrics::Counter,
    cold_start_seconds: metrics::Histogram,
    instance_start_seconds: metrics::Histogram,
    start_failures: metrics::Counter,
    crashes: metrics::Counter,
}

impl PoolMetrics {
    fn new(function: &str) -> Self {
        let f = || function.to_owned();
        Self {
            instances: metrics::gauge!("nimbus_function_instances", "function" => f()),
            starting: metrics::gauge!("nimbus_function_instances_starting", "function" => f()),
            in_flight: metrics::gauge!("nimbus_function_in_flight", "function" => f()),
            queue_depth: metrics::gauge!("nimbus_function_queue_depth", "function" => f()),
            cold_starts: metrics::counter!("nimbus_function_cold_starts_total", "function" => f()),
            cold_start_seconds: metrics::histogram!("nimbus_function_cold_start_seconds", "function" => f()),
            instance_start_seconds: metrics::histogram!("nimbus_function_instance_start_seconds", "function" => f()),
            start_failures: metrics::counter!("nimbus_function_start_failures_total", "function" => f()),
            crashes: metrics::counter!("nimbus_function_crashes_total", "function" => f()),
        }
    }
}

struct Member {
    instance: Arc<Instance>,
    in_flight: u32,
    idle_since: Instant,
    /// Takes no new invocations and stops once those in flight end: an invocation timed out on it,
    /// and its handler may still be running (a handler that does not yield to cancellation).
    retiring: bool,
}

struct Waiter {
    tx: oneshot::Sender<Result<Slot, InvokeError>>,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    starting: u32,
    waiters: VecDeque<Waiter>,
    /// Consecutive failed starts (or crashes soon after start), for back-off.
    failures: u32,
    closed: bool,
    /// Affinity key → the id of the instance that took its last call.
    affinity: HashMap<String, String>,
}

/// Affinity keys remembered per pool; past this the map starts over (a forgotten key costs its
/// worker one state rebuild, not a wrong answer).
const AFFINITY_KEYS: usize = 10_000;

/// The right to send one invocation to one instance; gives the slot back when dropped, wherever
/// that happens (also inside a hand-over channel whose receiver went away).
pub(crate) struct Slot {
    pool: Arc<Pool>,
    pub instance: Arc<Instance>,
    /// False for a slot that was never counted (a hand-over that failed under the lock).
    armed: bool,
}

impl Slot {
    /// Gives the slot back and retires its instance: for an invocation that timed out, whose handler
    /// may still be running there. The instance takes no new invocations and stops once the others
    /// in flight on it end; the pool starts a replacement as needed.
    pub fn retire(self) {
        self.pool.retire(&self.instance);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(&self.instance);
        }
    }
}

/// An instance that lived at least this long before crashing does not count toward back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Pool {
    pub fn new(function: String, spec: LaunchSpec, access: Access, limits: Limits, ids: Arc<AtomicU64>) -> Arc<Self> {
        let metrics = PoolMetrics::new(&function);
        Arc::new(Self { function, spec, access, limits, ids, state: Mutex::new(State::default()), metrics })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot: a ready instance with room, or a new one within `max_instances`.
    /// A slot for one invocation; with `affinity`, on the instance that took the key's last call
    /// when it has a free slot.
    pub async fn acquire(self: &Arc<Self>, affinity: Option<&str>) -> Result<Slot, InvokeError> {
        let enqueued = Instant::now();
        let rx = {
            let mut st = self.lock();
            if st.closed {
                return Err(InvokeError::ShuttingDown);
            }
            if let Some(i) = pick(&st, affinity, self.limits.concurrency) {
                if let Some(key) = affinity {
                    if st.affinity.len() >= AFFINITY_KEYS {
                        st.affinity.clear();
                    }
                    let id = st.members[i].instance.id.clone();
                    st.affinity.insert(key.to_owned(), id);
                }
                st.members[i].in_flight += 1;
                let instance = st.members[i].instance.clone();
                self.publish(&st);
                return Ok(Slot { pool: self.clone(), instance, armed: true });
            }
            st.waiters.retain(|w| !w.tx.is_closed());
            // The queue bounds the waiters beyond the capacity that is starting or may still start.
            let startable = self.limits.max.saturating_sub(live(&st.members));
            let coming = startable as usize * self.limits.concurrency as usize;
            if st.waiters.len() >= self.limits.queue_limit as usize + coming {
                return Err(InvokeError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { tx });
            self.scale_out(&mut st);
            self.publish(&st);
            rx
        };
        match tokio::time::timeout(self.limits.queue_timeout, rx).await {
            Ok(Ok(Ok(slot))) => {
                if slot.instance.started_at >= enqueued {
                    self.metrics.cold_starts.increment(1);
                    self.metrics.cold_start_seconds.record(enqueued.elapsed().as_secs_f64());
                }
                Ok(slot)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(InvokeError::ShuttingDown),
            Err(_) => {
                let mut st = self.lock();
                st.waiters.retain(|w| !w.tx.is_closed());
                self.publish(&st);
                Err(InvokeError::QueueTimeout)
            }
        }
    }

    fn release(self: &Arc<Self>, instance: &Arc<Instance>) {
        // Stays correct for instances already removed (crashed, scaled in): they are not found.
        let mut st = self.lock();
        let mut done = None;
        if let Some(pos) = st.members.iter().position(|m| Arc::ptr_eq(&m.instance, instance)) {
            let m = &mut st.members[pos];
            m.in_flight = m.in_flight.saturating_sub(1);
            if m.in_flight == 0 {
                m.idle_since = Instant::now();
                if m.retiring {
                    done = Some(st.members.remove(pos).instance);
                }
            }
        }
        self.dispatch(&mut st);
        self.publish(&st);
        drop(st);
        if let Some(instance) = done {
            tracing::info!(function = %self.function, instance = %instance.id, "stopping an instance retired after a timeout");
            tokio::spawn(async move { instance.stop().await });
        }
    }

    /// Marks `instance` retiring (see [`Slot::retire`]), then releases the slot.
    fn retire(self: &Arc<Self>, instance: &Arc<Instance>) {
        let mut st = self.lock();
        if let Some(m) = st.members.iter_mut().find(|m| Arc::ptr_eq(&m.instance, instance)) {
            m.retiring = true;
        }
        // Its capacity is gone: replacements for the waiters and for `min_instances`.
        self.ensure_min(&mut st);
        self.scale_out(&mut st);
        self.publish(&st);
    }

    /// Hands free slots to waiting invocations, oldest first.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        while !st.waiters.is_empty() {
            let Some(i) = pick(st, None, self.limits.concurrency) else { break };
            let Some(waiter) = st.waiters.pop_front() else { break };
            // Counted before the hand-over: if the receiver drops the slot later, its release
            // (which takes this lock, after we let go of it) gives the count back.
            st.members[i].in_flight += 1;
            let slot = Slot { pool: self.clone(), instance: st.members[i].instance.clone(), armed: true };
            if let Err(Ok(mut unsent)) = waiter.tx.send(Ok(slot)) {
                unsent.armed = false; // releasing here would take the lock we hold
                st.members[i].in_flight -= 1;
            }
        }
    }

    /// Starts instances for the waiters that the running and starting ones cannot take.
    fn scale_out(self: &Arc<Self>, st: &mut State) {
        let per = self.limits.concurrency.max(1) as usize;
        while st.starting as usize * per < st.waiters.len() && (live(&st.members) + st.starting) < self.limits.max {
            st.starting += 1;
            tokio::spawn(self.clone().start_one(st.failures));
        }
    }

    /// Keeps `min_instances` running.
    fn ensure_min(self: &Arc<Self>, st: &mut State) {
        while !st.closed && (live(&st.members) + st.starting) < self.limits.min {
            st.starting += 1;
            tokio::spawn(self.clone().start_one(st.failures));
        }
    }

    /// Starts `min_instances` and waits until they are ready (or failed).
    pub async fn warm(self: &Arc<Self>) {
        let mut handles = Vec::new();
        {
            let mut st = self.lock();
            for _ in 0..self.limits.min {
                st.starting += 1;
                handles.push(tokio::spawn(self.clone().start_one(0)));
            }
        }
        for h in handles {
            let _ = h.await;
        }
    }

    async fn start_one(self: Arc<Self>, failures: u32) {
        if failures > 0 {
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << failures.min(10))).min(MAX_BACKOFF);
            tokio::time::sleep(backoff).await;
        }
        let id = format!("{}-{}", self.function, self.ids.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        match Instance::start(&self.spec, &id, Some((&self.function, &self.access))).await {
            Ok(instance) => {
                self.metrics.instance_start_seconds.record(started.elapsed().as_secs_f64());
                tracing::info!(function = %self.function, instance = %id, start_ms = started.elapsed().as_secs_f64() * 1000.0, "instance ready");
                let closed = {
                    let mut st = self.lock();
                    st.starting -= 1;
                    if !st.closed {
                        st.members.push(Member {
                            instance: instance.clone(),
                            in_flight: 0,
                            idle_since: Instant::now(),
                            retiring: false,
                        });
                        self.dispatch(&mut st);
                        self.publish(&st);
                    }
                    st.closed
                };
                if closed {
                    instance.stop().await;
                    return;
                }
                let pool = self.clone();
                tokio::spawn(async move {
                    instance.wait_exit().await;
                    pool.on_exit(&instance);
                });
            }
            Err(e) => {
                tracing::error!(function = %self.function, instance = %id, worker = %self.spec.worker, "instance failed to start: {e}");
                self.metrics.start_failures.increment(1);
                let mut st = self.lock();
                st.starting -= 1;
                st.failures += 1;
                if st.members.is_empty() && st.starting == 0 {
                    // Nothing can serve the waiters soon: answer them now rather than at their timeout.
                    for waiter in st.waiters.drain(..) {
                        let _ = waiter.tx.send(Err(InvokeError::Unavailable));
                    }
                }
                self.ensure_min(&mut st);
                self.scale_out(&mut st);
                self.publish(&st);
            }
        }
    }

    /// An instance's process exited: forget it, and replace it if needed.
    fn on_exit(self: &Arc<Self>, instance: &Arc<Instance>) {
        let mut st = self.lock();
        let Some(pos) = st.members.iter().position(|m| Arc::ptr_eq(&m.instance, instance)) else { return };
        let retiring = st.members.remove(pos).retiring;
        if st.closed || retiring {
            return;
        }
        tracing::warn!(function = %self.function, instance = %instance.id, "instance exited unexpectedly");
        self.metrics.crashes.increment(1);
        if instance.started_at.elapsed() < HEALTHY_AFTER {
            st.failures += 1;
        } else {
            st.failures = 0;
        }
        self.ensure_min(&mut st);
        self.scale_out(&mut st);
        self.publish(&st);
    }

    /// Stops instances idle for longer than `idle_timeout`, keeping `min_instances`.
    pub fn scale_in(self: &Arc<Self>) {
        let victims = {
            let mut st = self.lock();
            let mut victims = Vec::new();
            let mut i = 0;
            while i < st.members.len() {
                let m = &st.members[i];
                let idle = m.in_flight == 0 && m.idle_since.elapsed() >= self.limits.idle_timeout;
                if idle && !m.retiring && live(&st.members) > self.limits.min {
                    victims.push(st.members.remove(i).instance);
                } else {
                    i += 1;
                }
            }
            if !victims.is_empty() {
                st.failures = 0;
                self.publish(&st);
            }
            victims
        };
        for instance in victims {
            tracing::info!(function = %self.function, instance = %instance.id, "scaling in: stopping an idle instance");
            tokio::spawn(async move { instance.stop().await });
        }
    }

    /// For a replaced generation: lets the invocations in flight and in the queue finish (at most
    /// `max`), then stops every instance. No new invocations arrive: the router sends them to the
    /// new generation.
    pub async fn drain(&self, max: Duration) {
        let deadline = Instant::now() + max;
        loop {
            let busy = {
                let mut st = self.lock();
                st.waiters.retain(|w| !w.tx.is_closed());
                !st.waiters.is_empty() || st.members.iter().any(|m| m.in_flight > 0) || st.starting > 0
            };
            if !busy || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.close().await;
    }

    /// Refuses new invocations and stops every instance.
    pub async fn close(&self) {
        let members = {
            let mut st = self.lock();
            st.closed = true;
            for waiter in st.waiters.drain(..) {
                let _ = waiter.tx.send(Err(InvokeError::ShuttingDown));
            }
            std::mem::take(&mut st.members)
        };
        let stops: Vec<_> = members.into_iter().map(|m| tokio::spawn(async move { m.instance.stop().await })).collect();
        for stop in stops {
            let _ = stop.await;
        }
    }

    /// The pool's state and limits, for the admin API.
    pub fn stats(&self) -> serde_json::Value {
        let st = self.lock();
        let l = &self.limits;
        serde_json::json!({
            "instances": live(&st.members),
            "retiring": st.members.len() as u32 - live(&st.members),
            "starting": st.starting,
            "inFlight": st.members.iter().map(|m| m.in_flight).sum::<u32>(),
            "queued": st.waiters.len(),
            "minInstances": l.min,
            "maxInstances": l.max,
            "concurrency": l.concurrency,
            "idleTimeoutSeconds": l.idle_timeout.as_secs_f64(),
            "queueLimit": l.queue_limit,
            "queueTimeoutSeconds": l.queue_timeout.as_secs_f64(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn publish(&self, st: &State) {
        let m = &self.metrics;
        m.instances.set(live(&st.members) as f64);
        m.starting.set(st.starting as f64);
        m.in_flight.set(st.members.iter().map(|m| m.in_flight).sum::<u32>() as f64);
        m.queue_depth.set(st.waiters.len() as f64);
    }
}

/// The instances that take invocations (not retiring).
fn live(members: &[Member]) -> u32 {
    members.iter().filter(|m| !m.retiring).count() as u32
}

/// The instance the affinity key names if it can take a call, else the least busy live instance
/// with a free slot.
fn pick(st: &State, affinity: Option<&str>, concurrency: u32) -> Option<usize> {
    let free = |m: &Member| m.in_flight < concurrency && !m.retiring && !m.instance.has_exited();
    let preferred = affinity.and_then(|key| st.affinity.get(key));
    if let Some(i) = preferred.and_then(|id| st.members.iter().position(|m| &m.instance.id == id && free(m))) {
        return Some(i);
    }
    st.members.iter().enumerate().filter(|(_, m)| free(m)).min_by_key(|(_, m)| m.in_flight).map(|(i, _)| i)
}
