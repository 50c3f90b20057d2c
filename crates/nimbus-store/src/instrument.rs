//! Prometheus metrics for every store call, whatever the backend: a decorator around the
//! backend that [`crate::open`] returns.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{BackendKind, Clock, Lease, Record, Result, Store, Write};

pub(crate) struct Instrumented<S> {
    inner: S,
    backend: &'static str,
}

impl<S: Store> Instrumented<S> {
    pub(crate) fn new(inner: S) -> Self {
        let backend = inner.kind().as_str();
        Self { inner, backend }
    }

    async fn observe<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        metrics::histogram!("nimbus_store_operation_duration_seconds", "backend" => self.backend, "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!("nimbus_store_errors_total", "backend" => self.backend, "op" => op, "kind" => e.kind())
                .increment(1);
        }
        result
    }
}

#[async_trait]
impl<S: Store> Store for Instrumented<S> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn clock(&self) -> &Clock {
        self.inner.clock()
    }

    fn location(&self) -> &str {
        self.inner.location()
    }

    async fn ping(&self) -> Result<()> {
        self.observe("ping", self.inner.ping()).await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        self.observe("get", self.inner.get(ns, key)).await
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Record>> {
        self.observe("get_many", self.inner.get_many(ns, keys)).await
    }

    async fn list(&self, ns: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        self.observe("list", self.inner.list(ns, prefix, after, limit)).await
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        self.observe("commit", self.inner.commit(writes)).await
    }

    async fn feed_position(&self) -> Result<u64> {
        self.observe("feed_position", self.inner.feed_position()).await
    }

    async fn changes(&self, ns: &str, prefix: &str, after: u64, limit: usize) -> Result<crate::Changes> {
        self.observe("changes", self.inner.changes(ns, prefix, after, limit)).await
    }

    async fn commit_ordered(&self, writes: Vec<Write>) -> Result<Vec<Option<u64>>> {
        self.observe("commit", self.inner.commit_ordered(writes)).await
    }

    async fn claim(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        self.observe("claim", self.inner.claim(name, holder, ttl)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        self.observe("renew", self.inner.renew(lease, ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.observe("release", self.inner.release(lease)).await
    }

    async fn add(&self, ns: &str, key: &str, delta: i64, max: Option<i64>) -> Result<Option<i64>> {
        self.observe("add", self.inner.add(ns, key, delta, max)).await
    }
}
