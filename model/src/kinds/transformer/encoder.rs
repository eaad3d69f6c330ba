//! A pretrained BERT-family sentence encoder in burn, loaded from local files: `config.json`,
//! `model.safetensors` (Hugging Face names) and `tokenizer.json`, used as shipped. The layout
//! is BERT's post-norm one (`LayerNorm(x + sublayer(x))`, not burn-nn's pre-norm
//! `TransformerEncoder` default), with exact (erf) GELU; the sentence embedding is the mean of
//! the last layer over the attention mask, L2-normalised, as sentence-transformers computes it
//! for all-MiniLM-L6-v2. Nothing is ever downloaded: `scripts/fetch-pretrained.sh` puts the
//! files in place.
//!
//! Inference runs the same weights through [`cpu`], a plain f32 forward several times faster
//! than burn's on CPU, and so does fine-tuning (`finetune`); the burn network is the
//! reference both are tested against.

mod bf16;
pub(crate) mod cpu;

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::error::ModelError;
use crate::kinds::fast::train::Backend;
pub use sentimentd_config::Precision;

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu_name() -> String {
    "gelu".to_string()
}

#[derive(Module, Debug)]
pub(crate) struct Layer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attention_out: Linear,
    pub(crate) attention_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) output_norm: LayerNorm,
}

/// The encoder network.
#[derive(Module, Debug)]
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) heads: usize,
}

impl Bert {
    /// `[batch, hidden]` L2-normalised mean-pooled sentence embeddings.
    pub fn embed(&self, batch: &[Vec<u32>], device: &Device) -> Tensor<2> {
        let seqs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        let (ids, mask, _) = id_batch(&seqs, device);
        let hidden = self.forward(ids, mask.clone());
        pool(hidden, mask)
    }

    /// Last hidden states `[batch, len, hidden]`; `mask` is 1 for tokens, 0 for padding.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        self.hidden(ids, mask, self.layers.len())
    }

    /// Hidden states after the first `layers` layers (fine-tuning trains the ones above).
    pub(crate) fn hidden(&self, ids: Tensor<2, Int>, mask: Tensor<2>, layers: usize) -> Tensor<3> {
        let [b, len] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .unsqueeze_dim::<2>(0)
            .repeat_dim(0, b);
        let types = Tensor::<2, Int>::zeros([b, len], &device);
        let x = self.word.forward(ids)
            + self.position.forward(positions)
            + self.token_type.forward(types);
        let mut x = self.embedding_norm.forward(x);
        let bias = attention_bias(mask);
        for layer in self.layers.iter().take(layers) {
            x = layer.forward(x, bias.clone(), self.heads);
        }
        x
    }
}

/// Token ids and mask of a batch, padded to its longest sequence.
pub(crate) fn id_batch(seqs: &[&[u32]], device: &Device) -> (Tensor<2, Int>, Tensor<2>, usize) {
    let b = seqs.len();
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = Vec::with_capacity(b * len);
    for s in seqs {
        for i in 0..len {
            ids.push(s.get(i).map_or(0, |&t| i64::from(t)));
            mask.push(if i < s.len() { 1.0f32 } else { 0.0 });
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [b, len]), device),
        Tensor::from_data(TensorData::new(mask, [b, len]), device),
        len,
    )
}

/// Padding gets a large negative score before the softmax: `[b, 1, 1, len]`.
pub(crate) fn attention_bias(mask: Tensor<2>) -> Tensor<4> {
    ((mask - 1.0) * 1e4).unsqueeze_dim::<3>(1).unsqueeze_dim(1)
}

/// The mean of `hidden` over the real tokens, L2-normalised: the sentence embedding.
pub(crate) fn pool(hidden: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let m3: Tensor<3> = mask.clone().unsqueeze_dim(2);
    let summed: Tensor<2> = (hidden * m3).sum_dim(1).squeeze_dim(1);
    let counts: Tensor<2> = mask.sum_dim(1).clamp_min(1e-9);
    let mean = summed / counts;
    let norm = mean
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    mean / norm
}

impl Layer {
    pub(crate) fn forward(&self, x: Tensor<3>, bias: Tensor<4>, heads: usize) -> Tensor<3> {
        let [b, len, hidden] = x.dims();
        let d = hidden / heads;
        let split = |t: Tensor<3>| -> Tensor<4> { t.reshape([b, len, heads, d]).swap_dims(1, 2) };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt() + bias;
        let probs = softmax(scores, 3);
        let context = probs.matmul(v).swap_dims(1, 2).reshape([b, len, hidden]);
        let a = self
            .attention_norm
            .forward(self.attention_out.forward(context) + x);
        let h = gelu(self.intermediate.forward(a.clone()));
        self.output_norm.forward(self.output.forward(h) + a)
    }
}

/// The tensors of a safetensors file by Hugging Face name, as f32.
struct Weights<'a> {
    file: PathBuf,
    st: SafeTensors<'a>,
    /// Fine-tuned tensors, by the same names, that replace the pretrained ones.
    tuned: Option<SafeTensors<'a>>,
    device: Device,
}

impl<'a> Weights<'a> {
    /// The tensors of `bytes` (the `model.safetensors` of `dir`) with `tuned` over them.
    fn new(
        dir: &Path,
        bytes: &'a [u8],
        tuned: Option<&'a [u8]>,
        device: &Device,
    ) -> Result<Weights<'a>, ModelError> {
        let file = dir.join("model.safetensors");
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Corrupt {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let tuned = tuned
            .map(SafeTensors::deserialize)
            .transpose()
            .map_err(|e| ModelError::Corrupt {
                path: file.clone(),
                reason: format!("fine-tuned layers: {e}"),
            })?;
        Ok(Weights {
            file,
            st,
            tuned,
            device: device.clone(),
        })
    }

    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let corrupt = |reason: String| ModelError::Corrupt {
            path: self.file.clone(),
            reason,
        };
        let tuned = self.tuned.as_ref().and_then(|t| t.tensor(name).ok());
        let t = match tuned {
            Some(t) => t,
            None => self
                .st
                .tensor(name)
                .map_err(|_| corrupt(format!("tensor `{name}` is missing")))?,
        };
        if t.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(corrupt(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} (config.json)",
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn t1(&self, name: &str, n: usize) -> Result<Param<Tensor<1>>, ModelError> {
        let v = self.values(name, &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(v, [n]),
            &self.device,
        )))
    }

    fn t2(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>, ModelError> {
        let v = self.values(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(v, [rows, cols]),
            &self.device,
        ))
    }

    fn embedding(&self, name: &str, rows: usize, cols: usize) -> Result<Embedding, ModelError> {
        Ok(Embedding {
            weight: Param::from_tensor(self.t2(&format!("{name}.weight"), rows, cols)?),
        })
    }

    /// PyTorch stores `[out, in]`; burn's `Linear` multiplies by `[in, out]`.
    fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear, ModelError> {
        let w = self.t2(&format!("{name}.weight"), d_out, d_in)?.transpose();
        Ok(Linear {
            weight: Param::from_tensor(w),
            bias: Some(self.t1(&format!("{name}.bias"), d_out)?),
        })
    }

    fn norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm, ModelError> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        norm.gamma = self.t1(&format!("{name}.weight"), d)?;
        norm.beta = Some(self.t1(&format!("{name}.bias"), d)?);
        Ok(norm)
    }
}

/// The burn network over `w`.
fn build_bert(w: &Weights<'_>, c: &BertConfig) -> Result<Bert, ModelError> {
    let (h, eps) = (c.hidden_size, c.layer_norm_eps);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        layers.push(Layer {
            query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
            key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
            value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
            attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
            attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
            intermediate: w.linear(&format!("{p}.intermediate.dense"), h, c.intermediate_size)?,
            output: w.linear(&format!("{p}.output.dense"), c.intermediate_size, h)?,
            output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
        });
    }
    Ok(Bert {
        word: w.embedding("embeddings.word_embeddings", c.vocab_size, h)?,
        position: w.embedding(
            "embeddings.position_embeddings",
            c.max_position_embeddings,
            h,
        )?,
        token_type: w.embedding("embeddings.token_type_embeddings", c.type_vocab_size, h)?,
        embedding_norm: w.norm("embeddings.LayerNorm", h, eps)?,
        layers,
        heads: c.num_attention_heads,
    })
}

/// The burn network of an encoder (see [`SentenceEncoder::burn`]).
pub struct BurnEncoder<'a> {
    encoder: &'a SentenceEncoder,
    pub(crate) bert: Bert,
}

impl BurnEncoder<'_> {
    /// [`SentenceEncoder::embed_ids`] through the burn network.
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let flat = self
            .bert
            .embed(batch, &self.encoder.device)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Training(format!("{e:?}")))?;
        Ok(flat
            .chunks_exact(self.encoder.dim())
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// [`SentenceEncoder::embed`] through the burn network.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        self.encoder
            .embed_with(texts, batch_size, |b| self.embed_ids(b))
    }
}

/// One f32 tensor of the encoder's file.
pub(crate) struct NamedTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

/// The pretrained encoder with its tokenizer.
pub struct SentenceEncoder {
    pub config: BertConfig,
    /// SHA-256 of the encoder's files and `max_seq_len`: what an embedding cache is keyed by,
    /// and what the burn network (the parity tests) and fine-tuning's starting layers are
    /// checked against when they read the files again: nothing here keeps a second copy of
    /// the weights, so a serving process holds them once.
    fingerprint: String,
    /// Whether fine-tuned layers were loaded over the pretrained ones.
    tuned: bool,
    /// The serving forward.
    fast: cpu::CpuBert,
    tokenizer: tokenizers::Tokenizer,
    max_seq_len: usize,
    pub(crate) device: Device,
    dir: PathBuf,
}

// Inference threads share one encoder behind an `Arc`.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<SentenceEncoder>();
};

/// What is missing or wrong in a pretrained-model directory, with the way to fix it.
fn missing(dir: &Path, what: &str) -> ModelError {
    ModelError::Corrupt {
        path: dir.to_path_buf(),
        reason: format!(
            "{what}; fetch the pretrained encoder with scripts/fetch-pretrained.sh {}",
            dir.parent()
                .map_or(String::new(), |p| p.display().to_string())
        ),
    }
}

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>, ModelError> {
    std::fs::read(dir.join(name)).map_err(|e| missing(dir, &format!("cannot read {name}: {e}")))
}

/// SHA-256 of the encoder in `dir` (its config and tokenizer, `model` the bytes of its
/// weights), the `max_seq_len` used and the fine-tuned layers if any.
fn fingerprint(
    dir: &Path,
    model: &[u8],
    max_seq_len: usize,
    tuned: Option<&[u8]>,
) -> Result<String, ModelError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for name in ["config.json", "tokenizer.json"] {
        h.update(read_file(dir, name)?);
    }
    h.update(model);
    h.update((max_seq_len as u64).to_le_bytes());
    if let Some(t) = tuned {
        h.update(b"tuned");
        h.update(t);
    }
    Ok(hex::encode(h.finalize()))
}

impl SentenceEncoder {
    /// Loads `dir` (`config.json`, `model.safetensors`, `tokenizer.json`). Texts are cut to
    /// `max_seq_len` tokens, `[CLS]` and `[SEP]` included.
    pub fn load(
        dir: &Path,
        max_seq_len: usize,
        backend: Backend,
    ) -> Result<SentenceEncoder, ModelError> {
        SentenceEncoder::load_tuned(dir, max_seq_len, backend, Precision::Auto, None)
    }

    /// [`SentenceEncoder::load`] with fine-tuned layers (safetensors bytes, the pretrained
    /// file's names) in place of the pretrained ones; they count in the fingerprint.
    pub fn load_tuned(
        dir: &Path,
        max_seq_len: usize,
        backend: Backend,
        precision: Precision,
        tuned: Option<&[u8]>,
    ) -> Result<SentenceEncoder, ModelError> {
        let device = &crate::kinds::fast::train::device_for(backend);
        let read = |name: &str| read_file(dir, name);
        let config: BertConfig =
            serde_json::from_slice(&read("config.json")?).map_err(|e| ModelError::Corrupt {
                path: dir.join("config.json"),
                reason: e.to_string(),
            })?;
        if !["", "bert"].contains(&config.model_type.as_str()) || config.hidden_act != "gelu" {
            return Err(ModelError::Corrupt {
                path: dir.join("config.json"),
                reason: format!(
                    "model_type {:?} with activation {:?}: only BERT encoders with GELU are supported",
                    config.model_type, config.hidden_act
                ),
            });
        }
        if config.hidden_size == 0
            || config.max_position_embeddings < 2
            || config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Corrupt {
                path: dir.join("config.json"),
                reason: "hidden_size must be a positive multiple of num_attention_heads, and \
                         max_position_embeddings at least 2"
                    .into(),
            });
        }
        let bytes = read("model.safetensors")?;
        // The length actually used, so a version records and finds the same value.
        let max_seq_len = max_seq_len.clamp(2, config.max_position_embeddings);
        let fingerprint = fingerprint(dir, &bytes, max_seq_len, tuned)?;
        let w = Weights::new(dir, &bytes, tuned, device)?;
        // This reads (and checks the name, type and shape of) every tensor the burn network
        // is built from, so a later `bert()` fails only if the file changes meanwhile.
        let fast = cpu::CpuBert::load(&w, &config, precision == Precision::Auto)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| missing(dir, &format!("cannot load tokenizer.json: {e}")))?;
        // Batches are padded here, to their own longest text, not to the file's fixed 128.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_seq_len,
                ..Default::default()
            }))
            .map_err(|e| missing(dir, &format!("tokenizer.json: {e}")))?;
        Ok(SentenceEncoder {
            config,
            fingerprint,
            tuned: tuned.is_some(),
            fast,
            tokenizer,
            max_seq_len,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The burn network of this (pretrained) encoder, built from its files: the reference the
    /// serving forward and fine-tuning's backward are held to, and the baseline of the encoder
    /// bench. The caller keeps it as long as it needs it.
    pub fn burn(&self) -> Result<BurnEncoder<'_>, ModelError> {
        // Nothing needs it tuned, and keeping the tuned layers' bytes for it would cost
        // memory in every serving process.
        let bytes = self.pretrained_bytes("the burn network is built for pretrained encoders")?;
        let w = Weights::new(&self.dir, &bytes, None, &self.device)?;
        Ok(BurnEncoder {
            encoder: self,
            bert: build_bert(&w, &self.config)?,
        })
    }

    /// The bytes of `model.safetensors` as this (pretrained) encoder was loaded from them;
    /// `what` says why a tuned encoder cannot give them.
    fn pretrained_bytes(&self, what: &str) -> Result<Vec<u8>, ModelError> {
        if self.tuned {
            return Err(ModelError::Training(format!(
                "{what}, and this one has fine-tuned layers"
            )));
        }
        let bytes = read_file(&self.dir, "model.safetensors")?;
        if fingerprint(&self.dir, &bytes, self.max_seq_len, None)? != self.fingerprint {
            return Err(ModelError::Corrupt {
                path: self.dir.clone(),
                reason: "the encoder's files changed since the encoder was loaded; restart to \
                         load them again"
                    .into(),
            });
        }
        Ok(bytes)
    }

    /// The pretrained tensors of layers `from..` by Hugging Face name, PyTorch layout
    /// (`[out, in]` weights), read from the files this encoder was loaded from: where
    /// fine-tuning starts.
    pub(crate) fn layer_tensors(&self, from: usize) -> Result<Vec<NamedTensor>, ModelError> {
        let bytes = self.pretrained_bytes("fine-tuning starts from a pretrained encoder")?;
        let w = Weights::new(&self.dir, &bytes, None, &self.device)?;
        let c = &self.config;
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let mut out = Vec::new();
        for i in from..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for (name, d_in, d_out) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", h, inter),
                ("output.dense", inter, h),
            ] {
                let weight = format!("{p}.{name}.weight");
                let bias = format!("{p}.{name}.bias");
                out.push(NamedTensor {
                    values: w.values(&weight, &[d_out, d_in])?,
                    name: weight,
                    shape: vec![d_out, d_in],
                });
                out.push(NamedTensor {
                    values: w.values(&bias, &[d_out])?,
                    name: bias,
                    shape: vec![d_out],
                });
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                for part in ["weight", "bias"] {
                    let name = format!("{p}.{norm}.{part}");
                    out.push(NamedTensor {
                        values: w.values(&name, &[h])?,
                        name,
                        shape: vec![h],
                    });
                }
            }
        }
        Ok(out)
    }

    /// [`cpu::CpuBert::hidden_states`]: the serving forward's hidden states after `layers`
    /// layers, the tokens of all texts one after another.
    pub(crate) fn hidden_states(
        &self,
        batch: &[Vec<u32>],
        layers: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.fast.hidden_states(batch, layers)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// What the serving forward's dense layers multiply in: "bf16" or "f32".
    pub fn serving_precision(&self) -> &'static str {
        if self.fast.uses_bf16() { "bf16" } else { "f32" }
    }

    /// Token ids, `[CLS]` and `[SEP]` included, cut to `max_seq_len`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Training(format!("tokenizing: {e}")))
    }

    /// Embeddings of already tokenised texts, in order, as one batch.
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let flat = self.fast.embed(batch)?;
        Ok(flat.chunks_exact(self.dim()).map(<[f32]>::to_vec).collect())
    }

    /// Embeddings of `texts`, in order. Texts are grouped by token length into batches of at
    /// most `batch_size`, so texts of a batch are alike in length.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_with(texts, batch_size, |b| self.embed_ids(b))
    }

    fn embed_with(
        &self,
        texts: &[&str],
        batch_size: usize,
        embed_ids: impl Fn(&[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_, _>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            for (&i, e) in chunk.iter().zip(embed_ids(&batch)?) {
                out[i] = e;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the fetched encoder is: `$SENTIMENTD_PRETRAINED` or `~/.cache/sentimentd-pretrained`.
    fn encoder_dir() -> PathBuf {
        let root = std::env::var_os("SENTIMENTD_PRETRAINED")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sentimentd-pretrained")
            });
        root.join("all-minilm-l6-v2")
    }

    fn encoder() -> SentenceEncoder {
        encoder_with(Precision::F32)
    }

    /// With `Precision::Auto` on a CPU with AVX512-BF16, the dense layers run in bf16; the
    /// tests then hold that path to the same bars (and say which path they measured).
    fn encoder_with(precision: Precision) -> SentenceEncoder {
        let dir = encoder_dir();
        let enc = SentenceEncoder::load_tuned(&dir, 256, Backend::Flex, precision, None)
            .unwrap_or_else(|e| {
                panic!("{e} (scripts/test.sh runs scripts/fetch-pretrained.sh for the tests)")
            });
        let want = if precision == Precision::Auto && bf16::available() {
            "bf16"
        } else {
            "f32"
        };
        assert_eq!(enc.serving_precision(), want);
        enc
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    #[derive(Deserialize)]
    struct Reference {
        sentences: Vec<RefSentence>,
    }

    #[derive(Deserialize)]
    struct RefSentence {
        text: String,
        ids: Vec<u32>,
        embedding: Vec<f32>,
    }

    #[test]
    fn embeddings_match_an_independent_numpy_implementation() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/minilm_reference.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reference: Reference = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        for precision in [Precision::F32, Precision::Auto] {
            matches_reference(&reference, &encoder_with(precision));
        }
    }

    fn matches_reference(reference: &Reference, enc: &SentenceEncoder) {
        let texts: Vec<&str> = reference
            .sentences
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        // Batched (padded, sorted by length) and one by one must both match.
        let batched = enc.embed(&texts, 4).unwrap_or_else(|e| panic!("{e}"));
        let mut worst = 0.0f64;
        for (s, got) in reference.sentences.iter().zip(&batched) {
            assert_eq!(
                enc.tokenize(&s.text).ok().as_ref(),
                Some(&s.ids),
                "{:?}",
                s.text
            );
            let single = enc
                .embed_ids(std::slice::from_ref(&s.ids))
                .unwrap_or_else(|e| panic!("{e}"));
            for e in [got, &single[0]] {
                let distance = 1.0 - cosine(e, &s.embedding);
                assert!(distance < 1e-4, "{:?}: cosine distance {distance}", s.text);
                worst = worst.max(distance);
                let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4);
            }
        }
        eprintln!(
            "largest cosine distance to the numpy reference ({}): {worst:e}",
            enc.serving_precision()
        );
        let e = |t: &str| {
            enc.embed(&[t], 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .remove(0)
        };
        let love = e("I love this product");
        let like = e("I really like this item");
        let train = e("The train leaves at noon");
        assert!(cosine(&love, &like) > cosine(&love, &train) + 0.3);
    }

    #[test]
    fn the_serving_forward_agrees_with_the_burn_network() {
        // f32 products agree with burn to rounding; bf16 ones to the reference bar.
        for (precision, bar) in [(Precision::F32, 1e-5), (Precision::Auto, 1e-4)] {
            agrees_with_burn(&encoder_with(precision), bar);
        }
    }

    fn agrees_with_burn(enc: &SentenceEncoder, bar: f64) {
        let long = "a rather long sentence about nothing much at all, ".repeat(40);
        let texts = [
            "I love this product",
            "",
            long.as_str(),
            "ok",
            "The train leaves at noon, and it will be late again as always.",
            "ça va? 🙂 #mood @someone",
        ];
        assert!(enc.tokenize(&long).map_or(0, |t| t.len()) == enc.max_seq_len());
        let mut ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| enc.tokenize(t).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        // And a sequence with no tokens at all, which only `embed_ids` can be given.
        ids.push(Vec::new());
        let fast = enc.embed_ids(&ids).unwrap_or_else(|e| panic!("{e}"));
        let burn = enc
            .burn()
            .and_then(|b| b.embed_ids(&ids))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut worst = 0.0f64;
        for ((f, b), seq) in fast.iter().zip(&burn).zip(&ids) {
            if seq.is_empty() {
                assert!(f.iter().all(|v| *v == 0.0) && b.iter().all(|v| *v == 0.0));
                continue;
            }
            let distance = 1.0 - cosine(f, b);
            assert!(
                distance < bar,
                "{} tokens, {}: cosine distance {distance}",
                seq.len(),
                enc.serving_precision()
            );
            worst = worst.max(distance);
        }
        eprintln!(
            "largest cosine distance between the serving forward ({}) and burn: {worst:e}",
            enc.serving_precision()
        );
        // One by one and in a batch split across threads give the same vectors.
        for (seq, f) in ids.iter().zip(&fast) {
            let single = enc
                .embed_ids(std::slice::from_ref(seq))
                .unwrap_or_else(|e| panic!("{e}"));
            let gap = single[0].iter().zip(f).map(|(a, b)| (a - b).abs());
            assert!(gap.fold(0.0f32, f32::max) < 1e-5);
        }
    }

    #[test]
    fn ids_the_encoder_cannot_embed_are_errors() {
        let enc = encoder();
        let vocab = enc.config.vocab_size as u32;
        assert!(enc.embed_ids(&[vec![101, vocab, 102]]).is_err());
        let too_long = vec![101; enc.config.max_position_embeddings + 1];
        assert!(enc.embed_ids(&[too_long]).is_err());
        assert_eq!(enc.embed_ids(&[]).map(|e| e.len()).ok(), Some(0));
    }

    #[test]
    fn the_burn_network_is_built_from_the_file_as_loaded() {
        let own = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(encoder_dir().join(f), own.path().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        let load = || {
            SentenceEncoder::load_tuned(own.path(), 64, Backend::Flex, Precision::F32, None)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let enc = load();
        let ids = vec![
            enc.tokenize("built when needed")
                .unwrap_or_else(|e| panic!("{e}")),
        ];
        let burn = enc.burn().unwrap_or_else(|e| panic!("{e}"));
        let first = burn.embed_ids(&ids).unwrap_or_else(|e| panic!("{e}"));
        // A network already built does not care that the file changes...
        let file = own.path().join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
        bytes.push(0);
        std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(burn.embed_ids(&ids).ok(), Some(first));
        // ...but the encoder refuses to build another from a file it did not load.
        let err = enc.burn().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("changed since the encoder was loaded"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_encoder_names_the_fetch_script() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = SentenceEncoder::load(&dir.path().join("all-minilm-l6-v2"), 128, Backend::Flex)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("scripts/fetch-pretrained.sh"), "{err}");
    }
}
