//! `nimbus up --watch`: when the app's files change, re-read the manifest and reload the functions
//! (new instances take new requests; old ones finish theirs). Changes settle for a moment first, so
//! an editor's burst of writes makes one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};

const SETTLE: Duration = Duration::from_millis(200);

/// Keeps watching while the returned watcher lives and `tasks` runs.
pub fn start(
    app_dir: PathBuf,
    data_dir: PathBuf,
    functions: Arc<nimbus_functions::Functions>,
    tasks: &nimbus_api::Tasks,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let ignored_dir = data_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
            return;
        }
        for path in event.paths {
            if relevant(&path, &ignored_dir) {
                let _ = tx.send(path);
            }
        }
    })
    .context("cannot watch the app's files")?;
    watcher.watch(&app_dir, RecursiveMode::Recursive).with_context(|| format!("cannot watch {}", app_dir.display()))?;
    tasks.spawn(async move {
        while let Some(first) = rx.recv().await {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(changed = %first.display(), "files changed; reloading functions");
            match nimbus_config::load(&app_dir) {
                Err(e) => tracing::error!("not reloading: the manifest is invalid:\n{e}"),
                Ok(config) => match functions.reload(&config).await {
                    Ok(list) => tracing::info!(functions = list.len(), "reloaded"),
                    Err(e) => tracing::error!("not reloading, the previous code keeps serving: {e}"),
                },
            }
        }
    });
    Ok(watcher)
}

/// Source files, not the node's own data, caches or dependencies.
fn relevant(path: &Path, data_dir: &Path) -> bool {
    if path.starts_with(data_dir) {
        return false;
    }
    let skipped = [".nimbus", "__pycache__", "node_modules", ".git", ".venv"];
    if path.components().any(|c| skipped.iter().any(|s| c.as_os_str() == *s)) {
        return false;
    }
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    !(name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".tmp") || name.starts_with(".#"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_count() {
        let data = Path::new("/app/.nimbus");
        assert!(relevant(Path::new("/app/functions/app.py"), data));
        assert!(relevant(Path::new("/app/nimbus.toml"), data));
        assert!(!relevant(Path::new("/app/.nimbus/nimbus.db"), data));
        assert!(!relevant(Path::new("/app/functions/__pycache__/app.cpython-311.pyc"), data));
        assert!(!relevant(Path::new("/app/node_modules/x/index.js"), data));
        assert!(!relevant(Path::new("/app/functions/app.py~"), data));
        assert!(!relevant(Path::new("/elsewhere/data/x"), Path::new("/elsewhere/data")));
    }
}
