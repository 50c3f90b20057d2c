//! Exact nearest-neighbour search without reading every item per query: each node keeps, per
//! container and vector path, the items' vectors as `f32`s in memory, brought up to date before
//! every search from the store's change feed (items written since) and the tombstones of deleted
//! items (namespace `docs-gone`, written in the same commit as the delete). A search scores every
//! cached vector (100k × 384 dimensions is ~40M multiply-adds) and hands the best candidates to the
//! query evaluator, which decides on the items themselves, so results are those of a full scan.
//!
//! The vectors of a set lie in one contiguous `Vec<f32>` with their norms precomputed; a refresh
//! takes the set's write lock only when the feed has something new, and searches score under its
//! read lock, side by side.
//!
//! Tombstones are purged after [`TOMBSTONE_LIFE`]; a cache not refreshed for half that long is
//! rebuilt from scratch, so it can never miss a delete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_store::Store;
use serde_json::Value;
use tokio::sync::RwLock;

use crate::model::{self, GONE, ITEMS};

pub use crate::query::Metric;

/// How long tombstones of deleted items are kept.
pub const TOMBSTONE_LIFE: Duration = Duration::from_secs(3600);

/// The items of one container and their vectors at one path, slot by slot.
#[derive(Default)]
struct Set {
    /// Item changes applied up to this version.
    through: u64,
    /// Tombstones applied up to this version.
    gone_through: u64,
    /// When both feeds were last read to their end (a quiet check needs no write lock).
    refreshed: Mutex<Option<Instant>>,
    /// The dimension of the set's vectors: the first one's. Items whose vector has another
    /// length, or that have none, have no comparable vector.
    dims: usize,
    slot_of: HashMap<String, usize>,
    keys: Vec<String>,
    versions: Vec<u64>,
    /// `dims` floats per slot.
    data: Vec<f32>,
    /// The slot's vector norm; `None` for an item without a comparable vector.
    norms: Vec<Option<f32>>,
}

impl Set {
    fn put(&mut self, key: &str, version: u64, vector: Option<Box<[f32]>>) {
        if self.dims == 0
            && let Some(v) = &vector
        {
            self.dims = v.len();
        }
        let vector = vector.filter(|v| v.len() == self.dims);
        let slot = match self.slot_of.get(key) {
            Some(&slot) => slot,
            None => {
                self.slot_of.insert(key.to_owned(), self.keys.len());
                self.keys.push(key.to_owned());
                self.versions.push(0);
                self.norms.push(None);
                self.data.resize(self.data.len() + self.dims, 0.0);
                self.keys.len() - 1
            }
        };
        self.versions[slot] = version;
        self.norms[slot] = vector.as_deref().map(norm);
        if let Some(v) = vector {
            self.data[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&v);
        }
    }

    /// Drops an item, moving the last slot into its place.
    fn remove(&mut self, key: &str, deleted_at: u64) {
        let Some(&slot) = self.slot_of.get(key) else { return };
        if self.versions[slot] >= deleted_at {
            return; // written again after the delete
        }
        let last = self.keys.len() - 1;
        self.slot_of.remove(key);
        self.keys.swap_remove(slot);
        self.versions.swap_remove(slot);
        self.norms.swap_remove(slot);
        if slot != last {
            self.slot_of.insert(self.keys[slot].clone(), slot);
            let (d, from) = (self.dims, last * self.dims);
            self.data.copy_within(from..from + d, slot * d);
        }
        self.data.truncate(last * self.dims);
    }
}

/// A node's vector sets, by container and vector path.
type Sets = HashMap<(String, Vec<String>), Arc<RwLock<Set>>>;

/// The vector sets of one node.
#[derive(Clone, Default)]
pub struct Vectors {
    sets: Arc<Mutex<Sets>>,
}

impl Vectors {
    /// The `want` best-scoring item keys of `container` for `query` by `metric` (highest first
    /// unless `ascending`), after bringing the container's vectors up to date. Items without a
    /// comparable vector (their score is undefined) come after all others, as the query sorts
    /// them; `None` when there are too few with one: the caller then evaluates the query over
    /// every item.
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
        refresh(&set, store, container, path).await?;
        let set = set.read().await;
        let n = set.keys.len();
        if n == 0 {
            return Ok(Some(Vec::new()));
        }
        if set.dims != query.len() {
            return Ok(None);
        }
        let query_norm = norm(query);
        let mut scored: Vec<(f32, usize)> = set
            .data
            .chunks_exact(set.dims)
            .enumerate()
            .filter_map(|(slot, vector)| Some((score(vector, set.norms[slot]?, query, query_norm, metric)?, slot)))
            .collect();
        if scored.len() < want.min(n) {
            return Ok(None);
        }
        let better = |a: &(f32, usize), b: &(f32, usize)| {
            let order = a.0.total_cmp(&b.0);
            if ascending { order } else { order.reverse() }
        };
        if scored.len() > want {
            scored.select_nth_unstable_by(want, better);
            scored.truncate(want);
        }
        scored.sort_by(better);
        Ok(Some(scored.into_iter().map(|(_, slot)| set.keys[slot].clone()).collect()))
    }
}

/// Applies what the feed and the tombstones say happened since the set's last refresh; takes the
/// write lock only when there is something to apply.
async fn refresh(
    set: &RwLock<Set>,
    store: &Arc<dyn Store>,
    container: &str,
    path: &[String],
) -> Result<(), nimbus_store::StoreError> {
    let prefix = format!("{container}/");
    let stale = |s: &Set| {
        s.refreshed.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() > TOMBSTONE_LIFE / 2)
    };
    {
        let s = set.read().await;
        if !stale(&s) {
            let items = store.changes(ITEMS, &prefix, s.through, 1).await?;
            let gone = store.changes(GONE, &prefix, s.gone_through, 1).await?;
            if items.caught_up && gone.caught_up && items.records.is_empty() && gone.records.is_empty() {
                // Nothing new (at most one row of another container, which the next write skips).
                if items.through == s.through && gone.through == s.gone_through {
                    *s.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    return Ok(());
                }
            }
        }
    }
    let mut s = set.write().await;
    if stale(&s) {
        *s = Set::default();
    }
    loop {
        let page = store.changes(ITEMS, &prefix, s.through, 2000).await?;
        for record in &page.records {
            let vector = serde_json::from_slice::<Value>(&record.value)
                .ok()
                .and_then(|item| model::lookup(&item, path).and_then(as_vector));
            s.put(&record.key, record.version, vector);
        }
        s.through = page.through;
        if page.caught_up {
            break;
        }
    }
    loop {
        let page = store.changes(GONE, &prefix, s.gone_through, 2000).await?;
        for record in &page.records {
            s.remove(&record.key, record.version);
        }
        s.gone_through = page.through;
        if page.caught_up {
            break;
        }
    }
    *s.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    metrics::gauge!("nimbus_docs_vector_index_items", "container" => container.to_owned()).set(s.keys.len() as f64);
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
    dot(v, v).sqrt()
}

/// With eight running sums, so the compiler can keep them in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn score(v: &[f32], v_norm: f32, q: &[f32], q_norm: f32, metric: Metric) -> Option<f32> {
    match metric {
        Metric::DotProduct => Some(dot(v, q)),
        Metric::Cosine => {
            let n = v_norm * q_norm;
            (n > 0.0).then(|| dot(v, q) / n)
        }
        // |v - q|² = |v|² + |q|² - 2 v·q
        Metric::Euclidean => Some((v_norm * v_norm + q_norm * q_norm - 2.0 * dot(v, q)).max(0.0).sqrt()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_like_the_evaluator() {
        let q = [1.0, 0.0];
        let s = |v: [f32; 2], m| score(&v, norm(&v), &q, 1.0, m);
        assert_eq!(s([2.0, 0.0], Metric::Cosine), Some(1.0));
        assert_eq!(s([0.0, 3.0], Metric::Cosine), Some(0.0));
        assert_eq!(s([0.0, 0.0], Metric::Cosine), None);
        assert_eq!(s([2.0, 5.0], Metric::DotProduct), Some(2.0));
        assert!((s([4.0, 3.0], Metric::Euclidean).unwrap() - 18f32.sqrt()).abs() < 1e-5);
        let long: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&long, &long), (0..19).map(|i| (i * i) as f32).sum::<f32>());
        assert!(as_vector(&serde_json::json!([1, "x"])).is_none());
    }

    #[test]
    fn slots_follow_puts_and_removes() {
        let mut set = Set::default();
        set.put("a", 1, Some(vec![1.0, 0.0].into()));
        set.put("b", 2, Some(vec![0.0, 1.0].into()));
        set.put("c", 3, Some(vec![1.0, 2.0, 3.0].into()));
        assert_eq!(set.norms[2], None, "another dimension is no comparable vector");
        set.remove("a", 4);
        assert_eq!(set.keys.len(), 2);
        assert_eq!(&set.data[set.slot_of["c"] * 2..][..2], &[0.0, 0.0]);
        assert_eq!(&set.data[set.slot_of["b"] * 2..][..2], &[0.0, 1.0]);
        set.put("b", 6, Some(vec![3.0, 4.0].into()));
        set.remove("b", 5);
        assert_eq!(set.norms[set.slot_of["b"]], Some(5.0), "written again after the delete");
    }
}
