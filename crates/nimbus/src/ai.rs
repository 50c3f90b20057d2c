//! `nimbus ai usage`: the AI gateway's usage ledger, read directly from the store (what every
//! node serving the app recorded), summed by user, key, model or backend.

use anyhow::anyhow;
use nimbus_ai::Dimension;
use serde_json::Value;

use crate::Failure;
use crate::cli::{AiArgs, AiCommand};
use crate::keys::with_store;

pub fn run(args: AiArgs) -> Result<(), Failure> {
    let json = args.store.json;
    with_store(&args.store, false, async |store, _config| {
        let AiCommand::Usage { by, since } = args.command;
        let since = since.parse::<nimbus_config::Duration>().map_err(|e| anyhow!("--since: {e}"))?.get();
        let mut dimensions = Vec::new();
        for name in by.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let d = Dimension::parse(name)
                .ok_or_else(|| anyhow!("--by: \"{name}\" is not one of user, key, model, backend"))?;
            if !dimensions.contains(&d) {
                dimensions.push(d);
            }
        }
        let now = store.clock().now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let report = nimbus_ai::report(store.as_ref(), now.saturating_sub(since.as_secs()), &dimensions).await?;
        if json {
            println!("{report}");
            return Ok(());
        }
        print_table(&report, &dimensions);
        Ok(())
    })
}

fn print_table(report: &Value, by: &[Dimension]) {
    let mut header: Vec<&str> = by.iter().map(|d| d.name()).collect();
    header.extend(["requests", "prompt", "completion", "total"]);
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for row in report["rows"].as_array().into_iter().flatten() {
        let mut cells: Vec<String> = by.iter().map(|d| row[d.name()].as_str().unwrap_or("-").to_owned()).collect();
        for field in ["requests", "prompt_tokens", "completion_tokens", "total_tokens"] {
            cells.push(row[field].as_u64().unwrap_or(0).to_string());
        }
        rows.push(cells);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    println!("since {}", report["since"].as_str().unwrap_or("?"));
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| if i < by.len() { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
