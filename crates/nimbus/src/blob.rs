//! `nimbus blob ls|put|get|rm|cp`: objects in the app's blob store, read and written directly (the
//! records in the store, the bytes in the blob directory), with a progress bar for large files.

use std::io::Write as _;

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Failure;
use crate::cli::{BlobArgs, BlobCommand, SiteArgs, SiteCommand, StoreArgs};
use crate::keys::{time, with_store};

/// Files larger than this get a progress bar.
const BAR_FROM: u64 = 8 * 1024 * 1024;

/// Runs `work` on the app's blob store, opened as `nimbus up` opens it.
fn with_blobs(
    args: &StoreArgs,
    work: impl AsyncFnOnce(nimbus_blob::Blobs) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let data_dir = args.data_dir.clone();
    with_store(args, false, async |store, config| {
        let data_dir = data_dir.unwrap_or_else(|| config.dir.join(".nimbus"));
        work(crate::up::open_blobs(&config, &data_dir, store).await?).await
    })
}

pub fn run(args: BlobArgs) -> Result<(), Failure> {
    let BlobArgs { store, command } = args;
    let json = store.json;
    with_blobs(&store, async |blobs| {
        match command {
            BlobCommand::Ls { path } => {
                let (container, prefix) = path.split_once('/').unwrap_or((&path, ""));
                let mut after: Option<String> = None;
                let mut all = Vec::new();
                loop {
                    let page =
                        blobs.list(container, prefix, Some("/"), after.as_deref(), 1000).await.map_err(explain)?;
                    if !json {
                        for p in &page.prefixes {
                            println!("{:>12}  {:<20}  {p}", "", "");
                        }
                        for o in &page.objects {
                            println!("{:>12}  {:<20}  {}", o.size, time(Some(o.last_modified)), o.key);
                        }
                    }
                    all.extend(page.objects);
                    match page.continuation {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                if json {
                    println!("{}", serde_json::to_string(&all)?);
                }
            }
            BlobCommand::Put { file, target, content_type } => {
                let (container, key) = split(&target)?;
                let handle =
                    tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
                let size = handle.metadata().await?.len();
                let bar = bar(size);
                let stream = nimbus_blob::file_chunks(handle).inspect({
                    let bar = bar.clone();
                    move |c| {
                        if let Ok(c) = c {
                            bar.inc(c.len() as u64);
                        }
                    }
                });
                let info = blobs
                    .put(container, key, content_type.as_deref(), Default::default(), Box::pin(stream))
                    .await
                    .map_err(explain)?;
                bar.finish_and_clear();
                if json {
                    println!("{}", serde_json::to_string(&info)?);
                } else {
                    println!("{} bytes → {container}/{key} (etag {})", info.size, info.etag);
                }
            }
            BlobCommand::Get { source, file } => {
                let (container, key) = split(&source)?;
                let download = blobs.get(container, key, None).await.map_err(explain)?;
                let to_stdout = file.as_os_str() == "-";
                let bar = if to_stdout { ProgressBar::hidden() } else { bar(download.info.size) };
                let mut out: Box<dyn std::io::Write> = match to_stdout {
                    true => Box::new(std::io::stdout().lock()),
                    false => Box::new(
                        std::fs::File::create(&file).with_context(|| format!("cannot create {}", file.display()))?,
                    ),
                };
                let mut body = download.body;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| anyhow::anyhow!("{e}"))?;
                    out.write_all(&chunk)?;
                    bar.inc(chunk.len() as u64);
                }
                out.flush()?;
                bar.finish_and_clear();
            }
            BlobCommand::Cp { source, target } => {
                let (from_container, from_key) = split(&source)?;
                let (container, key) = split(&target)?;
                let info = blobs.copy(from_container, from_key, container, key).await.map_err(explain)?;
                match json {
                    true => println!("{}", serde_json::to_string(&info)?),
                    false => println!("Copied {source} → {target} ({} bytes).", info.size),
                }
            }
            BlobCommand::Rm { target } => {
                let (container, key) = split(&target)?;
                blobs.delete(container, key).await.map_err(explain)?;
                println!("Deleted {container}/{key}.");
            }
        }
        Ok(())
    })
}

/// `nimbus site deploy|rollback|list`: straight to the app's store and blob backend, like
/// `nimbus blob`; running nodes serve the switched site within a second.
pub fn site(args: SiteArgs) -> Result<(), Failure> {
    let SiteArgs { store, command } = args;
    let json = store.json;
    with_blobs(&store, async |blobs| {
        match command {
            SiteCommand::Deploy { dir, prune, keep } => {
                if !dir.is_dir() {
                    return Err(anyhow::anyhow!("{}: not a folder", dir.display()).into());
                }
                if keep == 0 {
                    return Err(anyhow::anyhow!("--keep must be at least 1 (the current deploy)").into());
                }
                let bar = ProgressBar::new(0);
                if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                {
                    bar.set_style(style);
                }
                let source = dir.canonicalize().unwrap_or(dir.clone()).display().to_string();
                let done = nimbus_blob::deploy(&blobs, &dir, &source, prune, keep, &|p| match p {
                    nimbus_blob::Progress::Total(n) => bar.set_length(n),
                    nimbus_blob::Progress::Done(n) => bar.inc(n),
                })
                .await
                .map_err(explain)?;
                bar.finish_and_clear();
                if json {
                    println!("{}", serde_json::to_string(&done)?);
                } else {
                    let what =
                        format!("{} uploaded, {} unchanged, {} removed", done.uploaded, done.unchanged, done.deleted);
                    match done.id {
                        Some(id) => println!("Deploy {id} is live: {what}."),
                        None => println!("Nothing changed ({what}); the site stays as it is."),
                    }
                }
            }
            SiteCommand::Rollback => {
                let id = nimbus_blob::rollback(&blobs).await.map_err(explain)?;
                match json {
                    true => println!("{}", serde_json::json!({ "id": id })),
                    false => println!("Rolled back: deploy {id} is live."),
                }
            }
            SiteCommand::List => {
                let deploys = nimbus_blob::deployments(&blobs).await.map_err(explain)?;
                if json {
                    println!("{}", serde_json::to_string(&deploys)?);
                } else if deploys.is_empty() {
                    println!("No deploys yet.");
                } else {
                    for d in deploys {
                        let mark = if d.current { "*" } else { " " };
                        println!(
                            "{mark} {:>4}  {:<20}  {:>6} files  {:>12} bytes  {}",
                            d.id,
                            time(Some(d.created)),
                            d.files,
                            d.bytes,
                            d.source
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

fn split(path: &str) -> anyhow::Result<(&str, &str)> {
    path.split_once('/')
        .filter(|(_, k)| !k.is_empty())
        .ok_or_else(|| anyhow::anyhow!("\"{path}\": write CONTAINER/KEY"))
}

fn explain(e: nimbus_blob::BlobError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn bar(size: u64) -> ProgressBar {
    if size < BAR_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}") {
        bar.set_style(style);
    }
    bar
}
