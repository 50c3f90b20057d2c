//! One `[[ai.backends]]` entry: where its API is, how to call it (OpenAI's or Azure OpenAI's
//! conventions), which models it serves, and its circuit breaker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_config::{AiBackend, AiLocal, CircuitBreaker};
use serde_json::Value;

use crate::local::Local;

/// The OpenAI endpoints the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

pub(crate) struct Backend {
    pub config: AiBackend,
    /// The base URL without its trailing `/`.
    base: String,
    pub circuit: Circuit,
    /// The embedded models (`[ai.local]`), answering in the node instead of over HTTP.
    pub local: Option<Arc<Local>>,
}

impl Backend {
    pub fn new(config: AiBackend, breaker: &CircuitBreaker) -> Self {
        let base = config.url.to_string().trim_end_matches('/').to_owned();
        let circuit = Circuit::new(breaker.failures.get(), breaker.cool_down.get());
        Self { config, base, circuit, local: None }
    }

    /// The backend `local`, serving its models' ids (its `url` is never called).
    pub fn local(local: Arc<Local>, config: &AiLocal, breaker: &CircuitBreaker) -> Self {
        let config = AiBackend {
            name: "local".into(),
            url: axum::http::Uri::from_static("http://127.0.0.1/"),
            api_key: None,
            api_version: None,
            models: local.models(),
            model_map: Default::default(),
            priority: config.priority,
            weight: std::num::NonZeroU32::MIN,
            // Until a whole answer is generated (a stream runs as long as it generates).
            timeout: nimbus_config::Duration::from_secs(600),
        };
        Self { local: Some(local), ..Self::new(config, breaker) }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The request for `endpoint` with `body` (its `model` already the backend's name for it).
    /// OpenAI's convention: `{url}/chat/completions` with a bearer key; Azure OpenAI's (with
    /// `api_version`): `{url}/deployments/{model}/chat/completions?api-version=…` with `api-key`.
    pub fn request(&self, client: &reqwest::Client, endpoint: Endpoint, body: &Value) -> reqwest::RequestBuilder {
        let url = match &self.config.api_version {
            Some(version) => {
                let deployment = body["model"].as_str().unwrap_or_default();
                let deployment = percent_encode(deployment);
                format!("{}/deployments/{deployment}/{}?api-version={version}", self.base, endpoint.path())
            }
            None => format!("{}/{}", self.base, endpoint.path()),
        };
        let mut request = client.post(url).json(body);
        if let Some(key) = &self.config.api_key {
            request = match self.config.api_version {
                Some(_) => request.header("api-key", key.value()),
                None => request.bearer_auth(key.value()),
            };
        }
        request
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The indices of the backends that serve `model`, in the order to try them: by priority, and
/// within one priority in a random order weighted by `weight` (Efraimidis–Spirakis: each draws
/// `u^(1/weight)`, the largest first).
pub(crate) fn order(backends: &[Backend], model: &str) -> Vec<usize> {
    let mut candidates: Vec<(u32, f64, usize)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.config.serves(model))
        .map(|(i, b)| {
            let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
            (b.config.priority, u.powf(1.0 / f64::from(b.config.weight.get())), i)
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    candidates.into_iter().map(|(_, _, i)| i).collect()
}

/// Closed, it lets every request through and counts failures in a row; at the threshold it opens
/// for the cool-down; after it, one trial request goes (half-open): its success closes the
/// circuit, its failure opens it again. A trial that never reports (its client went away) is
/// replaced after another cool-down.
pub(crate) struct Circuit {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Trial { since: Instant },
}

impl Circuit {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self { threshold, cool_down, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go to the backend now (taking the trial when it is due).
    pub fn admit(&self, now: Instant) -> bool {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::Trial { since: until } if now < until => false,
            State::Open { .. } | State::Trial { .. } => {
                *state = State::Trial { since: now + self.cool_down };
                true
            }
        }
    }

    pub fn succeeded(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    /// Counts a failure; `true` when it opened the circuit.
    pub fn failed(&self, now: Instant) -> bool {
        let mut state = self.state();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            State::Open { .. } | State::Trial { .. } => self.threshold,
        };
        if failures >= self.threshold {
            *state = State::Open { until: now + self.cool_down };
            true
        } else {
            *state = State::Closed { failures };
            false
        }
    }

    /// How long until it lets a request through again (zero when it does now).
    pub fn closed_in(&self, now: Instant) -> Duration {
        match *self.state() {
            State::Closed { .. } => Duration::ZERO,
            State::Open { until } | State::Trial { since: until } => until.saturating_duration_since(now),
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, priority: u32, weight: u32, models: &[&str]) -> Backend {
        let config = AiBackend {
            name: name.into(),
            url: "http://127.0.0.1:1/v1/".parse().unwrap(),
            api_key: None,
            api_version: None,
            models: models.iter().map(|m| m.to_string()).collect(),
            model_map: Default::default(),
            priority,
            weight: std::num::NonZeroU32::new(weight).unwrap(),
            timeout: nimbus_config::Duration::from_secs(1),
        };
        Backend::new(config, &CircuitBreaker::default())
    }

    #[test]
    fn priorities_first_then_weights() {
        let backends = [
            backend("c", 2, 1, &[]),
            backend("a", 1, 3, &["m"]),
            backend("b", 1, 1, &["m"]),
            backend("x", 0, 1, &["n"]),
        ];
        let mut first_a = 0;
        for _ in 0..4000 {
            let order: Vec<&str> = order(&backends, "m").into_iter().map(|i| backends[i].name()).collect();
            assert_eq!(order.len(), 3, "{order:?}");
            assert_eq!(order[2], "c", "a lower priority serves first: {order:?}");
            first_a += usize::from(order[0] == "a");
        }
        // weight 3 against 1: "a" goes first three times in four
        assert!((2800..3200).contains(&first_a), "{first_a}");
        assert_eq!(backends[0].base, "http://127.0.0.1:1/v1");
    }

    #[test]
    fn the_circuit_opens_after_failures_in_a_row_and_one_trial_closes_it() {
        let circuit = Circuit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!circuit.failed(t0));
        circuit.succeeded(); // a success in between resets the count
        assert!(!circuit.failed(t0));
        assert!(!circuit.failed(t0));
        assert!(circuit.failed(t0), "the third in a row opens it");
        assert!(!circuit.admit(t0 + Duration::from_secs(9)));
        assert_eq!(circuit.closed_in(t0 + Duration::from_secs(9)), Duration::from_secs(1));
        let later = t0 + Duration::from_secs(10);
        assert!(circuit.admit(later), "the trial");
        assert!(!circuit.admit(later), "one trial at a time");
        assert!(circuit.failed(later), "a failed trial opens it again");
        assert!(!circuit.admit(later + Duration::from_secs(5)));
        let again = later + Duration::from_secs(10);
        assert!(circuit.admit(again));
        circuit.succeeded();
        assert!(circuit.admit(again) && circuit.admit(again), "closed");
        // a trial that never reports is replaced after a cool-down
        for _ in 0..3 {
            circuit.failed(again);
        }
        let trial = again + Duration::from_secs(10);
        assert!(circuit.admit(trial));
        assert!(!circuit.admit(trial + Duration::from_secs(9)));
        assert!(circuit.admit(trial + Duration::from_secs(10)));
    }

    #[test]
    fn azure_requests_name_the_deployment_and_the_version() {
        let mut b = backend("azure", 1, 1, &[]);
        b.config.api_version = Some("2024-10-21".into());
        b.config.api_key = Some(nimbus_config::EnvString::resolve("secret").unwrap());
        let client = reqwest::Client::new();
        let request = b.request(&client, Endpoint::Chat, &serde_json::json!({"model": "gpt 4o"})).build().unwrap();
        assert_eq!(
            request.url().as_str(),
            "http://127.0.0.1:1/v1/deployments/gpt%204o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(request.headers()["api-key"], "secret");
        assert!(request.headers().get("authorization").is_none());
        let b = backend("openai", 1, 1, &[]);
        let request = b.request(&client, Endpoint::Embeddings, &serde_json::json!({"model": "m"})).build().unwrap();
        assert_eq!(request.url().as_str(), "http://127.0.0.1:1/v1/embeddings");
    }
}
