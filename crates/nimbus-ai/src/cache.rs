//! The semantic cache (`[ai.cache]`, on routes with `semantic_cache = true`): a chat answer is
//! kept with the embedding of the request's last message; a later request whose last message is
//! close enough (cosine similarity ≥ `similarity`), whose earlier messages and other parameters
//! are exactly the same (a fingerprint), in the same scope (its user, or everyone) and within
//! `ttl`, gets that answer, streamed or whole as it asks, marked `x-nimbus-ai-cache: hit`, without
//! a backend call or a token reserved. Only whole text answers (`stop` or `length`) are kept, never
//! tool calls, refusals or broken streams. Entries live in the node's memory, at most
//! `max_entries`, the oldest evicted first.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_config::{AiCache, CacheScope};
use nimbus_llm::EmbeddingModel;
use serde_json::{Value, json};

use crate::usage::Account;

pub(crate) const HEADER: &str = "x-nimbus-ai-cache";
/// The longest answer kept (bytes of text).
pub(crate) const MAX_ANSWER: usize = 1 << 20;

pub(crate) struct Cache {
    config: AiCache,
    embedder: Arc<EmbeddingModel>,
    entries: Mutex<VecDeque<Entry>>,
}

struct Entry {
    key: Key,
    vector: Vec<f32>,
    answer: Arc<Answer>,
    expires: Instant,
}

/// What must be equal for an entry to match: the scope, and the fingerprint of everything in the
/// request but its last message (and how the answer is delivered).
#[derive(Clone, PartialEq, Eq)]
struct Key {
    scope: String,
    fingerprint: u64,
}

/// An answer kept.
pub(crate) struct Answer {
    pub content: String,
    pub finish_reason: String,
    pub model: String,
    pub usage: Value,
}

impl Answer {
    /// A whole `chat.completion`'s text answer (none for tool calls or several choices).
    pub fn from_whole(bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let choices = value["choices"].as_array().filter(|c| c.len() == 1)?;
        let message = &choices[0]["message"];
        if message.get("tool_calls").is_some_and(|t| !t.is_null()) {
            return None;
        }
        Some(Self {
            content: message["content"].as_str()?.to_owned(),
            finish_reason: choices[0]["finish_reason"].as_str()?.to_owned(),
            model: value["model"].as_str().unwrap_or_default().to_owned(),
            usage: value["usage"].clone(),
        })
    }
}

/// A request the cache could not answer: what to keep its answer under.
pub(crate) struct Miss {
    key: Key,
    vector: Vec<f32>,
}

pub(crate) enum Lookup {
    Hit(Arc<Answer>),
    Miss(Miss),
    /// Not cacheable (several choices, no user to scope it to, an embedding failure).
    Skip,
}

impl Cache {
    pub fn new(config: AiCache, embedder: Arc<EmbeddingModel>) -> Self {
        Self { config, embedder, entries: Mutex::new(VecDeque::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn lookup(&self, body: &Value, account: &Account) -> Lookup {
        let lookup = self.find(body, account).await;
        let outcome = match &lookup {
            Lookup::Hit(_) => "hit",
            Lookup::Miss(_) => "miss",
            Lookup::Skip => "skip",
        };
        metrics::counter!("nimbus_ai_cache_total", "outcome" => outcome).increment(1);
        lookup
    }

    async fn find(&self, body: &Value, account: &Account) -> Lookup {
        let scope = match self.config.scope {
            CacheScope::Global => String::new(),
            CacheScope::User => match (&account.user, &account.key) {
                (Some(user), _) => format!("user:{user}"),
                (None, Some(key)) => format!("key:{key}"),
                (None, None) => return Lookup::Skip,
            },
        };
        if body["n"].as_u64().is_some_and(|n| n != 1) {
            return Lookup::Skip;
        }
        let Some((last, rest)) = body["messages"].as_array().and_then(|m| m.split_last()) else { return Lookup::Skip };
        let text = match &last["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
            _ => return Lookup::Skip,
        };
        if text.is_empty() {
            return Lookup::Skip;
        }
        let key = Key { scope, fingerprint: fingerprint(body, rest, last) };
        let embedder = self.embedder.clone();
        let vector = match tokio::task::spawn_blocking(move || embedder.embed(&[text])).await {
            Ok(Ok((mut vectors, _))) if vectors.len() == 1 => vectors.remove(0),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the semantic cache could not embed a prompt");
                return Lookup::Skip;
            }
            _ => return Lookup::Skip,
        };
        let now = Instant::now();
        let mut entries = self.entries();
        entries.retain(|e| e.expires > now);
        // (Unit vectors: the dot product is the cosine similarity.)
        let best = entries
            .iter()
            .filter(|e| e.key == key)
            .map(|e| (dot(&e.vector, &vector), e))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((similarity, entry)) if f64::from(similarity) >= self.config.similarity => {
                Lookup::Hit(entry.answer.clone())
            }
            _ => Lookup::Miss(Miss { key, vector }),
        }
    }

    pub fn keep(&self, miss: Miss, answer: Answer) {
        // A whole answer may be up to 256 MiB: only answers up to `MAX_ANSWER` are kept, so that
        // `max_entries` bounds the memory the cache holds.
        let fits = !answer.content.is_empty() && answer.content.len() <= MAX_ANSWER;
        if !matches!(answer.finish_reason.as_str(), "stop" | "length") || !fits {
            return;
        }
        let mut entries = self.entries();
        while entries.len() >= self.config.max_entries {
            entries.pop_front();
        }
        let expires = Instant::now() + self.config.ttl.get();
        entries.push_back(Entry { key: miss.key, vector: miss.vector, answer: Arc::new(answer), expires });
        metrics::gauge!("nimbus_ai_cache_entries").set(entries.len() as f64);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Everything that shapes the answer besides the last message's meaning: the other messages, the
/// last one's role, the model and the parameters (not how it is delivered, nor the `user`).
fn fingerprint(body: &Value, earlier: &[Value], last: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(fields) = body.as_object() {
        for (name, value) in fields {
            if !matches!(name.as_str(), "messages" | "stream" | "stream_options" | "user") {
                name.hash(&mut hasher);
                value.to_string().hash(&mut hasher);
            }
        }
    }
    for message in earlier {
        message.to_string().hash(&mut hasher);
    }
    last["role"].to_string().hash(&mut hasher);
    hasher.finish()
}

/// A kept answer, given as the request asks: a `chat.completion`, or a stream of chunks (a few
/// words each) ending in `[DONE]`, with the usage chunk when asked.
pub(crate) fn respond(answer: &Answer, stream: bool, wants_usage: bool) -> Response {
    let id = format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32);
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut response = if stream {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": answer.model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let mut out = String::new();
        let mut push = |value: Value| out.push_str(&format!("data: {value}\n\n"));
        push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        for piece in pieces(&answer.content) {
            push(chunk(json!({"content": piece}), Value::Null));
        }
        push(chunk(json!({}), json!(answer.finish_reason)));
        if wants_usage {
            let mut last = chunk(json!({}), Value::Null);
            last["choices"] = json!([]);
            last["usage"] = answer.usage.clone();
            push(last);
        }
        out.push_str("data: [DONE]\n\n");
        let mut response = Response::new(Body::from(out));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let whole = json!({
            "id": id, "object": "chat.completion", "created": created, "model": answer.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.content, "refusal": null},
                         "logprobs": null, "finish_reason": answer.finish_reason}],
            "usage": answer.usage,
        });
        (StatusCode::OK, axum::Json(whole)).into_response()
    };
    response.headers_mut().insert(HEADER, HeaderValue::from_static("hit"));
    response
}

/// The text in pieces of a word and the spaces before it.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            out.push(&text[start..i]);
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_into_words_with_their_spaces_and_back() {
        assert_eq!(pieces("The capital  is Paris."), ["The", " capital", "  is", " Paris."]);
        assert_eq!(pieces(" a"), [" a"]);
        assert!(pieces("").is_empty());
        let text = "Un été à Paris,\nsans fin ";
        assert_eq!(pieces(text).concat(), text);
    }

    #[test]
    fn the_fingerprint_ignores_delivery_and_the_last_messages_words() {
        let a = json!({"model": "m", "temperature": 0, "stream": true, "user": "u1",
                       "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
        let b = json!({"model": "m", "temperature": 0, "user": "u2",
                       "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]});
        let print = |v: &Value| {
            let (last, rest) = v["messages"].as_array().unwrap().split_last().unwrap();
            fingerprint(v, rest, last)
        };
        assert_eq!(print(&a), print(&b));
        let mut c = b.clone();
        c["temperature"] = json!(1);
        assert_ne!(print(&b), print(&c));
        let mut d = b.clone();
        d["messages"][0]["content"] = json!("Be long.");
        assert_ne!(print(&b), print(&d));
    }
}
