//! Log output: `tracing` events to stderr as text or JSON lines; levels from `NIMBUS_LOG`.
//!
//! Lines go through a channel to a writer thread that batches them, so request threads never
//! make a write syscall per access-log line. The channel is not lossy: under a flood of lines
//! the request threads wait rather than lines being dropped.

use std::io::IsTerminal as _;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Keep the guard alive until the process ends: dropping it flushes what is still queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("nimbus-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
    guard
}
