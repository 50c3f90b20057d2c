//! The queue engine on both backends (SQLite, and the PostgreSQL at `NIMBUS_TEST_POSTGRES_URL`):
//! delivery, visibility, dequeue counts, acknowledgement receipts, delays, poison and concurrency.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nimbus_store::testing::{Backend, TestDb};
use nimbus_triggers::queue::{Queues, poison_of};
use serde_json::json;

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Arc<Queues>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        test(Arc::new(Queues::new(db.open().await))).await;
        db.cleanup().await;
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn messages_are_delivered_once_within_their_visibility_and_again_after_it() {
    each_backend(|q| async move {
        for n in 0..3 {
            q.send("jobs", json!({"n": n}), Duration::ZERO).await.unwrap();
        }
        let first = q.receive("jobs", 2, Duration::from_millis(300)).await.unwrap();
        assert_eq!(first.iter().map(|m| m.data["n"].clone()).collect::<Vec<_>>().len(), 2);
        assert!(first.iter().all(|m| m.dequeue_count == 1));
        // The two received are hidden: only the third comes.
        let second = q.receive("jobs", 5, LONG).await.unwrap();
        assert_eq!(second.len(), 1);
        assert!(q.ack(&second[0].receipt).await.unwrap());
        assert!(q.receive("jobs", 5, LONG).await.unwrap().is_empty());
        // Not acknowledged within their visibility: delivered again, counted.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again = q.receive("jobs", 5, LONG).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|m| m.dequeue_count == 2));
        // The first delivery's receipts are stale: they cannot delete what the second holds.
        for m in &first {
            assert!(!q.ack(&m.receipt).await.unwrap());
        }
        for m in &again {
            assert!(q.ack(&m.receipt).await.unwrap());
        }
        assert_eq!(q.depth("jobs", 100).await.unwrap().0, 0);
    })
    .await;
}

#[tokio::test]
async fn a_delayed_message_waits_and_a_released_one_comes_back_after_its_back_off() {
    each_backend(|q| async move {
        q.send("later", json!("x"), Duration::from_millis(300)).await.unwrap();
        assert!(q.receive("later", 1, LONG).await.unwrap().is_empty());
        assert_eq!(q.depth("later", 10).await.unwrap().0, 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let got = q.receive("later", 1, LONG).await.unwrap();
        assert_eq!(got[0].data, json!("x"));
        assert!(q.release(&got[0], Duration::from_millis(200)).await.unwrap());
        assert!(q.receive("later", 1, LONG).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let back = q.receive("later", 1, LONG).await.unwrap();
        assert_eq!((back[0].id.as_str(), back[0].dequeue_count), (got[0].id.as_str(), 2));
    })
    .await;
}

#[tokio::test]
async fn poisoned_messages_move_to_the_poison_queue_and_can_be_received_there() {
    each_backend(|q| async move {
        q.send("work", json!({"bad": true}), Duration::ZERO).await.unwrap();
        let m = q.receive("work", 1, LONG).await.unwrap().remove(0);
        assert!(q.poison(&m).await.unwrap());
        assert!(q.receive("work", 1, Duration::ZERO).await.unwrap().is_empty());
        let poisoned = q.receive(&poison_of("work"), 1, LONG).await.unwrap();
        assert_eq!((poisoned[0].id.as_str(), &poisoned[0].data), (m.id.as_str(), &json!({"bad": true})));
        assert!(q.receive("bad name", 1, LONG).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn concurrent_receivers_never_share_a_message() {
    each_backend(|q| async move {
        for n in 0..60 {
            q.send("busy", json!(n), Duration::ZERO).await.unwrap();
        }
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = q.receive("busy", 4, LONG).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|m| m.data.as_i64().unwrap()));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: HashSet<i64> = all.iter().copied().collect();
        assert_eq!((all.len(), distinct.len()), (60, 60));
    })
    .await;
}
