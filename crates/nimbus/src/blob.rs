//! `nimbus blob ls|put|get|rm`: objects in the app's blob store, read and written directly (the
//! records in the store, the bytes in the blob directory), with a progress bar for large files.

use std::io::Write as _;

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Failure;
use crate::cli::{BlobArgs, BlobCommand};
use crate::keys::{time, with_store};

/// Files larger than this get a progress bar.
const BAR_FROM: u64 = 8 * 1024 * 1024;

pub fn run(args: BlobArgs) -> Result<(), Failure> {
    let data_dir = args.store.data_dir.clone();
    with_store(&args.store, false, async |store, config| {
        let data_dir = data_dir.unwrap_or_else(|| config.dir.join(".nimbus"));
        let blobs = crate::up::open_blobs(&config, &data_dir, store).await?;
        let json = args.store.json;
        match args.command {
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
            BlobCommand::Rm { target } => {
                let (container, key) = split(&target)?;
                blobs.delete(container, key).await.map_err(explain)?;
                println!("Deleted {container}/{key}.");
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
