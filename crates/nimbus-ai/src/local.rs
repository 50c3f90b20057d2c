//! The local backend (`[ai.local]`): OpenAI's chat and embeddings API over the models of
//! `nimbus-llm`, so that the gateway's failover, limits, metering and streaming treat it as any
//! other backend. What the models cannot do (tools, images, JSON mode, several choices) is
//! refused with a `400` naming the parameter, never silently ignored.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use futures_util::StreamExt;
use nimbus_config::AiLocal;
use nimbus_llm::{ChatModel, ChatOptions, EmbeddingModel, Finish, Message, Sampling, Step};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::backend::Endpoint;
use crate::error::AiError;
use crate::{Answer, Failure};

/// OpenAI's bound on the inputs of one embeddings request.
const MAX_INPUTS: usize = 2048;

pub(crate) struct Local {
    chat: ChatModel,
    embeddings: Arc<EmbeddingModel>,
    /// One batch of embeddings at a time: the CPU is shared with generation.
    embedding_turn: tokio::sync::Semaphore,
}

/// The models folder: `$NIMBUS_MODELS`, else `~/.cache/nimbus/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("NIMBUS_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nimbus/models"),
    }
}

/// A model's path: as configured (relative to the app folder), else `default` in the models folder;
/// an error naming the fix when it is not there.
pub(crate) fn model_path(given: &Option<PathBuf>, key: &str, default: &str, app_dir: &Path) -> Result<PathBuf, String> {
    let models = models_dir();
    let path = match given {
        Some(p) => app_dir.join(p),
        None => models.join(default),
    };
    if path.exists() {
        return Ok(path);
    }
    let fix = match given {
        Some(_) => format!("fix `{key}`"),
        None => format!(
            "run scripts/models.sh from the nimbus repository to install the default models into {}, \
             or name your own with `{key}`",
            models.display()
        ),
    };
    Err(format!("the local AI model {} is missing: {fix}", path.display()))
}

pub(crate) const DEFAULT_EMBEDDINGS: &str = "all-MiniLM-L6-v2";

pub(crate) fn load_embeddings(given: &Option<PathBuf>, key: &str, app_dir: &Path) -> Result<EmbeddingModel, String> {
    let path = model_path(given, key, DEFAULT_EMBEDDINGS, app_dir)?;
    EmbeddingModel::load(&path).map_err(|e| format!("{key}: {e}"))
}

impl Local {
    /// Loads both models (CPU and disk work: call it off the async threads).
    pub fn load(config: &AiLocal, app_dir: &Path) -> Result<Self, String> {
        let chat_path = model_path(&config.chat, "[ai.local] chat", "SmolLM2-135M-Instruct.Q4_1.gguf", app_dir)?;
        let embeddings = load_embeddings(&config.embeddings, "[ai.local] embeddings", app_dir)?;
        let options = ChatOptions { max_active: config.max_active, queue: config.queue };
        let chat = ChatModel::load(&chat_path, options).map_err(|e| format!("[ai.local] chat: {e}"))?;
        tracing::info!(chat = chat.id(), embeddings = embeddings.id(), "local AI models loaded");
        Ok(Self { chat, embeddings: Arc::new(embeddings), embedding_turn: tokio::sync::Semaphore::new(1) })
    }

    /// The embedding model, to share (with the semantic cache).
    pub fn embedding_model(&self) -> Arc<EmbeddingModel> {
        self.embeddings.clone()
    }

    /// The model ids clients name: the chat model's, then the embedding model's.
    pub fn models(&self) -> Vec<String> {
        vec![self.chat.id().to_owned(), self.embeddings.id().to_owned()]
    }

    pub async fn answer(
        self: &Arc<Self>,
        endpoint: Endpoint,
        body: &Value,
        stream: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, Failure> {
        let model = body["model"].as_str().unwrap_or_default();
        let result = match endpoint {
            Endpoint::Chat if model == self.chat.id() => self.chat(body, stream, deadline).await,
            Endpoint::Embeddings if model == self.embeddings.id() => self.embed(body, deadline).await,
            Endpoint::Chat => Err(refuse(format!("`{model}` is an embedding model: use /v1/embeddings"), "model")),
            Endpoint::Embeddings => {
                Err(refuse(format!("`{model}` is a chat model: use /v1/chat/completions"), "model"))
            }
        };
        result.or_else(|outcome| match outcome {
            Outcome::Refused(e) => Ok(Answer::Refused(e.into_response())),
            Outcome::Failed(f) => Err(f),
        })
    }

    async fn chat(
        self: &Arc<Self>,
        body: &Value,
        stream: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, Outcome> {
        let mut request = ChatRequest::parse(body)?;
        // Rendering and tokenizing is CPU work in proportion to the messages: off the async threads.
        let (local, messages) = (self.clone(), std::mem::take(&mut request.messages));
        let prompt = match tokio::task::spawn_blocking(move || local.chat.prompt(&messages)).await {
            Ok(prompt) => prompt.map_err(|e| refuse(e.to_string(), "messages"))?,
            Err(e) => {
                return Err(Outcome::Failed(failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())));
            }
        };
        let context = self.chat.context_length();
        if prompt.len() >= context {
            return Err(Outcome::Refused(context_length(context, prompt.len(), 0)));
        }
        let room = context - prompt.len() - 1;
        let max_tokens = match request.max_tokens {
            Some(asked) if asked > room => {
                return Err(Outcome::Refused(context_length(context, prompt.len(), asked)));
            }
            Some(asked) => asked,
            None => room,
        };
        let sampling = Sampling { max_tokens, ..request.sampling };
        let steps = self.chat.generate(prompt, sampling).map_err(|e| match e {
            nimbus_llm::Error::Busy(_) => Outcome::Failed(busy(e.to_string())),
            nimbus_llm::Error::ContextLength { .. } => refuse(e.to_string(), "messages"),
            e => Outcome::Failed(failure(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string())),
        })?;
        let head = Head {
            id: format!("chatcmpl-{}", random_id()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: self.chat.id().to_owned(),
        };
        if stream {
            Ok(Answer::Stream(
                event(head.chunk(json!({"role": "assistant", "content": ""}), None)),
                chunks(head, steps),
            ))
        } else {
            whole(head, steps, deadline).await
        }
    }

    async fn embed(self: &Arc<Self>, body: &Value, deadline: tokio::time::Instant) -> Result<Answer, Outcome> {
        let texts: Vec<String> = match &body["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()
            }
            Value::Array(items) if items.iter().all(|i| i.is_number() || i.is_array()) && !items.is_empty() => {
                return Err(refuse("the local embedding model takes text, not token ids", "input"));
            }
            _ => return Err(refuse("`input` must be a string or a non-empty array of strings", "input")),
        };
        if texts.len() > MAX_INPUTS {
            return Err(refuse(format!("at most {MAX_INPUTS} inputs in one request"), "input"));
        }
        if texts.iter().any(String::is_empty) {
            return Err(refuse("an input must not be an empty string", "input"));
        }
        let base64 = match body["encoding_format"].as_str() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(refuse(
                    format!("`encoding_format` is \"float\" or \"base64\", not {other:?}"),
                    "encoding_format",
                ));
            }
        };
        let dimensions = self.embeddings.dimensions();
        if let Some(asked) = body.get("dimensions").filter(|d| !d.is_null())
            && asked.as_u64() != Some(dimensions as u64)
        {
            return Err(refuse(
                format!("`{}` has {dimensions} dimensions, not {asked}", self.embeddings.id()),
                "dimensions",
            ));
        }
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.embedding_turn.acquire()).await else {
            return Err(Outcome::Failed(failure(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the local embedding model is busy",
            )));
        };
        let local = self.clone();
        let computed = tokio::task::spawn_blocking(move || local.embeddings.embed(&texts)).await;
        let (vectors, tokens) = match computed {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Err(Outcome::Failed(failure(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string())));
            }
            Err(e) => {
                return Err(Outcome::Failed(failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())));
            }
        };
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let answer = json!({
            "object": "list",
            "data": data,
            "model": self.embeddings.id(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok(Answer::Whole(StatusCode::OK, Some(HeaderValue::from_static("application/json")), answer.to_string().into()))
    }
}

/// Why a local call did not answer: the request is wrong (passed on, no failover), or the model
/// could not (the next backend is tried).
enum Outcome {
    Refused(AiError),
    Failed(Failure),
}

fn refuse(message: impl Into<String>, param: &'static str) -> Outcome {
    Outcome::Refused(AiError::invalid(message, Some(param)))
}

fn context_length(context: usize, prompt: usize, asked: usize) -> AiError {
    let mut error = AiError::invalid(
        format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens \
             ({prompt} in the messages, {asked} in the completion). Please reduce the length of the messages or completion.",
            prompt + asked
        ),
        Some("messages"),
    );
    error.code = "context_length_exceeded";
    error
}

fn failure(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => "local", "outcome" => code).increment(1);
    Failure { error: AiError::upstream(status, code, message), retry_after: None }
}

fn busy(message: String) -> Failure {
    let mut failure = failure(StatusCode::TOO_MANY_REQUESTS, "busy", message);
    failure.error.retry_after = Some(1);
    failure.retry_after = Some(Duration::from_secs(1));
    failure
}

fn random_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// What a chat request asks of the model, checked.
struct ChatRequest {
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    sampling: Sampling,
}

impl ChatRequest {
    fn parse(body: &Value) -> Result<Self, Outcome> {
        for (param, what) in [("tools", "tools"), ("functions", "functions")] {
            if body[param].as_array().is_some_and(|t| !t.is_empty()) {
                return Err(refuse(format!("the local model does not call {what}: use a backend that does"), param));
            }
        }
        if let Some(format) = body["response_format"]["type"].as_str()
            && format != "text"
        {
            return Err(refuse(
                format!("the local model does not support `response_format` {format:?}"),
                "response_format",
            ));
        }
        if body["n"].as_u64().is_some_and(|n| n != 1) {
            return Err(refuse("the local model gives one choice (`n` = 1)", "n"));
        }
        if body["logprobs"] == json!(true) {
            return Err(refuse("the local model does not return log probabilities", "logprobs"));
        }
        let mut messages = Vec::new();
        for message in body["messages"].as_array().into_iter().flatten() {
            let role = match message["role"].as_str() {
                Some("developer" | "system") => "system",
                Some(role @ ("user" | "assistant")) => role,
                Some("tool" | "function") => {
                    return Err(refuse("the local model does not call tools: no `tool` messages", "messages"));
                }
                _ => {
                    return Err(refuse(
                        "each message needs a `role`: system, developer, user or assistant",
                        "messages",
                    ));
                }
            };
            let content = match &message["content"] {
                Value::String(s) => s.clone(),
                Value::Null if role == "assistant" => String::new(),
                Value::Array(parts) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part["type"].as_str(), part["text"].as_str()) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (kind, _) => {
                                let kind = kind.unwrap_or("untyped");
                                return Err(refuse(
                                    format!("the local model reads text only, not {kind} parts"),
                                    "messages",
                                ));
                            }
                        }
                    }
                    text
                }
                _ => {
                    return Err(refuse("a message's `content` must be a string or an array of text parts", "messages"));
                }
            };
            messages.push(Message { role: role.to_owned(), content });
        }
        let number = |param: &'static str, low: f64, high: f64, default: f64| -> Result<f64, Outcome> {
            match &body[param] {
                Value::Null => Ok(default),
                v => match v.as_f64() {
                    Some(x) if (low..=high).contains(&x) => Ok(x),
                    _ => Err(refuse(format!("`{param}` must be a number from {low} to {high}"), param)),
                },
            }
        };
        // Unset, SmolLM2's model card's settings (OpenAI's defaults, 1 and 1, ramble in a model this small).
        let temperature = number("temperature", 0.0, 2.0, 0.2)?;
        let top_p = number("top_p", 0.0, 1.0, 0.9)?;
        let frequency_penalty = number("frequency_penalty", -2.0, 2.0, 0.0)? as f32;
        let presence_penalty = number("presence_penalty", -2.0, 2.0, 0.0)? as f32;
        let max_tokens = match body.get("max_completion_tokens").filter(|v| !v.is_null()).or(body.get("max_tokens")) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => return Err(refuse("`max_tokens` must be a whole number of at least 1", "max_tokens")),
            },
        };
        let stop = match &body["stop"] {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            Value::Array(items)
                if items.len() <= 4 && items.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                items.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()
            }
            _ => return Err(refuse("`stop` must be a string or up to 4 non-empty strings", "stop")),
        };
        let seed = match &body["seed"] {
            Value::Null => rand::random(),
            v => v.as_i64().map(|s| s as u64).ok_or_else(|| refuse("`seed` must be an integer", "seed"))?,
        };
        let sampling = Sampling {
            temperature,
            top_p: Some(top_p),
            seed,
            max_tokens: 0,
            stop,
            frequency_penalty,
            presence_penalty,
        };
        Ok(Self { messages, max_tokens, sampling })
    }
}

/// What every chunk and the whole answer share.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn chunk(&self, delta: Value, finish: Option<Finish>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(reason)}],
        })
    }
}

fn reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn event(data: Value) -> eventsource_stream::Event {
    eventsource_stream::Event { event: "message".into(), data: data.to_string(), id: String::new(), retry: None }
}

fn record(prompt: usize, completion: usize, prompt_time: Duration, generation_time: Duration) {
    for (phase, tokens, time) in [("prompt", prompt, prompt_time), ("generation", completion, generation_time)] {
        if tokens > 0 && !time.is_zero() {
            metrics::histogram!("nimbus_ai_local_tokens_per_second", "phase" => phase)
                .record(tokens as f64 / time.as_secs_f64());
        }
    }
}

/// The steps as OpenAI's chunks: text deltas, the finishing chunk, the usage chunk (the relay
/// drops it unless the client asked), `[DONE]`. A failure ends the stream with an error.
fn chunks(head: Head, steps: UnboundedReceiver<Step>) -> crate::relay::Events {
    struct State {
        head: Head,
        steps: UnboundedReceiver<Step>,
        ready: VecDeque<Result<eventsource_stream::Event, String>>,
        over: bool,
    }
    let state = State { head, steps, ready: VecDeque::new(), over: false };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(next) = s.ready.pop_front() {
                return Some((next, s));
            }
            if s.over {
                return None;
            }
            match s.steps.recv().await {
                Some(Step::Text(text)) => return Some((Ok(event(s.head.chunk(json!({"content": text}), None))), s)),
                Some(Step::Done { finish, prompt_tokens, completion_tokens, prompt_time, generation_time }) => {
                    s.over = true;
                    record(prompt_tokens, completion_tokens, prompt_time, generation_time);
                    let last = s.head.chunk(json!({}), Some(finish));
                    let mut usage_chunk = last.clone();
                    usage_chunk["choices"] = json!([]);
                    usage_chunk["usage"] = usage(prompt_tokens, completion_tokens);
                    s.ready.push_back(Ok(event(last)));
                    s.ready.push_back(Ok(event(usage_chunk)));
                    s.ready.push_back(Ok(eventsource_stream::Event { data: "[DONE]".into(), ..event(Value::Null) }));
                }
                Some(Step::Failed(e)) => {
                    s.over = true;
                    return Some((Err(format!("the local model failed: {e}")), s));
                }
                None => {
                    s.over = true;
                    return Some((Err("the local model stopped".to_owned()), s));
                }
            }
        }
    })
    .boxed()
}

/// The whole answer, within the deadline (past it the generation is dropped, which stops it).
async fn whole(
    head: Head,
    mut steps: UnboundedReceiver<Step>,
    deadline: tokio::time::Instant,
) -> Result<Answer, Outcome> {
    let mut text = String::new();
    loop {
        let step = match tokio::time::timeout_at(deadline, steps.recv()).await {
            Ok(step) => step,
            Err(_) => {
                return Err(Outcome::Failed(failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the local model did not finish in time (raise the route's timeout, or stream)",
                )));
            }
        };
        match step {
            Some(Step::Text(t)) => text.push_str(&t),
            Some(Step::Done { finish, prompt_tokens, completion_tokens, prompt_time, generation_time }) => {
                record(prompt_tokens, completion_tokens, prompt_time, generation_time);
                let answer = json!({
                    "id": head.id,
                    "object": "chat.completion",
                    "created": head.created,
                    "model": head.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": null,
                        "finish_reason": reason(finish),
                    }],
                    "usage": usage(prompt_tokens, completion_tokens),
                });
                let json = HeaderValue::from_static("application/json");
                return Ok(Answer::Whole(StatusCode::OK, Some(json), answer.to_string().into()));
            }
            Some(Step::Failed(e)) => {
                return Err(Outcome::Failed(failure(StatusCode::BAD_GATEWAY, "upstream_error", e)));
            }
            None => {
                return Err(Outcome::Failed(failure(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the local model stopped",
                )));
            }
        }
    }
}
