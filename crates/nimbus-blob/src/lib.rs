//! Object store (local directory, S3-compatible, Azure Blob) and the static website served from the `$web` container.
//!
//! Not built yet: this crate reserves the component's place in the workspace (see ARCHITECTURE.md).
//! It will depend on `nimbus-config` and `nimbus-store` only, and expose an axum `Router` plus a
//! small typed API that the `nimbus` binary wires into the one-port server.
