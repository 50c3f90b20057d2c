//! Mail the identity provider sends (e-mail verification, password reset, sign-up notices).
//! With `[identity.smtp]`, messages go out by SMTP (lettre) in the background: port 465 uses
//! implicit TLS, a relay on this machine (`localhost`, `127.0.0.1`) plain SMTP, anything else
//! STARTTLS, required. Without it (local development), and for any message SMTP fails to take,
//! they go into an outbox in the store (`outbox/…`), readable by `nimbus identity outbox` and
//! `GET /_nimbus/admin/outbox` for a week (then `purge.rs` deletes them: their links are dead).

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use nimbus_store::{Store, Write};
use serde::{Deserialize, Serialize};

use crate::Identity;

const NS: &str = "identity";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Unix seconds.
    pub created: u64,
}

/// An SMTP relay and the sender address.
pub(crate) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Smtp {
    pub fn new(section: &nimbus_config::SmtpSection) -> Result<Self, String> {
        let from: Mailbox = section.from.parse().map_err(|e| format!("[identity.smtp] from: {e}"))?;
        let local = matches!(section.host.as_str(), "localhost" | "127.0.0.1" | "::1");
        let builder = match (section.port, local) {
            (465, _) => AsyncSmtpTransport::<Tokio1Executor>::relay(&section.host),
            (_, true) => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&section.host)),
            (_, false) => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&section.host),
        }
        .map_err(|e| format!("[identity.smtp] host: {e}"))?;
        let mut builder = builder.port(section.port).timeout(Some(std::time::Duration::from_secs(20)));
        if let (Some(user), Some(password)) = (&section.username, &section.password) {
            builder = builder.credentials(Credentials::new(user.value().to_owned(), password.value().to_owned()));
        }
        Ok(Self { transport: builder.build(), from })
    }
}

/// Sends a message: by SMTP in the background when configured (the outbox keeps what it refuses),
/// else into the outbox.
pub(crate) async fn send(identity: &Identity, to: &str, subject: &str, body: &str) {
    let mail = Mail { to: to.to_owned(), subject: subject.to_owned(), body: body.to_owned(), created: identity.now() };
    let Some(smtp) = identity.smtp.clone() else {
        keep(identity.store.as_ref(), &mail, "no SMTP configured").await;
        return;
    };
    let store = identity.store.clone();
    identity.tasks.spawn_to_end(async move {
        let message = mail.to.parse::<Mailbox>().map_err(|e| e.to_string()).and_then(|to| {
            Message::builder()
                .from(smtp.from.clone())
                .to(to)
                .subject(mail.subject.clone())
                .body(mail.body.clone())
                .map_err(|e| e.to_string())
        });
        let sent = match message {
            Ok(message) => smtp.transport.send(message).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(_) => {
                metrics::counter!("nimbus_identity_mail_total", "outcome" => "sent").increment(1);
                tracing::info!(to = %mail.to, subject = %mail.subject, "mail sent");
            }
            Err(e) => {
                metrics::counter!("nimbus_identity_mail_total", "outcome" => "failed").increment(1);
                tracing::error!(to = %mail.to, error = %e, "SMTP did not take the message; it is in the outbox");
                keep(store.as_ref(), &mail, "SMTP failed").await;
            }
        }
    });
}

async fn keep(store: &dyn Store, mail: &Mail, why: &str) {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let key = format!("outbox/{millis:015}-{}", nimbus_api::hex(&rand::random::<[u8; 4]>()));
    let value = serde_json::to_vec(mail).expect("a mail serializes");
    match store.commit(vec![Write::put(NS, &key, value)]).await {
        Ok(_) => tracing::info!(to = %mail.to, subject = %mail.subject, "message in the outbox ({why})"),
        Err(e) => tracing::error!(error = %e, to = %mail.to, "cannot put a message in the outbox"),
    }
}

/// The outbox, oldest first.
pub async fn outbox(store: &dyn Store) -> Result<Vec<Mail>, nimbus_store::StoreError> {
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
