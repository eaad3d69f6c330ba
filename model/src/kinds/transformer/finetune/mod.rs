//! Fine-tuning the encoder's top layers, with the head, on CPU: an offline job that writes
//! checkpoints as it goes and resumes from the last one after an interruption, to the same
//! result an uninterrupted run gives.
//!
//! The layers below the tuned ones stay frozen, so their output is computed once per text by
//! the serving forward and kept in f16 on disk ([`frozen`]); each step runs only the top
//! layers forward and back ([`top`]).
//! Everything that decides a step is a function of the seed, the epoch and the step (the
//! batch order, the learning rate; there is no dropout), so a checkpoint needs only the
//! tuned weights, the optimizer state and the position.

mod frozen;
pub mod plan;
mod top;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sentimentd_data::Label;

use crate::error::ModelError;
use crate::kinds::fast::model::{f32_safetensors, f32_tensor};
use crate::kinds::fast::train::TrainObserver;
use crate::kinds::transformer::encoder::SentenceEncoder;
use crate::kinds::transformer::head::LinearHead;
use crate::metrics::EvalMetrics;
use frozen::Frozen;
use top::{Adam, Top};

/// What decides a fine-tuning run; recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTuneParams {
    /// How many of the encoder's top layers are trained (the rest stay frozen).
    pub layers: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of Adam; it falls linearly to a tenth over the run.
    pub learning_rate: f64,
    pub seed: u64,
    /// A checkpoint is written after this many steps (and at the end of each epoch).
    pub checkpoint_every: usize,
}

/// Where a run is: the next step to take, and the best epoch so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Progress {
    /// What the checkpoint belongs to (data, encoder and parameters); another run's is ignored.
    key: String,
    epoch: usize,
    step: usize,
    generation: u64,
    /// Sum of the losses of this epoch's steps so far (the epoch's mean loss is recorded).
    #[serde(default, with = "exact")]
    loss_sum: f64,
    best: Option<Best>,
    history: Vec<FineTuneEpoch>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Best {
    epoch: usize,
    #[serde(with = "exact")]
    macro_recall: f64,
    #[serde(with = "exact")]
    log_loss: f64,
}

/// An f64 stored as its bits: serde_json's decimal form may not read back to the same value,
/// and a resumed run must compare and sum exactly as an uninterrupted one.
mod exact {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// One epoch of fine-tuning, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTuneEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub selection_macro_recall: f64,
    pub selection_log_loss: f64,
    pub seconds: f64,
}

/// The outcome: the tuned layers (Hugging Face names, for [`SentenceEncoder`] to load over
/// the pretrained file), the head, and the epochs.
pub struct FineTuned {
    /// safetensors bytes of the tuned layers.
    pub layers: Vec<u8>,
    pub head: LinearHead,
    pub best_epoch: usize,
    pub history: Vec<FineTuneEpoch>,
    /// True when the run started from a checkpoint.
    pub resumed: bool,
    /// Why it ran fewer epochs than asked, if it did (the time budget).
    pub stopped_early: Option<String>,
}

/// The batches of an epoch: a seeded shuffle, then texts of similar length grouped (within
/// windows of 16 batches) so little goes to padding, then the batches shuffled again.
fn epoch_batches(
    n: usize,
    lens: &[usize],
    batch: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks(batch * 16) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lens[i]);
        batches.extend(w.chunks(batch).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Class weights `n / (3 · count)`: each class weighs the same in the loss.
fn class_weights(labels: &[Label]) -> [f32; 3] {
    let mut counts = [0usize; 3];
    for l in labels {
        counts[l.index()] += 1;
    }
    let n = labels.len() as f32;
    counts.map(|c| if c == 0 { 0.0 } else { n / (3.0 * c as f32) })
}

/// The class-weighted cross-entropy of `logits` (`-Σ w_y log p_y / Σ w_y`, as burn's
/// `CrossEntropyLoss` with weights computes it) and its gradient by the logits.
fn loss_and_grad(
    logits: &[[f32; 3]],
    labels: &[Label],
    weights: &[f32; 3],
) -> (f64, Vec<[f32; 3]>) {
    let total: f32 = labels
        .iter()
        .map(|y| weights[y.index()])
        .sum::<f32>()
        .max(1e-12);
    let mut loss = 0.0f64;
    let grads = logits
        .iter()
        .zip(labels)
        .map(|(z, y)| {
            let p = crate::kinds::transformer::head::softmax(z.map(f64::from));
            let w = weights[y.index()];
            loss -= f64::from(w) * p[y.index()].max(1e-30).ln();
            let mut d = [0.0f32; 3];
            for c in 0..3 {
                let target = if c == y.index() { 1.0 } else { 0.0 };
                d[c] = w / total * (p[c] as f32 - target);
            }
            d
        })
        .collect();
    (loss / f64::from(total), grads)
}

/// Macro-recall and mean log-loss of `top` on the selection split.
fn score(top: &Top, data: &Frozen, labels: &[Label]) -> Result<(f64, f64), ModelError> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| data.lens()[i]);
    let mut by_row = vec![[0.0f32; 3]; labels.len()];
    for rows in order.chunks(64) {
        let logits = top.logits(&data.batch(rows)?);
        for (&i, z) in rows.iter().zip(logits) {
            by_row[i] = z;
        }
    }
    let mut predicted = Vec::with_capacity(labels.len());
    let mut loss = 0.0f64;
    for (z, y) in by_row.iter().zip(labels) {
        let p = crate::kinds::transformer::head::softmax(z.map(f64::from));
        loss -= p[y.index()].max(1e-12).ln();
        predicted.push(crate::Prediction::from_probabilities(p.map(|v| v as f32)).label);
    }
    let recall = EvalMetrics::compute(labels, &predicted).macro_recall;
    Ok((recall, loss / labels.len().max(1) as f64))
}

/// The checkpoint directory's files.
struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    fn progress_path(&self) -> PathBuf {
        self.dir.join("progress.json")
    }
    fn top(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("top-{generation}.safetensors"))
    }
    fn optim(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("optim-{generation}.safetensors"))
    }
    fn best(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("best-{generation}.safetensors"))
    }

    fn read(&self, key: &str) -> Option<Progress> {
        let text = std::fs::read_to_string(self.progress_path()).ok()?;
        let p: Progress = serde_json::from_str(&text).ok()?;
        (p.key == key).then_some(p)
    }

    /// Writes the weights and optimizer state under a new generation, then the progress that
    /// names it (atomically, last), then deletes the older generations: a crash at any point
    /// leaves a complete checkpoint behind.
    fn write(
        &self,
        progress: &mut Progress,
        top: &Top,
        optim: &Adam,
        best: Option<&Top>,
        previous_best: Option<u64>,
    ) -> Result<(), ModelError> {
        std::fs::create_dir_all(&self.dir).map_err(ModelError::io(&self.dir))?;
        let generation = progress.generation + 1;
        // Left by an attempt killed before its progress file: possibly a hard link to the
        // current best file, which writing or copying onto would destroy.
        for stale in [
            self.top(generation),
            self.optim(generation),
            self.best(generation),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        save_tensors(&self.top(generation), &[("", top)], None)?;
        let time = HashMap::from([("time".to_string(), optim.time.to_string())]);
        save_tensors(
            &self.optim(generation),
            &[("m.", &optim.m), ("v.", &optim.v)],
            Some(time),
        )?;
        match (best, previous_best) {
            (Some(b), _) => save_tensors(&self.best(generation), &[("", b)], None)?,
            // A link, not a rename: until the new progress file is in place, the old one
            // still names generation g and its best file.
            (None, Some(g)) => {
                std::fs::hard_link(self.best(g), self.best(generation))
                    .or_else(|_| std::fs::copy(self.best(g), self.best(generation)).map(|_| ()))
                    .map_err(ModelError::io(self.best(g)))?;
            }
            (None, None) => {}
        }
        progress.generation = generation;
        let json = serde_json::to_vec_pretty(&progress).map_err(ModelError::json)?;
        let path = self.progress_path();
        sentimentd_data::atomic::write_bytes_atomic(&path, &json).map_err(ModelError::io(&path))?;
        for entry in std::fs::read_dir(&self.dir).map_err(ModelError::io(&self.dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().to_string();
            let older = name
                .rsplit_once('-')
                .and_then(|(_, g)| g.strip_suffix(".safetensors"))
                .and_then(|g| g.parse::<u64>().ok());
            if older.is_some_and(|g| g < generation) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The weights, optimizer state and best weights of `progress`'s generation, shaped as
    /// `fresh`.
    fn load(&self, p: &Progress, fresh: &Top) -> Result<(Top, Adam, Option<Top>), ModelError> {
        let top = load_tensors(&self.top(p.generation), &[""], fresh)?.remove(0);
        let optim_path = self.optim(p.generation);
        let mut moments = load_tensors(&optim_path, &["m.", "v."], fresh)?;
        let bytes = std::fs::read(&optim_path).map_err(ModelError::io(&optim_path))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&optim_path, e))?;
        let time = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("time"))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| ModelError::Corrupt {
                path: optim_path.clone(),
                reason: "no optimizer step count".into(),
            })?;
        let v = moments.remove(1);
        let m = moments.remove(0);
        let best = match p.best {
            Some(_) => Some(load_tensors(&self.best(p.generation), &[""], fresh)?.remove(0)),
            None => None,
        };
        Ok((top, Adam { m, v, time }, best))
    }
}

fn corrupt(path: &Path, e: safetensors::SafeTensorError) -> ModelError {
    ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// `tops`' parameters in one file, each under its prefix.
fn save_tensors(
    path: &Path,
    tops: &[(&str, &Top)],
    meta: Option<HashMap<String, String>>,
) -> Result<(), ModelError> {
    let named: Vec<(String, Vec<usize>, &[f32])> = tops
        .iter()
        .flat_map(|(prefix, top)| {
            top.params()
                .into_iter()
                .map(move |(name, v)| (format!("{prefix}{name}"), vec![v.len()], v.as_slice()))
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, &[f32])> = named
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), *v))
        .collect();
    let bytes = f32_safetensors(&refs, meta, path)?;
    sentimentd_data::atomic::write_bytes_atomic(path, &bytes).map_err(ModelError::io(path))
}

/// One `Top` per prefix, read from `path` into `fresh`'s shape.
fn load_tensors(path: &Path, prefixes: &[&str], fresh: &Top) -> Result<Vec<Top>, ModelError> {
    // Read whole: the next checkpoint deletes this generation's files.
    let bytes = std::fs::read(path).map_err(ModelError::io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let names: Vec<String> = fresh.params().into_iter().map(|(n, _)| n).collect();
    prefixes
        .iter()
        .map(|prefix| {
            let mut top = fresh.clone();
            for (name, slot) in names.iter().zip(top.params_mut()) {
                let (_, values) = f32_tensor(&st, &format!("{prefix}{name}"), path)?;
                if values.len() != slot.len() {
                    return Err(ModelError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!(
                            "`{prefix}{name}` has {} values, expected {}",
                            values.len(),
                            slot.len()
                        ),
                    });
                }
                *slot = values;
            }
            Ok(top)
        })
        .collect()
}

/// The encoder's top `k` layers as pretrained, and `head`, ready to train.
fn top_of(encoder: &SentenceEncoder, k: usize, head: &LinearHead) -> Result<Top, ModelError> {
    let upto = encoder.config.num_hidden_layers - k;
    Top::new(
        &encoder.layer_tensors(upto)?,
        upto,
        k,
        &head.weights,
        head.bias,
        encoder.config.num_attention_heads,
        encoder.config.layer_norm_eps as f32,
    )
}

/// Fine-tunes the top `params.layers` layers of `encoder` and a head started from `head`,
/// choosing the epoch by selection macro-recall (ties to the lower log-loss). Checkpoints go
/// to `checkpoint_dir`; a run whose key matches a checkpoint there resumes from it. With a
/// `deadline`, no epoch starts that the last one's duration says would end past it.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    encoder: &SentenceEncoder,
    head: &LinearHead,
    params: &FineTuneParams,
    train: (&[String], &[Label]),
    selection: (&[String], &[Label]),
    key: &str,
    checkpoint_dir: &Path,
    deadline: Option<Instant>,
    observer: &mut dyn TrainObserver,
) -> Result<FineTuned, ModelError> {
    let total_layers = encoder.config.num_hidden_layers;
    if params.layers == 0 || params.layers > total_layers {
        return Err(ModelError::Training(format!(
            "[transformer] finetune_layers = {}, but the encoder has {total_layers} layers",
            params.layers
        )));
    }
    let k = params.layers;
    let upto = total_layers - k;
    let fresh = top_of(encoder, k, head)?;

    std::fs::create_dir_all(checkpoint_dir).map_err(ModelError::io(checkpoint_dir))?;
    observer.on_message(&format!(
        "fine-tuning the top {k} of {total_layers} encoder layers: the frozen layers' output \
         for {} training and {} selection texts ({} products, kept in f16 under {}); the \
         tuned layers train in f32",
        train.0.len(),
        selection.0.len(),
        encoder.serving_precision(),
        checkpoint_dir.display()
    ));
    let frozen = Frozen::open_or_build(
        &checkpoint_dir.join("frozen-train.f16"),
        key,
        encoder,
        train.0,
        upto,
        |d, n| observer.on_progress("frozen layers, training texts", d, n),
    )?;
    let sel = Frozen::open_or_build(
        &checkpoint_dir.join("frozen-selection.f16"),
        key,
        encoder,
        selection.0,
        upto,
        |d, n| observer.on_progress("frozen layers, selection texts", d, n),
    )?;

    let checkpoint = Checkpoint {
        dir: checkpoint_dir.to_path_buf(),
    };
    let (mut top, mut optim, mut progress, mut best_top, resumed) = match checkpoint.read(key) {
        Some(p) => {
            let (top, optim, best) = checkpoint.load(&p, &fresh).map_err(|e| {
                ModelError::Training(format!(
                    "cannot resume from the checkpoint in {}: {e}; delete it to start over",
                    checkpoint.dir.display()
                ))
            })?;
            observer.on_message(&format!(
                "resuming fine-tuning from the checkpoint in {}: epoch {}, step {}",
                checkpoint.dir.display(),
                p.epoch,
                p.step
            ));
            (top, optim, p, best, true)
        }
        None => {
            let p = Progress {
                key: key.to_string(),
                epoch: 1,
                step: 0,
                generation: 0,
                loss_sum: 0.0,
                best: None,
                history: Vec::new(),
            };
            let optim = Adam::new(&fresh);
            (fresh, optim, p, None, false)
        }
    };

    let weights = class_weights(train.1);
    let batch = params.batch_size.max(1);
    let steps_per_epoch = train.0.len().div_ceil(batch);
    let total_steps = (steps_per_epoch * params.epochs).max(1);
    observer.on_start(params.epochs, steps_per_epoch);
    let mut since_checkpoint = 0;
    let mut grads = top.zeros_like();
    let mut stopped_early = None;
    while progress.epoch <= params.epochs {
        // Checked before each epoch after the first (a resumed run included): no epoch starts
        // that the last one's duration says would end past the deadline.
        if let (Some(at), Some(last), 0) = (deadline, progress.history.last(), progress.step) {
            let left = at.saturating_duration_since(Instant::now()).as_secs_f64();
            if last.seconds > left {
                let why = format!(
                    "stopped after epoch {} of {}: the time budget leaves {left:.0}s and an \
                     epoch takes {:.0}s",
                    last.epoch, params.epochs, last.seconds
                );
                observer.on_message(&format!("fine-tuning {why}"));
                stopped_early = Some(why);
                break;
            }
        }
        let epoch = progress.epoch;
        let started = Instant::now();
        let batches = epoch_batches(train.0.len(), frozen.lens(), batch, params.seed, epoch);
        for (step, rows) in batches.iter().enumerate().skip(progress.step) {
            let x = frozen.batch(rows)?;
            let labels: Vec<Label> = rows.iter().map(|&i| train.1[i]).collect();
            let (cache, logits) = top.forward(&x);
            let (value, dz) = loss_and_grad(&logits, &labels, &weights);
            for p in grads.params_mut() {
                p.fill(0.0);
            }
            top.backward(&cache, &dz, &mut grads);
            drop(cache);
            let global = (epoch - 1) * steps_per_epoch + step;
            let lr = params.learning_rate * (1.0 - 0.9 * global as f64 / total_steps as f64);
            optim.step(lr, &mut top, &grads);
            progress.loss_sum += value;
            observer.on_step(epoch, step + 1, value);
            progress.step = step + 1;
            since_checkpoint += 1;
            if since_checkpoint >= params.checkpoint_every.max(1) && progress.step < batches.len() {
                since_checkpoint = 0;
                let previous = progress.best.as_ref().map(|_| progress.generation);
                checkpoint.write(&mut progress, &top, &optim, None, previous)?;
                observer.on_message(&format!(
                    "checkpoint: epoch {epoch}, step {} of {}",
                    progress.step,
                    batches.len()
                ));
            }
        }
        let (recall, log_loss) = score(&top, &sel, selection.1)?;
        let record = FineTuneEpoch {
            epoch,
            train_loss: progress.loss_sum / steps_per_epoch.max(1) as f64,
            selection_macro_recall: recall,
            selection_log_loss: log_loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.on_message(&format!(
            "fine-tuning epoch {epoch}: selection macro-recall {recall:.4}, log-loss {log_loss:.4}, \
             {:.0}s",
            record.seconds
        ));
        progress.history.push(record);
        let improved = progress.best.as_ref().is_none_or(|b| {
            recall > b.macro_recall || (recall == b.macro_recall && log_loss < b.log_loss)
        });
        let previous = progress.best.as_ref().map(|_| progress.generation);
        if improved {
            progress.best = Some(Best {
                epoch,
                macro_recall: recall,
                log_loss,
            });
            best_top = Some(top.clone());
        }
        progress.epoch += 1;
        progress.step = 0;
        progress.loss_sum = 0.0;
        since_checkpoint = 0;
        checkpoint.write(
            &mut progress,
            &top,
            &optim,
            if improved { best_top.as_ref() } else { None },
            previous,
        )?;
    }
    let (Some(best), Some(best_top)) = (progress.best.clone(), best_top) else {
        return Err(ModelError::Training(
            "no fine-tuning epoch was run (epochs = 0?)".into(),
        ));
    };
    let named = best_top.layer_tensors(upto);
    let refs: Vec<(&str, Vec<usize>, &[f32])> = named
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    let layers = f32_safetensors(&refs, None, &checkpoint.dir)?;
    let (weights, bias) = best_top.head_weights();
    let head = LinearHead {
        dim: encoder.dim(),
        weights,
        bias,
    };
    Ok(FineTuned {
        layers,
        head,
        best_epoch: best.epoch,
        history: progress.history,
        resumed,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    //! The hand-written backward is held to burn's autodiff over the same layers: the network
    //! burn trained before, rebuilt here as the reference.

    use super::*;
    use crate::kinds::fast::train::Backend;
    use crate::kinds::transformer::encoder::{Layer, Precision, attention_bias, id_batch, pool};
    use burn::module::{Module, Param};
    use burn::nn::Linear;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Int, Tensor, TensorData};

    #[derive(Module, Debug)]
    struct BurnTop {
        layers: Vec<Layer>,
        head: Linear,
        heads: usize,
    }

    fn encoder() -> SentenceEncoder {
        let root = std::env::var_os("SENTIMENTD_PRETRAINED")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sentimentd-pretrained")
            });
        let dir = root.join("all-minilm-l6-v2");
        SentenceEncoder::load_tuned(&dir, 256, Backend::Flex, Precision::F32, None).unwrap_or_else(
            |e| panic!("{e} (scripts/test.sh runs scripts/fetch-pretrained.sh for the tests)"),
        )
    }

    fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 tensor")
    }

    /// `‖a − b‖ / ‖b‖`.
    fn relative(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (diff / norm.max(1e-30)).sqrt()
    }

    /// `[in, out]` (burn) as `[out, in]` (PyTorch).
    fn transposed(v: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let mut t = vec![0.0; v.len()];
        for i in 0..d_in {
            for o in 0..d_out {
                t[o * d_in + i] = v[i * d_out + o];
            }
        }
        t
    }

    /// A one-layer top of width 4 with every parameter set to `value`.
    fn tiny_top(value: f32) -> Top {
        let (h, inter) = (4, 8);
        let p = "encoder.layer.0";
        let mut tensors = Vec::new();
        let mut dense = |name: &str, d_in: usize, d_out: usize| {
            for (part, shape) in [("weight", vec![d_out, d_in]), ("bias", vec![d_out])] {
                tensors.push(crate::kinds::transformer::encoder::NamedTensor {
                    name: format!("{p}.{name}.{part}"),
                    values: vec![value; shape.iter().product()],
                    shape,
                });
            }
        };
        for name in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
        ] {
            dense(name, h, h);
        }
        dense("attention.output.dense", h, h);
        dense("intermediate.dense", h, inter);
        dense("output.dense", inter, h);
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            dense(norm, 1, h);
        }
        for t in tensors
            .iter_mut()
            .filter(|t| t.name.contains("LayerNorm.weight"))
        {
            t.shape = vec![h];
        }
        Top::new(&tensors, 0, 1, &[value; 12], [value; 3], 1, 1e-12).expect("top")
    }

    /// A checkpoint killed between linking the next generation's best file and writing its
    /// progress leaves that link behind; the resumed run's checkpoints still keep, and then
    /// replace, the best weights intact.
    #[test]
    fn a_checkpoint_killed_after_linking_its_best_file_still_resumes_to_the_best_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint = Checkpoint {
            dir: dir.path().to_path_buf(),
        };
        let (best, current) = (tiny_top(0.5), tiny_top(0.25));
        let mut progress = Progress {
            key: "k".into(),
            epoch: 2,
            step: 0,
            generation: 0,
            loss_sum: 0.0,
            best: Some(Best {
                epoch: 1,
                macro_recall: 0.5,
                log_loss: 1.0,
            }),
            history: Vec::new(),
        };
        let optim = Adam::new(&current);
        checkpoint
            .write(&mut progress, &current, &optim, Some(&best), None)
            .expect("first checkpoint");
        assert_eq!(progress.generation, 1);
        std::fs::hard_link(checkpoint.best(1), checkpoint.best(2)).expect("leftover link");
        // Resumed: the next checkpoint keeps the best (a link again), then one improves it.
        checkpoint
            .write(&mut progress, &current, &optim, None, Some(1))
            .expect("second checkpoint");
        let read = checkpoint.read("k").expect("progress");
        let (_, _, kept) = checkpoint.load(&read, &best).expect("resumes");
        let kept = kept.expect("a best");
        assert!(
            kept.params()
                .iter()
                .all(|(_, v)| v.iter().all(|&x| x == 0.5))
        );
        checkpoint
            .write(
                &mut progress,
                &current,
                &optim,
                Some(&tiny_top(0.75)),
                Some(2),
            )
            .expect("third checkpoint");
        let read = checkpoint.read("k").expect("progress");
        let (_, _, kept) = checkpoint.load(&read, &best).expect("loads");
        let kept = kept.expect("a best");
        assert!(
            kept.params()
                .iter()
                .all(|(_, v)| v.iter().all(|&x| x == 0.75))
        );
        assert_eq!(read.generation, 3);
        // And generation 2, which the third replaced, is gone with its files.
        assert!(!checkpoint.best(2).exists() && !checkpoint.best(1).exists());
    }

    const SAMPLE: [&str; 6] = [
        "I love this phone, best purchase ever!!",
        "worst service I have had in years",
        "the meeting is at 3pm on thursday",
        "not bad at all",
        "ok",
        "why would anyone ever do that to a customer #fail @user",
    ];
    const SAMPLE_LABELS: [Label; 6] = [
        Label::Positive,
        Label::Negative,
        Label::Neutral,
        Label::Positive,
        Label::Neutral,
        Label::Negative,
    ];

    /// The time budget is held to at epoch ends: with a deadline already passed, the run keeps
    /// the epoch it finished, says why it stopped, and leaves the other epochs unrun.
    #[test]
    fn a_deadline_stops_fine_tuning_at_the_first_epoch_end_it_leaves_no_room_after() {
        let enc = encoder();
        let texts: Vec<String> = SAMPLE.map(String::from).to_vec();
        let labels = SAMPLE_LABELS;
        let head = LinearHead {
            dim: enc.dim(),
            weights: vec![0.01; enc.dim() * 3],
            bias: [0.0; 3],
        };
        let params = FineTuneParams {
            layers: 1,
            epochs: 3,
            batch_size: 3,
            learning_rate: 1e-4,
            seed: 7,
            checkpoint_every: 100,
        };
        let run = |deadline: Option<Instant>| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut quiet = crate::kinds::fast::train::Quiet;
            fine_tune(
                &enc,
                &head,
                &params,
                (&texts, &labels),
                (&texts, &labels),
                "k",
                dir.path(),
                deadline,
                &mut quiet,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let cut = run(Some(Instant::now()));
        assert_eq!(cut.history.len(), 1);
        assert_eq!(cut.best_epoch, 1);
        let why = cut.stopped_early.unwrap_or_default();
        assert!(
            why.contains("stopped after epoch 1 of 3") && why.contains("time budget"),
            "{why}"
        );
        let whole = run(None);
        assert_eq!(whole.history.len(), 3);
        assert_eq!(whole.stopped_early, None);
    }

    #[test]
    fn the_hand_written_backward_matches_burn_autodiff() {
        backward_matches_burn(1e-4);
    }

    fn backward_matches_burn(bar: f64) {
        let enc = encoder();
        let (texts, labels) = (SAMPLE, SAMPLE_LABELS);
        let (layers, total) = (2, enc.config.num_hidden_layers);
        let upto = total - layers;
        let h = enc.dim();
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| enc.tokenize(t).expect("tokens"))
            .collect();

        // The frozen layers: the serving forward (packed) against burn's (padded).
        let burn = enc.burn().expect("burn network");
        let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let (ids_t, mask, len) = id_batch(&seqs, &enc.device);
        let padded = to_vec(burn.bert.hidden(ids_t, mask.clone(), upto));
        let packed = enc.hidden_states(&ids, upto).expect("hidden states");
        let mut from_burn = Vec::new();
        for (r, s) in ids.iter().enumerate() {
            from_burn.extend_from_slice(&padded[r * len * h..(r * len + s.len()) * h]);
        }
        let frozen_error = relative(&packed, &from_burn);
        assert!(frozen_error < 1e-5, "frozen states differ: {frozen_error}");

        // A head with some signal in it, so every gradient is non-trivial.
        let head_w: Vec<f32> = (0..h * 3)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 4e-3)
            .collect();
        let head_b = [0.1f32, -0.05, 0.02];
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let batch = top::Packed {
            x: from_burn.clone(),
            lens: lens.clone(),
        };
        let mut mine = Top::new(
            &enc.layer_tensors(upto).expect("tensors"),
            upto,
            layers,
            &head_w,
            head_b,
            enc.config.num_attention_heads,
            enc.config.layer_norm_eps as f32,
        )
        .expect("top");
        let weights = class_weights(&[
            Label::Positive,
            Label::Positive,
            Label::Negative,
            Label::Neutral,
        ]);
        let (cache, logits) = mine.forward(&batch);
        let (loss, dz) = loss_and_grad(&logits, &labels, &weights);
        let mut grads = mine.zeros_like();
        mine.backward(&cache, &dz, &mut grads);

        // burn, on the same inputs.
        let device = enc.device.clone().autodiff();
        let reference = BurnTop {
            layers: burn.bert.layers[upto..].to_vec(),
            head: Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(head_w.clone(), [h, 3]),
                    &enc.device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(head_b.to_vec(), [3]),
                    &enc.device,
                ))),
            },
            heads: enc.config.num_attention_heads,
        }
        .fork(&device)
        .train();
        let x = Tensor::<3>::from_data(TensorData::new(padded, [texts.len(), len, h]), &device);
        let mask = Tensor::<2>::from_data(mask.into_data(), &device);
        let bias = attention_bias(mask.clone());
        let mut hidden = x;
        for layer in &reference.layers {
            hidden = layer.forward(hidden, bias.clone(), reference.heads);
        }
        let burn_logits = reference.head.forward(pool(hidden, mask));
        let targets: Vec<i64> = labels.iter().map(|l| l.index() as i64).collect();
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(targets, [labels.len()]), &device);
        let loss_fn = CrossEntropyLossConfig::new()
            .with_weights(Some(weights.to_vec()))
            .init(&device);
        let burn_loss = loss_fn.forward(burn_logits.clone(), targets);
        let burn_loss_value = f64::from(burn_loss.clone().into_scalar::<f32>());
        assert!(
            (loss - burn_loss_value).abs() < bar * burn_loss_value.abs().max(1.0),
            "loss {loss} vs burn {burn_loss_value}"
        );
        let flat: Vec<f32> = logits.iter().flatten().copied().collect();
        let logit_error = relative(&flat, &to_vec(burn_logits));
        assert!(logit_error < bar, "logits differ: {logit_error}");

        let g = burn_loss.backward();
        let grad = |p: &Param<Tensor<2>>| to_vec(p.val().grad(&g).expect("a gradient"));
        let grad1 = |p: &Param<Tensor<1>>| to_vec(p.val().grad(&g).expect("a gradient"));
        let mut checks: Vec<(String, Vec<f32>, Vec<f32>)> = vec![(
            "head".into(),
            {
                let (w, _) = grads.head_weights();
                w
            },
            grad(&reference.head.weight),
        )];
        for (k, (b, m)) in reference.layers.iter().zip(&grads.layers).enumerate() {
            let inter = m.intermediate.d_out;
            checks.push((
                format!("layer {k} query"),
                m.qkv.w[..h * h].to_vec(),
                transposed(&grad(&b.query.weight), h, h),
            ));
            checks.push((
                format!("layer {k} value"),
                m.qkv.w[2 * h * h..].to_vec(),
                transposed(&grad(&b.value.weight), h, h),
            ));
            checks.push((
                format!("layer {k} intermediate"),
                m.intermediate.w.clone(),
                transposed(&grad(&b.intermediate.weight), h, inter),
            ));
            checks.push((
                format!("layer {k} output bias"),
                m.output.b.clone(),
                grad1(b.output.bias.as_ref().expect("bias")),
            ));
            checks.push((
                format!("layer {k} attention norm"),
                m.attention_norm.gamma.clone(),
                grad1(&b.attention_norm.gamma),
            ));
        }
        for (what, mine, theirs) in &checks {
            let e = relative(mine, theirs);
            eprintln!("{what}: relative difference {e:.2e}");
            assert!(e < bar, "{what}: gradient differs from burn's by {e}");
        }

        // One Adam step each way lands on the same weights.
        let mut optim = Adam::new(&mine);
        optim.step(1e-3, &mut mine, &grads);
        let burn_grads = burn::optim::GradientsParams::from_grads(g, &reference);
        let mut burn_optim = burn::optim::AdamConfig::new().with_epsilon(1e-8).init();
        let stepped = burn_optim.step(1e-3, reference, burn_grads);
        let e = relative(
            &mine.layers[0].intermediate.w,
            &transposed(
                &to_vec(stepped.layers[0].intermediate.weight.val()),
                h,
                mine.layers[0].intermediate.d_out,
            ),
        );
        assert!(
            e < bar / 10.0,
            "after one Adam step the weights differ by {e}"
        );
    }
}
