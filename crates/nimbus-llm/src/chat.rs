//! The chat model and its generation thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_transformers::generation::{LogitsProcessor, Sampling as Sampler};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::Error;
use crate::llama::{self, Cache, Llama};
use crate::tokenizer::{self, Detokenizer};

/// The longest context served (the model's own may be shorter).
const MAX_CONTEXT: usize = 8192;

/// A prompt is fed in pieces of this many tokens, so that a long one does not stall the other
/// sequences' next tokens for its whole length.
const PREFILL_CHUNK: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct ChatOptions {
    /// Sequences generated together, a token each in turn.
    pub max_active: usize,
    /// Requests waiting for a slot; past them, [`Error::Busy`].
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0: always the likeliest token.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Generated tokens at most (the context's end stops it sooner).
    pub max_tokens: usize,
    /// Generation ends before any of these strings, which are not part of the answer.
    pub stop: Vec<String>,
    /// OpenAI's: subtracted from a token's logit once per time it was generated…
    pub frequency_penalty: f32,
    /// …and once if it was generated at all.
    pub presence_penalty: f32,
}

/// What a generation sends, in order: text pieces, then one `Done` (or `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Time spent reading the prompt, and generating after it.
        prompt_time: Duration,
        generation_time: Duration,
    },
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its answer, or a stop string came.
    Stop,
    /// `max_tokens` or the context's end.
    Length,
}

pub struct ChatModel {
    id: String,
    context: usize,
    tokenizer: Arc<Tokenizer>,
    template: minijinja::Environment<'static>,
    jobs: SyncSender<Job>,
    queue: usize,
}

struct Job {
    prompt: Vec<u32>,
    sampling: Sampling,
    steps: UnboundedSender<Step>,
}

impl ChatModel {
    /// Loads a GGUF file (llama architecture, byte-level BPE tokenizer, a chat template) and
    /// starts its generation thread. Its id is the file's name without `.gguf`.
    pub fn load(path: &Path, options: ChatOptions) -> Result<Self, Error> {
        let name = path.display();
        let mut file = std::fs::File::open(path).map_err(|e| Error::Load(format!("cannot open {name}: {e}")))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::Load(format!("{name} is not a GGUF model file: {e}")))?;
        let metadata = &content.metadata;
        let architecture = metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
        if architecture.as_deref() != Some("llama") {
            return Err(Error::Load(format!(
                "{name}: the architecture is {}, only `llama` is supported",
                architecture.map_or("not named".to_owned(), |a| format!("`{a}`"))
            )));
        }
        let tokenizer = tokenizer::from_gguf(metadata).map_err(|e| Error::Load(format!("{name}: {e}")))?;
        let template = metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| Error::Load(format!("{name} has no chat template (`tokenizer.chat_template`)")))?;
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", template)
            .map_err(|e| Error::Load(format!("{name}: its chat template does not parse: {e}")))?;
        let trained =
            metadata.get("llama.context_length").and_then(|v| v.to_u32().ok()).map_or(MAX_CONTEXT, |c| c as usize);
        let context = trained.min(MAX_CONTEXT);
        let mut stops: Vec<u32> = Vec::new();
        if let Some(eos) = metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()) {
            stops.push(eos);
        }
        // ChatML models end a turn with `<|im_end|>` whatever their EOS says.
        for token in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(token)
                && !stops.contains(&id)
            {
                stops.push(id);
            }
        }
        let model = Llama::load(&content, &mut file, context)
            .map_err(|e| Error::Load(format!("{name}: cannot load its weights: {e}")))?;
        let id = path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned()).unwrap_or_default();
        let tokenizer = Arc::new(tokenizer);
        let (jobs, queue) = std::sync::mpsc::sync_channel(options.queue);
        let engine =
            Engine { model, tokenizer: tokenizer.clone(), stops, context, max_active: options.max_active.max(1) };
        std::thread::Builder::new()
            .name("nimbus-llm".into())
            .spawn(move || engine.run(queue))
            .map_err(|e| Error::Load(format!("cannot start the model's thread: {e}")))?;
        Ok(Self { id, context, tokenizer, template: env, jobs, queue: options.queue })
    }

    /// The model's name, as clients ask for it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Tokens the prompt and the answer share.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// The messages through the model's chat template (with the assistant's turn opened), as
    /// token ids.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, Error> {
        let messages: Vec<HashMap<&'static str, String>> = messages
            .iter()
            .map(|m| HashMap::from([("role", m.role.clone()), ("content", m.content.clone())]))
            .collect();
        let text = self
            .template
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => "",
                    eos_token => "",
                })
            })
            .map_err(|e| Error::Template(e.to_string()))?;
        self.tokenize(&text)
    }

    /// `text` as token ids (special tokens written in it are recognised).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, Error> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| Error::Model(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Queues a generation; its steps arrive on the receiver. Dropping the receiver stops it.
    pub fn generate(&self, prompt: Vec<u32>, sampling: Sampling) -> Result<UnboundedReceiver<Step>, Error> {
        if prompt.is_empty() || prompt.len() >= self.context {
            return Err(Error::ContextLength { context: self.context, prompt: prompt.len() });
        }
        let (steps, receiver) = unbounded_channel();
        match self.jobs.try_send(Job { prompt, sampling, steps }) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(Error::Busy(self.queue)),
            Err(TrySendError::Disconnected(_)) => Err(Error::Model("the generation thread has stopped".into())),
        }
    }
}

/// The generation thread's state: the model, whose weights every sequence shares (each has its own
/// attention cache).
struct Engine {
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    stops: Vec<u32>,
    context: usize,
    max_active: usize,
}

impl Sequence {
    /// Its prompt is in: it feeds its last token, with the others generating.
    fn generating(&self) -> bool {
        self.prompt_time.is_some()
    }
}

struct Sequence {
    job: Job,
    cache: Cache,
    /// Tokens already through the model.
    position: usize,
    /// Tokens to feed next: the prompt's rest, or the last generated token.
    pending: Vec<u32>,
    generated: usize,
    counts: HashMap<u32, u32>,
    sampler: LogitsProcessor,
    detokenizer: Detokenizer,
    /// The answer's text so far, and how much of it has been sent (the rest may be the start of
    /// a stop string).
    text: String,
    sent: usize,
    started: Instant,
    prompt_time: Option<Duration>,
}

impl Engine {
    fn run(self, jobs: Receiver<Job>) {
        let mut active: Vec<Sequence> = Vec::new();
        loop {
            while active.len() < self.max_active {
                match jobs.try_recv() {
                    Ok(job) => active.push(self.start(job)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if active.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => active.push(self.start(job)),
                    Err(_) => return,
                }
            }
            self.round(&mut active);
        }
    }

    /// One turn of every active sequence: each one still reading its prompt feeds its next piece
    /// alone; those generating feed their last token together, one batch through the model (the
    /// weights are read once for all of them).
    fn round(&self, active: &mut Vec<Sequence>) {
        // A sequence whose client left stops here.
        active.retain(|s| !s.job.steps.is_closed());
        let mut outcome: Vec<Result<bool, Error>> = Vec::with_capacity(active.len());
        for s in active.iter_mut() {
            outcome.push(match s.generating() {
                true => Ok(true),
                false => self.prefill(s),
            });
        }
        let mut batch: Vec<llama::Input<'_>> = active
            .iter_mut()
            .filter(|s| s.generating())
            .map(|s| llama::Input { tokens: &s.pending, position: s.position, cache: &mut s.cache })
            .collect();
        if !batch.is_empty() {
            let logits = self.model.forward(&mut batch).map_err(Error::from);
            drop(batch);
            let mut row = 0;
            for (s, outcome) in active.iter_mut().zip(&mut outcome) {
                if !s.generating() || outcome.as_ref().is_ok_and(|going| !going) {
                    continue;
                }
                *outcome = match &logits {
                    Ok(logits) => logits.get(row).map_err(Error::from).and_then(|l| {
                        s.position += 1;
                        s.pending.clear();
                        self.next(s, &l)
                    }),
                    Err(e) => Err(Error::Model(e.to_string())),
                };
                row += 1;
            }
        }
        let mut outcome = outcome.into_iter();
        active.retain_mut(|s| match outcome.next().unwrap_or(Ok(false)) {
            Ok(going) => going,
            Err(e) => {
                tracing::error!(error = %e, "the local model failed a generation");
                let _ = s.job.steps.send(Step::Failed(e.to_string()));
                false
            }
        });
    }

    fn start(&self, job: Job) -> Sequence {
        let sampling = &job.sampling;
        let sampler = match (sampling.temperature, sampling.top_p) {
            (t, _) if t <= 0.0 => Sampler::ArgMax,
            (temperature, Some(p)) if p < 1.0 => Sampler::TopP { p, temperature },
            (temperature, _) => Sampler::All { temperature },
        };
        Sequence {
            cache: self.model.cache(),
            position: 0,
            pending: job.prompt.clone(),
            generated: 0,
            counts: HashMap::new(),
            sampler: LogitsProcessor::from_sampling(sampling.seed, sampler),
            detokenizer: Detokenizer::default(),
            text: String::new(),
            sent: 0,
            started: Instant::now(),
            prompt_time: None,
            job,
        }
    }

    /// Feeds the next piece of a sequence's prompt through the model; at its end, samples the
    /// first token. Whether the sequence goes on.
    fn prefill(&self, s: &mut Sequence) -> Result<bool, Error> {
        let take = s.pending.len().min(PREFILL_CHUNK);
        let input: Vec<u32> = s.pending.drain(..take).collect();
        let logits =
            self.model.forward(&mut [llama::Input { tokens: &input, position: s.position, cache: &mut s.cache }])?;
        s.position += take;
        if !s.pending.is_empty() {
            return Ok(true);
        }
        s.prompt_time = Some(s.started.elapsed());
        self.next(s, &logits.get(0)?)
    }

    /// Samples a sequence's next token from its logits, and sends what it adds to the answer.
    fn next(&self, s: &mut Sequence, logits: &candle_core::Tensor) -> Result<bool, Error> {
        let logits = logits.to_dtype(candle_core::DType::F32)?;
        let (frequency, presence) = (s.job.sampling.frequency_penalty, s.job.sampling.presence_penalty);
        let counts = &s.counts;
        let token = s.sampler.sample_f(&logits, |logits| {
            if frequency != 0.0 || presence != 0.0 {
                for (&token, &count) in counts {
                    if let Some(l) = logits.get_mut(token as usize) {
                        *l -= count as f32 * frequency + presence;
                    }
                }
            }
        })?;
        if self.stops.contains(&token) {
            return Ok(self.finish(s, Finish::Stop));
        }
        s.generated += 1;
        *s.counts.entry(token).or_default() += 1;
        s.pending.push(token);
        s.text.push_str(&s.detokenizer.push(&self.tokenizer, token)?);
        if let Some(end) = s.job.sampling.stop.iter().filter_map(|stop| s.text[s.sent..].find(stop.as_str())).min() {
            s.text.truncate(s.sent + end);
            return Ok(self.finish(s, Finish::Stop));
        }
        if s.generated >= s.job.sampling.max_tokens || s.position + 1 >= self.context {
            return Ok(self.finish(s, Finish::Length));
        }
        // Hold back what may be the start of a stop string.
        let held = s.job.sampling.stop.iter().map(|stop| partial_suffix(&s.text[s.sent..], stop)).max().unwrap_or(0);
        let ready = s.text.len() - held;
        if ready > s.sent {
            let piece = s.text[s.sent..ready].to_owned();
            s.sent = ready;
            return Ok(s.job.steps.send(Step::Text(piece)).is_ok());
        }
        Ok(true)
    }

    fn finish(&self, s: &mut Sequence, finish: Finish) -> bool {
        if s.text.len() > s.sent {
            let _ = s.job.steps.send(Step::Text(s.text[s.sent..].to_owned()));
        }
        let prompt_time = s.prompt_time.unwrap_or_default();
        let _ = s.job.steps.send(Step::Done {
            finish,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.generated,
            prompt_time,
            generation_time: s.started.elapsed().saturating_sub(prompt_time),
        });
        false
    }
}

/// The length of the longest end of `text` that `stop` begins with (at a character boundary).
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.as_bytes().starts_with(&text.as_bytes()[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::partial_suffix;

    #[test]
    fn a_stop_strings_start_is_held_back() {
        assert_eq!(partial_suffix("hello wor", "world"), 3);
        assert_eq!(partial_suffix("hello", "world"), 0);
        assert_eq!(partial_suffix("say ##", "###"), 2);
        assert_eq!(partial_suffix("", "x"), 0);
        assert_eq!(partial_suffix("é", "\u{301}x"), 0);
    }
}
