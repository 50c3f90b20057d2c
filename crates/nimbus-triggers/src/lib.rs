//! Event-driven functions beyond HTTP: timers (`timer.rs`: each timer function runs on its
//! schedule, on exactly one node per occurrence) and the built-in durable queue (`queue.rs`, the
//! engine on the store; `consumer.rs`, the queue trigger; `api.rs`, its REST API).
//!
//! [`Triggers::start`] follows the functions the node serves (`Invoke::functions`, which follows
//! reloads): a timer added, changed or removed starts, restarts or stops within a couple of seconds.

mod api;
mod consumer;
pub mod queue;
mod timer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_api::{Invoker, Trigger};
use nimbus_store::Store;

/// How often the served functions are compared with the running timers.
const FOLLOW: Duration = Duration::from_secs(2);

pub struct Triggers {
    tasks: nimbus_api::Tasks,
    running: Mutex<HashMap<String, (Trigger, tokio::task::AbortHandle)>>,
    queues: Arc<queue::Queues>,
}

impl Triggers {
    pub fn start(store: Arc<dyn Store>, invoker: Invoker) -> Arc<Self> {
        timer::describe();
        let queues = Arc::new(queue::Queues::new(store.clone()));
        let triggers =
            Arc::new(Self { tasks: nimbus_api::Tasks::new("triggers"), running: Mutex::new(HashMap::new()), queues });
        let weak = Arc::downgrade(&triggers);
        triggers.tasks.every("timers", FOLLOW, move || {
            let (weak, store, invoker) = (weak.clone(), store.clone(), invoker.clone());
            async move {
                if let Some(triggers) = weak.upgrade() {
                    triggers.follow(&store, &invoker);
                }
            }
        });
        triggers
    }

    /// Starts the timers and queue consumers that are new or changed, stops those gone.
    fn follow(&self, store: &Arc<dyn Store>, invoker: &Invoker) {
        let wanted: HashMap<String, Trigger> = invoker
            .functions()
            .into_iter()
            .filter(|f| matches!(f.trigger, Trigger::Timer { .. } | Trigger::Queue { .. }))
            .map(|f| (f.name, f.trigger))
            .collect();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, (trigger, handle)| {
            let keep = wanted.get(name) == Some(trigger) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for (name, trigger) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            if let Trigger::Queue { queue, batch_size } = &trigger {
                let consumer = consumer::Consumer {
                    function: name.clone(),
                    queue: queue.clone(),
                    batch_size: (*batch_size).max(1) as usize,
                    queues: self.queues.clone(),
                    invoker: invoker.clone(),
                };
                let handle = tokio::spawn(consumer.run());
                running.insert(name, (trigger, handle.abort_handle()));
                continue;
            }
            let Trigger::Timer { schedule, run_on_startup, time_zone } = &trigger else { continue };
            let schedule_text = schedule.clone();
            let parsed = match nimbus_api::Schedule::parse(schedule, time_zone.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    // (The index refuses these: only a host that skipped the check gets here.)
                    tracing::error!(function = %name, error = %e, "cannot run this timer");
                    continue;
                }
            };
            let timer = timer::Timer {
                function: name.clone(),
                schedule: parsed,
                schedule_text,
                run_on_startup: *run_on_startup,
                store: store.clone(),
                invoker: invoker.clone(),
            };
            let handle = tokio::spawn(timer.run());
            running.insert(name, (trigger, handle.abort_handle()));
        }
    }

    /// The queues' REST API (see `api.rs`), for callers `authenticate` accepts.
    pub fn router(&self, authenticate: nimbus_api::Authenticate) -> axum::Router {
        api::router(self.queues.clone(), authenticate)
    }

    /// Stops every timer (an invocation in flight is cancelled), within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.shutdown(grace).await;
        for (_, (_, handle)) in self.running.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            handle.abort();
        }
    }
}
