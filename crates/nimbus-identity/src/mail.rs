//! Mail the identity provider sends (e-mail verification, password reset, sign-up notices). Until
//! SMTP delivery is built, every message goes into an outbox in the store (`outbox/…`), readable
//! by `nimbus identity outbox` and `GET /_nimbus/admin/outbox`, so local development needs no
//! mail server. A configured `[identity.smtp]` is reported at start as not yet used.

use nimbus_store::Write;
use serde::{Deserialize, Serialize};

use crate::Identity;
use crate::keys::now;

const NS: &str = "identity";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Unix seconds.
    pub created: u64,
}

pub(crate) async fn send(identity: &Identity, to: &str, subject: &str, body: &str) {
    let mail = Mail { to: to.to_owned(), subject: subject.to_owned(), body: body.to_owned(), created: now() };
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let key = format!("outbox/{millis:015}-{}", nimbus_api::hex(&rand::random::<[u8; 4]>()));
    let value = serde_json::to_vec(&mail).expect("a mail serializes");
    if let Err(e) = identity.store.commit(vec![Write::put(NS, &key, value)]).await {
        tracing::error!(error = %e, to = %to, "cannot put a message in the outbox");
    } else {
        tracing::info!(to = %to, subject = %subject, "message in the outbox (no SMTP delivery yet)");
    }
}

/// The outbox, oldest first.
pub async fn outbox(store: &dyn nimbus_store::Store) -> Result<Vec<Mail>, nimbus_store::StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(NS, "outbox/", after.as_deref(), 500).await?;
        let done = page.len() < 500;
        after = page.last().map(|r| r.key.clone());
        out.extend(page.iter().filter_map(|r| serde_json::from_slice::<Mail>(&r.value).ok()));
        if done {
            return Ok(out);
        }
    }
}
