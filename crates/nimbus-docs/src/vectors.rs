//! Exact nearest-neighbour search without reading every item per query: each node keeps, per
//! container and vector path, the items' vectors as `f32`s in memory, brought up to date before
//! every search from the store's change feed (items written since) and the tombstones of deleted
//! items (namespace `docs-gone`, written in the same commit as the delete). A search scores every
//! cached vector (100k × 384 dimensions is ~40M multiply-adds) and hands the best candidates to the
//! query evaluator, which decides on the items themselves, so results are those of a full scan.
//!
//! Tombstones are purged after [`TOMBSTONE_LIFE`]; a cache not refreshed for half that long is
//! rebuilt from scratch, so it can never miss a delete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_store::Store;
use serde_json::Value;

use crate::model::{self, GONE, ITEMS};

/// How long tombstones of deleted items are kept.
pub const TOMBSTONE_LIFE: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Set {
    /// Item changes applied up to this version.
    through: u64,
    /// Tombstones applied up to this version.
    gone_through: u64,
    refreshed: Option<Instant>,
    /// Item key → its version and vector.
    vectors: HashMap<String, Entry>,
}

/// An item's version, and its vector if it has one.
type Entry = (u64, Option<Box<[f32]>>);

/// A node's vector sets, by container and vector path.
type Sets = HashMap<(String, Vec<String>), Arc<tokio::sync::Mutex<Set>>>;

/// The vector sets of one node.
#[derive(Clone, Default)]
pub struct Vectors {
    sets: Arc<Mutex<Sets>>,
}

pub use crate::query::Metric;

impl Vectors {
    /// The `want` best-scoring item keys of `container` for `query` by `metric` (highest first
    /// unless `ascending`), after bringing the container's vectors up to date. `None` when items
    /// without a comparable vector would come first (their score is undefined, which sorts lowest)
    /// or there are too few with one: the caller then evaluates the query over every item.
    #[allow(clippy::too_many_arguments)]
    pub async fn nearest(
        &self,
        store: &Arc<dyn Store>,
        container: &str,
        path: &[String],
        query: &[f32],
        metric: Metric,
        ascending: bool,
        want: usize,
    ) -> Result<Option<Vec<String>>, nimbus_store::StoreError> {
        let set = {
            let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            sets.entry((container.to_owned(), path.to_vec())).or_default().clone()
        };
        let mut set = set.lock().await;
        refresh(&mut set, store, container, path).await?;
        let query_norm = norm(query);
        let mut scored: Vec<(f32, &String)> = Vec::with_capacity(set.vectors.len());
        for (key, (_, vector)) in &set.vectors {
            match vector.as_deref().filter(|v| v.len() == query.len()).and_then(|v| score(v, query, query_norm, metric))
            {
                Some(s) => scored.push((s, key)),
                None if ascending => return Ok(None),
                None => {}
            }
        }
        if scored.len() < want.min(set.vectors.len()) {
            return Ok(None);
        }
        let better = |a: &(f32, &String), b: &(f32, &String)| {
            let order = a.0.total_cmp(&b.0);
            if ascending { order } else { order.reverse() }
        };
        if scored.len() > want {
            scored.select_nth_unstable_by(want, better);
            scored.truncate(want);
        }
        scored.sort_by(better);
        Ok(Some(scored.into_iter().map(|(_, k)| k.clone()).collect()))
    }
}

async fn refresh(
    set: &mut Set,
    store: &Arc<dyn Store>,
    container: &str,
    path: &[String],
) -> Result<(), nimbus_store::StoreError> {
    if set.refreshed.is_some_and(|at| at.elapsed() > TOMBSTONE_LIFE / 2) {
        *set = Set::default();
    }
    let prefix = format!("{container}/");
    loop {
        let page = store.changes(ITEMS, &prefix, set.through, 2000).await?;
        for record in &page.records {
            let vector = serde_json::from_slice::<Value>(&record.value)
                .ok()
                .and_then(|item| model::lookup(&item, path).and_then(as_vector));
            set.vectors.insert(record.key.clone(), (record.version, vector));
        }
        set.through = page.through;
        if page.caught_up {
            break;
        }
    }
    loop {
        let page = store.changes(GONE, &prefix, set.gone_through, 2000).await?;
        for record in &page.records {
            if set.vectors.get(&record.key).is_some_and(|(v, _)| *v < record.version) {
                set.vectors.remove(&record.key);
            }
        }
        set.gone_through = page.through;
        if page.caught_up {
            break;
        }
    }
    set.refreshed = Some(Instant::now());
    metrics::gauge!("nimbus_docs_vector_index_items", "container" => container.to_owned())
        .set(set.vectors.len() as f64);
    Ok(())
}

/// A JSON array of numbers as `f32`s.
pub fn as_vector(value: &Value) -> Option<Box<[f32]>> {
    let items = value.as_array()?;
    if items.is_empty() {
        return None;
    }
    items.iter().map(|v| v.as_f64().map(|f| f as f32)).collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn score(v: &[f32], q: &[f32], q_norm: f32, metric: Metric) -> Option<f32> {
    let dot: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
    match metric {
        Metric::DotProduct => Some(dot),
        Metric::Cosine => {
            let n = norm(v) * q_norm;
            (n > 0.0).then(|| dot / n)
        }
        Metric::Euclidean => Some(v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_like_the_evaluator() {
        let q = [1.0, 0.0];
        assert_eq!(score(&[2.0, 0.0], &q, 1.0, Metric::Cosine), Some(1.0));
        assert_eq!(score(&[0.0, 3.0], &q, 1.0, Metric::Cosine), Some(0.0));
        assert_eq!(score(&[0.0, 0.0], &q, 1.0, Metric::Cosine), None);
        assert_eq!(score(&[2.0, 5.0], &q, 1.0, Metric::DotProduct), Some(2.0));
        assert_eq!(score(&[4.0, 3.0], &[1.0, 0.0], 1.0, Metric::Euclidean), Some(18f32.sqrt()));
        assert!(as_vector(&serde_json::json!([1, "x"])).is_none());
    }
}
