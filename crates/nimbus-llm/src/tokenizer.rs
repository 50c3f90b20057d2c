//! The chat model's tokenizer, built from its GGUF metadata rather than trusted to a generic
//! fallback: byte-level BPE from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`, the
//! pre-tokenizer llama.cpp uses for the file's `tokenizer.ggml.pre` (digits one by one, then
//! GPT-2's split, no space added in front), and every control token (`token_type` 3, e.g.
//! `<|im_start|>`) as a special token, so that a rendered chat template encodes to its ids.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::Error;

/// `token_type` of a control token in GGUF (llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`).
const CONTROL: i32 = 3;

pub(crate) fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Tokenizer, Error> {
    let get = |key: &str| metadata.get(key).ok_or_else(|| Error::Load(format!("the GGUF has no `{key}`")));
    let kind = get("tokenizer.ggml.model")?.to_string().map_err(|e| Error::Load(e.to_string()))?;
    if kind != "gpt2" {
        return Err(Error::Load(format!(
            "the GGUF's tokenizer is `{kind}`; only byte-level BPE (`gpt2`) tokenizers are supported"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>, Error> {
        let values = get(key)?.to_vec().map_err(|e| Error::Load(format!("`{key}`: {e}")))?;
        values.iter().map(|v| v.to_string().cloned().map_err(|e| Error::Load(format!("`{key}`: {e}")))).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
            None => Err(Error::Load(format!("`tokenizer.ggml.merges` has an entry without a space: {m:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
        Some(v) => {
            v.to_vec().map_err(|e| Error::Load(e.to_string()))?.iter().map(|t| t.to_i32().unwrap_or(1)).collect()
        }
        None => Vec::new(),
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Load(format!("the GGUF's BPE vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let add_prefix_space = metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(add_prefix_space.unwrap_or(false), false, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(_, &t)| t == CONTROL)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| Error::Load(format!("the GGUF's control tokens: {e}")))?;
    Ok(tokenizer)
}

/// Text out of tokens as they come, one piece at a time: a token that ends inside a UTF-8
/// character (byte-level BPE splits them) is held until the character is whole.
#[derive(Default)]
pub(crate) struct Detokenizer {
    tokens: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, Error> {
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| Error::Model(e.to_string()));
        let before = decode(&self.tokens[self.prefix..self.read])?;
        let now = decode(&self.tokens[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = self.tokens.len();
            Ok(now[before.len()..].to_owned())
        } else {
            Ok(String::new())
        }
    }
}
