//! The engine: each node works the partitions whose lease it holds. A partition's loop takes the
//! instances with inbox events and runs a step for each (the worker runs the orchestrator code,
//! PROTOCOL.md §7, and answers actions), runs the activities scheduled, and fires the timers due.
//! Every commit is fenced by the partition's lease, so a node that lost it (paused, partitioned)
//! cannot apply work another node now owns; a node's death only delays its partitions' work.
//!
//! Exactly once where it matters: a step's new history events, the actions it scheduled and the
//! inbox events it consumed are one commit, conditional on the instance record's version. An
//! activity runs at least once; its result lands in the inbox, and a result for an id the instance
//! no longer waits for (`Instance::open`) is dropped as a duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_api::{Call, InvokeError, Invoker};
use nimbus_store::{Expect, Lease, Record, Store, StoreError, Write};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::model::{self, Instance, NS, PARTITIONS, Parent, Retry, Status, Work};

/// A dead node's partitions wait this long for another node (or its own restart).
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often an idle node looks for work other nodes wrote (its own writes wake it at once).
const POLL: Duration = Duration::from_millis(250);
/// Items read per partition and kind in one round.
const BATCH: usize = 256;
/// Activities of one name in flight from this node: below a pool's default queue limit, so a
/// fan-out of thousands waits here, in the store, rather than failing at the pool.
const ACTIVITY_PARALLELISM: usize = 64;
/// Waits after an invocation the pool could not take (capacity, start-up failure).
const BUSY_BACKOFF_MS: u64 = 500;
/// How often instances are counted by status (a scan of their records, by one node).
const COUNT_EVERY: Duration = Duration::from_secs(30);
/// How long a node leaves an instance stamped with a newer version before looking again.
const VERSION_WAIT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{0}")]
    Invalid(String),
    #[error("no orchestrator named `{0}`")]
    UnknownOrchestrator(String),
    #[error("no instance `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("instance `{id}` has ended ({status:?})")]
    Ended { id: String, status: Status },
    #[error("instance `{id}` is {status:?}: only a failed instance can be rewound")]
    NotFailed { id: String, status: Status },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("payload: {0}")]
    Payload(#[from] nimbus_blob::BlobError),
}

pub(crate) struct Engine {
    pub store: Arc<dyn Store>,
    pub invoker: Invoker,
    /// The orchestration version stamped on instances started here (`[durable] version`).
    pub version: String,
    /// Whether starts check the orchestrator's name against the app's code (not offline: the CLI
    /// has no workers; a wrong name then fails at its first step).
    pub checks_names: bool,
    /// Where payloads above 64 KB live.
    pub payloads: crate::payloads::Payloads,
    holder: String,
    /// Owns the loop and every step, activity and timer in flight: shutdown cancels them (their
    /// work is still in the store, so it runs again).
    pub tasks: nimbus_api::Tasks,
    wake: Notify,
    leases: Mutex<HashMap<u32, Lease>>,
    /// Partitions this node's commits gave work since the loop last looked.
    dirty: Mutex<HashSet<u32>>,
    /// What this node is working on now: instances mid-step, activity and timer keys in flight.
    busy: Mutex<HashSet<String>>,
    /// Keys to leave alone until a time (ms): steps and activities that could not run.
    deferred: Mutex<HashMap<String, u64>>,
    /// Suspended instances with events waiting, as their inbox was when they parked.
    parked: Mutex<HashMap<String, Parked>>,
    activity_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A step's answer from the worker (PROTOCOL.md §7.1).
#[derive(Debug, Deserialize)]
struct StepResult {
    #[serde(default)]
    need_history: bool,
    /// The worker instance that ran it (`NIMBUS_INSTANCE_ID`), when the SDK says.
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    custom_status: Option<Value>,
    #[serde(default)]
    input: Value,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Action {
    CallActivity {
        id: u64,
        name: String,
        #[serde(default)]
        input: Value,
        #[serde(default)]
        retry: Option<Retry>,
    },
    CreateTimer {
        id: u64,
        fire_at: String,
    },
    CallSubOrchestrator {
        id: u64,
        name: String,
        #[serde(default)]
        input: Value,
        #[serde(default)]
        instance: Option<String>,
    },
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, invoker: Invoker, version: String, payloads: crate::payloads::Payloads) -> Self {
        metrics::describe_counter!(
            "nimbus_durable_steps_total",
            "orchestrator steps, by outcome (ok, retried, failed, newer_version)"
        );
        metrics::describe_histogram!(
            "nimbus_durable_step_seconds",
            "time of an orchestrator step: inbox read, worker, commit"
        );
        metrics::describe_counter!(
            "nimbus_durable_activities_total",
            "activity attempts, by activity and outcome (completed, failed, deferred)"
        );
        metrics::describe_gauge!(
            "nimbus_durable_backlog",
            "instances ready for a step and activities waiting (at most 256 counted), by partition, at the last round"
        );
        metrics::describe_gauge!(
            "nimbus_durable_backlog_age_seconds",
            "age of the oldest activity due and not yet done, by partition, at the last round"
        );
        metrics::describe_gauge!(
            "nimbus_durable_instances",
            "instances by status (counted every 30 s by the node working partition 0)"
        );
        Self {
            store,
            invoker,
            version,
            checks_names: true,
            payloads,
            holder: nimbus_api::hex(&rand::random::<[u8; 8]>()),
            tasks: nimbus_api::Tasks::new("durable"),
            wake: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            busy: Mutex::new(HashSet::new()),
            deferred: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            activity_slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.store.clock().now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// Partitions with new work: look now rather than at the next poll.
    fn poke(&self, partitions: impl IntoIterator<Item = u32>) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(partitions);
        self.wake.notify_one();
    }

    /// The loop of one node, until the task is cancelled.
    pub async fn run(self: Arc<Self>) {
        let mut swept = tokio::time::Instant::now() - POLL;
        let mut counted = tokio::time::Instant::now() - COUNT_EVERY;
        loop {
            // Every partition once a poll (work other nodes wrote, leases to claim or renew);
            // between polls only those this node's own commits gave work.
            let partitions: Vec<u32> = if swept.elapsed() >= POLL {
                swept = tokio::time::Instant::now();
                self.dirty.lock().unwrap_or_else(|e| e.into_inner()).clear();
                (0..PARTITIONS).collect()
            } else {
                self.dirty.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
            };
            if partitions.contains(&0) && counted.elapsed() >= COUNT_EVERY && self.lease(0).await.is_some() {
                counted = tokio::time::Instant::now();
                self.tasks.spawn(self.clone().count_instances());
            }
            // The partitions' reads overlap: one slow listing does not hold the others' work back.
            let rounds = partitions.into_iter().map(|p| {
                let engine = self.clone();
                async move {
                    if let Some(lease) = engine.lease(p).await {
                        engine.pump(p, lease).await;
                    }
                }
            });
            futures_util::future::join_all(rounds).await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(swept + POLL) => {}
            }
        }
    }

    /// Sets the `nimbus_durable_instances` gauge from a scan of the instance records.
    async fn count_instances(self: Arc<Self>) {
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.list(NS, "i/", after.as_deref(), 1000).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count durable instances");
                    return;
                }
            };
            let done = page.len() < 1000;
            after = page.last().map(|r| r.key.clone());
            for record in page {
                #[derive(Deserialize)]
                struct Head {
                    status: Status,
                }
                if let Ok(head) = serde_json::from_slice::<Head>(&record.value) {
                    *counts.entry(head.status.as_str()).or_default() += 1;
                }
            }
            if done {
                break;
            }
        }
        for status in Status::ALL {
            let n = counts.get(status.as_str()).copied().unwrap_or(0);
            metrics::gauge!("nimbus_durable_instances", "status" => status.as_str()).set(n as f64);
        }
    }

    /// Gives the partitions up (at shutdown), so another node takes them over at once.
    pub async fn release_all(&self) {
        let leases: Vec<Lease> =
            self.leases.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, l)| l).collect();
        for lease in leases {
            let _ = self.store.release(&lease).await;
        }
    }

    /// The partition's lease, claimed or renewed when a third of it is left; `None` when another
    /// node holds it.
    async fn lease(&self, p: u32) -> Option<Lease> {
        let held = self.leases.lock().unwrap_or_else(|e| e.into_inner()).get(&p).cloned();
        let fresh_until = self.store.clock().now() + LEASE_TTL * 2 / 3;
        if let Some(lease) = &held
            && lease.expires_at > fresh_until
        {
            return held;
        }
        let name = format!("durable-partition-{p}");
        let renewed = match &held {
            Some(lease) => self.store.renew(lease, LEASE_TTL).await,
            None => self.store.claim(&name, &self.holder, LEASE_TTL).await,
        };
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        match renewed {
            Ok(Some(lease)) => {
                leases.insert(p, lease.clone());
                Some(lease)
            }
            Ok(None) => {
                leases.remove(&p);
                None
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot claim or renew a durable partition");
                leases.remove(&p);
                None
            }
        }
    }

    fn current_lease(&self, id: &str) -> Option<Lease> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).get(&model::partition(id)).cloned()
    }

    /// Starts what is due in partition `p` and not already running here.
    async fn pump(self: Arc<Self>, p: u32, lease: Lease) {
        let now = self.now_ms();
        let (work_prefix, timer_prefix) = (model::work_prefix(p), model::timer_prefix(p));
        let (ready, work, timers) = tokio::join!(self.ready(p), self.due(&work_prefix), self.due(&timer_prefix));
        let partition = p.to_string();
        metrics::gauge!("nimbus_durable_backlog", "kind" => "ready", "partition" => partition.clone())
            .set(ready.len() as f64);
        for (id, held) in ready {
            // A suspended instance's waiting events wake it only when more arrive.
            if self.parked.lock().unwrap_or_else(|e| e.into_inner()).get(&id) == Some(&held) {
                continue;
            }
            self.spawn_step(&id, held, &lease, now);
        }
        metrics::gauge!("nimbus_durable_backlog", "kind" => "activity", "partition" => partition.clone())
            .set(work.len() as f64);
        let mut oldest = now;
        for record in work {
            let Ok(work) = serde_json::from_slice::<Work>(&record.value) else {
                tracing::error!(key = %record.key, "unreadable durable work item: skipped");
                continue;
            };
            if work.not_before <= now && work.created > 0 {
                oldest = oldest.min(work.created.max(work.not_before));
            }
            if work.not_before <= now {
                self.spawn_activity(record, work, now);
            }
        }
        metrics::gauge!("nimbus_durable_backlog_age_seconds", "partition" => partition)
            .set(now.saturating_sub(oldest) as f64 / 1000.0);
        for record in timers {
            let due = record.key.split('/').nth(2).and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(u64::MAX);
            if due > now {
                break; // keys sort by due time
            }
            if self.take(&record.key, now) {
                let engine = self.clone();
                self.tasks.spawn(async move {
                    let key = record.key.clone();
                    engine.fire_timer(record, due).await;
                    engine.done(&key);
                });
            }
        }
    }

    /// Runs a step of `id` unless one is running here (or it is deferred).
    fn spawn_step(self: &Arc<Self>, id: &str, held: Parked, lease: &Lease, now: u64) {
        let key = format!("step:{id}");
        if self.take(&key, now) {
            let (engine, id, lease) = (self.clone(), id.to_owned(), lease.clone());
            self.tasks.spawn(async move {
                engine.step(&id, held, &lease).await;
                engine.done(&key);
            });
        }
    }

    /// Runs an activity's work item unless it runs here already (or is deferred).
    fn spawn_activity(self: &Arc<Self>, record: Record, work: Work, now: u64) {
        if self.take(&record.key, now) {
            let engine = self.clone();
            self.tasks.spawn(async move {
                let key = record.key.clone();
                engine.run_activity(record, work).await;
                engine.done(&key);
            });
        }
    }

    /// The instances of partition `p` with inbox events, in the order of their keys, with what their
    /// inboxes hold (up to a page each): at most [`BATCH`] instances. A page that ends inside one
    /// inbox skips the rest of it, so an inbox of thousands (a fan-in, a parked instance) does not
    /// hide the partition's other instances.
    async fn ready(&self, p: u32) -> Vec<(String, Parked)> {
        let prefix = model::inboxes_prefix(p);
        let mut ready: Vec<(String, Parked)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.list(NS, &prefix, after.as_deref(), BATCH).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(prefix, error = %e, "cannot read durable work");
                    return ready;
                }
            };
            for record in &page {
                let Some(id) = model::inbox_owner(&record.key) else { continue };
                match ready.last_mut() {
                    Some((last, held)) if last == id => {
                        *held = Parked { events: held.events + 1, last: record.key.clone() }
                    }
                    _ => ready.push((id.to_owned(), Parked { events: 1, last: record.key.clone() })),
                }
            }
            match ready.last() {
                Some((last, _)) if page.len() == BATCH && ready.len() < BATCH => after = Some(model::after_inbox(last)),
                _ => return ready,
            }
        }
    }

    async fn due(&self, prefix: &str) -> Vec<Record> {
        match self.store.list(NS, prefix, None, BATCH).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "cannot read durable work");
                Vec::new()
            }
        }
    }

    /// Marks `key` as being worked on here; `false` when it already is, or is deferred.
    fn take(&self, key: &str, now: u64) -> bool {
        if let Some(until) = self.deferred.lock().unwrap_or_else(|e| e.into_inner()).get(key)
            && *until > now
        {
            return false;
        }
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned())
    }

    fn done(&self, key: &str) {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn defer(&self, key: &str, ms: u64) {
        let until = self.now_ms() + ms;
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        deferred.retain(|_, t| *t > now);
        deferred.insert(key.to_owned(), until);
    }

    /// One step of instance `id`: its inbox events go to the orchestrator code, which answers
    /// actions; events, actions and the consumed inbox commit together.
    async fn step(self: &Arc<Self>, id: &str, held: Parked, lease: &Lease) {
        let started = std::time::Instant::now();
        let outcome = self.try_step(id, lease).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(StepError::NewerVersion { .. }) => "newer_version",
            Err(e) if e.is_transient() => "retried",
            Err(_) => "failed",
        };
        metrics::counter!("nimbus_durable_steps_total", "outcome" => label).increment(1);
        metrics::histogram!("nimbus_durable_step_seconds").record(started.elapsed().as_secs_f64());
        if !matches!(outcome, Ok(Next::Park)) {
            self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        }
        match outcome {
            Ok(Next::Done) => {}
            Ok(Next::Park) => {
                self.parked.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), held);
            }
            Ok(Next::Again) => self.poke([model::partition(id)]),
            Err(e @ StepError::NewerVersion { .. }) => {
                tracing::info!(instance = id, reason = %e, "left for a node with newer code");
                self.defer(&format!("step:{id}"), VERSION_WAIT_MS);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(instance = id, error = %e, "durable step failed; it will be retried");
                self.defer(&format!("step:{id}"), BUSY_BACKOFF_MS);
            }
            Err(e) => {
                tracing::error!(instance = id, error = %e, "durable step failed: the instance fails");
                if let Err(e) = self.fail(id, lease, &e).await {
                    tracing::warn!(instance = id, error = %e, "cannot record the failure; the step will be retried");
                    self.defer(&format!("step:{id}"), BUSY_BACKOFF_MS);
                }
            }
        }
    }

    /// Fails an instance whose step cannot run (a worker answering outside the protocol, an
    /// unreadable record): it ends visibly rather than staying stuck.
    async fn fail(&self, id: &str, lease: &Lease, error: &StepError) -> Result<(), StoreError> {
        let Some(record) = self.store.get(NS, &model::instance_key(id)).await? else { return Ok(()) };
        let Ok(mut instance) = serde_json::from_slice::<Instance>(&record.value) else {
            tracing::error!(instance = id, "unreadable instance record left as is");
            return Ok(());
        };
        let now = self.now_ms();
        let error = json!({"code": "step_failed", "message": error.to_string()});
        let mut writes = vec![Write::holding(lease), Write::check(NS, &record.key, Expect::Version(record.version))];
        instance.status = Status::Failed;
        instance.output = error.clone();
        self.finish(&mut instance, now, &mut writes, Err(error));
        writes.push(Write::put(NS, &record.key, to_vec(&instance)));
        self.commit(writes).await
    }

    async fn try_step(self: &Arc<Self>, id: &str, lease: &Lease) -> Result<Next, StepError> {
        let began = std::time::Instant::now();
        let Some(record) = self.store.get(NS, &model::instance_key(id)).await? else {
            // Events for an instance purged meanwhile.
            let stale = self.store.list(NS, &model::inbox_prefix(id), None, BATCH).await?;
            self.commit(stale.iter().map(|r| Write::delete(NS, &r.key)).collect()).await?;
            return Ok(Next::Done);
        };
        let mut instance: Instance =
            serde_json::from_slice(&record.value).map_err(|e| StepError::Corrupt(e.to_string()))?;
        // Code older than the instance must not run it: it waits for a node that has its version.
        if model::is_newer(&instance.version, &self.version) {
            return Err(StepError::NewerVersion { instance: instance.version, node: self.version.clone() });
        }
        let inbox = self.store.list(NS, &model::inbox_prefix(id), None, BATCH).await?;
        if inbox.is_empty() {
            return Ok(Next::Done);
        }
        // Started by name without the node's check (the CLI), or renamed in code since: it fails
        // visibly rather than waiting forever.
        if !instance.status.is_terminal() && !self.declares(&instance.name) {
            return Err(StepError::Protocol(format!("no orchestrator named `{}` in this app", instance.name)));
        }
        let now = self.now_ms();
        let mut writes = vec![Write::holding(lease), Write::check(NS, &record.key, Expect::Version(record.version))];
        let mut new = Vec::new();
        let mut terminate = None;
        let was_suspended = instance.status == Status::Suspended;
        let mut suspended = was_suspended;
        for message in &inbox {
            let Ok(mut event) = serde_json::from_slice::<Value>(&message.value) else { continue };
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            // While suspended, what arrives waits in the inbox for the resume.
            if suspended && !model::is_control(&kind) {
                continue;
            }
            writes.push(Write::delete(NS, &message.key).expect(Expect::Version(message.version)));
            match kind.as_str() {
                "suspended" => {
                    suspended = true;
                    continue;
                }
                "resumed" => {
                    suspended = false;
                    continue;
                }
                "started" if instance.history == 0 && new.is_empty() => {}
                "started" => continue,
                "terminated" => {
                    terminate = Some(event);
                    continue;
                }
                "event_raised" | "rewound" => {}
                // Results: only for what it still waits for (a second delivery is dropped).
                _ => {
                    let Some(task) = event["id"].as_u64() else { continue };
                    if !instance.open.remove(&task) {
                        continue;
                    }
                }
            }
            event["at"] = json!(model::rfc3339(now));
            new.push(event);
        }
        if instance.status.is_terminal() {
            self.commit(writes).await?;
            return Ok(Next::Done);
        }
        if let Some(mut event) = terminate {
            event["at"] = json!(model::rfc3339(now));
            let reason = event["reason"].clone();
            writes.push(Write::put(NS, &model::history_key(id, instance.history), to_vec(&event)));
            instance.history += 1;
            instance.status = Status::Terminated;
            instance.output = reason;
            self.finish(&mut instance, now, &mut writes, Err(json!({"code": "terminated", "message": "terminated"})));
            writes.push(Write::put(NS, &record.key, to_vec(&instance)));
            self.commit(writes).await?;
            return Ok(Next::Done);
        }
        if suspended != was_suspended {
            instance.status = if suspended { Status::Suspended } else { Status::Running };
            instance.updated = now;
        }
        if new.is_empty() || suspended {
            if suspended != was_suspended {
                writes.push(Write::put(NS, &record.key, to_vec(&instance)));
            }
            self.commit(writes).await?;
            return Ok(if suspended {
                Next::Park
            } else if was_suspended {
                Next::Again // resumed with events waiting: step again at once
            } else {
                Next::Done
            });
        }
        let result = self.run_code(&instance, &new).await?;
        // For the timeline: which worker instance ran the step, and how long it took until now.
        if let Some(first) = new.first_mut() {
            let ms = (began.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
            first["step"] = json!({"worker": result.worker, "ms": ms});
        }
        if let Some(custom) = result.custom_status {
            instance.custom_status = custom;
        }
        let mut forgotten = Vec::new();
        if result.state.as_deref() == Some("continued_as_new") {
            // A fresh history that starts with `started`; what the old run scheduled is dropped.
            for old in self.history_records(id).await? {
                writes.push(Write::delete(NS, &old.key));
                forgotten.extend(serde_json::from_slice::<Value>(&old.value));
            }
            instance.history = 0;
            instance.open.clear();
            instance.execution = model::new_execution();
            instance.status = Status::ContinuedAsNew;
            instance.input = result.input.clone();
            let started = json!({"name": instance.name, "version": instance.version, "input": result.input});
            writes.extend(deliver(id, model::event("started", now, started), now));
        } else {
            for event in &new {
                writes.push(Write::put(NS, &model::history_key(id, instance.history), to_vec(event)));
                instance.history += 1;
            }
            let state = result.state.as_deref().unwrap_or("running");
            // Actions of a step that ended the instance would only run to be dropped.
            for action in result.actions.into_iter().filter(|_| state == "running") {
                let event = self.schedule(&mut instance, action, now, &mut writes)?;
                writes.push(Write::put(NS, &model::history_key(id, instance.history), to_vec(&event)));
                instance.history += 1;
            }
            match state {
                "running" => instance.status = Status::Running,
                "completed" => {
                    instance.status = Status::Completed;
                    instance.output = result.output.clone();
                    self.finish(&mut instance, now, &mut writes, Ok(result.output));
                }
                "failed" => {
                    let error =
                        result.error.unwrap_or_else(|| json!({"code": "orchestrator_error", "message": "failed"}));
                    instance.status = Status::Failed;
                    instance.output = error.clone();
                    self.finish(&mut instance, now, &mut writes, Err(error));
                }
                other => return Err(StepError::Protocol(format!("unknown state \"{other}\""))),
            }
        }
        instance.updated = now;
        writes.push(Write::put(NS, &record.key, to_vec(&instance)));
        // The activities it scheduled start now, not at the next round's listing.
        let scheduled: Vec<(usize, String, Vec<u8>)> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match &w.op {
                nimbus_store::Op::Put(value) if w.key.starts_with("a/") => Some((i, w.key.clone(), value.clone())),
                _ => None,
            })
            .collect();
        let versions = self.commit_versions(writes).await?;
        for (i, key, value) in scheduled {
            let (Some(Some(version)), Ok(work)) = (versions.get(i), serde_json::from_slice::<Work>(&value)) else {
                continue;
            };
            self.spawn_activity(Record { ns: NS.to_owned(), key, value, version: *version }, work, now);
        }
        self.payloads.forget(&forgotten, &instance.input);
        // More than one batch of events: the rest next.
        Ok(if inbox.len() == BATCH { Next::Again } else { Next::Done })
    }

    /// Whether the app declares orchestrator `name` (the worker indexes follow reloads).
    pub fn declares(&self, name: &str) -> bool {
        self.invoker
            .functions()
            .iter()
            .any(|f| f.name == name && matches!(f.trigger, nimbus_api::Trigger::Orchestrator {}))
    }

    /// Runs the orchestrator code on the new events: first as a continuation of the session the
    /// worker may hold, then, if it asks, with the whole history (PROTOCOL.md §7.1).
    async fn run_code(&self, instance: &Instance, new: &[Value]) -> Result<StepResult, StepError> {
        let mut data = json!({
            "instance": instance.id, "execution": instance.execution, "name": instance.name,
            "version": instance.version, "past_length": instance.history, "past": null, "new": new,
        });
        for attempt in 0..2 {
            let mut call = Call::new(instance.name.clone(), data.clone());
            // Back to the instance that holds the session, when it can take the step.
            call.affinity = Some(instance.id.clone());
            let answer = self.invoker.invoke(call).await?;
            let result: StepResult =
                serde_json::from_value(answer).map_err(|e| StepError::Protocol(format!("bad step answer: {e}")))?;
            if !result.need_history {
                return Ok(result);
            }
            if attempt == 0 {
                data["past"] = Value::Array(self.history(&instance.id).await?);
            }
        }
        Err(StepError::Protocol("the worker asked for the history it was sent".into()))
    }

    pub async fn history(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        let records = self.history_records(id).await?;
        Ok(records.iter().filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok()).collect())
    }

    pub(crate) async fn history_records(&self, id: &str) -> Result<Vec<Record>, StoreError> {
        let prefix = model::history_prefix(id);
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NS, &prefix, after.as_deref(), 1000).await?;
            let done = page.len() < 1000;
            after = page.last().map(|r| r.key.clone());
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }

    /// The history event an action becomes, with the work it schedules added to `writes`.
    fn schedule(
        &self,
        instance: &mut Instance,
        action: Action,
        now: u64,
        writes: &mut Vec<Write>,
    ) -> Result<Value, StepError> {
        let id = instance.id.clone();
        Ok(match action {
            Action::CallActivity { id: task, name, input, retry } => {
                let work =
                    Work { name: name.clone(), input: input.clone(), attempts: 0, retry, not_before: 0, created: now };
                writes.push(Write::put(NS, &model::work_key(&id, task), to_vec(&work)));
                instance.open.insert(task);
                model::event("task_scheduled", now, json!({"id": task, "name": name, "input": input}))
            }
            Action::CreateTimer { id: timer, fire_at } => {
                let due = model::parse_rfc3339(&fire_at).ok_or_else(|| {
                    StepError::Protocol(format!("timer {timer}: \"{fire_at}\" is not an RFC 3339 time"))
                })?;
                writes.push(Write::put(NS, &model::timer_key(&id, timer, due), to_vec(&json!({"fire_at": fire_at}))));
                instance.open.insert(timer);
                model::event("timer_created", now, json!({"id": timer, "fire_at": fire_at}))
            }
            Action::CallSubOrchestrator { id: task, name, input, instance: child } => {
                let child = child.unwrap_or_else(|| format!("{id}:{task}"));
                model::check_instance_id(&child).map_err(StepError::Protocol)?;
                let parent = Parent { instance: id.clone(), id: task };
                // A child runs the code of its parent's version.
                let version = instance.version.clone();
                writes.extend(self.create(&child, &name, input.clone(), Some(parent), &version, now));
                instance.open.insert(task);
                model::event("sub_scheduled", now, json!({"id": task, "name": name, "instance": child, "input": input}))
            }
        })
    }

    /// The writes that create instance `id` (it must not exist): its record, and its `started`
    /// event in its inbox.
    pub fn create(
        &self,
        id: &str,
        name: &str,
        input: Value,
        parent: Option<Parent>,
        version: &str,
        now: u64,
    ) -> Vec<Write> {
        let instance = Instance {
            id: id.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            status: Status::Pending,
            input: input.clone(),
            output: Value::Null,
            custom_status: Value::Null,
            created: now,
            updated: now,
            history: 0,
            execution: model::new_execution(),
            open: Default::default(),
            parent: parent.clone(),
        };
        let mut started = json!({"name": name, "version": version, "input": input});
        if let Some(parent) = parent {
            started["parent"] = json!({"instance": parent.instance, "id": parent.id});
        }
        let mut writes = vec![Write::put(NS, &model::instance_key(id), to_vec(&instance)).expect(Expect::Absent)];
        writes.extend(deliver(id, model::event("started", now, started), now));
        writes
    }

    /// An instance ended: its parent, if any, learns how.
    fn finish(&self, instance: &mut Instance, now: u64, writes: &mut Vec<Write>, outcome: Result<Value, Value>) {
        instance.open.clear();
        instance.updated = now;
        if let Some(parent) = &instance.parent {
            let event = match outcome {
                Ok(result) => model::event("sub_completed", now, json!({"id": parent.id, "result": result})),
                Err(error) => model::event("sub_failed", now, json!({"id": parent.id, "error": error})),
            };
            writes.extend(deliver(&parent.instance, event, now));
        }
    }

    /// Runs one scheduled activity and delivers its result (or, after its last attempt, its
    /// failure) to the instance.
    async fn run_activity(self: &Arc<Self>, record: Record, mut work: Work) {
        let Some((id, task)) = model::owner_of(&record.key).map(|(i, t)| (i.to_owned(), t)) else { return };
        let slots = self.slots(&work.name);
        let Ok(_slot) = slots.acquire().await else { return };
        let mut call = Call::new(work.name.clone(), work.input.clone());
        call.delivery.insert("instance".into(), json!(id));
        call.delivery.insert("task".into(), json!(task));
        call.delivery.insert("attempt".into(), json!(work.attempts + 1));
        let outcome = self.invoker.invoke(call).await;
        let label = match &outcome {
            Ok(_) => "completed",
            Err(InvokeError::QueueFull { .. } | InvokeError::Unavailable { .. }) => "deferred",
            Err(_) => "failed",
        };
        metrics::counter!("nimbus_durable_activities_total", "activity" => work.name.clone(), "outcome" => label)
            .increment(1);
        let now = self.now_ms();
        let Some(lease) = self.current_lease(&id) else { return };
        let mut writes = vec![Write::holding(&lease)];
        match outcome {
            Ok(result) => {
                writes.push(Write::delete(NS, &record.key).expect(Expect::Version(record.version)));
                writes.extend(deliver(
                    &id,
                    model::event("task_completed", now, json!({"id": task, "result": result})),
                    now,
                ));
            }
            // Not attempted: the pool could not take it now.
            Err(InvokeError::QueueFull { .. } | InvokeError::Unavailable { .. }) => {
                self.defer(&record.key, BUSY_BACKOFF_MS);
                return;
            }
            Err(e) => {
                work.attempts += 1;
                match work.retry.and_then(|r| r.delay_after(work.attempts)) {
                    Some(delay) => {
                        work.not_before = now + delay;
                        writes.push(Write::put(NS, &record.key, to_vec(&work)).expect(Expect::Version(record.version)));
                    }
                    None => {
                        let (code, message) = match &e {
                            InvokeError::Failed { code, message, .. } => (code.clone(), message.clone()),
                            other => (other.kind().to_owned(), other.to_string()),
                        };
                        let error = json!({"code": code, "message": message});
                        writes.push(Write::delete(NS, &record.key).expect(Expect::Version(record.version)));
                        writes.extend(deliver(
                            &id,
                            model::event("task_failed", now, json!({"id": task, "error": error})),
                            now,
                        ));
                    }
                }
            }
        }
        match self.commit(writes).await {
            // Its instance steps now, not at the next round's listing.
            Ok(()) => self.spawn_step(&id, Parked::default(), &lease, now),
            Err(e) => {
                tracing::warn!(instance = %id, task, error = %e, "cannot record an activity's outcome; it will run again")
            }
        }
    }

    fn slots(&self, name: &str) -> Arc<Semaphore> {
        let mut slots = self.activity_slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(name.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(ACTIVITY_PARALLELISM))).clone()
    }

    async fn fire_timer(&self, record: Record, due: u64) {
        let Some((id, timer)) = model::owner_of(&record.key).map(|(i, t)| (i.to_owned(), t)) else { return };
        let Some(lease) = self.current_lease(&id) else { return };
        let now = self.now_ms();
        let fire_at =
            serde_json::from_slice::<Value>(&record.value).ok().and_then(|v| v["fire_at"].as_str().map(str::to_owned));
        let fired = model::event(
            "timer_fired",
            now,
            json!({"id": timer, "fire_at": fire_at.unwrap_or_else(|| model::rfc3339(due))}),
        );
        let mut writes =
            vec![Write::holding(&lease), Write::delete(NS, &record.key).expect(Expect::Version(record.version))];
        writes.extend(deliver(&id, fired, now));
        if let Err(e) = self.commit(writes).await {
            tracing::warn!(instance = %id, timer, error = %e, "cannot fire a timer; it will be tried again");
        }
    }

    /// Commits, then wakes the partitions the writes gave work (inbox events, activities, timers).
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_versions(writes).await.map(drop)
    }

    /// [`Engine::commit`], answering the version each write gave its record.
    async fn commit_versions(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>, StoreError> {
        let woken: Vec<u32> = writes
            .iter()
            .filter(|w| matches!(w.op, nimbus_store::Op::Put(_)))
            .filter_map(|w| w.key.strip_prefix("n/").or(w.key.strip_prefix("a/")).or(w.key.strip_prefix("t/")))
            .filter_map(|rest| rest.split('/').next()?.parse().ok())
            .collect();
        let versions = self.store.commit(writes).await?;
        self.poke(woken);
        Ok(versions)
    }
}

/// The write that puts `event` in instance `id`'s inbox.
pub fn deliver(id: &str, event: Value, now: u64) -> Vec<Write> {
    vec![Write::put(NS, &model::inbox_key(id, &event, now), to_vec(&event))]
}

/// What a step leaves to do.
enum Next {
    Done,
    /// Suspended with events waiting: not again until more arrive.
    Park,
    /// Events are left that this step did not take: another step at once.
    Again,
}

/// An inbox as a round saw it: a parked instance is stepped again when this changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Parked {
    events: usize,
    last: String,
}

pub fn to_vec(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("our records serialize")
}

impl StepError {
    /// Whether the same step may work later: the store or the worker pool was unavailable, or
    /// the orchestrator's code is not on this node (yet).
    fn is_transient(&self) -> bool {
        match self {
            Self::Store(_) => true,
            // The worker could not move a large payload (the blob store): the step runs again.
            Self::Invoke(InvokeError::Failed { code, .. }) => code == "payload_unavailable",
            Self::Invoke(e) => e.is_transient() || matches!(e, InvokeError::UnknownFunction { .. }),
            Self::NewerVersion { .. } => true,
            Self::Protocol(_) | Self::Corrupt(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the orchestrator could not run: {0}")]
    Invoke(#[from] InvokeError),
    #[error("{0}")]
    Protocol(String),
    #[error("unreadable instance record: {0}")]
    Corrupt(String),
    #[error("the instance is stamped with version {instance}, newer than this node's code ({node})")]
    NewerVersion { instance: String, node: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_retried_only_when_it_may_work_later() {
        let failed = |code: &str| {
            StepError::Invoke(InvokeError::Failed { function: "o".into(), code: code.into(), message: "m".into() })
        };
        // A worker that could not move a large payload (the blob store was down) retries the step.
        assert!(failed("payload_unavailable").is_transient());
        assert!(!failed("handler_error").is_transient());
        assert!(StepError::Invoke(InvokeError::Crashed { function: "o".into() }).is_transient());
        assert!(!StepError::Protocol("bad answer".into()).is_transient());
    }
}
