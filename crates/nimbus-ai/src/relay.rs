//! A streamed answer, relayed as it arrives: each event is passed on as soon as it is read, and
//! those already read together (an upstream that sends a burst) leave in one write; nothing waits
//! for more. Each event is read with a borrowing parse (no tree of values), and passed on verbatim
//! unless the client must not see it: the usage chunk the gateway asked for is dropped (or its
//! `usage` removed) when the client did not ask. A stream that breaks after its first byte ends with
//! an error event, never a clean `[DONE]`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use eventsource_stream::Event;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;

use crate::Ai;
use crate::cache::{Answer, Cache, Miss};
use crate::error::AiError;
use crate::usage::Meter;

pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// Events already read are written together up to this size.
const COALESCE: usize = 64 * 1024;

pub(crate) struct Relay {
    pub ai: Arc<Ai>,
    /// The backend's index in `ai`, for its circuit breaker.
    pub backend: usize,
    pub first: Event,
    pub rest: Events,
    pub meter: Meter,
    /// The client asked for `stream_options.include_usage` itself.
    pub wants_usage: bool,
    /// The longest wait for the next event.
    pub idle: Duration,
    /// The answer gathered for the semantic cache.
    pub capture: Option<Capture>,
}

/// A streamed answer's text, kept in the semantic cache when the stream ends cleanly with it.
pub(crate) struct Capture {
    cache: Arc<Cache>,
    miss: Option<Miss>,
    text: String,
    finish: Option<String>,
    model: String,
    usage: Value,
    /// A tool call or a second choice: not a text answer to keep.
    unfit: bool,
}

impl Capture {
    pub fn new(cache: Arc<Cache>, miss: Miss) -> Self {
        Self {
            cache,
            miss: Some(miss),
            text: String::new(),
            finish: None,
            model: String::new(),
            usage: Value::Null,
            unfit: false,
        }
    }

    fn done(&mut self) {
        let Some(miss) = self.miss.take() else { return };
        // `[DONE]` ends an answer cleanly even from a backend that names no finish reason.
        let finish_reason = self.finish.take().unwrap_or_else(|| "stop".to_owned());
        if self.unfit || self.text.len() > crate::cache::MAX_ANSWER {
            return;
        }
        let answer = Answer {
            content: std::mem::take(&mut self.text),
            finish_reason,
            model: std::mem::take(&mut self.model),
            usage: self.usage.take(),
        };
        self.cache.keep(miss, answer);
    }
}

/// What a chunk says that the relay needs: its text (for counting when the upstream gives no
/// usage), its usage, whether it is an error. Borrowed from the event's data where it can be.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Capture {
    fn take(&mut self, chunk: &Chunk<'_>) {
        if let (true, Some(model)) = (self.model.is_empty(), &chunk.model) {
            self.model = model.to_string();
        }
        for choice in chunk.choices.iter().flatten() {
            if let Some(finish) = &choice.finish_reason {
                self.finish = Some(finish.to_string());
            }
            let Some(delta) = &choice.delta else { continue };
            if choice.index != 0 || delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty()) {
                self.unfit = true;
            }
            if let Some(text) = &delta.content
                && self.text.len() <= crate::cache::MAX_ANSWER
            {
                self.text.push_str(text);
            }
        }
        if let Some(usage) = &chunk.usage {
            let total = usage.prompt_tokens + usage.completion_tokens;
            self.usage = serde_json::json!({"prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "total_tokens": total});
        }
    }
}

struct State {
    relay: Relay,
    pending: Option<Event>,
    ended: bool,
}

impl Relay {
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        let first = self.first.clone();
        let state = State { relay: self, pending: Some(first), ended: false };
        futures_util::stream::unfold(state, |mut state| async move {
            let mut out = BytesMut::new();
            while !state.ended && out.is_empty() {
                let next = match state.pending.take() {
                    Some(event) => Some(Ok(event)),
                    None => match tokio::time::timeout(state.relay.idle, state.relay.rest.next()).await {
                        Ok(next) => next,
                        Err(_) => Some(Err(format!("the backend sent nothing for {} s", state.relay.idle.as_secs()))),
                    },
                };
                state.take(next, &mut out);
                // What has arrived meanwhile goes out in the same write.
                while !state.ended && out.len() < COALESCE {
                    match state.relay.rest.next().now_or_never() {
                        Some(next) => state.take(next, &mut out),
                        None => break,
                    }
                }
            }
            (!out.is_empty()).then(|| (Ok(out.freeze()), state))
        })
    }
}

impl State {
    /// Appends what the client gets of the stream's next item (`None`: the stream ended).
    fn take(&mut self, next: Option<Result<Event, String>>, out: &mut BytesMut) {
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(why)) => return self.broken(&why, out),
            None => return self.broken("the backend's stream ended before `[DONE]`", out),
        };
        if event.data == "[DONE]" {
            self.ended = true;
            if let Some(capture) = &mut self.relay.capture {
                capture.done();
            }
            self.relay.meter.finish("ok");
            self.relay.ai.succeeded(self.relay.backend);
            out.extend_from_slice(b"data: [DONE]\n\n");
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&event.data) else {
            return frame(&event.event, &event.data, out);
        };
        if chunk.error.is_some() {
            // The upstream's own error event: the client gets it, the request ends there.
            self.ended = true;
            self.relay.meter.finish("broken");
            return frame(&event.event, &event.data, out);
        }
        let meter = &mut self.relay.meter;
        let mut generated = false;
        for choice in chunk.choices.iter().flatten() {
            let Some(delta) = &choice.delta else { continue };
            let calls = delta.tool_calls.iter().flatten().filter_map(|c| c.function.as_ref());
            let texts = calls.flat_map(|f| [f.name.as_deref(), f.arguments.as_deref()]);
            for text in std::iter::once(delta.content.as_deref()).chain(texts).flatten().filter(|t| !t.is_empty()) {
                meter.push_text(text);
                generated = true;
            }
        }
        if generated {
            meter.first_token();
        }
        if let Some(capture) = &mut self.relay.capture {
            capture.take(&chunk);
        }
        let Some(usage) = chunk.usage else { return frame(&event.event, &event.data, out) };
        meter.upstream_usage((usage.prompt_tokens, usage.completion_tokens));
        if self.relay.wants_usage {
            return frame(&event.event, &event.data, out);
        }
        // Asked for by the gateway only: the usage-only chunk goes, another loses the field.
        if chunk.choices.is_none_or(|c| c.is_empty()) {
            return;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&event.data) else { return };
        if let Some(object) = value.as_object_mut() {
            object.remove("usage");
        }
        frame(&event.event, &value.to_string(), out);
    }

    /// Ends the stream with an error event: the client can tell it from a complete answer.
    fn broken(&mut self, why: &str, out: &mut BytesMut) {
        self.ended = true;
        let backend = &self.relay.ai.backends[self.relay.backend];
        tracing::warn!(backend = backend.name(), reason = why, "an AI stream broke after its first byte");
        metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => backend.name().to_owned(), "outcome" => "broken").increment(1);
        self.relay.ai.failed(self.relay.backend);
        self.relay.meter.finish("broken");
        let error = AiError::upstream(
            axum::http::StatusCode::BAD_GATEWAY,
            "stream_interrupted",
            format!("the answer was interrupted: {why}"),
        );
        frame("", &error.body().to_string(), out);
    }
}

/// A network chunk as one piece per line (each ending after its `\n`, without copying): the SSE
/// parser keeps what it has not parsed yet and copies that rest after each line, so a burst of a
/// hundred events fed at once would be copied a hundred times over.
pub(crate) fn by_line<E>(chunk: Result<Bytes, E>) -> Vec<Result<Bytes, E>> {
    let Ok(chunk) = chunk else { return vec![chunk] };
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, byte) in chunk.iter().enumerate() {
        if *byte == b'\n' {
            lines.push(Ok(chunk.slice(start..=i)));
            start = i + 1;
        }
    }
    if start < chunk.len() {
        lines.push(Ok(chunk.slice(start..)));
    }
    lines
}

/// One SSE event: its name when it has one (OpenAI sends none), its data.
fn frame(event: &str, data: &str, out: &mut BytesMut) {
    if !event.is_empty() && event != "message" {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(event: &str, data: &str) -> BytesMut {
        let mut out = BytesMut::new();
        frame(event, data, &mut out);
        out
    }

    #[test]
    fn frames_carry_each_data_line() {
        assert_eq!(framed("", "{\"a\":1}"), "data: {\"a\":1}\n\n");
        assert_eq!(framed("message", "x\ny"), "data: x\ndata: y\n\n");
        assert_eq!(framed("ping", "1"), "event: ping\ndata: 1\n\n");
    }

    #[test]
    fn chunks_split_after_each_line() {
        let pieces: Vec<Bytes> = by_line::<()>(Ok(Bytes::from_static(b"data: a\n\ndata: b\r\nda")))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pieces, ["data: a\n", "\n", "data: b\r\n", "da"]);
        assert!(by_line::<()>(Ok(Bytes::new())).is_empty());
        assert!(by_line(Err::<Bytes, _>("broken")).first().is_some_and(Result::is_err));
    }

    #[test]
    fn chunks_are_read_without_a_tree() {
        let data = r#"{"choices":[{"delta":{"content":"caf\u00e9","tool_calls":[{"function":{"arguments":"{}"}}]}}],"usage":null}"#;
        let chunk: Chunk<'_> = serde_json::from_str(data).unwrap();
        let delta = chunk.choices.as_ref().unwrap()[0].delta.as_ref().unwrap();
        assert_eq!(delta.content.as_deref(), Some("café"));
        assert!(chunk.usage.is_none() && chunk.error.is_none());
        let last: Chunk<'_> =
            serde_json::from_str(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert_eq!(last.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((3, 2)));
    }
}
