//! The trainable top of the encoder: its top layers and the head, as plain f32 matrices.
//!
//! Burn's autodiff ran these layers at about a third of what the CPU does (padded batches,
//! tensor-op overhead, and on one thread: burn is built here without rayon so the fast kind's
//! training keeps to `[train] threads`). Here the forward keeps what the backward needs, the
//! backward is written out layer by layer, and the tokens of a batch are packed with no
//! padding, as in the serving forward; the matrix products go through `gemm` on the calling
//! rayon pool. Every sum runs in an order that depends only on the batch, never on the
//! number of threads, so a run that resumes from a checkpoint repeats an uninterrupted one
//! bit for bit.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::ModelError;
use crate::kinds::transformer::encoder::NamedTensor;
use crate::kinds::transformer::encoder::cpu::{Mat, attend, erf, exp, gemm_strided, matmul_acc};

/// A dense layer, PyTorch layout: `y = x · wᵀ + b`, `w` is `[out, in]`.
#[derive(Clone, Debug)]
pub(super) struct Dense {
    pub(super) w: Vec<f32>,
    pub(super) b: Vec<f32>,
    pub(super) d_in: usize,
    pub(super) d_out: usize,
}

#[derive(Clone, Debug)]
pub(super) struct Norm {
    pub(super) gamma: Vec<f32>,
    pub(super) beta: Vec<f32>,
}

#[derive(Clone, Debug)]
pub(super) struct Layer {
    /// Query, key and value stacked: `[3 · hidden, hidden]`.
    pub(super) qkv: Dense,
    pub(super) attention_out: Dense,
    pub(super) attention_norm: Norm,
    pub(super) intermediate: Dense,
    pub(super) output: Dense,
    pub(super) output_norm: Norm,
}

/// The top layers and the head over the pooled, L2-normalised embedding.
#[derive(Clone, Debug)]
pub(super) struct Top {
    pub(super) layers: Vec<Layer>,
    /// `[3, hidden]`.
    pub(super) head: Dense,
    pub(super) heads: usize,
    pub(super) hidden: usize,
    pub(super) eps: f32,
}

/// A batch of texts as the frozen layers leave them: their tokens one after another.
pub(super) struct Packed {
    /// `[tokens, hidden]`.
    pub(super) x: Vec<f32>,
    pub(super) lens: Vec<usize>,
}

/// What one layer's forward keeps for its backward.
struct LayerCache {
    x: Vec<f32>,
    qkv: Vec<f32>,
    /// Attention probabilities: per text, per head, `len × len`.
    probs: Vec<f32>,
    context: Vec<f32>,
    a_hat: Vec<f32>,
    a_rstd: Vec<f32>,
    a: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
    y_hat: Vec<f32>,
    y_rstd: Vec<f32>,
}

/// What a training forward keeps.
pub(super) struct Cache {
    layers: Vec<LayerCache>,
    /// Per text: the normalised embedding and the norm it was divided by.
    pooled: Vec<f32>,
    norms: Vec<f32>,
    lens: Vec<usize>,
}

impl Top {
    /// The layers `first..` of `tensors` (Hugging Face names) and the head `[hidden, 3]`
    /// (burn's `Linear` layout, as [`LinearHead`](crate::kinds::transformer::head) keeps it).
    pub(super) fn new(
        tensors: &[NamedTensor],
        first: usize,
        layers: usize,
        head_weights: &[f32],
        head_bias: [f32; 3],
        heads: usize,
        eps: f32,
    ) -> Result<Top, ModelError> {
        let get = |name: &str| -> Result<&NamedTensor, ModelError> {
            tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ModelError::Training(format!("tensor `{name}` is missing")))
        };
        let dense = |name: &str| -> Result<Dense, ModelError> {
            let w = get(&format!("{name}.weight"))?;
            let b = get(&format!("{name}.bias"))?;
            Ok(Dense {
                w: w.values.clone(),
                b: b.values.clone(),
                d_in: w.shape[1],
                d_out: w.shape[0],
            })
        };
        let norm = |name: &str| -> Result<Norm, ModelError> {
            Ok(Norm {
                gamma: get(&format!("{name}.weight"))?.values.clone(),
                beta: get(&format!("{name}.bias"))?.values.clone(),
            })
        };
        let mut out = Vec::with_capacity(layers);
        for i in first..first + layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv = dense(&format!("{p}.attention.self.query"))?;
            for part in ["key", "value"] {
                let d = dense(&format!("{p}.attention.self.{part}"))?;
                qkv.w.extend(d.w);
                qkv.b.extend(d.b);
                qkv.d_out += d.d_out;
            }
            out.push(Layer {
                qkv,
                attention_out: dense(&format!("{p}.attention.output.dense"))?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: dense(&format!("{p}.intermediate.dense"))?,
                output: dense(&format!("{p}.output.dense"))?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let hidden = out
            .first()
            .map(|l| l.qkv.d_in)
            .ok_or_else(|| ModelError::Training("no layer to fine-tune".into()))?;
        if head_weights.len() != hidden * 3 {
            return Err(ModelError::Training(format!(
                "the head has {} weights for {hidden}-wide embeddings",
                head_weights.len()
            )));
        }
        let mut w = vec![0.0; 3 * hidden];
        for (j, row) in head_weights.chunks_exact(3).enumerate() {
            for c in 0..3 {
                w[c * hidden + j] = row[c];
            }
        }
        Ok(Top {
            layers: out,
            head: Dense {
                w,
                b: head_bias.to_vec(),
                d_in: hidden,
                d_out: 3,
            },
            heads,
            hidden,
            eps,
        })
    }

    /// The head as [`LinearHead`](crate::kinds::transformer::head::LinearHead) keeps it:
    /// `[hidden, 3]` and the bias.
    pub(super) fn head_weights(&self) -> (Vec<f32>, [f32; 3]) {
        let h = self.hidden;
        let mut w = vec![0.0; h * 3];
        for c in 0..3 {
            for j in 0..h {
                w[j * 3 + c] = self.head.w[c * h + j];
            }
        }
        (w, [self.head.b[0], self.head.b[1], self.head.b[2]])
    }

    /// The tuned layers under the pretrained file's names, numbered from `first`.
    pub(super) fn layer_tensors(&self, first: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let h = self.hidden;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{}", first + i);
            let mut dense = |name: &str, w: &[f32], b: &[f32], d_in: usize| {
                let d_out = b.len();
                out.push((format!("{p}.{name}.weight"), vec![d_out, d_in], w.to_vec()));
                out.push((format!("{p}.{name}.bias"), vec![d_out], b.to_vec()));
            };
            for (k, part) in ["query", "key", "value"].iter().enumerate() {
                dense(
                    &format!("attention.self.{part}"),
                    &l.qkv.w[k * h * h..(k + 1) * h * h],
                    &l.qkv.b[k * h..(k + 1) * h],
                    h,
                );
            }
            for (name, d) in [
                ("attention.output.dense", &l.attention_out),
                ("intermediate.dense", &l.intermediate),
                ("output.dense", &l.output),
            ] {
                dense(name, &d.w, &d.b, d.d_in);
            }
            for (name, n) in [
                ("attention.output.LayerNorm", &l.attention_norm),
                ("output.LayerNorm", &l.output_norm),
            ] {
                out.push((format!("{p}.{name}.weight"), vec![h], n.gamma.clone()));
                out.push((format!("{p}.{name}.bias"), vec![h], n.beta.clone()));
            }
        }
        out
    }

    /// Every parameter, in one fixed order, with a name for checkpoints.
    pub(super) fn params(&self) -> Vec<(String, &Vec<f32>)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, v) in l.parts() {
                out.push((format!("layer.{i}.{name}"), v));
            }
        }
        out.push(("head.weight".into(), &self.head.w));
        out.push(("head.bias".into(), &self.head.b));
        out
    }

    /// [`Top::params`], mutable, same order.
    pub(super) fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            out.extend(l.parts_mut());
        }
        out.push(&mut self.head.w);
        out.push(&mut self.head.b);
        out
    }

    /// The same shape, all zeros: gradients and optimizer moments.
    pub(super) fn zeros_like(&self) -> Top {
        let mut z = self.clone();
        for p in z.params_mut() {
            p.fill(0.0);
        }
        z
    }

    /// Logits of each text of `batch`.
    pub(super) fn logits(&self, batch: &Packed) -> Vec<[f32; 3]> {
        self.forward(batch).1
    }

    /// Logits, and what the backward needs.
    pub(super) fn forward(&self, batch: &Packed) -> (Cache, Vec<[f32; 3]>) {
        let h = self.hidden;
        let n = batch.x.len() / h;
        let mut x = batch.x.clone();
        let mut caches = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let inter = l.intermediate.d_out;
            let mut qkv = vec![0.0; n * 3 * h];
            dense(&x, &l.qkv, &mut qkv);
            let mut context = vec![0.0; n * h];
            let probs = attention_forward(&qkv, &batch.lens, self.heads, h, &mut context);
            let mut a = x.clone();
            dense_acc(&context, &l.attention_out, &mut a);
            let (a_hat, a_rstd) = norm_forward(&mut a, &l.attention_norm, self.eps);
            let mut u = vec![0.0; n * inter];
            dense(&a, &l.intermediate, &mut u);
            let mut g = u.clone();
            rows_mut(&mut g, inter).for_each(|row| row.iter_mut().for_each(|v| *v = gelu(*v)));
            let mut y = a.clone();
            dense_acc(&g, &l.output, &mut y);
            let (y_hat, y_rstd) = norm_forward(&mut y, &l.output_norm, self.eps);
            caches.push(LayerCache {
                x: std::mem::replace(&mut x, y),
                qkv,
                probs,
                context,
                a_hat,
                a_rstd,
                a,
                u,
                g,
                y_hat,
                y_rstd,
            });
        }
        let b = batch.lens.len();
        let mut pooled = vec![0.0f32; b * h];
        let mut norms = vec![0.0f32; b];
        let mut start = 0;
        for (i, &len) in batch.lens.iter().enumerate() {
            let e = &mut pooled[i * h..(i + 1) * h];
            for row in x[start * h..(start + len) * h].chunks_exact(h) {
                e.iter_mut().zip(row).for_each(|(e, v)| *e += v);
            }
            start += len;
            let count = (len as f32).max(1e-9);
            e.iter_mut().for_each(|v| *v /= count);
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            e.iter_mut().for_each(|v| *v /= norm);
            norms[i] = norm;
        }
        let mut logits = vec![[0.0f32; 3]; b];
        for (i, z) in logits.iter_mut().enumerate() {
            let e = &pooled[i * h..(i + 1) * h];
            for (c, z) in z.iter_mut().enumerate() {
                let w = &self.head.w[c * h..(c + 1) * h];
                *z = self.head.b[c] + e.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        let cache = Cache {
            layers: caches,
            pooled,
            norms,
            lens: batch.lens.clone(),
        };
        (cache, logits)
    }

    /// Adds to `grads` the gradient of the loss whose gradient by the logits is `dz`.
    pub(super) fn backward(&self, cache: &Cache, dz: &[[f32; 3]], grads: &mut Top) {
        let h = self.hidden;
        let n: usize = cache.lens.iter().sum();
        // The head, then back through the L2 norm and the mean to every token.
        let mut dy = vec![0.0f32; n * h];
        let mut start = 0;
        for (i, (&len, dz)) in cache.lens.iter().zip(dz).enumerate() {
            let s = &cache.pooled[i * h..(i + 1) * h];
            let mut ds = vec![0.0f32; h];
            for (c, &d) in dz.iter().enumerate() {
                grads.head.b[c] += d;
                let gw = &mut grads.head.w[c * h..(c + 1) * h];
                gw.iter_mut().zip(s).for_each(|(g, v)| *g += d * v);
                let w = &self.head.w[c * h..(c + 1) * h];
                ds.iter_mut().zip(w).for_each(|(g, w)| *g += d * w);
            }
            let dot: f32 = s.iter().zip(&ds).map(|(a, b)| a * b).sum();
            let scale = 1.0 / (cache.norms[i] * (len as f32).max(1e-9));
            let de: Vec<f32> = ds
                .iter()
                .zip(s)
                .map(|(d, v)| (d - v * dot) * scale)
                .collect();
            for row in dy[start * h..(start + len) * h].chunks_exact_mut(h) {
                row.copy_from_slice(&de);
            }
            start += len;
        }
        for (k, (l, c)) in self.layers.iter().zip(&cache.layers).enumerate().rev() {
            let g = &mut grads.layers[k];
            let inter = l.intermediate.d_out;
            // y = LayerNorm(a + g · Woutᵀ + b)
            let dy_pre =
                norm_backward(&dy, &c.y_hat, &c.y_rstd, &l.output_norm, &mut g.output_norm);
            let mut dg = vec![0.0f32; n * inter];
            dense_back(
                &dy_pre,
                &c.g,
                &l.output,
                &mut g.output,
                Some(&mut dg),
                false,
            );
            rows_mut(&mut dg, inter)
                .zip(c.u.par_chunks(inter.max(1)))
                .for_each(|(d, u)| d.iter_mut().zip(u).for_each(|(d, u)| *d *= gelu_grad(*u)));
            // a = LayerNorm(x + context · Woᵀ + b), and a feeds both the MLP and the residual.
            let mut da = dy_pre;
            dense_back(
                &dg,
                &c.a,
                &l.intermediate,
                &mut g.intermediate,
                Some(&mut da),
                true,
            );
            let da_pre = norm_backward(
                &da,
                &c.a_hat,
                &c.a_rstd,
                &l.attention_norm,
                &mut g.attention_norm,
            );
            let mut dcontext = vec![0.0f32; n * h];
            dense_back(
                &da_pre,
                &c.context,
                &l.attention_out,
                &mut g.attention_out,
                Some(&mut dcontext),
                false,
            );
            let mut dqkv = vec![0.0f32; n * 3 * h];
            attention_backward(
                &c.qkv,
                &c.probs,
                &dcontext,
                &cache.lens,
                self.heads,
                h,
                &mut dqkv,
            );
            let mut dx = da_pre;
            // The lowest tuned layer's input is frozen: no gradient goes below it.
            let wanted = k > 0;
            dense_back(
                &dqkv,
                &c.x,
                &l.qkv,
                &mut g.qkv,
                wanted.then_some(&mut dx),
                true,
            );
            dy = dx;
        }
    }
}

impl Layer {
    fn parts(&self) -> Vec<(&'static str, &Vec<f32>)> {
        vec![
            ("qkv.weight", &self.qkv.w),
            ("qkv.bias", &self.qkv.b),
            ("attention_out.weight", &self.attention_out.w),
            ("attention_out.bias", &self.attention_out.b),
            ("attention_norm.gamma", &self.attention_norm.gamma),
            ("attention_norm.beta", &self.attention_norm.beta),
            ("intermediate.weight", &self.intermediate.w),
            ("intermediate.bias", &self.intermediate.b),
            ("output.weight", &self.output.w),
            ("output.bias", &self.output.b),
            ("output_norm.gamma", &self.output_norm.gamma),
            ("output_norm.beta", &self.output_norm.beta),
        ]
    }

    fn parts_mut(&mut self) -> Vec<&mut Vec<f32>> {
        vec![
            &mut self.qkv.w,
            &mut self.qkv.b,
            &mut self.attention_out.w,
            &mut self.attention_out.b,
            &mut self.attention_norm.gamma,
            &mut self.attention_norm.beta,
            &mut self.intermediate.w,
            &mut self.intermediate.b,
            &mut self.output.w,
            &mut self.output.b,
            &mut self.output_norm.gamma,
            &mut self.output_norm.beta,
        ]
    }
}

/// Rows of `x`, `width` wide, in parallel.
fn rows_mut(x: &mut [f32], width: usize) -> rayon::slice::ChunksMut<'_, f32> {
    x.par_chunks_mut(width.max(1))
}

/// `out = x · wᵀ + b`.
fn dense(x: &[f32], d: &Dense, out: &mut [f32]) {
    for row in out.chunks_exact_mut(d.d_out) {
        row.copy_from_slice(&d.b);
    }
    matmul_acc(out, x, &d.w, d.d_in, d.d_out, Parallelism::Rayon(0));
}

/// `out += x · wᵀ + b`.
fn dense_acc(x: &[f32], d: &Dense, out: &mut [f32]) {
    for row in out.chunks_exact_mut(d.d_out) {
        row.iter_mut().zip(&d.b).for_each(|(o, b)| *o += b);
    }
    matmul_acc(out, x, &d.w, d.d_in, d.d_out, Parallelism::Rayon(0));
}

/// The backward of `y = x · wᵀ + b` given `dy`: adds `dyᵀ · x` to `grad.w` and the column sums
/// of `dy` to `grad.b`; writes `dy · w` into `dx` (adds to it when `accumulate`).
fn dense_back(
    dy: &[f32],
    x: &[f32],
    d: &Dense,
    grad: &mut Dense,
    dx: Option<&mut Vec<f32>>,
    accumulate: bool,
) {
    let n = dy.len() / d.d_out.max(1);
    for row in dy.chunks_exact(d.d_out) {
        grad.b.iter_mut().zip(row).for_each(|(g, v)| *g += v);
    }
    let dy_t = Mat {
        data: dy,
        rows: d.d_out,
        cols: n,
        row_stride: 1,
        col_stride: d.d_out,
    };
    let x_m = Mat {
        data: x,
        rows: n,
        cols: d.d_in,
        row_stride: d.d_in,
        col_stride: 1,
    };
    gemm_strided(
        &mut grad.w,
        d.d_in,
        dy_t,
        x_m,
        1.0,
        true,
        Parallelism::Rayon(0),
    );
    if let Some(dx) = dx {
        // dx = dy · w: `w` read as it is stored, `[out, in]`.
        let dy_m = Mat {
            data: dy,
            rows: n,
            cols: d.d_out,
            row_stride: d.d_out,
            col_stride: 1,
        };
        let w = Mat {
            data: &d.w,
            rows: d.d_out,
            cols: d.d_in,
            row_stride: d.d_in,
            col_stride: 1,
        };
        gemm_strided(dx, d.d_in, dy_m, w, 1.0, accumulate, Parallelism::Rayon(0));
    }
}

/// Layer norm of each row of `x` in place; returns the normalised rows and `1/σ` per row.
fn norm_forward(x: &mut [f32], norm: &Norm, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let w = norm.gamma.len();
    let mut x_hat = vec![0.0f32; x.len()];
    let mut rstd = vec![0.0f32; x.len() / w.max(1)];
    x.par_chunks_mut(w)
        .zip(x_hat.par_chunks_mut(w))
        .zip(rstd.par_iter_mut())
        .for_each(|((row, hat), r)| {
            let mean = row.iter().sum::<f32>() / w as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
            *r = 1.0 / (var + eps).sqrt();
            for (((v, h), g), b) in row
                .iter_mut()
                .zip(hat.iter_mut())
                .zip(&norm.gamma)
                .zip(&norm.beta)
            {
                *h = (*v - mean) * *r;
                *v = *h * g + b;
            }
        });
    (x_hat, rstd)
}

/// The backward of a layer norm: adds to its parameters' gradients and returns the gradient
/// by its input.
fn norm_backward(
    dy: &[f32],
    x_hat: &[f32],
    rstd: &[f32],
    norm: &Norm,
    grad: &mut Norm,
) -> Vec<f32> {
    let w = norm.gamma.len();
    for (d, h) in dy.chunks_exact(w).zip(x_hat.chunks_exact(w)) {
        for j in 0..w {
            grad.gamma[j] += d[j] * h[j];
            grad.beta[j] += d[j];
        }
    }
    let mut dx = vec![0.0f32; dy.len()];
    dx.par_chunks_mut(w)
        .zip(dy.par_chunks(w))
        .zip(x_hat.par_chunks(w))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), h), r)| {
            let mut mean_d = 0.0f32;
            let mut mean_dh = 0.0f32;
            for j in 0..w {
                let d = dy[j] * norm.gamma[j];
                mean_d += d;
                mean_dh += d * h[j];
            }
            mean_d /= w as f32;
            mean_dh /= w as f32;
            for j in 0..w {
                dx[j] = r * (dy[j] * norm.gamma[j] - mean_d - h[j] * mean_dh);
            }
        });
    dx
}

#[inline]
fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// d gelu / dv = Φ(v) + v·φ(v).
#[inline]
fn gelu_grad(v: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    cdf + v * INV_SQRT_2PI * exp(-0.5 * v * v)
}

/// Each text's slices of a packed `[tokens, width]` buffer, for the texts to run in parallel.
fn split_rows<'a>(mut rest: &'a mut [f32], lens: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(lens.len());
    for &len in lens {
        let (part, tail) = rest.split_at_mut(len * width);
        out.push(part);
        rest = tail;
    }
    out
}

fn offsets(lens: &[usize], per: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut at = 0;
    lens.iter()
        .map(|&l| {
            let o = at;
            at += per(l);
            o
        })
        .collect()
}

/// Scaled dot-product attention of each text with itself; returns the probabilities.
fn attention_forward(
    qkv: &[f32],
    lens: &[usize],
    heads: usize,
    h: usize,
    context: &mut [f32],
) -> Vec<f32> {
    let total: usize = lens.iter().map(|l| heads * l * l).sum();
    let mut probs = vec![0.0f32; total];
    let starts = offsets(lens, |l| l);
    let mut parts = Vec::with_capacity(lens.len());
    {
        let mut rest_p = probs.as_mut_slice();
        let mut rest_c = &mut context[..];
        for (&len, &start) in lens.iter().zip(&starts) {
            let (p, tp) = rest_p.split_at_mut(heads * len * len);
            let (c, tc) = rest_c.split_at_mut(len * h);
            parts.push((start, len, p, c));
            rest_p = tp;
            rest_c = tc;
        }
    }
    parts.into_par_iter().for_each(|(start, len, p, c)| {
        attend(&qkv[start * 3 * h..(start + len) * 3 * h], len, heads, c, p);
    });
    probs
}

/// The backward of [`attention_forward`]: `dqkv` gets the gradients by queries, keys, values.
fn attention_backward(
    qkv: &[f32],
    probs: &[f32],
    dcontext: &[f32],
    lens: &[usize],
    heads: usize,
    h: usize,
    dqkv: &mut [f32],
) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let starts = offsets(lens, |l| l);
    let prob_starts = offsets(lens, |l| heads * l * l);
    let parts: Vec<(usize, usize, usize, &mut [f32])> = lens
        .iter()
        .zip(&starts)
        .zip(&prob_starts)
        .zip(split_rows(dqkv, lens, 3 * h))
        .map(|(((&len, &s), &p), dq)| (s, len, p, dq))
        .collect();
    parts.into_par_iter().for_each(|(start, len, pstart, dq)| {
        if len == 0 {
            return;
        }
        let seq = &qkv[start * 3 * h..(start + len) * 3 * h];
        let dc = &dcontext[start * h..(start + len) * h];
        let mut dp = vec![0.0f32; len * len];
        for head in 0..heads {
            let col = head * d;
            let p = &probs[pstart + head * len * len..pstart + (head + 1) * len * len];
            let pm = |transposed: bool| Mat {
                data: p,
                rows: len,
                cols: len,
                row_stride: if transposed { 1 } else { len },
                col_stride: if transposed { len } else { 1 },
            };
            // dP = dC · Vᵀ
            let dc_m = view(dc, col, len, d, h, 1);
            let v_t = view(seq, 2 * h + col, d, len, 1, 3 * h);
            gemm_strided(&mut dp, len, dc_m, v_t, 1.0, false, Parallelism::None);
            // dV = Pᵀ · dC
            let dc_m = view(dc, col, len, d, h, 1);
            gemm_strided(
                &mut dq[2 * h + col..],
                3 * h,
                pm(true),
                dc_m,
                1.0,
                false,
                Parallelism::None,
            );
            // dS = P ⊙ (dP − rowsum(dP ⊙ P))
            for (drow, prow) in dp.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                let dot: f32 = drow.iter().zip(prow).map(|(a, b)| a * b).sum();
                drow.iter_mut()
                    .zip(prow)
                    .for_each(|(a, b)| *a = b * (*a - dot));
            }
            let ds = Mat {
                data: &dp,
                rows: len,
                cols: len,
                row_stride: len,
                col_stride: 1,
            };
            let ds_t = Mat {
                data: &dp,
                rows: len,
                cols: len,
                row_stride: 1,
                col_stride: len,
            };
            // dQ = scale · dS · K, dK = scale · dSᵀ · Q
            let k = view(seq, h + col, len, d, 3 * h, 1);
            gemm_strided(
                &mut dq[col..],
                3 * h,
                ds,
                k,
                scale,
                false,
                Parallelism::None,
            );
            let q = view(seq, col, len, d, 3 * h, 1);
            gemm_strided(
                &mut dq[h + col..],
                3 * h,
                ds_t,
                q,
                scale,
                false,
                Parallelism::None,
            );
        }
    });
}

/// `data` from `offset` read as a `rows × cols` matrix.
fn view(
    data: &[f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Mat<'_> {
    Mat {
        data: &data[offset..],
        rows,
        cols,
        row_stride,
        col_stride,
    }
}

/// Adam as burn's `AdamConfig` runs it (β₁ 0.9, β₂ 0.999, ε 1e-8, no weight decay).
pub(super) struct Adam {
    pub(super) m: Top,
    pub(super) v: Top,
    /// Steps taken.
    pub(super) time: u64,
}

impl Adam {
    pub(super) fn new(top: &Top) -> Adam {
        Adam {
            m: top.zeros_like(),
            v: top.zeros_like(),
            time: 0,
        }
    }

    pub(super) fn step(&mut self, lr: f64, top: &mut Top, grads: &Top) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.time += 1;
        let t = self.time.min(i32::MAX as u64) as i32;
        let c2 = (1.0 - B2.powi(t)).sqrt();
        let factor = c2 / (1.0 - B1.powi(t));
        let lr = lr as f32;
        let params = top.params_mut();
        let g = grads.params();
        let m = self.m.params_mut();
        let v = self.v.params_mut();
        for (((p, (_, g)), m), v) in params.into_iter().zip(g).zip(m).zip(v) {
            p.par_chunks_mut(4096)
                .zip(g.par_chunks(4096))
                .zip(m.par_chunks_mut(4096))
                .zip(v.par_chunks_mut(4096))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        m[i] = m[i] * B1 + g[i] * (1.0 - B1);
                        v[i] = v[i] * B2 + g[i] * g[i] * (1.0 - B2);
                        p[i] -= lr * (m[i] * factor / (v[i].sqrt() + EPS * c2));
                    }
                });
        }
    }
}
