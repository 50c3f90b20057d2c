//! The sentence-embedding model: BERT (all-MiniLM-L6-v2) from a folder holding `config.json`,
//! `model.safetensors` and `tokenizer.json` (and sentence-transformers' `sentence_bert_config.json`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::Error;

/// Texts embedded in one pass through the model.
const BATCH: usize = 32;

pub struct EmbeddingModel {
    id: String,
    model: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
}

impl EmbeddingModel {
    /// Loads the model in `dir`; its id is the folder's name.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let name = dir.display();
        let read = |file: &str| {
            std::fs::read(dir.join(file))
                .map_err(|e| Error::Load(format!("cannot read {}: {e}", dir.join(file).display())))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| Error::Load(format!("{name}/config.json is not a BERT configuration: {e}")))?;
        // sentence-transformers truncates at its own `max_seq_length` (256 for this model), not
        // at the tokenizer's 128.
        let max_length = match read("sentence_bert_config.json") {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["max_seq_length"].as_u64())
                .map_or(256, |n| n as usize),
            Err(_) => 256,
        }
        .min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| Error::Load(format!("{name}/tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| Error::Load(format!("{name}/tokenizer.json: {e}")))?;
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..pad }));
        let weights = VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &Device::Cpu)
            .map_err(|e| Error::Load(format!("{name}/model.safetensors: {e}")))?;
        let model = BertModel::load(weights, &config).map_err(|e| Error::Load(format!("{name}: {e}")))?;
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { id, model, tokenizer, dimensions: config.hidden_size })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Unit-length embeddings of `texts` (in order), and the tokens read (after truncation).
    /// CPU work in proportion to the texts: call it off the async threads.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), Error> {
        let mut out = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for batch in texts.chunks(BATCH) {
            let encodings =
                self.tokenizer.encode_batch(batch.to_vec(), true).map_err(|e| Error::Model(e.to_string()))?;
            let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, Error> {
                let rows = encodings.iter().map(|e| Tensor::new(f(e), &Device::Cpu)).collect::<Result<Vec<_>, _>>()?;
                Ok(Tensor::stack(&rows, 0)?)
            };
            let ids = rows(&|e| e.get_ids())?;
            let types = rows(&|e| e.get_type_ids())?;
            let mask = rows(&|e| e.get_attention_mask())?;
            tokens +=
                encodings.iter().map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count()).sum::<usize>();
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens (not the padding), then unit length.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let mean = summed.broadcast_div(&mask.sum(1)?)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
            let unit = mean.broadcast_div(&norm)?;
            out.extend(unit.to_vec2::<f32>()?);
        }
        Ok((out, tokens))
    }
}
