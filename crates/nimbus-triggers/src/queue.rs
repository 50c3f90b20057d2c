//! The built-in durable queue (issue 17), on the store so that messages survive restarts and every
//! node on one database consumes one queue: at-least-once delivery with a visibility timeout, a
//! dequeue count on each message, and a poison queue (`<name>-poison`) for messages that failed too
//! often, from which they can be re-queued.
//!
//! A message is one record keyed `<queue>/<visible at, ms, hex>/<id>`, so a queue's records sort by
//! when they may be delivered. Receiving a message moves its record, in one conditional commit, to
//! the time it becomes visible again (now + the visibility timeout), with its dequeue count raised:
//! two receivers can never both take it, and a receiver that dies leaves it to reappear when the
//! timeout lapses. Acknowledging deletes the record if it is still the one received (the receipt: its
//! key and version), so a consumer that took longer than its visibility timeout cannot delete the
//! message another consumer now holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::Notify;

use nimbus_store::{Expect, Store, StoreError, Write};
use serde_json::{Value, json};

const NAMESPACE: &str = "queue";
/// Records read at a time when counting a queue.
const DEPTH_PAGE: usize = 100;
/// Records read per message asked for when looking for visible ones (some are taken by others).
const OVERREAD: usize = 4;

/// A queue name: 1-63 lowercase letters, digits and `-` (`<name>-poison` must fit the same rule
/// in 70).
pub fn is_queue_name(name: &str) -> bool {
    (1..=70).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// The poison queue of `queue`.
pub fn poison_of(queue: &str) -> String {
    format!("{queue}-poison")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    pub queue: String,
    pub data: Value,
    /// Deliveries so far, this one included.
    pub dequeue_count: u32,
    /// When it was first sent (ms since the epoch).
    pub inserted_ms: u64,
    pub receipt: Receipt,
}

/// Proof of one delivery: the record as it was moved by that delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    key: String,
    version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("\"{0}\" is not a queue name (1-63 lowercase letters, digits and '-')")]
    Name(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Queues {
    store: Arc<dyn Store>,
    /// Wakes this node's consumer of a queue when a message is sent here (others poll).
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Queues {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, wakers: Mutex::new(HashMap::new()) }
    }

    /// What a consumer of `queue` on this node waits on between polls.
    pub fn waker(&self, queue: &str) -> Arc<Notify> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).entry(queue.to_owned()).or_default().clone()
    }

    fn now_ms(&self) -> u64 {
        self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// Sends `data`, visible after `delay`; its id.
    pub async fn send(&self, queue: &str, data: Value, delay: Duration) -> Result<String, QueueError> {
        check(queue)?;
        let now = self.now_ms();
        let id = format!("{:032x}", rand::random::<u128>());
        let value = json!({"data": data, "dequeue_count": 0, "inserted_ms": now}).to_string();
        let key = key(queue, now + delay.as_millis() as u64, &id);
        self.store.commit(vec![Write::put(NAMESPACE, &key, value).expect(Expect::Absent)]).await?;
        metrics::counter!("nimbus_queue_messages_total", "queue" => queue.to_owned(), "outcome" => "sent").increment(1);
        if delay.is_zero() {
            self.waker(queue).notify_one();
        }
        Ok(id)
    }

    /// Up to `max` visible messages, each hidden from other receivers for `visibility`.
    pub async fn receive(&self, queue: &str, max: usize, visibility: Duration) -> Result<Vec<Message>, QueueError> {
        check(queue)?;
        let now = self.now_ms();
        let prefix = format!("{queue}/");
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        while out.len() < max {
            let page = self.store.list(NAMESPACE, &prefix, after.as_deref(), (max - out.len()) * OVERREAD).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            let full = page.len() == (max - out.len()) * OVERREAD;
            for record in page {
                let Some((visible_at, id)) = parse_key(queue, &record.key) else { continue };
                if visible_at > now {
                    return Ok(out); // sorted by visibility: none after it is visible
                }
                let mut value: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
                let count = value["dequeue_count"].as_u64().unwrap_or(0) as u32 + 1;
                value["dequeue_count"] = json!(count);
                let moved = key(queue, now + visibility.as_millis() as u64, id);
                let writes = vec![
                    Write::delete(NAMESPACE, &record.key).expect(Expect::Version(record.version)),
                    Write::put(NAMESPACE, &moved, value.to_string()).expect(Expect::Absent),
                ];
                match self.store.commit(writes).await {
                    Ok(versions) => {
                        let version = versions.get(1).copied().flatten().unwrap_or_default();
                        out.push(Message {
                            id: id.to_owned(),
                            queue: queue.to_owned(),
                            data: value["data"].take(),
                            dequeue_count: count,
                            inserted_ms: value["inserted_ms"].as_u64().unwrap_or(0),
                            receipt: Receipt { key: moved, version },
                        });
                        if out.len() == max {
                            return Ok(out);
                        }
                    }
                    Err(StoreError::Conflict { .. }) => {} // another receiver took it
                    Err(e) => return Err(e.into()),
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes a delivered message; `false` when it is no longer this delivery's (its visibility
    /// lapsed and it was delivered again, or it was deleted).
    pub async fn ack(&self, receipt: &Receipt) -> Result<bool, QueueError> {
        let write = Write::delete(NAMESPACE, &receipt.key).expect(Expect::Version(receipt.version));
        match self.store.commit(vec![write]).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a delivered message visible again after `delay` (a retry's back-off); `false` when it
    /// is no longer this delivery's.
    pub async fn release(&self, message: &Message, delay: Duration) -> Result<bool, QueueError> {
        let value =
            json!({"data": message.data, "dequeue_count": message.dequeue_count, "inserted_ms": message.inserted_ms});
        let target = key(&message.queue, self.now_ms() + delay.as_millis() as u64, &message.id);
        self.moved(&message.receipt, target, value).await
    }

    /// Moves a delivered message to its queue's poison queue (visible there at once, its dequeue
    /// count kept); `false` when it is no longer this delivery's.
    pub async fn poison(&self, message: &Message) -> Result<bool, QueueError> {
        let value =
            json!({"data": message.data, "dequeue_count": message.dequeue_count, "inserted_ms": message.inserted_ms});
        let target = key(&poison_of(&message.queue), self.now_ms(), &message.id);
        self.moved(&message.receipt, target, value).await
    }

    async fn moved(&self, receipt: &Receipt, target: String, value: Value) -> Result<bool, QueueError> {
        let writes = vec![
            Write::delete(NAMESPACE, &receipt.key).expect(Expect::Version(receipt.version)),
            Write::put(NAMESPACE, &target, value.to_string()).expect(Expect::Absent),
        ];
        match self.store.commit(writes).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every message of `queue`'s poison queue back to `queue`, its dequeue count reset; how
    /// many.
    pub async fn requeue(&self, queue: &str) -> Result<usize, QueueError> {
        check(queue)?;
        let poison = poison_of(queue);
        let mut moved = 0;
        loop {
            let batch = self.receive(&poison, 100, Duration::from_secs(60)).await?;
            if batch.is_empty() {
                break;
            }
            for message in &batch {
                let value = json!({"data": message.data, "dequeue_count": 0, "inserted_ms": message.inserted_ms});
                if self.moved(&message.receipt, key(queue, self.now_ms(), &message.id), value).await? {
                    moved += 1;
                }
            }
        }
        if moved > 0 {
            self.waker(queue).notify_one();
        }
        Ok(moved)
    }

    /// Messages waiting in `queue` (visible or not), at most `limit` counted, and the age of the
    /// oldest (since first sent). Read a page at a time: messages may be large.
    pub async fn depth(&self, queue: &str, limit: usize) -> Result<(usize, Option<Duration>), QueueError> {
        check(queue)?;
        let prefix = format!("{queue}/");
        let (mut count, mut oldest, mut after) = (0, None::<u64>, None::<String>);
        while count < limit {
            let page = self.store.list(NAMESPACE, &prefix, after.as_deref(), DEPTH_PAGE.min(limit - count)).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            count += page.len();
            let inserted =
                page.iter().filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok()?["inserted_ms"].as_u64());
            oldest = inserted.chain(oldest).min();
            if page.len() < DEPTH_PAGE {
                break;
            }
        }
        Ok((count, oldest.map(|t| Duration::from_millis(self.now_ms().saturating_sub(t)))))
    }
}

fn check(queue: &str) -> Result<(), QueueError> {
    if is_queue_name(queue) { Ok(()) } else { Err(QueueError::Name(queue.to_owned())) }
}

fn key(queue: &str, visible_at_ms: u64, id: &str) -> String {
    format!("{queue}/{visible_at_ms:016x}/{id}")
}

fn parse_key<'a>(queue: &str, key: &'a str) -> Option<(u64, &'a str)> {
    let rest = key.strip_prefix(queue)?.strip_prefix('/')?;
    let (time, id) = rest.split_once('/')?;
    Some((u64::from_str_radix(time, 16).ok()?, id))
}
