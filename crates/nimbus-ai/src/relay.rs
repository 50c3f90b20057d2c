//! A streamed answer, relayed event by event as it arrives (nothing is held back): usage is read
//! from the chunks, the usage chunk the gateway asked for is dropped when the client did not ask,
//! and a stream that breaks after its first byte ends with an error event, never a clean `[DONE]`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::Ai;
use crate::error::AiError;
use crate::usage::{self, Meter};

pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

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
            loop {
                if state.ended {
                    return None;
                }
                let next = match state.pending.take() {
                    Some(event) => Ok(event),
                    None => match tokio::time::timeout(state.relay.idle, state.relay.rest.next()).await {
                        Ok(Some(event)) => event,
                        Ok(None) => Err("the backend's stream ended before `[DONE]`".to_owned()),
                        Err(_) => Err(format!("the backend sent nothing for {} s", state.relay.idle.as_secs())),
                    },
                };
                let event = match next {
                    Ok(event) => event,
                    Err(why) => return Some((state.broken(&why), state)),
                };
                if event.data == "[DONE]" {
                    state.ended = true;
                    state.relay.meter.finish("ok");
                    state.relay.ai.backends[state.relay.backend].circuit.succeeded();
                    return Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), state));
                }
                if let Some(bytes) = state.chunk(event) {
                    return Some((Ok(bytes), state));
                }
            }
        })
    }
}

impl State {
    /// What the client gets of one event; `None` to drop it.
    fn chunk(&mut self, event: Event) -> Option<Bytes> {
        let meter = &mut self.relay.meter;
        let Ok(mut chunk) = serde_json::from_str::<Value>(&event.data) else {
            return Some(frame(&event.event, &event.data));
        };
        if chunk.get("error").is_some() {
            // The upstream's own error event: the client gets it, the request ends there.
            self.ended = true;
            meter.finish("broken");
            return Some(frame(&event.event, &event.data));
        }
        let before = meter.text_len();
        meter.generated(&chunk);
        if meter.text_len() > before {
            meter.first_token();
        }
        if let Some(used) = usage::from_upstream(&chunk) {
            meter.upstream_usage(used);
        }
        if self.relay.wants_usage || chunk.get("usage").is_none() {
            return Some(frame(&event.event, &event.data));
        }
        // Asked for by the gateway only: the usage-only chunk goes, the others lose the field.
        if chunk["choices"].as_array().is_none_or(|c| c.is_empty()) {
            return None;
        }
        if let Some(object) = chunk.as_object_mut() {
            object.remove("usage");
        }
        Some(frame(&event.event, &chunk.to_string()))
    }

    /// Ends the stream with an error event: the client can tell it from a complete answer.
    fn broken(&mut self, why: &str) -> Result<Bytes, Infallible> {
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
        Ok(frame("", &error.body().to_string()))
    }
}

/// One SSE event: its name when it has one (OpenAI sends none), its data.
fn frame(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 16);
    if !event.is_empty() && event != "message" {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_each_data_line() {
        assert_eq!(frame("", "{\"a\":1}"), "data: {\"a\":1}\n\n");
        assert_eq!(frame("message", "x\ny"), "data: x\ndata: y\n\n");
        assert_eq!(frame("ping", "1"), "event: ping\ndata: 1\n\n");
    }
}
