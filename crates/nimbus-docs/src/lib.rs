//! Partitioned JSON documents: the query language (parse, plan, evaluate), change feed, TTL and vector search.
//!
//! Not built yet: this crate reserves the component's place in the workspace (see ARCHITECTURE.md).
//! It will depend on `nimbus-config` and `nimbus-store` only, and expose an axum `Router` plus a
//! small typed API that the `nimbus` binary wires into the one-port server.

pub mod query;
