//! The llama architecture's forward pass over GGUF weights, written for serving: the weights are
//! shared by every sequence (`&self`), each sequence keeps its attention cache in a [`Cache`] that
//! grows in blocks and is appended to in place (no copy of the whole cache per token), and the
//! grouped-query attention multiplies each key/value head with its group of query heads at once
//! instead of repeating the keys and values for every query head.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Embedding;
use candle_nn::kv_cache::KvCache;

/// Quantisations candle multiplies with scalar code only (no AVX kernel): 4 to 5 times slower
/// than Q8_0, which has one. Such weights are converted to Q8_0 at load (nearly lossless: 8 bits
/// hold a 4- or 5-bit value and its block's offset; 1.7 times the memory for Q4_1).
const SLOW: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Attention cache positions allocated at a time, per layer and sequence.
const CACHE_BLOCK: usize = 512;

pub(crate) struct Llama {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    eps: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
}

struct Layer {
    attention_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// One sequence's attention cache: keys and values of every position so far, per layer.
pub(crate) struct Cache {
    layers: Vec<KvCache>,
}

/// One sequence's part of a forward pass: its next tokens, where they start, its cache.
pub(crate) struct Input<'a> {
    pub tokens: &'a [u32],
    pub position: usize,
    pub cache: &'a mut Cache,
}

impl Llama {
    /// The model in `content` (read from `file`), for a context of `context` positions.
    pub fn load(content: &gguf_file::Content, file: &mut std::fs::File, context: usize) -> Result<Self> {
        let cpu = Device::Cpu;
        let metadata = |key: &str| {
            content.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no `{key}`")))
        };
        let heads = metadata("llama.attention.head_count")?.to_u32()? as usize;
        let kv_heads = metadata("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = metadata("llama.block_count")?.to_u32()? as usize;
        let embedding = metadata("llama.embedding_length")?.to_u32()? as usize;
        let eps = metadata("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = metadata("llama.rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        if heads == 0 || kv_heads == 0 {
            candle_core::bail!("{heads} attention heads and {kv_heads} key/value heads");
        }
        let head_dim = embedding / heads;
        if !heads.is_multiple_of(kv_heads) || head_dim * heads != embedding {
            candle_core::bail!("{heads} attention heads and {kv_heads} key/value heads of width {embedding}");
        }
        let mut tensor = |name: &str| -> Result<QTensor> {
            let tensor = content.tensor(file, name, &cpu)?;
            let block = GgmlDType::Q8_0.block_size();
            if SLOW.contains(&tensor.dtype()) && tensor.shape().dims().last().is_some_and(|d| d % block == 0) {
                return QTensor::quantize(&tensor.dequantize(&cpu)?, GgmlDType::Q8_0);
            }
            Ok(tensor)
        };
        let matmul = |t: QTensor| QMatMul::from_arc(Arc::new(t));
        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = Embedding::new(embeddings_q.dequantize(&cpu)?, embedding);
        // Tied embeddings (SmolLM2): no `output.weight`, the embedding matrix projects back.
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => matmul(tensor("output.weight")?)?,
            false => matmul(embeddings_q)?,
        };
        let norm = tensor("output_norm.weight")?.dequantize(&cpu)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut weight = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            layers.push(Layer {
                attention_norm: weight("attn_norm")?.dequantize(&cpu)?,
                wq: matmul(weight("attn_q")?)?,
                wk: matmul(weight("attn_k")?)?,
                wv: matmul(weight("attn_v")?)?,
                wo: matmul(weight("attn_output")?)?,
                ffn_norm: weight("ffn_norm")?.dequantize(&cpu)?,
                gate: matmul(weight("ffn_gate")?)?,
                up: matmul(weight("ffn_up")?)?,
                down: matmul(weight("ffn_down")?)?,
            });
        }
        // Rotary embeddings, interleaved pairs (llama.cpp's "norm" convention, which GGUF llama
        // weights are permuted for).
        let inverse: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32)).collect();
        let inverse = Tensor::new(inverse.as_slice(), &cpu)?.reshape((1, head_dim / 2))?;
        let positions = Tensor::arange(0u32, context as u32, &cpu)?.to_dtype(DType::F32)?.reshape((context, 1))?;
        let angles = positions.matmul(&inverse)?;
        Ok(Self {
            embeddings,
            layers,
            norm,
            output,
            eps,
            heads,
            kv_heads,
            head_dim,
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    pub fn cache(&self) -> Cache {
        Cache { layers: (0..self.layers.len()).map(|_| KvCache::new(2, CACHE_BLOCK)).collect() }
    }

    /// Feeds each input's tokens (at its positions, through its cache; every input has as many
    /// tokens) through the model: the logits of each input's last token, `(inputs, vocabulary)`.
    /// Inputs are rows of every matrix product; attention is each one's own.
    pub fn forward(&self, inputs: &mut [Input<'_>]) -> Result<Tensor> {
        let (b, t) = (inputs.len(), inputs.first().map_or(0, |i| i.tokens.len()));
        if b == 0 || t == 0 || inputs.iter().any(|i| i.tokens.len() != t) {
            candle_core::bail!("a batch needs inputs of one length, {b} of {t}");
        }
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let mut x = self.embeddings.forward(&Tensor::from_vec(ids, (b, t), &Device::Cpu)?)?;
        let (cos, sin) = if b == 1 {
            (self.cos.narrow(0, inputs[0].position, t)?, self.sin.narrow(0, inputs[0].position, t)?)
        } else {
            let each = |table: &Tensor| {
                let rows = inputs.iter().map(|i| table.narrow(0, i.position, t)).collect::<Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)
            };
            (each(&self.cos)?, each(&self.sin)?)
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, self.eps)?;
            let h = self.attention(l, layer, &h, inputs, &cos, &sin)?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let h = layer.down.forward(&(layer.gate.forward(&h)?.silu()? * layer.up.forward(&h)?)?)?;
            x = (x + h)?;
        }
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last)
    }

    /// Layer `l`'s attention for every input (each with its own cache and positions).
    fn attention(
        &self,
        l: usize,
        layer: &Layer,
        x: &Tensor,
        inputs: &mut [Input<'_>],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, width) = x.dims3()?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = candle_nn::rotary_emb::rope_i(&heads(layer.wq.forward(x)?, self.heads)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(layer.wk.forward(x)?, self.kv_heads)?, cos, sin)?;
        let v = heads(layer.wv.forward(x)?, self.kv_heads)?;
        // Query heads 3j, 3j+1, 3j+2 (for a group of 3) share key/value head j: as rows of one
        // matrix per key/value head.
        let group = self.heads / self.kv_heads;
        let mut outputs = Vec::with_capacity(b);
        for (i, input) in inputs.iter_mut().enumerate() {
            let (k, v) = input.cache.layers[l].append(&k.narrow(0, i, 1)?, &v.narrow(0, i, 1)?)?;
            let q = q.narrow(0, i, 1)?.reshape((1, self.kv_heads, group * t, self.head_dim))?;
            let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
            let scores = match t {
                1 => scores,
                _ => scores.broadcast_add(&self.mask(t, input.position)?)?,
            };
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            outputs.push(weights.matmul(&v.contiguous()?)?);
        }
        let y = Tensor::cat(&outputs, 0)?;
        let y = y.reshape((b, self.heads, t, self.head_dim))?.transpose(1, 2)?.reshape((b, t, width))?;
        layer.wo.forward(&y)
    }

    /// A causal mask for `t` new positions after `position` cached ones, for every query head of a
    /// group (rows `r * t + i`): 0 where position `j` may be seen, minus infinity after.
    fn mask(&self, t: usize, position: usize) -> Result<Tensor> {
        let group = self.heads / self.kv_heads;
        let total = position + t;
        let row = |i: usize| (0..total).map(move |j| if j > position + i { f32::NEG_INFINITY } else { 0.0 });
        let values: Vec<f32> = (0..group).flat_map(|_| (0..t).flat_map(row)).collect();
        Tensor::from_vec(values, (group * t, total), &Device::Cpu)
    }
}
