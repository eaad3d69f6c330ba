//! The serving forward of the sentence encoder: the same weights as the burn `Bert`, run as
//! plain f32 row-major matrices. Burn's forward pads every text of a batch to the longest one
//! and pays tensor-op overhead per layer; here the tokens of all texts of a batch are packed
//! into one matrix, so the dense layers (nearly all of the work) run over real tokens only and
//! only attention looks at sequence boundaries, which also makes a padding mask unnecessary.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{BertConfig, Weights, bf16};
use crate::error::ModelError;

/// A dense layer in PyTorch's `[out, in]` layout, which the matrix product reads in place.
/// (Stored `[in, out]` instead, the layout gemm needs not repack, it ran no faster.)
struct Dense {
    /// Empty when `packed` holds the weight instead.
    weight: Vec<f32>,
    /// The weight in bf16, when the CPU has the instructions and bf16 was asked for.
    packed: Option<bf16::Packed>,
    bias: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl Dense {
    /// Moves the weight to bf16 if its shape allows (otherwise it stays f32); whether it did.
    fn pack_bf16(&mut self) -> bool {
        if let Some(p) = bf16::Packed::new(&self.weight, self.d_out, self.d_in) {
            self.packed = Some(p);
            self.weight = Vec::new();
        }
        self.packed.is_some()
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// Query, key and value stacked: one product instead of three.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

pub(super) struct CpuBert {
    word: Vec<f32>,
    /// Position embeddings with token type 0 already added: texts are single segments.
    position: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    vocab: usize,
    max_positions: usize,
    hidden: usize,
    heads: usize,
    /// Whether (some of) the dense layers run in bf16.
    bf16: bool,
}

impl CpuBert {
    /// With `bf16`, the dense layers' weights are kept and multiplied in bf16 if the CPU has
    /// AVX512-BF16 (see [`bf16`]); [`CpuBert::uses_bf16`] tells whether it had.
    pub(super) fn load(w: &Weights<'_>, c: &BertConfig, bf16: bool) -> Result<CpuBert, ModelError> {
        let bf16 = bf16 && bf16::available();
        let mut packed = false;
        let h = c.hidden_size;
        let eps = c.layer_norm_eps as f32;
        let dense = |name: &str, d_in: usize, d_out: usize| -> Result<Dense, ModelError> {
            Ok(Dense {
                weight: w.values(&format!("{name}.weight"), &[d_out, d_in])?,
                packed: None,
                bias: w.values(&format!("{name}.bias"), &[d_out])?,
                d_in,
                d_out,
            })
        };
        let norm = |name: &str| -> Result<Norm, ModelError> {
            Ok(Norm {
                gamma: w.values(&format!("{name}.weight"), &[h])?,
                beta: w.values(&format!("{name}.bias"), &[h])?,
                eps,
            })
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv = dense(&format!("{p}.attention.self.query"), h, h)?;
            for part in ["key", "value"] {
                let d = dense(&format!("{p}.attention.self.{part}"), h, h)?;
                qkv.weight.extend(d.weight);
                qkv.bias.extend(d.bias);
                qkv.d_out += h;
            }
            let inter = c.intermediate_size;
            let mut layer = Layer {
                qkv,
                attention_out: dense(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: dense(&format!("{p}.intermediate.dense"), h, inter)?,
                output: dense(&format!("{p}.output.dense"), inter, h)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            };
            if bf16 {
                let dense = [
                    &mut layer.qkv,
                    &mut layer.attention_out,
                    &mut layer.intermediate,
                    &mut layer.output,
                ];
                // What the log and `train` report: bf16 only if some layer could take it.
                for d in dense {
                    packed |= d.pack_bf16();
                }
            }
            layers.push(layer);
        }
        let mut position = w.values(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_type = w.values(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let segment = token_type.get(..h).ok_or_else(|| ModelError::Corrupt {
            path: w.file.clone(),
            reason: "the encoder has no token types (type_vocab_size 0)".into(),
        })?;
        for row in position.chunks_exact_mut(h) {
            add(row, segment);
        }
        Ok(CpuBert {
            word: w.values("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position,
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            hidden: h,
            heads: c.num_attention_heads,
            bf16: packed,
        })
    }

    pub(super) fn uses_bf16(&self) -> bool {
        self.bf16
    }

    /// L2-normalised mean-pooled embeddings of `batch`, `[batch, hidden]` row-major. An empty
    /// sequence has no tokens to average and gets the zero vector, as the burn forward gives.
    pub(super) fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
        self.check(batch)?;
        let mut out = vec![0.0; batch.len() * self.hidden];
        let groups = split_by_tokens(batch, rayon::current_num_threads());
        if groups.len() <= 1 {
            // One text (or a few short ones): the threads share each matrix product instead.
            self.forward(batch, &mut out, Parallelism::Rayon(0));
        } else {
            // Whole texts per thread: no synchronisation inside the forward at all.
            let mut parts = Vec::with_capacity(groups.len());
            let mut rest = out.as_mut_slice();
            for g in &groups {
                let (part, tail) = rest.split_at_mut(g.len() * self.hidden);
                parts.push((&batch[g.clone()], part));
                rest = tail;
            }
            parts
                .into_par_iter()
                .for_each(|(seqs, part)| self.forward(seqs, part, Parallelism::None));
        }
        Ok(out)
    }

    /// Refuses sequences the encoder cannot embed.
    fn check(&self, batch: &[Vec<u32>]) -> Result<(), ModelError> {
        for seq in batch {
            if seq.len() > self.max_positions {
                return Err(ModelError::Tokenizer(format!(
                    "a sequence of {} tokens is longer than the encoder's {} positions",
                    seq.len(),
                    self.max_positions
                )));
            }
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(ModelError::Tokenizer(format!(
                    "token id {id} is outside the encoder's vocabulary of {}",
                    self.vocab
                )));
            }
        }
        Ok(())
    }

    /// The hidden states of `batch` after its first `layers` layers, token after token
    /// (`[tokens, hidden]`, texts in order): what fine-tuning trains the layers above on.
    pub(crate) fn hidden_states(
        &self,
        batch: &[Vec<u32>],
        layers: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.check(batch)?;
        let h = self.hidden;
        let total: usize = batch.iter().map(Vec::len).sum();
        let mut out = vec![0.0; total * h];
        let groups = split_by_tokens(batch, rayon::current_num_threads());
        let mut parts = Vec::with_capacity(groups.len());
        let mut rest = out.as_mut_slice();
        for g in &groups {
            let tokens: usize = batch[g.clone()].iter().map(Vec::len).sum();
            let (part, tail) = rest.split_at_mut(tokens * h);
            parts.push((&batch[g.clone()], part));
            rest = tail;
        }
        let par = if parts.len() <= 1 {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        parts
            .into_par_iter()
            .for_each(|(seqs, part)| part.copy_from_slice(&self.layers_over(seqs, layers, par)));
        Ok(out)
    }

    /// The network over `seqs` packed token after token, pooled into `out`.
    fn forward(&self, seqs: &[Vec<u32>], out: &mut [f32], par: Parallelism) {
        let h = self.hidden;
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let x = self.layers_over(seqs, self.layers.len(), par);
        let mut start = 0;
        for (len, e) in lens.iter().zip(out.chunks_exact_mut(h)) {
            e.fill(0.0);
            for row in x[start * h..(start + len) * h].chunks_exact(h) {
                add(e, row);
            }
            start += len;
            // Mean then L2 norm: the mean's scale cancels, so the sum is normalised directly.
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                e.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }

    /// The embeddings and the first `upto` layers over `seqs`, packed: `[tokens, hidden]`.
    fn layers_over(&self, seqs: &[Vec<u32>], upto: usize, par: Parallelism) -> Vec<f32> {
        let h = self.hidden;
        let n: usize = seqs.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(n * h);
        for seq in seqs {
            for (p, &id) in seq.iter().enumerate() {
                let at = x.len();
                let word = id as usize * h;
                x.extend_from_slice(&self.word[word..word + h]);
                add(&mut x[at..], &self.position[p * h..(p + 1) * h]);
            }
        }
        layer_norm(&mut x, &self.embedding_norm);
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let inter = self.layers.first().map_or(0, |l| l.intermediate.d_out);
        let mut qkv = vec![0.0; n * 3 * h];
        let mut context = vec![0.0; n * h];
        let mut a = vec![0.0; n * h];
        let mut hidden = vec![0.0; n * inter];
        let mut s = Vec::new();
        for layer in self.layers.iter().take(upto) {
            dense(&x, &layer.qkv, &mut qkv, par, &mut s);
            attention(&qkv, &lens, self.heads, &mut context);
            // The residual goes in first and the product accumulates onto it.
            a.copy_from_slice(&x);
            dense_add(&context, &layer.attention_out, &mut a, par, &mut s);
            layer_norm(&mut a, &layer.attention_norm);
            dense(&a, &layer.intermediate, &mut hidden, par, &mut s);
            gelu(&mut hidden);
            x.copy_from_slice(&a);
            dense_add(&hidden, &layer.output, &mut x, par, &mut s);
            layer_norm(&mut x, &layer.output_norm);
        }
        x
    }
}

/// Contiguous runs of `batch` with about equal token counts, at most `parts` of them and none
/// so small that a thread would spend more on starting than on working.
fn split_by_tokens(batch: &[Vec<u32>], parts: usize) -> Vec<std::ops::Range<usize>> {
    const MIN_TOKENS: usize = 48;
    let total: usize = batch.iter().map(Vec::len).sum();
    let parts = parts.min(total / MIN_TOKENS).clamp(1, batch.len().max(1));
    let mut groups = Vec::with_capacity(parts);
    let (mut start, mut seen) = (0, 0);
    for (i, seq) in batch.iter().enumerate() {
        // A text goes to the next run when most of it lies past this run's share.
        let past_share = (2 * seen + seq.len()) * parts > 2 * total * (groups.len() + 1);
        if past_share && i > start && groups.len() + 1 < parts {
            groups.push(start..i);
            start = i;
        }
        seen += seq.len();
    }
    groups.push(start..batch.len());
    groups
}

/// `out = x · Wᵀ + b`; `scratch` is the bf16 path's buffer, reused across layers.
fn dense(x: &[f32], d: &Dense, out: &mut [f32], par: Parallelism, scratch: &mut Vec<u32>) {
    dense_into(x, d, out, false, par, scratch);
}

/// `out += x · Wᵀ + b`.
fn dense_add(x: &[f32], d: &Dense, out: &mut [f32], par: Parallelism, scratch: &mut Vec<u32>) {
    dense_into(x, d, out, true, par, scratch);
}

fn dense_into(
    x: &[f32],
    d: &Dense,
    out: &mut [f32],
    accumulate: bool,
    par: Parallelism,
    scratch: &mut Vec<u32>,
) {
    if let Some(p) = &d.packed {
        debug_assert_eq!(p.outputs(), d.d_out);
        let parallel = !matches!(par, Parallelism::None);
        bf16::dense(out, x, p, &d.bias, accumulate, scratch, parallel);
        return;
    }
    for row in out.chunks_exact_mut(d.d_out) {
        if accumulate {
            add(row, &d.bias);
        } else {
            row.copy_from_slice(&d.bias);
        }
    }
    matmul_acc(out, x, &d.weight, d.d_in, d.d_out, par);
}

/// `out[m, n] += a[m, k] · w[n, k]ᵀ`, all row-major: `w` is a PyTorch `[out, in]` weight.
pub(crate) fn matmul_acc(
    out: &mut [f32],
    a: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    par: Parallelism,
) {
    let m = a.len() / k.max(1);
    let a = Mat {
        data: a,
        rows: m,
        cols: k,
        row_stride: k,
        col_stride: 1,
    };
    // Read transposed: element (p, j) is row j's input p.
    let w_t = Mat {
        data: w,
        rows: k,
        cols: n,
        row_stride: 1,
        col_stride: k,
    };
    gemm_strided(out, n, a, w_t, 1.0, true, par);
}

/// A matrix read in place from a slice: element (i, j) at `i * row_stride + j * col_stride`.
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl Mat<'_> {
    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `out = scale · a · b`, or `out += scale · a · b` when `accumulate`; `out` is row-major
/// with rows `out_row_stride` apart, of which only the first `b.cols` columns are written.
pub(crate) fn gemm_strided(
    out: &mut [f32],
    out_row_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    scale: f32,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let out_fits = m == 0 || n == 0 || (m - 1) * out_row_stride + n <= out.len();
    assert!(
        b.rows == k && a.fits() && b.fits() && out_fits,
        "matrix shapes disagree: {m}x{k} · {}x{n} into {} floats",
        b.rows,
        out.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: gemm reads a at i * a.row_stride + p * a.col_stride, b at p * b.row_stride +
    // j * b.col_stride, and reads and writes out at i * out_row_stride + j, for i < m, j < n,
    // p < k; the assertion above keeps all of these inside the slices. The shared borrows
    // keep a and b alive and unchanged while gemm runs, and out is the one mutable borrow,
    // so it aliases neither. Strides are small offsets into slices, so they fit in isize.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Scaled dot-product attention of each sequence with itself, per head; `qkv` holds each
/// token's query, key and value side by side, `context` gets the heads' outputs concatenated.
fn attention(qkv: &[f32], lens: &[usize], heads: usize, context: &mut [f32]) {
    let h = context.len() / lens.iter().sum::<usize>().max(1);
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut scores = vec![0.0; longest * longest];
    let mut start = 0;
    for &len in lens.iter().filter(|&&len| len > 0) {
        attend(
            &qkv[start * 3 * h..(start + len) * 3 * h],
            len,
            heads,
            &mut context[start * h..(start + len) * h],
            &mut scores[..len * len],
        );
        start += len;
    }
}

/// Attention of one text of `len` tokens with itself, head by head: `seq` holds its tokens'
/// query, key and value side by side (`len` rows of `3 · hidden`), `context` gets its `len`
/// rows of `hidden` outputs. `probs` keeps each head's probabilities when it holds
/// `heads · len²` values (training needs them back); with room for one head it is scratch.
pub(crate) fn attend(
    seq: &[f32],
    len: usize,
    heads: usize,
    context: &mut [f32],
    probs: &mut [f32],
) {
    if len == 0 {
        return;
    }
    let h = context.len() / len;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let keep = probs.len() >= heads * len * len;
    for head in 0..heads {
        let col = head * d;
        let at = if keep { head * len * len } else { 0 };
        let s = &mut probs[at..at + len * len];
        let view = |offset: usize, rows: usize, cols: usize, row_stride, col_stride| Mat {
            data: &seq[offset..],
            rows,
            cols,
            row_stride,
            col_stride,
        };
        let q = view(col, len, d, 3 * h, 1);
        // Keys read transposed: element (t, j) is key j's component t.
        let k_t = view(h + col, d, len, 1, 3 * h);
        gemm_strided(s, len, q, k_t, scale, false, Parallelism::None);
        softmax_rows(s, len);
        let p = Mat {
            data: s,
            rows: len,
            cols: len,
            row_stride: len,
            col_stride: 1,
        };
        let v = view(2 * h + col, len, d, 3 * h, 1);
        gemm_strided(&mut context[col..], h, p, v, 1.0, false, Parallelism::None);
    }
}

/// Softmax of each `width`-long row of `s`, in place.
fn softmax_rows(s: &mut [f32], width: usize) {
    pulp::Arch::new().dispatch(Softmax { s, width });
}

// The element-wise steps are `pulp` kernels: `with_simd` is inlined into a copy of its caller
// compiled for the CPU's SIMD level (AVX2 and FMA here), so their loops vectorise 8 wide with
// FMA. A closure would not do: codegen puts it apart from the dispatcher, built for SSE2.
struct Softmax<'a> {
    s: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for Softmax<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.s.chunks_exact_mut(self.width.max(1)) {
            let max = max8(row);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inv = 1.0 / sum8(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

#[inline(always)]
fn add(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
}

/// Layer norm of each `gamma.len()`-wide row of `x`, in place.
fn layer_norm(x: &mut [f32], norm: &Norm) {
    pulp::Arch::new().dispatch(LayerNorm { x, norm });
}

struct LayerNorm<'a> {
    x: &'a mut [f32],
    norm: &'a Norm,
}

impl pulp::WithSimd for LayerNorm<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let LayerNorm { x, norm } = self;
        let w = norm.gamma.len();
        for row in x.chunks_exact_mut(w) {
            let mean = sum8(row) / w as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            let var = sum8_sq(row) / w as f32;
            let inv = 1.0 / (var + norm.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                *v = *v * inv * g + b;
            }
        }
    }
}

/// A maximum in eight lanes: `f32::max` as a single running value is a serial chain.
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// A sum in eight lanes, so it vectorises (a single running sum is a serial chain).
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum8_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Exact (erf) GELU, in place.
fn gelu(x: &mut [f32]) {
    pulp::Arch::new().dispatch(Gelu(x));
}

struct Gelu<'a>(&'a mut [f32]);

impl pulp::WithSimd for Gelu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for v in self.0.iter_mut() {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// erf as a rational function on [-4, 4] (past which f32 erf is ±1), the approximation Eigen
/// and XLA use for f32: a few ulp, branch-free, so the GELU loop vectorises where libm's
/// scalar `erff` call would cost more than the matrix products around it.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// e^x for x <= 0 (softmax after the max is taken off): Cephes' expf, range-reduced to
/// |r| <= ln2/2 and a degree-6 polynomial, within 2 ulp and branch-free so it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n built in the exponent field: n is in [-126, 0] here, a normal power of two.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_are_within_float_precision() {
        let mut worst_erf = 0.0f32;
        let mut worst_exp = 0.0f32;
        for i in -60_000i32..=60_000 {
            let x = i as f32 * 1e-4;
            worst_erf = worst_erf.max((erf(x) - libm::erff(x)).abs());
            let y = -(i.abs() as f32) * 1.3e-3;
            worst_exp = worst_exp.max((exp(y) - y.exp()).abs() / y.exp());
        }
        assert!(worst_erf < 5e-7, "erf off by {worst_erf}");
        assert!(worst_exp < 5e-7, "exp off by {worst_exp} (relative)");
    }

    #[test]
    fn batches_split_into_contiguous_runs_of_similar_token_counts() {
        let batch: Vec<Vec<u32>> = [30, 30, 30, 30, 2, 60]
            .iter()
            .map(|&n| vec![1; n])
            .collect();
        assert_eq!(split_by_tokens(&batch, 2), vec![0..3, 3..6]);
        assert_eq!(split_by_tokens(&batch, 1), vec![0..6]);
        assert_eq!(split_by_tokens(&batch[..1], 2), vec![0..1]);
        assert_eq!(split_by_tokens(&[], 2), vec![0..0]);
    }
}
