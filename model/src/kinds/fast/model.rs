//! Serving path of the fast model: a plain forward pass over the trained weights.
//!
//! burn's per-operation dispatch costs more than the whole model at batch size 1 (a gather, a
//! mean and one small matrix product), so serving reads the weights into flat vectors.
//! `train::tests::plain_forward_matches_burn` proves both paths give the same probabilities.

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use crate::classifier::{Analysis, Classifier, ModelKind, Prediction};
use crate::error::ModelError;
use crate::kinds::fast::features::{Featurizer, Scratch};

/// The trained parameters in row-major order; linear weights are `[in, out]` as burn stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub rows: usize,
    pub dim: usize,
    pub dense: usize,
    pub hidden: usize,
    pub embedding: Vec<f32>,
    pub hidden_w: Vec<f32>,
    pub hidden_b: Vec<f32>,
    pub out_w: Vec<f32>,
    pub out_b: Vec<f32>,
    /// Logits are divided by this before the softmax (temperature scaling, fitted on the
    /// selection split carved from the training data): it makes `score` a usable confidence without
    /// changing any label.
    pub temperature: f32,
}

pub const CLASSES: usize = 3;

impl Weights {
    /// Width of the layer after pooling: the sentence vector plus the dense features.
    pub fn input_dim(&self) -> usize {
        self.dim + self.dense
    }

    fn out_in(&self) -> usize {
        if self.hidden > 0 {
            self.hidden
        } else {
            self.input_dim()
        }
    }

    /// Mean of the feature rows: the sentence embedding.
    #[inline]
    pub fn pool(&self, ids: &[u32], out: &mut Vec<f32>) {
        let d = self.dim;
        out.clear();
        out.resize(d, 0.0);
        if ids.is_empty() {
            return;
        }
        for &id in ids {
            let start = id as usize * d;
            // Ids come from the featurizer, bounded by `rows`; the slice check stays as the
            // guard against a mismatched model.
            if let Some(row) = self.embedding.get(start..start + d) {
                for (o, w) in out.iter_mut().zip(row) {
                    *o += *w;
                }
            }
        }
        let inv = 1.0 / ids.len() as f32;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }

    /// Class probabilities from a pooled vector and the dense features.
    pub fn head(&self, pooled: &[f32], dense: &[f32], hidden_buf: &mut Vec<f32>) -> [f32; 3] {
        self.calibrated(self.logits(pooled, dense, hidden_buf))
    }

    /// Probabilities from output-layer values: temperature, then softmax.
    pub fn calibrated(&self, logits: [f32; 3]) -> [f32; 3] {
        let t = self.temperature;
        softmax(logits.map(|l| l / t))
    }

    /// Output-layer values before temperature and softmax.
    pub fn logits(&self, pooled: &[f32], dense: &[f32], hidden_buf: &mut Vec<f32>) -> [f32; 3] {
        let input = |i: usize| {
            if i < self.dim {
                pooled[i]
            } else {
                dense.get(i - self.dim).copied().unwrap_or(0.0)
            }
        };
        let mut logits = [0f32; CLASSES];
        logits.copy_from_slice(&self.out_b[..CLASSES]);
        if self.hidden > 0 {
            let h = self.hidden;
            hidden_buf.clear();
            hidden_buf.extend_from_slice(&self.hidden_b);
            for i in 0..self.input_dim() {
                let x = input(i);
                for (o, w) in hidden_buf
                    .iter_mut()
                    .zip(&self.hidden_w[i * h..(i + 1) * h])
                {
                    *o += x * w;
                }
            }
            for (&hj, w) in hidden_buf.iter().zip(self.out_w.chunks_exact(CLASSES)) {
                let x = hj.max(0.0);
                for (l, w) in logits.iter_mut().zip(w) {
                    *l += x * w;
                }
            }
        } else {
            for (i, w) in self.out_w.chunks_exact(CLASSES).enumerate() {
                let x = input(i);
                for (l, w) in logits.iter_mut().zip(w) {
                    *l += x * w;
                }
            }
        }
        logits
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            (
                "embedding.weight",
                vec![self.rows, self.dim],
                &self.embedding,
            ),
            ("output.weight", vec![self.out_in(), CLASSES], &self.out_w),
            ("output.bias", vec![CLASSES], &self.out_b),
        ];
        if self.hidden > 0 {
            tensors.push((
                "hidden.weight",
                vec![self.input_dim(), self.hidden],
                &self.hidden_w,
            ));
            tensors.push(("hidden.bias", vec![self.hidden], &self.hidden_b));
        }
        let meta: HashMap<String, String> = [
            ("dense".to_string(), self.dense.to_string()),
            ("temperature".to_string(), self.temperature.to_string()),
        ]
        .into();
        let data = f32_safetensors(&tensors, Some(meta), path)?;
        std::fs::write(path, data).map_err(ModelError::io(path))
    }

    pub fn load(path: &Path) -> Result<Weights, ModelError> {
        let data = std::fs::read(path).map_err(ModelError::io(path))?;
        let corrupt = |reason: String| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (_, meta) = SafeTensors::read_metadata(&data).map_err(|e| corrupt(e.to_string()))?;
        let dense: usize = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("dense"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("weights have no `dense` metadata".into()))?;
        let temperature: f32 = match meta.metadata().as_ref().and_then(|m| m.get("temperature")) {
            Some(t) => t
                .parse()
                .ok()
                .filter(|t: &f32| t.is_finite() && *t > 0.0)
                .ok_or_else(|| corrupt(format!("invalid temperature {t:?}")))?,
            None => 1.0,
        };
        let st = SafeTensors::deserialize(&data).map_err(|e| corrupt(e.to_string()))?;
        let get = |name: &str| f32_tensor(&st, name, path);
        let (es, embedding) = get("embedding.weight")?;
        let (os, out_w) = get("output.weight")?;
        let (_, out_b) = get("output.bias")?;
        let [rows, dim] = es[..] else {
            return Err(corrupt("embedding.weight is not 2-D".into()));
        };
        let (hidden, hidden_w, hidden_b) = match get("hidden.weight") {
            Ok((hs, hw)) => {
                let (_, hb) = get("hidden.bias")?;
                if hs.len() != 2 || hs[0] != dim + dense || hb.len() != hs[1] {
                    return Err(corrupt("hidden layer shape does not fit".into()));
                }
                (hs[1], hw, hb)
            }
            Err(_) => (0, Vec::new(), Vec::new()),
        };
        let w = Weights {
            rows,
            dim,
            dense,
            hidden,
            embedding,
            hidden_w,
            hidden_b,
            out_w,
            out_b,
            temperature,
        };
        if os != [w.out_in(), CLASSES] || w.out_b.len() != CLASSES {
            return Err(corrupt("output layer shape does not fit".into()));
        }
        Ok(w)
    }
}

/// A safetensors file's bytes holding the f32 tensors `(name, shape, values)`; `path` names
/// the file in errors.
pub(crate) fn f32_safetensors(
    tensors: &[(&str, Vec<usize>, &[f32])],
    meta: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>, ModelError> {
    let corrupt = |e: safetensors::SafeTensorError| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(corrupt)
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, meta).map_err(corrupt)
}

/// The shape and values of the f32 tensor `name` of a safetensors file read from `path`.
pub(crate) fn f32_tensor(
    st: &SafeTensors<'_>,
    name: &str,
    path: &Path,
) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let t = st
        .tensor(name)
        .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(corrupt(format!("tensor `{name}` is not f32")));
    }
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((t.shape().to_vec(), v))
}

#[inline]
pub fn softmax(logits: [f32; 3]) -> [f32; 3] {
    let m = logits[0].max(logits[1]).max(logits[2]);
    let e = logits.map(|l| (l - m).exp());
    let s = e[0] + e[1] + e[2];
    e.map(|x| x / s)
}

/// A trained fast model, ready to serve.
pub struct FastModel {
    pub featurizer: Featurizer,
    pub weights: Weights,
    version: String,
}

thread_local! {
    static SCRATCH: RefCell<(Scratch, Vec<f32>, Vec<f32>)> =
        RefCell::new((Scratch::default(), Vec::new(), Vec::new()));
}

impl FastModel {
    pub fn new(
        featurizer: Featurizer,
        weights: Weights,
        version: String,
    ) -> Result<FastModel, ModelError> {
        if featurizer.rows() != weights.rows || featurizer.dense_dim() != weights.dense {
            return Err(ModelError::Corrupt {
                path: version.clone().into(),
                reason: format!(
                    "weights are for {} rows and {} dense features, the tokenizer and \
                     feature settings give {} and {}",
                    weights.rows,
                    weights.dense,
                    featurizer.rows(),
                    featurizer.dense_dim()
                ),
            });
        }
        Ok(FastModel {
            featurizer,
            weights,
            version,
        })
    }

    fn with_pooled<R>(
        &self,
        text: &str,
        f: impl FnOnce(&Scratch, &[f32], &mut Vec<f32>) -> R,
    ) -> R {
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (scratch, pooled, hidden) = &mut *guard;
            self.featurizer.featurize(text, scratch);
            self.weights.pool(&scratch.ids, pooled);
            f(scratch, pooled, hidden)
        })
    }

    pub fn probabilities(&self, text: &str) -> [f32; 3] {
        self.with_pooled(text, |s, pooled, hidden| {
            self.weights
                .head(pooled, &s.dense[..self.weights.dense], hidden)
        })
    }
}

impl Classifier for FastModel {
    fn version(&self) -> &str {
        &self.version
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Fast
    }

    fn predict(&self, text: &str) -> Prediction {
        Prediction::from_probabilities(self.probabilities(text))
    }

    fn embed(&self, text: &str) -> Option<Vec<f32>> {
        Some(self.with_pooled(text, |_, pooled, _| pooled.to_vec()))
    }

    fn analyse(&self, text: &str) -> Analysis {
        self.with_pooled(text, |s, pooled, hidden| {
            let probabilities = self
                .weights
                .head(pooled, &s.dense[..self.weights.dense], hidden);
            Analysis {
                prediction: Prediction::from_probabilities(probabilities),
                embedding: Some(pooled.to_vec()),
                oov_share: Some(if s.words == 0 {
                    0.0
                } else {
                    s.oov_words as f32 / s.words as f32
                }),
            }
        })
    }
}
