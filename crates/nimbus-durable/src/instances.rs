//! Managing instances: start, read, list, raise events, terminate, purge. Each is a read and at
//! most one commit; the engine does the rest when it sees the inbox.

use nimbus_store::{Expect, StoreError, Write};
use serde_json::{Value, json};

use crate::engine::{DurableError, Engine, deliver};
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
        let mut writes = self.create(&id, name, input, None, &version, now);
        if let Some(existing) = self.store.get(NS, &model::instance_key(&id)).await? {
            let status = read(&existing.value)?.status;
            if !status.is_terminal() {
                return Err(DurableError::Conflict(format!("instance `{id}` exists and is {status:?}")));
            }
            // Started afresh: the old run's history and inbox go in the same commit.
            writes[0] = writes[0].clone().expect(Expect::Version(existing.version));
            for prefix in [model::history_prefix(&id), model::inbox_prefix(&id)] {
                for key in self.keys(&prefix).await? {
                    writes.insert(1, Write::delete(NS, &key));
                }
            }
        }
        match self.commit(writes).await {
            Ok(()) => {}
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
        for prefix in [model::history_prefix(id), model::inbox_prefix(id)] {
            writes.extend(self.keys(&prefix).await?.iter().map(|k| Write::delete(NS, k)));
        }
        writes.push(Write::delete(NS, &model::ready_key(id)));
        match self.commit(writes).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                Err(DurableError::Conflict(format!("instance `{id}` changed meanwhile")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        loop {
            let page = self.store.list(NS, prefix, keys.last().map(String::as_str), 1000).await?;
            let done = page.len() < 1000;
            keys.extend(page.into_iter().map(|r| r.key));
            if done {
                return Ok(keys);
            }
        }
    }
}

fn read(value: &[u8]) -> Result<Instance, DurableError> {
    serde_json::from_slice(value).map_err(|e| DurableError::Store(StoreError::Invalid(format!("instance record: {e}"))))
}
