//! `nimbus keys create|list|show|revoke` (API keys) and `nimbus identity rotate-key` (signing keys):
//! read and written in the app's store directly, so the commands work whether or not a node is
//! running (nodes read API keys from the store per request, and reread signing keys every 30 s).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use nimbus_gateway::{ApiKeyInfo, ApiKeys, KeyError};

use crate::Failure;
use crate::cli::{ClientsCommand, IdentityArgs, IdentityCommand, KeysArgs, KeysCommand, StoreArgs};

/// Loads the app named by `args` (refusing one without `[identity]` when `identity` is set), opens
/// its store and runs `work` on a small runtime.
pub(crate) fn with_store<Work, Done>(args: &StoreArgs, identity: bool, work: Work) -> Result<(), Failure>
where
    Work: FnOnce(Arc<dyn nimbus_store::Store>, nimbus_config::AppConfig) -> Done,
    Done: Future<Output = Result<(), Failure>>,
{
    let config = nimbus_config::load(&args.app).map_err(Failure::Config)?;
    if identity && config.manifest.identity.is_none() {
        return Err(anyhow::anyhow!("the app has no [identity] section; add one to run the identity provider").into());
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        let store = open_store(args, &config).await?;
        work(store, config).await
    })
}

pub fn identity(args: IdentityArgs) -> Result<(), Failure> {
    with_store(&args.store, true, async |store, config| {
        match args.command {
            IdentityCommand::Clients { command } => clients(store.as_ref(), command, args.store.json).await?,
            IdentityCommand::Outbox => {
                let mail = nimbus_identity::outbox(store.as_ref()).await?;
                if args.store.json {
                    println!("{}", serde_json::to_string(&mail)?);
                } else if mail.is_empty() {
                    println!("the outbox is empty");
                } else {
                    for m in &mail {
                        println!("── {} · to {} · {}\n{}", time(Some(m.created)), m.to, m.subject, m.body);
                    }
                }
            }
            IdentityCommand::RotateKey => {
                let kid = nimbus_identity::rotate_key(&config.manifest, store).await?;
                if args.store.json {
                    println!("{}", serde_json::json!({"kid": kid}));
                } else {
                    println!("New signing key {kid}; running nodes sign with it within 30 s.");
                    println!("The old keys stay in the JWKS until the tokens they signed have expired.");
                }
            }
        }
        Ok(())
    })
}

pub fn run(args: KeysArgs) -> Result<(), Failure> {
    with_store(&args.store, false, async |store, _| {
        let keys = ApiKeys::new(store);
        let json = args.store.json;
        match args.command {
            KeysCommand::Create { name, routes, expires } => {
                let lifetime = match expires {
                    Some(text) => Some(
                        text.parse::<nimbus_config::Duration>().map_err(|e| anyhow::anyhow!("--expires: {e}"))?.get(),
                    ),
                    None => None,
                };
                let (info, key) = keys.create(&name, routes, lifetime).await.map_err(explain)?;
                if json {
                    let mut out = serde_json::to_value(&info)?;
                    out["key"] = key.into();
                    println!("{out}");
                } else {
                    println!("Created API key \"{}\" (id {}).\n\n  {key}\n", info.name, info.id);
                    println!("Keep it now: it is shown only once. Clients send it in the `x-api-key` header.");
                }
            }
            KeysCommand::List => {
                let list = keys.list().await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::to_string(&list)?);
                } else if list.is_empty() {
                    println!("no API keys");
                } else {
                    println!(
                        "{:<16}  {:<8}  {:<20}  {:<20}  {:<20}  NAME",
                        "ID", "STATUS", "CREATED", "EXPIRES", "ROUTES"
                    );
                    for k in &list {
                        println!(
                            "{:<16}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
                            k.id,
                            status(k),
                            time(Some(k.created)),
                            time(k.expires),
                            if k.routes.is_empty() { "all".to_owned() } else { k.routes.join(",") },
                            k.name
                        );
                    }
                }
            }
            KeysCommand::Show { id } => print(&keys.get(&id).await.map_err(explain)?, json)?,
            KeysCommand::Revoke { id } => {
                let info = keys.revoke(&id).await.map_err(explain)?;
                if json {
                    print(&info, true)?;
                } else {
                    println!("Revoked API key \"{}\" (id {}).", info.name, info.id);
                }
            }
        }
        Ok(())
    })
}

async fn clients(store: &dyn nimbus_store::Store, command: ClientsCommand, json: bool) -> anyhow::Result<()> {
    use nimbus_identity::clients;
    let explain = |e: clients::ClientError| anyhow::anyhow!("{e}");
    match command {
        ClientsCommand::Create { id, public, redirect_uris, scopes, grant_types } => {
            let info = clients::ClientInfo { id, public, redirect_uris, scopes, grant_types, created: 0 };
            let (info, secret) = clients::create(store, info).await.map_err(explain)?;
            if json {
                let mut out = serde_json::to_value(&info)?;
                out["secret"] = secret.clone().into();
                println!("{out}");
            } else {
                println!(
                    "Registered client \"{}\" ({}).",
                    info.id,
                    if info.public { "public" } else { "confidential" }
                );
                if let Some(secret) = secret {
                    println!("\n  secret: {secret}\n\nKeep it now: it is shown only once.");
                }
            }
        }
        ClientsCommand::List => {
            let list = clients::list(store).await.map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                println!("no registered clients (the manifest's [[identity.clients]] are not listed)");
            } else {
                for c in &list {
                    let kind = if c.public { "public" } else { "confidential" };
                    println!("{:<24}  {kind:<12}  {}", c.id, c.redirect_uris.join(" "));
                }
            }
        }
        ClientsCommand::Delete { id } => {
            clients::delete(store, &id).await.map_err(explain)?;
            println!("Deleted client \"{id}\".");
        }
    }
    Ok(())
}

/// Opens the store a node of this app uses, without taking the node's lock (the store itself is
/// safe to share: SQLite in WAL mode, or PostgreSQL).
pub(crate) async fn open_store(
    args: &StoreArgs,
    config: &nimbus_config::AppConfig,
) -> anyhow::Result<std::sync::Arc<dyn nimbus_store::Store>> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| config.dir.join(".nimbus"));
    crate::data_dir::prepare(&data_dir)?;
    let url = args.store.clone().or_else(|| config.manifest.store.url.as_ref().map(|u| u.url()));
    Ok(nimbus_store::open(url.as_deref().unwrap_or("sqlite"), &data_dir, &crate::up::migrations()).await?)
}

fn explain(e: KeyError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn print(info: &ApiKeyInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(info)?);
    } else {
        println!("id       {}", info.id);
        println!("name     {}", info.name);
        println!("status   {}", status(info));
        println!("created  {}", time(Some(info.created)));
        println!("expires  {}", time(info.expires));
        println!(
            "routes   {}",
            if info.routes.is_empty() { "all api_key routes".to_owned() } else { info.routes.join(", ") }
        );
    }
    Ok(())
}

fn status(k: &ApiKeyInfo) -> &'static str {
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match (k.revoked, k.expires) {
        (Some(_), _) => "revoked",
        (None, Some(at)) if at <= now => "expired",
        _ => "active",
    }
}

pub(crate) fn time(secs: Option<u64>) -> String {
    match secs {
        Some(s) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        None => "never".to_owned(),
    }
}
