//! The AI gateway's local provider, so the whole stack runs with no external service: a chat
//! model from a GGUF file of the llama architecture (SmolLM2-135M-Instruct by default), and a
//! BERT sentence-embedding model from safetensors (all-MiniLM-L6-v2), both on the CPU through
//! candle.
//!
//! [`ChatModel`] loads once and generates on its own thread, interleaving up to `max_active`
//! sequences a token at a time (each with its own attention cache, the weights shared), with a
//! bounded queue of requests waiting behind them: [`Error::Busy`] past it. The tokenizer is built
//! from the GGUF's own metadata and its chat template rendered with minijinja (`tokenizer.rs`).
//! [`EmbeddingModel`] embeds a batch of texts: mean pooling over the attention mask, then L2
//! normalisation (what sentence-transformers does for this model).

mod chat;
mod embed;
mod llama;
mod tokenizer;

pub use chat::{ChatModel, ChatOptions, Finish, Message, Sampling, Step};
pub use embed::EmbeddingModel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file is missing or not what it should be.
    #[error("{0}")]
    Load(String),
    /// Every sequence slot and the whole queue are taken.
    #[error("the local model is busy: {0} requests are waiting")]
    Busy(usize),
    /// The prompt and the tokens asked for do not fit in the model's context.
    #[error("this model's maximum context length is {context} tokens; the messages take {prompt}")]
    ContextLength { context: usize, prompt: usize },
    /// The chat template could not be rendered for these messages.
    #[error("the chat template failed: {0}")]
    Template(String),
    /// The model itself failed (a tensor operation): a bug or a corrupt file.
    #[error("the local model failed: {0}")]
    Model(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}
