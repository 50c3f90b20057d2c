//! Prometheus metrics: one recorder per process, rendered by `GET /_nimbus/metrics`.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub type MetricsHandle = PrometheusHandle;

/// Latency buckets (seconds) from sub-millisecond platform calls to minutes-long LLM answers.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Installs the process-wide recorder. Call once; `tasks` runs the upkeep that bounds histogram
/// memory.
pub fn install_metrics(tasks: &nimbus_api::Tasks) -> Result<MetricsHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tasks.every("metrics-upkeep", Duration::from_secs(5), move || {
        upkeep.run_upkeep();
        std::future::ready(())
    });
    metrics::describe_counter!("nimbus_http_requests_total", "HTTP requests answered, by route, method and status");
    metrics::describe_histogram!(
        "nimbus_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to the response head, by route and method"
    );
    metrics::describe_gauge!("nimbus_http_requests_in_flight", "HTTP requests being handled");
    metrics::describe_gauge!("nimbus_build_info", "Always 1; the labels tell the version");
    metrics::gauge!("nimbus_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}
