//! `nimbus durable start|status|list|raise|terminate|suspend|resume|rewind|restart|purge|history`: orchestration
//! instances, read and written directly in the store (`Durable::offline`); the node serving the app
//! runs what is written here. `history` prints a timeline: each event, when, how long each task,
//! timer and sub-orchestration took, and each step with its worker instance and duration.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use nimbus_durable::{Durable, Filter, Instance, Status};
use serde_json::{Value, json};

use crate::Failure;
use crate::cli::{DurableArgs, DurableCommand};
use crate::keys::with_store;

pub fn run(args: DurableArgs) -> Result<(), Failure> {
    let json = args.store.json;
    let data_dir = args.store.data_dir.clone();
    with_store(&args.store, false, async |store, config| {
        let data_dir = data_dir.unwrap_or_else(|| config.dir.join(".nimbus"));
        let blobs = crate::up::open_blobs(&config, &data_dir, store.clone()).await?;
        let durable = Durable::offline(store, blobs, config.manifest.durable.version.clone());
        match args.command {
            DurableCommand::Start { name, input, id, orchestration_version } => {
                let input = parse_json("--input", input.as_deref())?;
                let id = durable.start_instance(&name, id, input, orchestration_version).await?;
                if json {
                    println!("{}", json!({"id": id}));
                } else {
                    println!("{id}");
                }
            }
            DurableCommand::Status { id } => {
                let instance = durable.instance(&id).await?;
                if json {
                    println!("{}", describe(&instance));
                } else {
                    print_status(&instance);
                }
            }
            DurableCommand::List { status, name, top } => {
                let mut filter = Filter { name, ..Filter::default() };
                for s in status.iter().flat_map(|s| s.split(',')) {
                    filter.statuses.push(Status::parse(s.trim()).ok_or_else(|| {
                        anyhow!("--status: unknown status \"{s}\" (Pending, Running, Completed, ContinuedAsNew, Failed, Terminated, Suspended)")
                    })?);
                }
                let listed = durable.list(&filter, top, None).await?;
                if json {
                    println!("{}", Value::Array(listed.instances.iter().map(describe).collect()));
                } else {
                    for i in &listed.instances {
                        println!("{}\t{}\t{:?}\t{}", i.id, i.name, i.status, rfc3339(&i.updated));
                    }
                    if listed.continuation.is_some() {
                        eprintln!("(more: raise --top)");
                    }
                }
            }
            DurableCommand::Raise { id, event, data } => {
                durable.raise(&id, &event, parse_json("--data", data.as_deref())?).await?;
            }
            DurableCommand::Terminate { id, reason } => {
                durable.terminate(&id, reason.map_or(Value::Null, Value::String)).await?
            }
            DurableCommand::Suspend { id, reason } => {
                durable.suspend(&id, true, reason.map_or(Value::Null, Value::String)).await?;
            }
            DurableCommand::Resume { id, reason } => {
                durable.suspend(&id, false, reason.map_or(Value::Null, Value::String)).await?;
            }
            DurableCommand::Rewind { id, reason } => {
                durable.rewind(&id, reason.map_or(Value::Null, Value::String)).await?;
            }
            DurableCommand::Restart { id, same_id } => {
                let id = durable.restart(&id, !same_id).await?;
                if json {
                    println!("{}", json!({"id": id}));
                } else {
                    println!("{id}");
                }
            }
            DurableCommand::Purge { id } => durable.purge(&id).await?,
            DurableCommand::History { id } => {
                let events = durable.history(&id).await?;
                if json {
                    println!("{}", Value::Array(events));
                } else {
                    print!("{}", timeline(&events));
                }
            }
        }
        Ok(())
    })
}

fn parse_json(flag: &str, text: Option<&str>) -> Result<Value, Failure> {
    match text {
        None => Ok(Value::Null),
        Some(text) => Ok(serde_json::from_str(text).with_context(|| format!("{flag} is not JSON: {text}"))?),
    }
}

fn rfc3339(ms: &u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn describe(i: &Instance) -> Value {
    json!({
        "instanceId": i.id, "name": i.name, "runtimeStatus": i.status, "version": i.version,
        "input": i.input, "output": i.output, "customStatus": i.custom_status,
        "createdTime": rfc3339(&i.created), "lastUpdatedTime": rfc3339(&i.updated),
    })
}

fn print_status(i: &Instance) {
    println!("{} ({}, version {}): {:?}", i.id, i.name, i.version, i.status);
    println!("  created {}, updated {}", rfc3339(&i.created), rfc3339(&i.updated));
    println!("  input  {}", i.input);
    if !i.custom_status.is_null() {
        println!("  custom {}", i.custom_status);
    }
    if !i.output.is_null() {
        println!("  output {}", i.output);
    }
}

/// Each event at its offset from the start; completions say how long their task took.
fn timeline(events: &[Value]) -> String {
    let at = |e: &Value| e["at"].as_str().and_then(parse_ms);
    let start = events.first().and_then(at).unwrap_or(0);
    let mut scheduled: HashMap<u64, u64> = HashMap::new();
    let mut out = String::new();
    for event in events {
        let kind = event["type"].as_str().unwrap_or("?");
        let when = at(event).unwrap_or(start);
        let id = event["id"].as_u64();
        let what = match kind {
            "task_scheduled" | "sub_scheduled" | "timer_created" => {
                if let Some(id) = id {
                    scheduled.insert(id, when);
                }
                event["name"].as_str().or(event["fire_at"].as_str()).unwrap_or_default().to_owned()
            }
            "task_completed" | "task_failed" | "sub_completed" | "sub_failed" | "timer_fired" => {
                let took =
                    id.and_then(|id| scheduled.get(&id)).map(|s| format!("after {} ms", when.saturating_sub(*s)));
                let detail = kind.ends_with("failed").then(|| event["error"].to_string());
                [took, detail].into_iter().flatten().collect::<Vec<_>>().join(" ")
            }
            "event_raised" => event["name"].as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        if let Some(step) = event.get("step") {
            let worker = step["worker"].as_str().unwrap_or("a worker");
            let took = step["ms"].as_f64().map(|ms| format!(" in {ms} ms")).unwrap_or_default();
            out.push_str(&format!("{:>9} ms  step on {worker}{took}\n", when.saturating_sub(start)));
        }
        let id = id.map(|i| format!(" #{i}")).unwrap_or_default();
        let line = format!("{:>9} ms  {kind}{id} {what}", when.saturating_sub(start));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn parse_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
