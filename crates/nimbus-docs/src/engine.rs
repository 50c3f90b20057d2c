//! Item operations over the store's records: create, read, replace, upsert, delete, patch,
//! transactional batches, read feed, change feed and queries. Every change of an item and of its
//! index, unique-key and TTL records is one ordered commit, conditional on the version the change
//! was computed from, so concurrent writers never leave them disagreeing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nimbus_store::{Expect, Record, Store, StoreError, Write};
use serde_json::Value;

use crate::model::{self, Container, GONE, INDEX, ITEMS, META, SECRET, TTL, UNIQUE};
use crate::patch::{self, PatchOp};
use crate::query;

/// Items are at most this large (serialised), like Cosmos DB's 2 MB.
pub const MAX_ITEM_BYTES: usize = 2 * 1024 * 1024;
/// Objects and arrays nest at most this deep.
pub const MAX_DEPTH: usize = 64;
/// Writes retried after losing a race, when the caller set no `If-Match` (with a growing,
/// jittered pause, so that many writers of one item all get through).
const RETRIES: u32 = 64;
/// How long a query may take, from its arrival (waiting for an evaluator included) to its page.
/// Cosmos DB answers 408 past its own limit too.
pub const QUERY_TIME_LIMIT: Duration = Duration::from_secs(10);
/// A query page stops after the row that takes it to this many bytes (Cosmos DB's 4 MB response
/// limit), whatever `maxItems` says; the continuation carries on from there.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("{0}")]
    Invalid(String),
    #[error("no container \"{0}\"")]
    NoContainer(String),
    #[error("no item \"{id}\" in partition {pk}")]
    NotFound { id: String, pk: String },
    #[error("an item with id \"{id}\" already exists in partition {pk}")]
    Exists { id: String, pk: String },
    #[error("another item of the partition has the same unique key ({0})")]
    Unique(String),
    #[error("the item changed: it no longer has ETag {0}")]
    Precondition(String),
    #[error("the item is {0} bytes; items are at most {MAX_ITEM_BYTES} bytes")]
    TooLarge(usize),
    #[error("container \"{0}\" already exists")]
    ContainerExists(String),
    #[error("{0}")]
    Query(query::QueryError),
    /// The query needed more memory than [`query::MAX_QUERY_MEMORY`] (the message says so).
    #[error("{0}")]
    TooExpensive(String),
    #[error(
        "the query ran longer than {}s, the limit; narrow it with a partition key, WHERE or TOP, or ask for \
         fewer items per page",
        .0.as_secs()
    )]
    Timeout(Duration),
    #[error("{0}")]
    Continuation(String),
    /// A request body other than an item's is too large: what it is, and the limit.
    #[error("{what} is {size} bytes; at most {limit} bytes")]
    BodyTooLarge { what: &'static str, size: String, limit: usize },
    #[error("operation {index} failed: {source}")]
    Batch { index: usize, source: Box<DocsError> },
    #[error("the item kept changing under this write; try again")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<query::QueryError> for DocsError {
    fn from(e: query::QueryError) -> Self {
        match e.kind {
            query::QueryErrorKind::TooExpensive => DocsError::TooExpensive(e.message),
            query::QueryErrorKind::Timeout | query::QueryErrorKind::Cancelled => DocsError::Timeout(QUERY_TIME_LIMIT),
            _ => DocsError::Query(e),
        }
    }
}

/// One page of results and where the next one starts.
#[derive(Debug, serde::Serialize)]
pub struct Page {
    pub items: Vec<Value>,
    pub continuation: Option<String>,
}

/// One operation of a transactional batch.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum BatchOp {
    Create {
        item: Value,
    },
    Upsert {
        item: Value,
    },
    Replace {
        id: String,
        item: Value,
        #[serde(default, rename = "ifMatch")]
        if_match: Option<String>,
    },
    Delete {
        id: String,
        #[serde(default, rename = "ifMatch")]
        if_match: Option<String>,
    },
    Read {
        id: String,
    },
    Patch {
        id: String,
        operations: Vec<PatchOp>,
        #[serde(default, rename = "ifMatch")]
        if_match: Option<String>,
    },
}

#[derive(Clone)]
pub struct Docs {
    pub(crate) store: Arc<dyn Store>,
    declared: Arc<BTreeMap<String, Container>>,
    /// Containers made through the API, as read in the last [`CONTAINER_TTL`] (another node's
    /// create or delete shows within that time).
    made: Arc<std::sync::Mutex<MadeContainers>>,
    vectors: crate::vectors::Vectors,
    /// The TTL purger, when started by [`Docs::start`].
    pub(crate) tasks: nimbus_api::Tasks,
    /// Queries evaluate on blocking threads, as many at once as the machine has cores, never on
    /// the request threads.
    evaluators: Arc<tokio::sync::Semaphore>,
    /// The key that signs query continuations (kept in the store, so every node knows it).
    continuation_key: Arc<tokio::sync::OnceCell<aws_lc_rs::hmac::Key>>,
}

const CONTAINER_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Name → the container (or its absence) and when that was read.
type MadeContainers = BTreeMap<String, (Option<Container>, std::time::Instant)>;

/// An item as stored: its JSON and its record's version.
#[derive(Clone)]
struct Current {
    item: Value,
    version: u64,
}

impl Docs {
    pub fn new(store: Arc<dyn Store>, declared: BTreeMap<String, Container>) -> Self {
        Self {
            store,
            declared: Arc::new(declared),
            made: Default::default(),
            vectors: Default::default(),
            tasks: nimbus_api::Tasks::new("docs"),
            evaluators: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            continuation_key: Arc::default(),
        }
    }

    /// Now, in seconds, by the store's clock (which tests move to expire items).
    fn now(&self) -> i64 {
        let now = self.store.clock().now();
        now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    // ---- containers -------------------------------------------------------------------------

    pub async fn container(&self, name: &str) -> Result<Container, DocsError> {
        if let Some(c) = self.declared.get(name) {
            return Ok(c.clone());
        }
        if !model::valid_name(name) {
            return Err(DocsError::NoContainer(name.to_owned()));
        }
        let cached = self.made.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let found = match cached {
            Some((found, at)) if at.elapsed() < CONTAINER_TTL => found,
            _ => {
                let found = match self.store.get(META, name).await? {
                    Some(record) => Some(
                        serde_json::from_slice::<Container>(&record.value)
                            .map_err(|e| DocsError::Invalid(format!("unreadable container: {e}")))?,
                    ),
                    None => None,
                };
                let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
                if made.len() > 10_000 {
                    made.clear();
                }
                made.insert(name.to_owned(), (found.clone(), std::time::Instant::now()));
                found
            }
        };
        found.ok_or_else(|| DocsError::NoContainer(name.to_owned()))
    }

    pub async fn containers(&self) -> Result<Vec<Container>, DocsError> {
        let mut all: BTreeMap<String, Container> = (*self.declared).clone();
        for record in self.store.list(META, "", None, 10_000).await? {
            if let Ok(c) = serde_json::from_slice::<Container>(&record.value) {
                all.entry(c.name.clone()).or_insert(c);
            }
        }
        Ok(all.into_values().collect())
    }

    pub async fn create_container(&self, mut c: Container) -> Result<Container, DocsError> {
        c.declared = false;
        c.validate().map_err(DocsError::Invalid)?;
        if self.declared.contains_key(&c.name) {
            return Err(DocsError::ContainerExists(c.name));
        }
        let value = serde_json::to_vec(&c).expect("container serializes");
        match self.store.commit(vec![Write::put(META, &c.name, value).expect(Expect::Absent)]).await {
            Ok(_) => {
                self.made.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.name);
                Ok(c)
            }
            Err(StoreError::Conflict { .. }) => Err(DocsError::ContainerExists(c.name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a container made through the API, with its items (in pages; a crash midway leaves
    /// the rest for a second call).
    pub async fn delete_container(&self, name: &str) -> Result<(), DocsError> {
        if self.declared.contains_key(name) {
            return Err(DocsError::Invalid(format!(
                "container \"{name}\" is declared in nimbus.toml; remove it there"
            )));
        }
        let c = self.container(name).await?;
        let prefix = format!("{name}/");
        for ns in [ITEMS, INDEX, UNIQUE] {
            loop {
                let page = self.store.list(ns, &prefix, None, 500).await?;
                if page.is_empty() {
                    break;
                }
                self.store.commit(page.iter().map(|r| Write::delete(ns, &r.key)).collect()).await?;
            }
        }
        // TTL records of the container's items are dropped by the purger when it meets them.
        self.store.commit(vec![Write::delete(META, &c.name)]).await?;
        self.made.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.name);
        Ok(())
    }

    // ---- single items -----------------------------------------------------------------------

    /// The item's id and partition key value, after checking it is an acceptable item.
    fn identify(&self, c: &Container, item: &Value) -> Result<(String, Value), DocsError> {
        let map = item.as_object().ok_or_else(|| DocsError::Invalid("an item is a JSON object".into()))?;
        let id = match map.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(DocsError::Invalid("the item's \"id\" must be a string".into())),
            None => return Err(DocsError::Invalid("the item has no \"id\"".into())),
        };
        check_id(&id)?;
        let pk = model::lookup(item, &c.pk_path())
            .cloned()
            .ok_or_else(|| DocsError::Invalid(format!("the item has no partition key {}", c.partition_key)))?;
        if pk.is_object() || pk.is_array() {
            return Err(DocsError::Invalid(format!(
                "the partition key {} must be a string, number, boolean or null",
                c.partition_key
            )));
        }
        let depth = model::depth(item);
        if depth > MAX_DEPTH {
            return Err(DocsError::Invalid(format!("the item nests {depth} levels deep; at most {MAX_DEPTH}")));
        }
        Ok((id, pk))
    }

    async fn current(&self, c: &Container, pk: &Value, id: &str) -> Result<Option<Current>, DocsError> {
        let Some(record) = self.store.get(ITEMS, &model::item_key(&c.name, pk, id)).await? else {
            return Ok(None);
        };
        Ok(decode(&record))
    }

    /// The item unless its time is up (an expired item is gone, even before the purger comes).
    async fn live(&self, c: &Container, pk: &Value, id: &str) -> Result<Option<Current>, DocsError> {
        Ok(self.current(c, pk, id).await?.filter(|cur| live(c, &cur.item, self.now())))
    }

    pub async fn read(&self, container: &str, id: &str, pk: &Value) -> Result<Value, DocsError> {
        let c = self.container(container).await?;
        match self.live(&c, pk, id).await? {
            Some(cur) => Ok(model::with_system(cur.item, cur.version)),
            None => Err(not_found(id, pk)),
        }
    }

    pub async fn create(&self, container: &str, item: Value) -> Result<Value, DocsError> {
        let c = self.container(container).await?;
        let (id, pk) = self.identify(&c, &item)?;
        let new = prepared(item, self.now())?;
        let writes = changes(&c, &pk, &id, None, Some(&new), self.now());
        match self.commit(writes, &id, &pk).await {
            Ok(version) => Ok(model::with_system(new, version)),
            // The id may belong to an expired item the purger has not reached: that one is gone.
            Err(DocsError::Exists { .. }) => match self.current(&c, &pk, &id).await? {
                Some(old) if !live(&c, &old.item, self.now()) => {
                    let writes = changes(&c, &pk, &id, Some(&old), Some(&new), self.now());
                    let version = self.commit(writes, &id, &pk).await.map_err(|e| match e {
                        DocsError::Precondition(_) => DocsError::Exists { id: id.clone(), pk: model::canonical(&pk) },
                        e => e,
                    })?;
                    Ok(model::with_system(new, version))
                }
                _ => Err(DocsError::Exists { id, pk: model::canonical(&pk) }),
            },
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces the item; says whether it was created.
    pub async fn upsert(&self, container: &str, item: Value) -> Result<(Value, bool), DocsError> {
        let c = self.container(container).await?;
        let (id, pk) = self.identify(&c, &item)?;
        let new = prepared(item, self.now())?;
        for attempt in 0..RETRIES {
            pause(attempt).await;
            let old = self.current(&c, &pk, &id).await?;
            let created = old.as_ref().is_none_or(|o| !live(&c, &o.item, self.now()));
            let writes = changes(&c, &pk, &id, old.as_ref(), Some(&new), self.now());
            match self.commit(writes, &id, &pk).await {
                Err(DocsError::Exists { .. } | DocsError::Precondition(_)) => continue,
                result => return result.map(|v| (model::with_system(new.clone(), v), created)),
            }
        }
        Err(contended())
    }

    pub async fn replace(
        &self,
        container: &str,
        id: &str,
        pk: &Value,
        item: Value,
        if_match: Option<&str>,
    ) -> Result<Value, DocsError> {
        let c = self.container(container).await?;
        let (item_id, item_pk) = self.identify(&c, &item)?;
        if item_id != id || model::canonical(&item_pk) != model::canonical(pk) {
            return Err(DocsError::Invalid(
                "the body's id and partition key must be those of the item addressed (to move an item, create it anew)"
                    .into(),
            ));
        }
        let new = prepared(item, self.now())?;
        self.rewrite(&c, id, pk, if_match, |_| Ok(new.clone())).await
    }

    pub async fn patch(
        &self,
        container: &str,
        id: &str,
        pk: &Value,
        ops: &[PatchOp],
        if_match: Option<&str>,
    ) -> Result<Value, DocsError> {
        let c = self.container(container).await?;
        let pk_path = c.pk_path();
        self.rewrite(&c, id, pk, if_match, |old| {
            let mut item = old.clone();
            patch::apply(&mut item, ops).map_err(DocsError::Invalid)?;
            check_patched(&c, &pk_path, id, pk, &item)?;
            prepared(item, self.now())
        })
        .await
    }

    /// Reads the item, computes its new state, writes it conditional on the version read; with
    /// `if_match`, only from that version.
    async fn rewrite(
        &self,
        c: &Container,
        id: &str,
        pk: &Value,
        if_match: Option<&str>,
        change: impl Fn(&Value) -> Result<Value, DocsError>,
    ) -> Result<Value, DocsError> {
        for attempt in 0..RETRIES {
            pause(attempt).await;
            let old = self.live(c, pk, id).await?.ok_or_else(|| not_found(id, pk))?;
            check_match(if_match, old.version)?;
            let new = change(&old.item)?;
            let writes = changes(c, pk, id, Some(&old), Some(&new), self.now());
            match self.commit(writes, id, pk).await {
                Err(DocsError::Precondition(_)) if if_match.is_none() => continue,
                Err(DocsError::Precondition(_)) => {
                    return Err(DocsError::Precondition(if_match.unwrap_or("").to_owned()));
                }
                result => return result.map(|v| model::with_system(new, v)),
            }
        }
        Err(contended())
    }

    pub async fn delete(&self, container: &str, id: &str, pk: &Value, if_match: Option<&str>) -> Result<(), DocsError> {
        let c = self.container(container).await?;
        for attempt in 0..RETRIES {
            pause(attempt).await;
            let old = self.live(&c, pk, id).await?.ok_or_else(|| not_found(id, pk))?;
            check_match(if_match, old.version)?;
            let writes = changes(&c, pk, id, Some(&old), None, self.now());
            match self.commit(writes, id, pk).await {
                Err(DocsError::Precondition(_)) if if_match.is_none() => continue,
                result => return result.map(|_| ()),
            }
        }
        Err(contended())
    }

    /// Commits an item's writes; conflicts become the error the client understands. Returns the
    /// item's new version (0 after a delete).
    async fn commit(&self, writes: Vec<Write>, id: &str, pk: &Value) -> Result<u64, DocsError> {
        match self.store.commit_ordered(writes).await {
            Ok(versions) => Ok(versions.first().copied().flatten().unwrap_or(0)),
            Err(StoreError::Conflict { ns, key, expected, .. }) => Err(conflict(&ns, &key, expected, id, pk)),
            Err(e) => Err(e.into()),
        }
    }

    // ---- batches ----------------------------------------------------------------------------

    /// Runs `ops` on one partition, all or nothing. Answers each operation's result (the item, or
    /// null for deletes); the first failing operation fails the batch.
    pub async fn batch(&self, container: &str, pk: &Value, ops: Vec<BatchOp>) -> Result<Vec<(u16, Value)>, DocsError> {
        let c = self.container(container).await?;
        if ops.is_empty() || ops.len() > 100 {
            return Err(DocsError::Invalid("a batch holds 1 to 100 operations".into()));
        }
        let pk_path = c.pk_path();
        let fail = |index: usize, e: DocsError| DocsError::Batch { index, source: Box::new(e) };
        // The items the batch touches, as they are now.
        let mut first_op: BTreeMap<String, usize> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let id = match op {
                BatchOp::Create { item } | BatchOp::Upsert { item } => {
                    let (id, item_pk) = self.identify(&c, item).map_err(|e| fail(i, e))?;
                    if model::canonical(&item_pk) != model::canonical(pk) {
                        return Err(fail(
                            i,
                            DocsError::Invalid("every item of a batch is in the batch's partition".into()),
                        ));
                    }
                    id
                }
                BatchOp::Replace { id, item, .. } => {
                    let (item_id, item_pk) = self.identify(&c, item).map_err(|e| fail(i, e))?;
                    if item_id != *id || model::canonical(&item_pk) != model::canonical(pk) {
                        let m = "a replaced item keeps the operation's id and the batch's partition key";
                        return Err(fail(i, DocsError::Invalid(m.into())));
                    }
                    id.clone()
                }
                BatchOp::Delete { id, .. } | BatchOp::Read { id } | BatchOp::Patch { id, .. } => id.clone(),
            };
            first_op.entry(id).or_insert(i);
        }
        let mut original: BTreeMap<String, Option<Current>> = BTreeMap::new();
        for id in first_op.keys() {
            original.insert(id.clone(), self.current(&c, pk, id).await?);
        }
        // Apply the operations in order to a working copy, where expired items are gone.
        let now = self.now();
        let mut state: BTreeMap<String, Option<Value>> = original
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().filter(|cur| live(&c, &cur.item, now)).map(|cur| cur.item.clone())))
            .collect();
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let version_of = |id: &str, state: &BTreeMap<String, Option<Value>>| {
                // An item the batch already changed has no version yet: If-Match cannot name it.
                let unchanged = state.get(id).cloned().flatten() == original.get(id).cloned().flatten().map(|c| c.item);
                original.get(id).cloned().flatten().filter(|_| unchanged).map(|c| c.version)
            };
            let outcome: Result<(u16, Value), DocsError> = match op {
                BatchOp::Create { item } => {
                    let id = item["id"].as_str().unwrap_or_default().to_owned();
                    if state.get(&id).is_some_and(Option::is_some) {
                        Err(DocsError::Exists { id, pk: model::canonical(pk) })
                    } else {
                        prepared(item, self.now()).map(|new| {
                            state.insert(id, Some(new.clone()));
                            (201, new)
                        })
                    }
                }
                BatchOp::Upsert { item } => {
                    let id = item["id"].as_str().unwrap_or_default().to_owned();
                    let existed = state.get(&id).is_some_and(Option::is_some);
                    prepared(item, self.now()).map(|new| {
                        state.insert(id, Some(new.clone()));
                        (if existed { 200 } else { 201 }, new)
                    })
                }
                BatchOp::Read { id } => match state.get(&id).cloned().flatten() {
                    Some(item) => Ok((200, item)),
                    None => Err(not_found(&id, pk)),
                },
                BatchOp::Replace { id, item, if_match } => {
                    // (id and partition were checked with the others, before any read.)
                    let check = match state.get(&id).cloned().flatten() {
                        None => Err(not_found(&id, pk)),
                        Some(_) => batch_match(if_match.as_deref(), version_of(&id, &state)),
                    };
                    check.and_then(|()| prepared(item, self.now())).map(|new| {
                        state.insert(id, Some(new.clone()));
                        (200, new)
                    })
                }
                BatchOp::Delete { id, if_match } => match state.get(&id).cloned().flatten() {
                    None => Err(not_found(&id, pk)),
                    Some(_) => batch_match(if_match.as_deref(), version_of(&id, &state)).map(|()| {
                        state.insert(id, None);
                        (204, Value::Null)
                    }),
                },
                BatchOp::Patch { id, operations, if_match } => match state.get(&id).cloned().flatten() {
                    None => Err(not_found(&id, pk)),
                    Some(mut item) => batch_match(if_match.as_deref(), version_of(&id, &state))
                        .and_then(|()| patch::apply(&mut item, &operations).map_err(DocsError::Invalid))
                        .and_then(|()| check_patched(&c, &pk_path, &id, pk, &item))
                        .and_then(|()| prepared(item, self.now()))
                        .map(|new| {
                            state.insert(id, Some(new.clone()));
                            (200, new)
                        }),
                },
            };
            results.push(outcome.map_err(|e| fail(i, e))?);
        }
        // One commit: deletes first, so a unique key can move between items of the batch.
        let mut deletes = Vec::new();
        let mut puts = Vec::new();
        // Which operation each write belongs to, to name the one a conflict fails.
        for (id, new) in &state {
            let old = original.get(id).cloned().flatten();
            if old.as_ref().map(|c| &c.item) == new.as_ref() {
                continue;
            }
            for w in changes(&c, pk, id, old.as_ref(), new.as_ref(), self.now()) {
                let owner = (first_op[id], id.clone());
                if matches!(w.op, nimbus_store::Op::Delete) { deletes.push((w, owner)) } else { puts.push((w, owner)) }
            }
        }
        deletes.extend(puts);
        let (writes, owners): (Vec<Write>, Vec<(usize, String)>) = deletes.into_iter().unzip();
        let versions = if writes.is_empty() {
            Vec::new()
        } else {
            match self.store.commit_ordered(writes.clone()).await {
                Ok(v) => v,
                Err(StoreError::Conflict { index, ns, key, expected, .. }) => {
                    let (op, id) = owners.get(index).cloned().unwrap_or_default();
                    return Err(fail(op, conflict(&ns, &key, expected, &id, pk)));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The new versions of the items written, for their _etag and _lsn.
        let mut new_versions: BTreeMap<String, u64> = BTreeMap::new();
        for (w, v) in writes.iter().zip(&versions) {
            if let (true, Some(v)) = (w.ns == ITEMS, v) {
                new_versions.insert(w.key.clone(), *v);
            }
        }
        Ok(results
            .into_iter()
            .map(|(status, item)| {
                let version =
                    item.get("id").and_then(Value::as_str).map(|id| model::item_key(&c.name, pk, id)).and_then(|k| {
                        new_versions.get(&k).copied().or_else(|| original_version(&original, &k, &c.name, pk))
                    });
                match (item, version) {
                    (Value::Null, _) => (status, Value::Null),
                    (item, Some(v)) => (status, model::with_system(item, v)),
                    (item, None) => (status, item),
                }
            })
            .collect())
    }

    // ---- feeds and queries ------------------------------------------------------------------

    /// Items in key order (one partition, or all), `max` at a time.
    pub async fn read_feed(
        &self,
        container: &str,
        pk: Option<&Value>,
        continuation: Option<&str>,
        max: usize,
    ) -> Result<Page, DocsError> {
        let c = self.container(container).await?;
        let prefix = model::scope_prefix(&c.name, pk);
        let after = continuation.map(|t| decode_token(t, "r")).transpose()?;
        let now = self.now();
        let mut items = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.store.list(ITEMS, &prefix, cursor.as_deref(), max + 1 - items.len()).await?;
            let done = page.len() < max + 1 - items.len();
            for record in &page {
                cursor = Some(record.key.clone());
                if let Some(item) = visible(&c, record, now) {
                    items.push((record.key.clone(), item));
                }
            }
            if done || items.len() > max {
                break;
            }
        }
        let more = items.len() > max;
        items.truncate(max);
        let continuation = more.then(|| encode_token("r", &items.last().map(|(k, _)| k.clone()).unwrap_or_default()));
        Ok(Page { items: items.into_iter().map(|(_, v)| v).collect(), continuation })
    }

    /// A change-feed continuation at the present: reading from it gives only what changes later.
    pub async fn feed_now(&self, container: &str) -> Result<String, DocsError> {
        self.container(container).await?;
        Ok(encode_token("f", &self.store.feed_position().await?.to_string()))
    }

    /// Items changed after the continuation, in the order of their last change (`_lsn`).
    pub async fn change_feed(
        &self,
        container: &str,
        pk: Option<&Value>,
        continuation: Option<&str>,
        max: usize,
    ) -> Result<Page, DocsError> {
        let c = self.container(container).await?;
        let prefix = model::scope_prefix(&c.name, pk);
        let after: u64 = match continuation {
            Some(t) => decode_token(t, "f")?.parse().map_err(|_| bad_token())?,
            None => 0,
        };
        // The store examines up to `max` changes of all containers per call: read on while the
        // page is empty and more are there (a few times; an empty page with a continuation that
        // moved on is still a valid answer).
        let now = self.now();
        let mut last = after;
        let mut items = Vec::new();
        for _ in 0..8 {
            let page = self.store.changes(ITEMS, &prefix, last, max).await?;
            last = page.through;
            items.extend(page.records.iter().filter_map(|r| visible(&c, r, now)));
            if !items.is_empty() || page.caught_up {
                break;
            }
        }
        // The feed never ends: the continuation always says where to resume.
        Ok(Page { items, continuation: Some(encode_token("f", &last.to_string())) })
    }

    /// Runs a query; the backend narrows the candidates (partition, id, declared indexes), the
    /// evaluator decides, on a blocking thread (at most one per core), within
    /// [`QUERY_TIME_LIMIT`] and [`query::MAX_QUERY_MEMORY`]. Results are paged with a signed
    /// continuation; the evaluation stops once the page is full (unless the query must see every
    /// row), and when the caller stops waiting.
    pub async fn query(
        &self,
        container: &str,
        text: &str,
        params: &query::Params,
        pk: Option<&Value>,
        continuation: Option<&str>,
        max: usize,
    ) -> Result<Page, DocsError> {
        let deadline = Instant::now() + QUERY_TIME_LIMIT;
        let run = self.query_until(deadline, container, text, params, pk, continuation, max);
        match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(result) => result,
            Err(_) => Err(DocsError::Timeout(QUERY_TIME_LIMIT)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn query_until(
        &self,
        deadline: Instant,
        container: &str,
        text: &str,
        params: &query::Params,
        pk: Option<&Value>,
        continuation: Option<&str>,
        max: usize,
    ) -> Result<Page, DocsError> {
        let c = self.container(container).await?;
        let q = query::parse(text)?;
        for name in q.parameters() {
            if !params.contains_key(name) {
                return Err(DocsError::Invalid(format!("the query uses parameter {name}, which is not given")));
            }
        }
        let fingerprint = fingerprint(text, params, pk);
        let skip: u64 = match continuation {
            Some(t) => {
                let inner = self.open_token(t, "q").await?;
                let (offset, print) = inner.split_once(':').ok_or_else(bad_token)?;
                if print != fingerprint {
                    return Err(DocsError::Continuation("the continuation belongs to another query".into()));
                }
                offset.parse().map_err(|_| bad_token())?
            }
            None => 0,
        };
        // The permit first: loading and sorting the candidates (a whole container when nothing
        // narrows the query) is bounded by the same pool as evaluating them.
        let permit = self.evaluators.clone().acquire_owned().await.map_err(|_| DocsError::Busy)?;
        let candidates = self.candidates(&c, &q, params, pk).await?;
        // Set when this future is dropped (the client left, the deadline passed) or done: the
        // evaluator looks at it as it goes and stops.
        let cancel = Arc::new(AtomicBool::new(false));
        let _stop = CancelOnDrop(cancel.clone());
        let limits = query::Limits { memory: query::MAX_QUERY_MEMORY, deadline: Some(deadline), cancel: Some(cancel) };
        let window = query::Window { skip, rows: max.max(1) as u64, bytes: PAGE_BYTES };
        let (params, now) = (params.clone(), self.now());
        let evaluation = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let items = candidates.items(&c, now, &limits)?;
            // How many items the storage handed the evaluator: a query no partition, id or index
            // narrows shows here as the container's size.
            metrics::histogram!("nimbus_docs_query_candidates", "container" => c.name.clone())
                .record(items.len() as f64);
            q.run(items.iter(), &params, window, &limits)
        });
        let rows = match evaluation.await {
            Ok(rows) => rows?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(DocsError::Busy),
        };
        let end = skip.saturating_add(rows.rows.len() as u64);
        let continuation = match rows.more {
            true => Some(self.seal_token("q", &format!("{end}:{fingerprint}")).await?),
            false => None,
        };
        Ok(Page { items: rows.rows, continuation })
    }

    /// The key continuations are signed with: made once per store, by whichever node comes first.
    async fn continuation_key(&self) -> Result<&aws_lc_rs::hmac::Key, DocsError> {
        self.continuation_key
            .get_or_try_init(|| async {
                const KEY: &str = "continuations";
                let fresh = rand::random::<[u8; 32]>().to_vec();
                match self.store.commit(vec![Write::put(SECRET, KEY, fresh).expect(Expect::Absent)]).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(DocsError::Store(e)),
                }
                let record = self
                    .store
                    .get(SECRET, KEY)
                    .await?
                    .ok_or_else(|| DocsError::Store(StoreError::Backend("the continuation key vanished".into())))?;
                Ok(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &record.value))
            })
            .await
    }

    /// `inner`, readable and signed: `base64(kind:inner).base64(HMAC)`.
    async fn seal_token(&self, kind: &str, inner: &str) -> Result<String, DocsError> {
        use base64::Engine;
        let text = format!("{kind}:{inner}");
        let tag = aws_lc_rs::hmac::sign(self.continuation_key().await?, text.as_bytes());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(format!("{}.{}", b64.encode(text), b64.encode(tag.as_ref())))
    }

    /// The inner text of a token [`Docs::seal_token`] made for `kind`; anything else, a changed
    /// or a made-up token, is refused.
    async fn open_token(&self, token: &str, kind: &str) -> Result<String, DocsError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (text, tag) = token.split_once('.').ok_or_else(bad_token)?;
        let (text, tag) = (b64.decode(text).map_err(|_| bad_token())?, b64.decode(tag).map_err(|_| bad_token())?);
        aws_lc_rs::hmac::verify(self.continuation_key().await?, &text, &tag).map_err(|_| bad_token())?;
        let text = String::from_utf8(text).map_err(|_| bad_token())?;
        text.strip_prefix(&format!("{kind}:")).map(str::to_owned).ok_or_else(bad_token)
    }

    async fn candidates(
        &self,
        c: &Container,
        q: &query::Query,
        params: &query::Params,
        pk: Option<&Value>,
    ) -> Result<Candidates, DocsError> {
        if pk.is_none()
            && let Some(found) = self.nearest(c, q, params).await?
        {
            return Ok(Candidates::Items(found));
        }
        let equalities = q.equalities(params)?;
        let values_of = |path: &[String]| equalities.iter().find(|(p, _)| p.as_slice() == path).map(|(_, v)| v.clone());
        let partitions: Option<Vec<Value>> = match pk {
            Some(pk) => Some(vec![pk.clone()]),
            None => values_of(&c.pk_path()),
        };
        let mut records = Vec::new();
        if let Some(partitions) = &partitions {
            let ids = values_of(&["id".to_owned()]);
            for pk in partitions {
                match &ids {
                    Some(ids) => {
                        let keys: Vec<String> =
                            ids.iter().filter_map(Value::as_str).map(|id| model::item_key(&c.name, pk, id)).collect();
                        records.extend(self.store.get_many(ITEMS, &keys).await?);
                    }
                    None => records.extend(self.scan(&model::partition_prefix(&c.name, pk)).await?),
                }
            }
        } else if let Some((path, values)) =
            c.indexes.iter().find_map(|p| values_of(&model::parse_path(p)).map(|v| (p.clone(), v)))
        {
            for value in values.iter().filter(|v| !v.is_object() && !v.is_array()) {
                let prefix = model::index_prefix(&c.name, &path, value);
                let keys: Vec<String> = self
                    .scan_keys(INDEX, &prefix)
                    .await?
                    .iter()
                    .map(|entry| format!("{}/{}", c.name, &entry[prefix.len()..]))
                    .collect();
                records.extend(self.store.get_many(ITEMS, &keys).await?);
            }
        } else {
            records = self.scan(&format!("{}/", c.name)).await?;
        }
        // Key order, as a scan gives: pages of a query without ORDER BY must see one order.
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records.dedup_by(|a, b| a.key == b.key);
        Ok(Candidates::Records(records))
    }

    /// For a nearest-neighbour query: its candidates from the node's vector index (twice as many
    /// as it asks for, and some, so `f32` rounding cannot change which make the cut; the evaluator
    /// then ranks them exactly). `None` when the index cannot answer it exactly.
    async fn nearest(
        &self,
        c: &Container,
        q: &query::Query,
        params: &query::Params,
    ) -> Result<Option<Vec<Value>>, DocsError> {
        let Some(n) = q.nearest(params) else { return Ok(None) };
        let vector: Vec<f32> = n.vector.iter().map(|x| *x as f32).collect();
        let want = n.want.saturating_mul(2).saturating_add(16);
        let found =
            self.vectors.nearest(&self.store, &c.name, &n.path, &vector, n.distance, !n.descending, want).await?;
        let Some(keys) = found else { return Ok(None) };
        let now = self.now();
        let items: Vec<Value> =
            self.store.get_many(ITEMS, &keys).await?.iter().filter_map(|r| visible(c, r, now)).collect();
        // Expired items the purger has not reached took places: only a full scan is exact then.
        Ok((items.len() >= n.want || keys.len() < want).then_some(items))
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<Record>, DocsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(ITEMS, prefix, after.as_deref(), 1000).await?;
            let done = page.len() < 1000;
            after = page.last().map(|r| r.key.clone());
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    async fn scan_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, DocsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(ns, prefix, after.as_deref(), 1000).await?;
            let done = page.len() < 1000;
            after = page.last().map(|r| r.key.clone());
            out.extend(page.into_iter().map(|r| r.key));
            if done {
                return Ok(out);
            }
        }
    }

    // ---- TTL --------------------------------------------------------------------------------

    /// Deletes tombstones older than [`crate::vectors::TOMBSTONE_LIFE`], oldest first.
    pub async fn purge_tombstones(&self, limit: usize) -> Result<usize, DocsError> {
        let horizon = self.now() - crate::vectors::TOMBSTONE_LIFE.as_secs() as i64;
        let old: Vec<Write> = self
            .store
            .changes(GONE, "", 0, limit)
            .await?
            .records
            .into_iter()
            .take_while(|r| {
                std::str::from_utf8(&r.value).ok().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t < horizon)
            })
            .map(|r| Write::delete(GONE, &r.key).expect(Expect::Version(r.version)))
            .collect();
        let n = old.len();
        if n > 0 {
            match self.store.commit(old).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Deletes items whose time is up (reads already hide them); at most `limit` per call.
    /// Answers how many went.
    pub async fn purge_expired(&self, limit: usize) -> Result<usize, DocsError> {
        let now = self.now();
        let due = self.store.list(TTL, "", None, limit).await?;
        let mut purged = 0;
        for entry in due {
            let Some((expiry, item_key)) = entry.key.split_once('/') else { continue };
            if expiry.parse::<i64>().map_or(true, |e| e > now) {
                break;
            }
            let container = item_key.split('/').next().unwrap_or_default();
            let c = match self.container(container).await {
                Ok(c) => c,
                Err(DocsError::NoContainer(_)) => {
                    self.store.commit(vec![Write::delete(TTL, &entry.key)]).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let record = self.store.get(ITEMS, item_key).await?;
            let current = record.as_ref().and_then(decode);
            match current {
                Some(cur) if model::expiry(&c, &cur.item).is_some_and(|e| e <= now) => {
                    let id = cur.item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                    let pk = model::lookup(&cur.item, &c.pk_path()).cloned().unwrap_or(Value::Null);
                    let writes = changes(&c, &pk, &id, Some(&cur), None, self.now());
                    match self.store.commit_ordered(writes).await {
                        Ok(_) => purged += 1,
                        Err(StoreError::Conflict { .. }) => {} // rewritten meanwhile: its new TTL record rules
                        Err(e) => return Err(e.into()),
                    }
                }
                // Gone, or rewritten with a later expiry (whose own record is elsewhere).
                _ => {
                    let _ = self
                        .store
                        .commit(vec![Write::delete(TTL, &entry.key).expect(Expect::Version(entry.version))])
                        .await;
                }
            }
        }
        Ok(purged)
    }
}

/// What the storage hands a query's evaluator: records (decoded on the evaluator's thread) or, from
/// the vector index, items.
enum Candidates {
    Records(Vec<Record>),
    Items(Vec<Value>),
}

impl Candidates {
    /// The items still alive; stops at the query's deadline or cancellation.
    fn items(self, c: &Container, now: i64, limits: &query::Limits) -> Result<Vec<Value>, query::QueryError> {
        let records = match self {
            Candidates::Items(items) => return Ok(items),
            Candidates::Records(records) => records,
        };
        let mut items = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            if i.is_multiple_of(256) {
                limits.check()?;
            }
            items.extend(visible(c, record, now));
        }
        Ok(items)
    }
}

/// Sets its flag when dropped: a query's evaluator stops when its caller stops waiting.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The writes that take an item from `old` to `new` (either may be absent), with its index,
/// unique-key and TTL records; conditional on `old`'s version.
fn changes(c: &Container, pk: &Value, id: &str, old: Option<&Current>, new: Option<&Value>, now: i64) -> Vec<Write> {
    let key = model::item_key(&c.name, pk, id);
    let expect = old.map_or(Expect::Absent, |o| Expect::Version(o.version));
    let mut writes = vec![match new {
        Some(item) => Write::put(ITEMS, &key, serde_json::to_vec(item).expect("JSON serializes")).expect(expect),
        None => Write::delete(ITEMS, &key).expect(expect),
    }];
    if new.is_none() {
        writes.push(Write::put(GONE, &key, now.to_string()));
    }
    let set = |item: Option<&Value>, f: &dyn Fn(&Value) -> Vec<String>| -> BTreeSet<String> {
        item.map(f).unwrap_or_default().into_iter().collect()
    };
    let old_item = old.map(|o| &o.item);
    let (old_index, new_index) =
        (set(old_item, &|i| model::index_keys(c, pk, id, i)), set(new, &|i| model::index_keys(c, pk, id, i)));
    writes.extend(old_index.difference(&new_index).map(|k| Write::delete(INDEX, k)));
    writes.extend(new_index.difference(&old_index).map(|k| Write::put(INDEX, k, Vec::new())));
    let (old_unique, new_unique) =
        (set(old_item, &|i| model::unique_keys(c, pk, i)), set(new, &|i| model::unique_keys(c, pk, i)));
    writes.extend(old_unique.difference(&new_unique).map(|k| Write::delete(UNIQUE, k)));
    writes.extend(
        new_unique
            .difference(&old_unique)
            .map(|k| Write::put(UNIQUE, k, id.as_bytes().to_vec()).expect(Expect::Absent)),
    );
    let ttl = |item: Option<&Value>| item.and_then(|i| model::expiry(c, i)).map(|e| model::ttl_key(e, &c.name, pk, id));
    let (old_ttl, new_ttl) = (ttl(old_item), ttl(new));
    if old_ttl != new_ttl {
        writes.extend(old_ttl.map(|k| Write::delete(TTL, &k)));
        writes.extend(new_ttl.map(|k| Write::put(TTL, &k, Vec::new())));
    }
    writes
}

fn decode(record: &Record) -> Option<Current> {
    serde_json::from_slice(&record.value).ok().map(|item| Current { item, version: record.version })
}

/// The item a record holds, as clients see it, unless its time is up.
fn visible(c: &Container, record: &Record, now: i64) -> Option<Value> {
    decode(record).filter(|cur| live(c, &cur.item, now)).map(|cur| model::with_system(cur.item, cur.version))
}

/// Whether an item is still alive (its TTL has not run out).
fn live(c: &Container, item: &Value, now: i64) -> bool {
    model::expiry(c, item).is_none_or(|e| e > now)
}

fn prepared(item: Value, now: i64) -> Result<Value, DocsError> {
    let Value::Object(map) = item else { return Err(DocsError::Invalid("an item is a JSON object".into())) };
    let new = model::prepare(map, now);
    let size = serde_json::to_vec(&new).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_ITEM_BYTES {
        return Err(DocsError::TooLarge(size));
    }
    Ok(new)
}

fn check_patched(c: &Container, pk_path: &[String], id: &str, pk: &Value, item: &Value) -> Result<(), DocsError> {
    if item.get("id").and_then(Value::as_str) != Some(id) {
        return Err(DocsError::Invalid("a patch cannot change or remove the item's id".into()));
    }
    if model::lookup(item, pk_path).map(model::canonical) != Some(model::canonical(pk)) {
        return Err(DocsError::Invalid(format!("a patch cannot change the partition key {}", c.partition_key)));
    }
    if model::depth(item) > MAX_DEPTH {
        return Err(DocsError::Invalid(format!("the item would nest deeper than {MAX_DEPTH} levels")));
    }
    Ok(())
}

/// Cosmos DB's rules for ids: 1-255 characters, none of `/ \ ? #`.
fn check_id(id: &str) -> Result<(), DocsError> {
    if id.is_empty() || id.chars().count() > 255 {
        return Err(DocsError::Invalid("an item's id is 1 to 255 characters".into()));
    }
    if id.chars().any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control()) {
        return Err(DocsError::Invalid(format!(
            "id \"{}\": ids cannot hold /, \\, ?, # or control characters",
            id.escape_debug()
        )));
    }
    Ok(())
}

fn check_match(if_match: Option<&str>, version: u64) -> Result<(), DocsError> {
    match if_match {
        Some("*") | None => Ok(()),
        Some(etag) if model::version_of(etag) == Some(version) => Ok(()),
        Some(etag) => Err(DocsError::Precondition(etag.to_owned())),
    }
}

fn batch_match(if_match: Option<&str>, version: Option<u64>) -> Result<(), DocsError> {
    match (if_match, version) {
        (None | Some("*"), _) => Ok(()),
        (Some(etag), Some(v)) if model::version_of(etag) == Some(v) => Ok(()),
        (Some(etag), _) => Err(DocsError::Precondition(etag.to_owned())),
    }
}

fn original_version(
    original: &BTreeMap<String, Option<Current>>,
    key: &str,
    container: &str,
    pk: &Value,
) -> Option<u64> {
    original
        .iter()
        .find(|(id, _)| model::item_key(container, pk, id) == key)
        .and_then(|(_, c)| c.as_ref().map(|c| c.version))
}

/// What a failed condition means to the client.
fn conflict(ns: &str, key: &str, expected: Expect, id: &str, pk: &Value) -> DocsError {
    match (ns, expected) {
        (ITEMS, Expect::Absent) => DocsError::Exists { id: id.to_owned(), pk: model::canonical(pk) },
        // `<container>/<pk>/<paths>/<values>`: name the paths.
        (UNIQUE, _) => DocsError::Unique(key.split('/').nth(2).map(model::dec).unwrap_or_default()),
        _ => DocsError::Precondition(String::new()),
    }
}

fn not_found(id: &str, pk: &Value) -> DocsError {
    DocsError::NotFound { id: id.to_owned(), pk: model::canonical(pk) }
}

fn contended() -> DocsError {
    DocsError::Busy
}

/// Before retry `attempt` of a write that lost a race.
async fn pause(attempt: u32) {
    if attempt > 0 {
        let ceiling = 1u64 << attempt.min(5); // up to 32 ms
        tokio::time::sleep(std::time::Duration::from_micros(rand::random_range(0..ceiling * 1000))).await;
    }
}

fn fingerprint(text: &str, params: &query::Params, pk: Option<&Value>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    for n in names {
        n.hash(&mut h);
        // Canonical: the same object parameter with its properties in another order is the same.
        let mut value = String::new();
        query::canonical_key(Some(&params[n]), &mut value);
        value.hash(&mut h);
    }
    pk.map(model::canonical).hash(&mut h);
    format!("{:016x}", h.finish())
}

fn encode_token(kind: &str, inner: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{inner}"))
}

fn decode_token(token: &str, kind: &str) -> Result<String, DocsError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    let text = String::from_utf8(bytes).map_err(|_| bad_token())?;
    text.strip_prefix(&format!("{kind}:")).map(str::to_owned).ok_or_else(bad_token)
}

fn bad_token() -> DocsError {
    DocsError::Continuation("the continuation token is not one this endpoint gave".into())
}
