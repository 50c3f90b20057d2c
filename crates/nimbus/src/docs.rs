//! `nimbus docs query|get|put|rm|import|export`: items of the app's docs containers, read and
//! written directly in the store, as a node does (`Docs::new`, so no TTL purger runs here), with a
//! progress bar for imports and exports of files.
//!
//! A partition key value (`--pk`) is JSON (`"a"`, `5`, `true`, `null`), else the string itself:
//! the REST API's rule for `?pk=`.

use std::os::fd::{AsFd as _, BorrowedFd};
use std::path::Path;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_docs::{Docs, DocsError};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::Failure;
use crate::cli::{DocsArgs, DocsCommand};
use crate::keys::with_store;

/// Queries run in pages this large: the engine evaluates the whole query for every page anyway,
/// so few pages cost least.
const QUERY_PAGE: usize = 100_000;
/// The read feed's pages during an export (the REST API's largest).
const EXPORT_PAGE: usize = 1000;

pub fn run(args: DocsArgs) -> Result<(), Failure> {
    let json = args.store.json;
    with_store(&args.store, false, async |store, config| {
        let docs = Docs::new(store, nimbus_docs::from_manifest(&config.manifest.docs));
        match args.command {
            DocsCommand::Query { container, query, params, pk } => {
                let params = parameters(&params)?;
                let pk = pk.as_deref().map(partition_key);
                let mut all = Vec::new();
                let mut continuation: Option<String> = None;
                loop {
                    let page = docs
                        .query(&container, &query, &params, pk.as_ref(), continuation.as_deref(), QUERY_PAGE)
                        .await
                        .map_err(|e| explain(&container, e))?;
                    if json {
                        all.extend(page.items);
                    } else {
                        for item in &page.items {
                            println!("{item}");
                        }
                    }
                    match page.continuation {
                        Some(next) => continuation = Some(next),
                        None => break,
                    }
                }
                if json {
                    println!("{}", Value::Array(all));
                }
            }
            DocsCommand::Get { container, id, pk } => {
                let item = docs.read(&container, &id, &partition_key(&pk)).await.map_err(|e| explain(&container, e))?;
                match json {
                    true => println!("{item}"),
                    false => println!("{}", serde_json::to_string_pretty(&item)?),
                }
            }
            DocsCommand::Put { container, file } => {
                let name = display(&file);
                let mut text = Vec::new();
                open(&file).await?.read_to_end(&mut text).await.with_context(|| format!("cannot read {name}"))?;
                let item: Value = serde_json::from_slice(&text).map_err(|e| anyhow!("{name}: not valid JSON: {e}"))?;
                let (item, _) = docs.upsert(&container, item).await.map_err(|e| explain(&container, e))?;
                match json {
                    true => println!("{item}"),
                    false => println!(
                        "Wrote item \"{}\" to {container} (etag {}).",
                        item["id"].as_str().unwrap_or_default(),
                        item["_etag"].as_str().unwrap_or_default()
                    ),
                }
            }
            DocsCommand::Rm { container, id, pk } => {
                docs.delete(&container, &id, &partition_key(&pk), None).await.map_err(|e| explain(&container, e))?;
                match json {
                    true => println!("{}", serde_json::json!({ "deleted": id })),
                    false => println!("Deleted item \"{id}\" from {container}."),
                }
            }
            DocsCommand::Import { container, file, batch } => {
                import(&docs, &container, &file, usize::from(batch), json).await?;
            }
            DocsCommand::Export { container, file } => {
                export(&docs, &container, file.as_deref().filter(|f| f.as_os_str() != "-"), json).await?;
            }
        }
        Ok(())
    })
}

/// Upserts each line of a JSON Lines file, `batch` at a time; stops at the first line that cannot
/// be written (the lines already in flight finish), after saying how many items were written.
async fn import(docs: &Docs, container: &str, file: &Path, batch: usize, json: bool) -> Result<(), Failure> {
    docs.container(container).await.map_err(|e| explain(container, e))?;
    let name = display(file);
    let size = match file.as_os_str() == "-" {
        true => None,
        false => Some(tokio::fs::metadata(file).await.with_context(|| format!("cannot read {name}"))?.len()),
    };
    let bar = size.map_or_else(ProgressBar::hidden, bytes_bar);
    let mut reader = open(file).await?;
    let mut in_flight = FuturesOrdered::new();
    let (mut line_no, mut imported) = (0usize, 0usize);
    let mut reading = true;
    let mut failure: Option<(usize, String)> = None;
    loop {
        while reading && failure.is_none() && in_flight.len() < batch {
            let mut line = Vec::new();
            let n = reader.read_until(b'\n', &mut line).await.with_context(|| format!("cannot read {name}"))?;
            if n == 0 {
                reading = false;
                break;
            }
            line_no += 1;
            bar.inc(n as u64);
            if line.trim_ascii().is_empty() {
                continue;
            }
            let parsed = serde_json::from_slice::<Value>(&line);
            // A line that is not JSON stops the reading: nothing after it is written.
            reading = parsed.is_ok();
            let at = line_no;
            in_flight.push_back(async move {
                let item = parsed.map_err(|e| (at, json_error(&e)))?;
                docs.upsert(container, item).await.map_err(|e| (at, e.to_string()))
            });
        }
        match in_flight.next().await {
            None => break,
            Some(Ok(_)) => imported += 1,
            Some(Err(e)) => {
                failure.get_or_insert(e);
            }
        }
    }
    bar.finish_and_clear();
    let item_s = if imported == 1 { "item" } else { "items" };
    match (&failure, json) {
        (_, true) => {
            println!("{}", serde_json::json!({ "imported": imported, "failedLine": failure.as_ref().map(|f| f.0) }))
        }
        (None, false) => println!("Imported {imported} {item_s} into {container}."),
        (Some((line, _)), false) => println!("Imported {imported} {item_s} into {container}; stopped at line {line}."),
    }
    match failure {
        None => Ok(()),
        Some((line, message)) => Err(anyhow!("{name}:{line}: {message}").into()),
    }
}

/// Every item as a JSON line (with its `_etag` and `_lsn`, which an import ignores), through the
/// read feed in key order.
async fn export(docs: &Docs, container: &str, file: Option<&Path>, json: bool) -> Result<(), Failure> {
    docs.container(container).await.map_err(|e| explain(container, e))?;
    let (mut out, bar): (Box<dyn AsyncWrite + Unpin>, ProgressBar) = match file {
        Some(path) => {
            let handle =
                tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?;
            (Box::new(tokio::io::BufWriter::new(handle)), items_bar())
        }
        None => (Box::new(tokio::io::BufWriter::new(standard(std::io::stdout().as_fd())?)), ProgressBar::hidden()),
    };
    let mut continuation: Option<String> = None;
    let mut exported = 0usize;
    loop {
        let page = docs
            .read_feed(container, None, continuation.as_deref(), EXPORT_PAGE)
            .await
            .map_err(|e| explain(container, e))?;
        let mut chunk = Vec::new();
        for item in &page.items {
            serde_json::to_writer(&mut chunk, item)?;
            chunk.push(b'\n');
        }
        out.write_all(&chunk).await.context("cannot write the export")?;
        exported += page.items.len();
        bar.inc(page.items.len() as u64);
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    out.flush().await.context("cannot write the export")?;
    bar.finish_and_clear();
    if let Some(path) = file {
        match json {
            true => println!("{}", serde_json::json!({ "exported": exported })),
            false => println!("Exported {exported} items from {container} to {}.", path.display()),
        }
    }
    Ok(())
}

/// `--pk`: JSON scalars as themselves; anything else (a bare word, an object) is the string.
fn partition_key(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) if !v.is_object() && !v.is_array() => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// `--param @name=VALUE` (the `@` may be left out): VALUE as JSON, else the string.
fn parameters(raw: &[String]) -> anyhow::Result<nimbus_docs::query::Params> {
    let mut params = nimbus_docs::query::Params::new();
    for p in raw {
        let (name, value) = p.split_once('=').ok_or_else(|| anyhow!("--param {p}: write @NAME=VALUE"))?;
        let name = if name.starts_with('@') { name.to_owned() } else { format!("@{name}") };
        if name.len() < 2 {
            return Err(anyhow!("--param {p}: the parameter has no name"));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        params.insert(name, value);
    }
    Ok(params)
}

fn explain(container: &str, e: DocsError) -> anyhow::Error {
    match e {
        DocsError::NoContainer(_) => anyhow!(
            "no docs container \"{container}\": declare it in nimbus.toml ([docs.containers.{container}]) or \
             create it with PUT /_nimbus/docs/{container}"
        ),
        e => anyhow!("{container}: {e}"),
    }
}

/// serde_json's message without its "at line 1" (a JSON line is one line), with the column.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    format!("not valid JSON (column {}): {message}", e.column())
}

async fn open(file: &Path) -> anyhow::Result<Box<dyn AsyncBufRead + Unpin>> {
    if file.as_os_str() == "-" {
        return Ok(Box::new(tokio::io::BufReader::new(standard(std::io::stdin().as_fd())?)));
    }
    let handle = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
    Ok(Box::new(tokio::io::BufReader::with_capacity(256 * 1024, handle)) as Box<dyn AsyncBufRead + Unpin>)
}

/// Standard input or output as a tokio file (its reads and writes on the blocking pool), a copy of
/// the descriptor so dropping it closes nothing of ours.
fn standard(fd: BorrowedFd<'_>) -> anyhow::Result<tokio::fs::File> {
    let owned = fd.try_clone_to_owned().context("cannot use the standard streams")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(owned)))
}

fn display(file: &Path) -> String {
    match file.as_os_str() == "-" {
        true => "stdin".to_owned(),
        false => file.display().to_string(),
    }
}

fn bytes_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}") {
        bar.set_style(style);
    }
    bar
}

fn items_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {human_pos} items {per_sec}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partition_keys_and_parameters_read_json_else_strings() {
        assert_eq!(partition_key("u1"), json!("u1"));
        assert_eq!(partition_key("\"5\""), json!("5"));
        assert_eq!(partition_key("5"), json!(5));
        assert_eq!(partition_key("null"), Value::Null);
        assert_eq!(partition_key("{\"a\":1}"), json!("{\"a\":1}"));
        let params = parameters(&["@s=open".into(), "n=5".into(), "@tags=[\"a\"]".into(), "@e=".into()]).unwrap();
        assert_eq!(params["@s"], json!("open"));
        assert_eq!(params["@n"], json!(5));
        assert_eq!(params["@tags"], json!(["a"]));
        assert_eq!(params["@e"], json!(""));
        assert!(parameters(&["@s".into()]).is_err());
        assert!(parameters(&["@=1".into()]).is_err());
    }

    #[test]
    fn json_errors_name_the_column() {
        let e = serde_json::from_str::<Value>("{\"id\": x}").unwrap_err();
        assert_eq!(json_error(&e), "not valid JSON (column 8): expected value");
    }
}
