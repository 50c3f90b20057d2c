//! Metering: tokens read from the upstream's `usage` when it gives one, counted with the model's
//! tokenizer (tiktoken's encodings) when it does not; recorded once per request, when it ends, is
//! answered, or its client goes away mid-stream (what was generated until then still counts).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::backend::Endpoint;
use crate::ledger::Ledger;
use crate::limits::Reservation;

/// The tokenizer for `model`: its own encoding when tiktoken knows the model, else o200k (the
/// encoding of OpenAI's current models; an estimate for others).
fn bpe(model: &str) -> &'static CoreBPE {
    use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
    match get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => tiktoken_rs::cl100k_base_singleton(),
        Some(Tokenizer::P50kBase) => tiktoken_rs::p50k_base_singleton(),
        Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => tiktoken_rs::r50k_base_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
    }
}

/// Loads the tokenizers the gateway uses most, so the first request does not pay for it.
pub(crate) fn warm() {
    bpe("gpt-4o");
}

pub(crate) fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe(model).encode_ordinary(text).len() as u64
}

/// The prompt's tokens before the call, as OpenAI counts chat messages (3 a message, its role,
/// name and text, 3 for the answer's start; tools as their JSON), or the embedding inputs.
pub(crate) fn estimate_prompt(endpoint: Endpoint, model: &str, body: &Value) -> u64 {
    match endpoint {
        Endpoint::Chat => {
            let mut tokens = 3;
            for message in body["messages"].as_array().into_iter().flatten() {
                tokens += 3;
                for field in ["role", "name"] {
                    tokens += count(model, message[field].as_str().unwrap_or_default());
                }
                tokens += count(model, &text_of(&message["content"]));
                if let Some(calls) = message.get("tool_calls") {
                    tokens += count(model, &calls.to_string());
                }
            }
            if let Some(tools) = body.get("tools") {
                tokens += count(model, &tools.to_string());
            }
            tokens
        }
        Endpoint::Embeddings => match &body["input"] {
            Value::String(s) => count(model, s),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => count(model, s),
                    // token ids, or arrays of them
                    Value::Number(_) => 1,
                    Value::Array(ids) => ids.len() as u64,
                    _ => 0,
                })
                .sum(),
            _ => 0,
        },
    }
}

/// A message's text: a string, or the `text` of its content parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// `usage` of a response or of a stream's last chunk: (prompt, completion) tokens.
pub(crate) fn from_upstream(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    let prompt = usage["prompt_tokens"].as_u64()?;
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    Some((prompt, completion))
}

/// The text a chunk (`delta`) or an answer (`message`) adds: content and tool-call arguments.
pub(crate) fn generated_text(value: &Value, into: &mut String) {
    for choice in value["choices"].as_array().into_iter().flatten() {
        let part = if choice.get("delta").is_some() { &choice["delta"] } else { &choice["message"] };
        if let Some(text) = part["content"].as_str() {
            into.push_str(text);
        }
        for call in part["tool_calls"].as_array().into_iter().flatten() {
            if let Some(name) = call["function"]["name"].as_str() {
                into.push_str(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                into.push_str(args);
            }
        }
    }
}

/// Who a request is metered to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Account {
    /// The token's `sub`.
    pub user: Option<String>,
    /// The API key's id.
    pub key: Option<String>,
}

impl Account {
    pub fn of(caller: Option<&nimbus_api::Caller>) -> Self {
        let Some(claims) = caller.map(|c| c.0.as_ref()) else { return Self::default() };
        Self {
            user: claims["sub"].as_str().map(str::to_owned),
            key: claims["api_key"]["id"].as_str().map(str::to_owned),
        }
    }
}

/// Generated text is counted in pieces of this size.
const COUNT_EVERY: usize = 1024 * 1024;

/// A request's model: its name, and its label in metrics (see `Ai::model_label`).
pub(crate) struct Model {
    pub name: String,
    pub label: String,
}

/// One request's metering, recorded once: by [`Meter::finish`], or when dropped unfinished (a
/// client that went away mid-stream is billed for what was generated until then). Recording
/// settles the request's token reservation and adds it to the usage ledger.
pub(crate) struct Meter {
    model: Model,
    backend: String,
    account: Account,
    reservation: Option<Reservation>,
    ledger: Arc<Ledger>,
    started: Instant,
    first_token: Option<Instant>,
    prompt_estimate: u64,
    /// What the upstream said it used.
    upstream: Option<(u64, u64)>,
    /// What was generated and not counted yet, when the upstream does not say (streams).
    text: String,
    /// Tokens of the text counted already.
    counted: u64,
    recorded: bool,
}

impl Meter {
    pub fn new(
        model: Model,
        backend: &str,
        call: &crate::CallInfo,
        prompt_estimate: u64,
        reservation: Option<Reservation>,
        ledger: Arc<Ledger>,
    ) -> Self {
        Self {
            model,
            backend: backend.to_owned(),
            account: call.account.clone(),
            reservation,
            ledger,
            started: call.started,
            first_token: None,
            prompt_estimate,
            upstream: None,
            text: String::new(),
            counted: 0,
            recorded: false,
        }
    }

    pub fn first_token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    pub fn upstream_usage(&mut self, usage: (u64, u64)) {
        self.upstream = Some(usage);
    }

    pub fn generated(&mut self, value: &Value) {
        generated_text(value, &mut self.text);
    }

    /// Generated text, as a stream's chunks carry it. It is counted a megabyte at a time, so a
    /// long stream holds no more than that.
    pub fn push_text(&mut self, text: &str) {
        self.text.push_str(text);
        if self.text.len() > COUNT_EVERY {
            self.counted += count(&self.model.name, &self.text);
            self.text.clear();
        }
    }

    /// Records the request with `outcome` (`ok`, `broken`, `client_closed`).
    pub fn finish(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let (prompt, completion, source) = match self.upstream {
            Some((prompt, completion)) => (prompt, completion, "upstream"),
            None => (self.prompt_estimate, self.counted + count(&self.model.name, &self.text), "tokenizer"),
        };
        let (model, backend) = (self.model.label.clone(), self.backend.clone());
        let key = self.account.key.clone().unwrap_or_default();
        metrics::counter!("nimbus_ai_requests_total", "model" => model.clone(), "backend" => backend.clone(), "key" => key.clone(), "outcome" => outcome).increment(1);
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            metrics::counter!("nimbus_ai_tokens_total", "model" => model.clone(), "backend" => backend.clone(), "key" => key.clone(), "kind" => kind, "source" => source).increment(n);
        }
        let now = Instant::now();
        metrics::histogram!("nimbus_ai_request_seconds", "model" => model.clone(), "backend" => backend.clone())
            .record(now.duration_since(self.started).as_secs_f64());
        if let Some(first) = self.first_token {
            metrics::histogram!("nimbus_ai_time_to_first_token_seconds", "model" => model.clone(), "backend" => backend.clone())
                .record(first.duration_since(self.started).as_secs_f64());
            let generating = now.duration_since(first).as_secs_f64();
            if completion > 1 && generating > 0.0 {
                metrics::histogram!("nimbus_ai_tokens_per_second", "model" => model, "backend" => backend)
                    .record(completion as f64 / generating);
            }
        }
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(prompt + completion);
        }
        let entry = crate::ledger::Entry {
            model: &self.model.name,
            backend: &self.backend,
            user: self.account.user.as_deref(),
            key: self.account.key.as_deref(),
            prompt,
            completion,
        };
        self.ledger.record(&entry);
        tracing::info!(
            model = %self.model.name, backend = %self.backend, user = self.account.user.as_deref().unwrap_or("-"),
            key = self.account.key.as_deref().unwrap_or("-"), prompt_tokens = prompt, completion_tokens = completion,
            counted_by = source, outcome, "ai usage"
        );
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish("client_closed");
    }
}

pub(crate) fn describe() {
    metrics::describe_counter!(
        "nimbus_ai_requests_total",
        "AI requests answered, by model, backend, API key and outcome (ok, broken, client_closed)"
    );
    metrics::describe_counter!(
        "nimbus_ai_tokens_total",
        "tokens by model, backend, API key, kind (prompt, completion) and source (upstream usage, tokenizer count)"
    );
    metrics::describe_histogram!(
        "nimbus_ai_request_seconds",
        "time of an AI request, from its arrival to its last byte"
    );
    metrics::describe_histogram!(
        "nimbus_ai_time_to_first_token_seconds",
        "time from an AI request's arrival to its first generated byte"
    );
    metrics::describe_histogram!(
        "nimbus_ai_tokens_per_second",
        "generated tokens per second after the first, per request"
    );
    metrics::describe_counter!(
        "nimbus_ai_upstream_attempts_total",
        "calls to backends, by backend and outcome (ok, status_429, status_5xx, refused, connect, timeout, broken)"
    );
    metrics::describe_gauge!("nimbus_ai_circuit_open", "1 while a backend's circuit breaker keeps it out");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_match_tiktoken_and_openai_chat_accounting() {
        // "hello world" is two tokens in both encodings.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("gpt-3.5-turbo", "hello world"), 2);
        let body = json!({"messages": [{"role": "user", "content": "hello world"}]});
        // 3 (reply) + 3 (message) + 1 ("user") + 2
        assert_eq!(estimate_prompt(Endpoint::Chat, "gpt-4o", &body), 9);
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]});
        assert_eq!(estimate_prompt(Endpoint::Chat, "gpt-4o", &parts), 9);
        let inputs = json!({"input": ["hello world", [1, 2, 3]]});
        assert_eq!(estimate_prompt(Endpoint::Embeddings, "text-embedding-3-small", &inputs), 5);
    }

    #[test]
    fn usage_and_generated_text_are_read_from_answers_and_chunks() {
        let answer = json!({"choices": [{"message": {"content": "Hi", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(from_upstream(&answer), Some((7, 3)));
        assert_eq!(from_upstream(&json!({"usage": null})), None);
        let mut text = String::new();
        generated_text(&answer, &mut text);
        generated_text(&json!({"choices": [{"delta": {"content": " there"}}]}), &mut text);
        assert_eq!(text, "Hif{} there");
    }
}
