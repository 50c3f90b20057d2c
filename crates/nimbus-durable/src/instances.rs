//! Managing instances: start, read, list, raise events, terminate, suspend, rewind, restart, purge. Each is a read and at
//! most one commit; the engine does the rest when it sees the inbox.

use nimbus_store::{Expect, StoreError, Write};
use serde_json::{Value, json};

use crate::engine::{DurableError, Engine, deliver, to_vec};
use crate::model::{self, Instance, NS, Status};

/// A page of [`Engine::list`].
pub struct Listed {
    pub instances: Vec<Instance>,
    /// Where the next page starts; `None` at the end.
    pub continuation: Option<String>,
}

/// What [`Engine::list`] keeps.
#[derive(Default)]
pub struct Filter {
    pub statuses: Vec<Status>,
    pub name: Option<String>,
    pub created_from: Option<u64>,
    pub created_to: Option<u64>,
}

impl Engine {
    /// Starts orchestrator `name` with `input`, as instance `id` (a new id when `None`), stamped
    /// with `version` (this node's when `None`). An id in use by an instance that has not ended is
    /// a conflict; one that ended is started afresh.
    pub async fn start(
        &self,
        name: &str,
        id: Option<String>,
        input: Value,
        version: Option<String>,
    ) -> Result<String, DurableError> {
        if self.checks_names && !self.declares(name) {
            return Err(DurableError::UnknownOrchestrator(name.to_owned()));
        }
        let id = match id {
            Some(id) => {
                model::check_instance_id(&id).map_err(DurableError::Invalid)?;
                id
            }
            None => nimbus_api::hex(&rand::random::<[u8; 16]>()),
        };
        let now = self.now_ms();
        let version = version.unwrap_or_else(|| self.version.clone());
        if version.is_empty() || version.len() > 100 || version.chars().any(char::is_control) {
            return Err(DurableError::Invalid("a version has 1 to 100 printable characters".into()));
        }
        let input = self.payloads.offload(input).await?;
        let mut writes = self.create(&id, name, input, None, &version, now);
        let mut forgotten = Vec::new();
        if let Some(existing) = self.store.get(NS, &model::instance_key(&id)).await? {
            let old = read(&existing.value)?;
            if !old.status.is_terminal() {
                return Err(DurableError::Conflict(format!("instance `{id}` exists and is {:?}", old.status)));
            }
            // Started afresh: the old run's history and inbox go in the same commit.
            writes[0] = writes[0].clone().expect(Expect::Version(existing.version));
            forgotten = self.doomed(&id, &mut writes).await?;
            forgotten.push(to_value(&old));
        }
        match self.commit(writes).await {
            Ok(()) => self.payloads.forget(&forgotten, &Value::Null),
            Err(StoreError::Conflict { .. }) => {
                return Err(DurableError::Conflict(format!("instance `{id}` was started at the same time")));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(id)
    }

    pub async fn get(&self, id: &str) -> Result<Instance, DurableError> {
        let record =
            self.store.get(NS, &model::instance_key(id)).await?.ok_or_else(|| DurableError::NotFound(id.to_owned()))?;
        read(&record.value)
    }

    /// [`Engine::get`] with the output, and the input when `input`, as values rather than
    /// references to payloads.
    pub async fn get_resolved(&self, id: &str, input: bool) -> Result<Instance, DurableError> {
        let mut instance = self.get(id).await?;
        instance.output = self.payloads.resolve(std::mem::take(&mut instance.output)).await?;
        if input {
            instance.input = self.payloads.resolve(std::mem::take(&mut instance.input)).await?;
        }
        Ok(instance)
    }

    /// Instances in id order, `top` at most, after `continuation`.
    pub async fn list(&self, filter: &Filter, top: usize, continuation: Option<&str>) -> Result<Listed, DurableError> {
        let mut instances = Vec::new();
        let mut after = continuation.map(model::instance_key);
        loop {
            let page = self.store.list(NS, "i/", after.as_deref(), 500).await?;
            let done = page.len() < 500;
            for record in &page {
                after = Some(record.key.clone());
                let instance = read(&record.value)?;
                let keep = (filter.statuses.is_empty() || filter.statuses.contains(&instance.status))
                    && filter.name.as_ref().is_none_or(|n| *n == instance.name)
                    && filter.created_from.is_none_or(|t| instance.created >= t)
                    && filter.created_to.is_none_or(|t| instance.created <= t);
                if keep {
                    instances.push(instance);
                    if instances.len() == top {
                        let next = instances.last().map(|i| i.id.clone());
                        return Ok(Listed { instances, continuation: next });
                    }
                }
            }
            if done {
                return Ok(Listed { instances, continuation: None });
            }
        }
    }

    /// Delivers an external event to a running instance.
    pub async fn raise(&self, id: &str, event: &str, data: Value) -> Result<(), DurableError> {
        let instance = self.get(id).await?;
        if instance.status.is_terminal() {
            return Err(DurableError::Ended { id: id.to_owned(), status: instance.status });
        }
        let now = self.now_ms();
        let data = self.payloads.offload(data).await?;
        self.commit(deliver(id, model::event("event_raised", now, json!({"name": event, "data": data})), now)).await?;
        Ok(())
    }

    /// Ends a running instance at its next step (what it scheduled may still run; its results are
    /// dropped).
    pub async fn terminate(&self, id: &str, reason: Value) -> Result<(), DurableError> {
        let instance = self.get(id).await?;
        if instance.status.is_terminal() {
            return Err(DurableError::Ended { id: id.to_owned(), status: instance.status });
        }
        let now = self.now_ms();
        self.commit(deliver(id, model::event("terminated", now, json!({"reason": reason})), now)).await?;
        Ok(())
    }

    /// Pauses a running instance at its next step: what arrives meanwhile (results, events) waits
    /// in its inbox until [`Engine::resume`]. `suspend` false resumes.
    pub async fn suspend(&self, id: &str, suspend: bool, reason: Value) -> Result<(), DurableError> {
        let instance = self.get(id).await?;
        if instance.status.is_terminal() {
            return Err(DurableError::Ended { id: id.to_owned(), status: instance.status });
        }
        if suspend == (instance.status == Status::Suspended) {
            let state = if suspend { "already suspended" } else { "not suspended" };
            return Err(DurableError::Conflict(format!("instance `{id}` is {state}")));
        }
        let now = self.now_ms();
        let kind = if suspend { "suspended" } else { "resumed" };
        self.commit(deliver(id, model::event(kind, now, json!({"reason": reason})), now)).await?;
        Ok(())
    }

    /// Deletes an ended instance and its history. A running one is refused: purging it would
    /// strand the work it scheduled.
    pub async fn purge(&self, id: &str) -> Result<(), DurableError> {
        let record =
            self.store.get(NS, &model::instance_key(id)).await?.ok_or_else(|| DurableError::NotFound(id.to_owned()))?;
        let instance = read(&record.value)?;
        if !instance.status.is_terminal() {
            return Err(DurableError::Conflict(format!(
                "instance `{id}` is {:?}: terminate it before purging it",
                instance.status
            )));
        }
        let mut writes = vec![Write::delete(NS, &record.key).expect(Expect::Version(record.version))];
        let mut forgotten = self.doomed(id, &mut writes).await?;
        forgotten.push(to_value(&instance));
        match self.commit(writes).await {
            Ok(()) => {
                self.payloads.forget(&forgotten, &Value::Null);
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                Err(DurableError::Conflict(format!("instance `{id}` changed meanwhile")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Puts a failed instance back to work from the step that failed (Durable Functions' rewind),
    /// after a fix. The failures it did not get past (those after the last step that scheduled
    /// anything) are voided: each becomes a `rewound` marker in its history, and for an activity
    /// its scheduling event too, so the replay finds the activity never asked for and asks again;
    /// a failed sub-orchestration is rewound with it. Work still out when it failed (its answer
    /// dropped since) is voided too, or, for a sub-orchestration that ended meanwhile, its end
    /// delivered again. One commit; then a step replays the whole
    /// history on the code deployed now (a new execution, so no worker's session is reused).
    pub async fn rewind(&self, id: &str, reason: Value) -> Result<(), DurableError> {
        let now = self.now_ms();
        let mut writes = Vec::new();
        self.rewind_writes(id, &reason, now, &mut writes).await?;
        match self.commit(writes).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                Err(DurableError::Conflict(format!("instance `{id}` changed meanwhile")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn rewind_writes<'a>(
        &'a self,
        id: &'a str,
        reason: &'a Value,
        now: u64,
        writes: &'a mut Vec<Write>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DurableError>> + Send + 'a>> {
        Box::pin(async move {
            let record = self
                .store
                .get(NS, &model::instance_key(id))
                .await?
                .ok_or_else(|| DurableError::NotFound(id.to_owned()))?;
            let mut instance = read(&record.value)?;
            if instance.status != Status::Failed {
                return Err(DurableError::NotFailed { id: id.to_owned(), status: instance.status });
            }
            let history = self.history_records(id).await?;
            let events: Vec<Value> =
                history.iter().map(|r| serde_json::from_slice(&r.value).unwrap_or(Value::Null)).collect();
            let scheduled =
                |e: &Value| matches!(e["type"].as_str(), Some("task_scheduled" | "timer_created" | "sub_scheduled"));
            let after = events.iter().rposition(scheduled).map_or(0, |last| last + 1);
            let void = |writes: &mut Vec<Write>, seq: usize| {
                let marker = model::event("rewound", now, json!({"was": events[seq]}));
                writes.push(
                    Write::put(NS, &history[seq].key, to_vec(&marker)).expect(Expect::Version(history[seq].version)),
                );
            };
            // Where each (type, id) first appears: one pass, so a long history rewinds in linear time.
            let mut index: std::collections::HashMap<(&str, u64), usize> = std::collections::HashMap::new();
            for (seq, e) in events.iter().enumerate() {
                if let (Some(kind), Some(task)) = (e["type"].as_str(), e["id"].as_u64()) {
                    index.entry((kind, task)).or_insert(seq);
                }
            }
            let answered = |seq: usize, kinds: &[&str]| {
                let task = events[seq]["id"].as_u64();
                task.is_some_and(|task| kinds.iter().any(|kind| index.contains_key(&(*kind, task))))
            };
            let scheduling = |kind: &str, task: Option<u64>| index.get(&(kind, task?)).copied();
            for seq in 0..events.len() {
                let task = events[seq]["id"].as_u64();
                match events[seq]["type"].as_str() {
                    // A failure it did not get past: the activity runs again.
                    Some("task_failed") if seq >= after => {
                        void(writes, seq);
                        if let Some(at) = scheduling("task_scheduled", task) {
                            void(writes, at);
                        }
                    }
                    // Running when the instance failed, its result dropped since: asked again too.
                    Some("task_scheduled") if !answered(seq, &["task_completed", "task_failed"]) => void(writes, seq),
                    Some("timer_created") if !answered(seq, &["timer_fired"]) => void(writes, seq),
                    Some("sub_failed") if seq >= after => {
                        let child = scheduling("sub_scheduled", task).and_then(|at| events[at]["instance"].as_str());
                        let Some(child) = child else { continue };
                        self.rewind_child(id, child, reason, now, writes).await?;
                        void(writes, seq);
                        instance.open.extend(task);
                    }
                    Some("sub_scheduled") if !answered(seq, &["sub_completed", "sub_failed"]) => {
                        let (Some(child), Some(task)) = (events[seq]["instance"].as_str(), task) else { continue };
                        let Some(state) = self.store.get(NS, &model::instance_key(child)).await? else { continue };
                        let state = read(&state.value)?;
                        // Its end was dropped while the parent had failed: delivered again now.
                        let ended = match state.status {
                            Status::Completed => Some(("sub_completed", json!({"id": task, "result": state.output}))),
                            Status::Terminated => Some((
                                "sub_failed",
                                json!({"id": task, "error": {"code": "terminated", "message": "terminated"}}),
                            )),
                            Status::Failed => {
                                self.rewind_child(id, child, reason, now, writes).await?;
                                None
                            }
                            _ => None,
                        };
                        if let Some((kind, fields)) = ended {
                            writes.extend(deliver(id, model::event(kind, now, fields), now));
                        }
                        instance.open.insert(task);
                    }
                    _ => {}
                }
            }
            instance.status = Status::Running;
            instance.output = Value::Null;
            instance.execution = model::new_execution();
            instance.updated = now;
            writes.push(Write::put(NS, &record.key, to_vec(&instance)).expect(Expect::Version(record.version)));
            // What makes it step: the marker is its new event.
            writes.extend(deliver(id, model::event("rewound", now, json!({"reason": reason})), now));
            Ok(())
        })
    }

    async fn rewind_child(
        &self,
        id: &str,
        child: &str,
        reason: &Value,
        now: u64,
        writes: &mut Vec<Write>,
    ) -> Result<(), DurableError> {
        self.rewind_writes(child, reason, now, writes).await.map_err(|e| match e {
            DurableError::NotFound(_) | DurableError::NotFailed { .. } => {
                DurableError::Conflict(format!("instance `{id}` cannot be rewound: its sub-orchestration {e}"))
            }
            other => other,
        })
    }

    /// Starts an ended instance's orchestration again with its input (Durable Functions' restart):
    /// under a new id, or under its own once it has ended. The new run has this node's version.
    pub async fn restart(&self, id: &str, new_id: bool) -> Result<String, DurableError> {
        let instance = self.get(id).await?;
        if !new_id && !instance.status.is_terminal() {
            return Err(DurableError::Conflict(format!(
                "instance `{id}` is {:?}: terminate it first, or restart it under a new id",
                instance.status
            )));
        }
        // Its own copy of the input: the old run's payloads go when it is purged.
        let input = self.payloads.resolve(instance.input).await?;
        self.start(&instance.name, (!new_id).then(|| id.to_owned()), input, None).await
    }

    /// Deletes of instance `id`'s history and inbox added to `writes`: the events they held.
    async fn doomed(&self, id: &str, writes: &mut Vec<Write>) -> Result<Vec<Value>, StoreError> {
        let mut events = Vec::new();
        for prefix in [model::history_prefix(id), model::inbox_prefix(id)] {
            let mut after: Option<String> = None;
            loop {
                let page = self.store.list(NS, &prefix, after.as_deref(), 1000).await?;
                let done = page.len() < 1000;
                after = page.last().map(|r| r.key.clone());
                for record in page {
                    writes.push(Write::delete(NS, &record.key));
                    events.extend(serde_json::from_slice::<Value>(&record.value));
                }
                if done {
                    break;
                }
            }
        }
        Ok(events)
    }
}

fn to_value(instance: &Instance) -> Value {
    serde_json::to_value(instance).unwrap_or_default()
}

fn read(value: &[u8]) -> Result<Instance, DurableError> {
    serde_json::from_slice(value).map_err(|e| DurableError::Store(StoreError::Invalid(format!("instance record: {e}"))))
}
