//! The queue trigger: one consumer per queue function on each node. It receives up to `batch_size`
//! messages and runs an invocation for each, at most `batch_size` at once (as Azure's `batchSize`);
//! a success deletes the message, a failure makes it visible again after a back-off, and a message
//! that failed `MAX_DEQUEUE` times moves to the poison queue. Idle, it waits for a message sent on
//! this node or polls (other nodes' sends), backing off to `POLL_MAX`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use nimbus_api::{Call, Invoker};
use serde_json::json;
use tokio::task::JoinSet;

use crate::queue::{Message, Queues};

/// Deliveries of a message before it goes to the poison queue (Azure's `maxDequeueCount`).
pub(crate) const MAX_DEQUEUE: u32 = 5;
/// How long a delivered message stays hidden; its invocation may run a little less.
pub(crate) const VISIBILITY: Duration = Duration::from_secs(600);
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);
/// The back-off after a message's first failure; it doubles with each.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest back-off before a failed message is visible again.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(crate) struct Consumer {
    pub function: String,
    pub queue: String,
    pub batch_size: usize,
    pub queues: Arc<Queues>,
    pub invoker: Invoker,
}

impl Consumer {
    pub async fn run(self) {
        let this = Arc::new(self);
        let waker = this.queues.waker(&this.queue);
        let mut running: JoinSet<()> = JoinSet::new();
        let mut idle = POLL_MIN;
        loop {
            while running.try_join_next().is_some() {}
            let room = this.batch_size.saturating_sub(running.len());
            if room == 0 {
                running.join_next().await;
                continue;
            }
            match this.queues.receive(&this.queue, room, VISIBILITY).await {
                Ok(messages) if !messages.is_empty() => {
                    idle = POLL_MIN;
                    for message in messages {
                        let this = this.clone();
                        running.spawn(async move { this.handle(message).await });
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = waker.notified() => idle = POLL_MIN,
                        _ = tokio::time::sleep(idle) => idle = (idle * 2).min(POLL_MAX),
                        Some(_) = running.join_next(), if !running.is_empty() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %this.queue, error = %e, "cannot receive queue messages");
                    tokio::time::sleep(POLL_MAX).await;
                }
            }
        }
    }

    async fn handle(&self, message: Message) {
        if message.dequeue_count == 1 {
            let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let lag = Duration::from_millis(now.saturating_sub(message.inserted_ms));
            metrics::histogram!("nimbus_trigger_lag_seconds", "trigger" => "queue").record(lag.as_secs_f64());
        }
        let mut call = Call::new(self.function.clone(), message.data.clone());
        call.timeout = Some(VISIBILITY - Duration::from_secs(10));
        for (k, v) in [
            ("id", json!(message.id)),
            ("dequeue_count", json!(message.dequeue_count)),
            ("inserted_ms", json!(message.inserted_ms)),
        ] {
            call.delivery.insert(k.into(), v);
        }
        let count = |outcome: &'static str| {
            metrics::counter!("nimbus_queue_messages_total", "queue" => self.queue.clone(), "outcome" => outcome)
                .increment(1);
        };
        let settled = match self.invoker.invoke(call).await {
            Ok(_) => {
                count("ok");
                self.queues.ack(&message.receipt).await
            }
            Err(e) if message.dequeue_count >= MAX_DEQUEUE => {
                tracing::warn!(queue = %self.queue, id = %message.id, error = %e, "a queue message failed its last attempt: moved to the poison queue");
                count("poison");
                self.queues.poison(&message).await
            }
            Err(e) => {
                tracing::info!(queue = %self.queue, id = %message.id, attempt = message.dequeue_count, error = %e, "a queue message failed; it is tried again");
                count("retry");
                // 250 ms, then doubling: 3.75 s over Azure's default 5 deliveries.
                let backoff =
                    (BACKOFF_FIRST * 2u32.pow(message.dequeue_count.saturating_sub(1).min(16))).min(BACKOFF_MAX);
                self.queues.release(&message, backoff).await
            }
        };
        match settled {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(queue = %self.queue, id = %message.id, "a queue message was settled after its visibility lapsed (it was delivered again)")
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue, id = %message.id, error = %e, "cannot settle a queue message (it will be delivered again)")
            }
        }
    }
}
