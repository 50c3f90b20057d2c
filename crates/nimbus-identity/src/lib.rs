//! The built-in OpenID Connect provider: users, sessions, signing keys, hosted sign-up and sign-in pages.
//!
//! Not built yet: this crate reserves the component's place in the workspace (see ARCHITECTURE.md).
//! It will depend on `nimbus-config` and `nimbus-store` only, and expose an axum `Router` plus a
//! small typed API that the `nimbus` binary wires into the one-port server.
