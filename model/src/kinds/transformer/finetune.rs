//! Fine-tuning the encoder's top layers, with the head, on CPU: an offline job that writes
//! checkpoints as it goes and resumes from the last one after an interruption, to the same
//! result an uninterrupted run gives.
//!
//! The layers below the tuned ones stay frozen, so their output is computed once per text
//! (lengths sorted into batches) and each step runs only the top layers forward and back.
//! Everything that decides a step is a function of the seed, the epoch and the step (the
//! batch order, the learning rate; there is no dropout), so a checkpoint needs only the
//! tuned weights, the optimizer state and the position.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sentimentd_data::Label;

use crate::error::ModelError;
use crate::kinds::fast::train::TrainObserver;
use crate::kinds::transformer::encoder::{
    Bert, Layer, SentenceEncoder, attention_bias, id_batch, pool,
};
use crate::kinds::transformer::head::LinearHead;
use crate::metrics::EvalMetrics;

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

/// The trainable part: the top layers and the head over the pooled, normalised embedding.
#[derive(Module, Debug)]
struct Top {
    layers: Vec<Layer>,
    head: Linear,
    heads: usize,
}

impl Top {
    fn hidden(&self, x: Tensor<3>, mask: Tensor<2>) -> Tensor<3> {
        let bias = attention_bias(mask);
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(x, bias.clone(), self.heads);
        }
        x
    }

    fn logits(&self, x: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
        let hidden = self.hidden(x, mask.clone());
        self.head.forward(pool(hidden, mask))
    }
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
}

/// Texts as the frozen layers leave them: per text, `len × hidden` values.
struct Frozen {
    hidden: Vec<Vec<f32>>,
    lens: Vec<usize>,
    dim: usize,
}

fn frozen_states(
    encoder: &SentenceEncoder,
    bert: &Bert,
    texts: &[String],
    upto: usize,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Frozen, ModelError> {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| encoder.tokenize(t))
        .collect::<Result<_, _>>()?;
    let dim = encoder.dim();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut hidden = vec![Vec::new(); ids.len()];
    let mut done = 0;
    for chunk in order.chunks(batch.max(1)) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        let (ids_t, mask, len) = id_batch(&seqs, &encoder.device);
        let out = to_vec(bert.hidden(ids_t, mask, upto))?;
        for (row, &i) in chunk.iter().enumerate() {
            let n = ids[i].len();
            let start = row * len * dim;
            hidden[i] = out[start..start + n * dim].to_vec();
        }
        done += chunk.len();
        progress(done, ids.len());
    }
    let lens = ids.iter().map(Vec::len).collect();
    Ok(Frozen { hidden, lens, dim })
}

impl Frozen {
    /// The frozen states and mask of texts `rows`, padded to the longest.
    fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<3>, Tensor<2>) {
        let b = rows.len();
        let len = rows.iter().map(|&i| self.lens[i]).max().unwrap_or(0).max(1);
        let mut x = vec![0.0f32; b * len * self.dim];
        let mut mask = vec![0.0f32; b * len];
        for (r, &i) in rows.iter().enumerate() {
            let n = self.lens[i];
            x[r * len * self.dim..(r * len + n) * self.dim].copy_from_slice(&self.hidden[i]);
            mask[r * len..r * len + n].fill(1.0);
        }
        (
            Tensor::from_data(TensorData::new(x, [b, len, self.dim]), device),
            Tensor::from_data(TensorData::new(mask, [b, len]), device),
        )
    }
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

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Training(format!("{e:?}")))
}

/// Macro-recall and mean log-loss of `top` on the selection split.
fn score(
    top: &Top,
    data: &Frozen,
    labels: &[Label],
    device: &Device,
) -> Result<(f64, f64), ModelError> {
    let mut predicted = Vec::with_capacity(labels.len());
    let mut loss = 0.0f64;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| data.lens[i]);
    let mut by_row = vec![[0.0f32; 3]; labels.len()];
    for rows in order.chunks(64) {
        let (x, mask) = data.batch(rows, device);
        let logits = to_vec(top.logits(x, mask))?;
        for (&i, z) in rows.iter().zip(logits.chunks_exact(3)) {
            by_row[i] = [z[0], z[1], z[2]];
        }
    }
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
        self.dir.join(format!("top-{generation}.bpk"))
    }
    fn optim(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("optim-{generation}.bpk"))
    }
    fn best(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("best-{generation}.bpk"))
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
        optim: &burn::optim::ModuleOptimizer,
        best: Option<&Top>,
        previous_best: Option<u64>,
    ) -> Result<(), ModelError> {
        std::fs::create_dir_all(&self.dir).map_err(ModelError::io(&self.dir))?;
        let generation = progress.generation + 1;
        let fail = |what: &str, e: burn::store::RecordError| {
            ModelError::Training(format!("writing the fine-tuning checkpoint ({what}): {e}"))
        };
        top.clone()
            .save_file(self.top(generation))
            .map_err(|e| fail("weights", e))?;
        optim
            .save(self.optim(generation))
            .map_err(|e| fail("optimizer", e))?;
        match (best, previous_best) {
            (Some(b), _) => b
                .clone()
                .save_file(self.best(generation))
                .map_err(|e| fail("best weights", e))?,
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
                .and_then(|(_, g)| g.strip_suffix(".bpk"))
                .and_then(|g| g.parse::<u64>().ok());
            if older.is_some_and(|g| g < generation) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// Fine-tunes the top `params.layers` layers of `encoder` and a head started from `head`,
/// choosing the epoch by selection macro-recall (ties to the lower log-loss). Checkpoints go
/// to `checkpoint_dir`; a run whose key matches a checkpoint there resumes from it.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    encoder: &SentenceEncoder,
    head: &LinearHead,
    params: &FineTuneParams,
    train: (&[String], &[Label]),
    selection: (&[String], &[Label]),
    key: &str,
    checkpoint_dir: &Path,
    observer: &mut dyn TrainObserver,
) -> Result<FineTuned, ModelError> {
    // Built for this run and dropped with it: the encoder is shared with serving.
    let burn = encoder.burn()?;
    let bert = &burn.bert;
    let total_layers = bert.layers.len();
    if params.layers == 0 || params.layers > total_layers {
        return Err(ModelError::Training(format!(
            "[transformer] finetune_layers = {}, but the encoder has {total_layers} layers",
            params.layers
        )));
    }
    let k = params.layers;
    let upto = total_layers - k;
    let device = encoder.device.clone().autodiff();
    device.seed(params.seed);

    observer.on_message(&format!(
        "fine-tuning the top {k} of {total_layers} encoder layers: computing the frozen layers' \
         output for {} training and {} selection texts",
        train.0.len(),
        selection.0.len()
    ));
    let frozen = frozen_states(encoder, bert, train.0, upto, 32, |d, n| {
        observer.on_progress("frozen layers, training texts", d, n)
    })?;
    let sel = frozen_states(encoder, bert, selection.0, upto, 32, |d, n| {
        observer.on_progress("frozen layers, selection texts", d, n)
    })?;

    let dim = encoder.dim();
    let w = Tensor::<2>::from_data(
        TensorData::new(head.weights.clone(), [dim, 3]),
        &encoder.device,
    );
    let b = Tensor::<1>::from_data(TensorData::new(head.bias.to_vec(), [3]), &encoder.device);
    let fresh = Top {
        layers: bert.layers[upto..].to_vec(),
        head: Linear {
            weight: Param::from_tensor(w),
            bias: Some(Param::from_tensor(b)),
        },
        heads: bert.heads,
    }
    .fork(&device)
    .train();

    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let checkpoint = Checkpoint {
        dir: checkpoint_dir.to_path_buf(),
    };
    let (mut top, mut progress, mut best_top, resumed) = match checkpoint.read(key) {
        Some(p) => {
            let fail = |e: burn::store::RecordError| {
                ModelError::Training(format!(
                    "cannot resume from the checkpoint in {}: {e}; delete it to start over",
                    checkpoint.dir.display()
                ))
            };
            // Read whole into memory: a record loaded from a file keeps reading it lazily,
            // and the next checkpoint deletes this generation's files.
            let read = |path: PathBuf| -> Result<burn::tensor::Bytes, ModelError> {
                std::fs::read(&path)
                    .map(burn::tensor::Bytes::from_bytes_vec)
                    .map_err(ModelError::io(&path))
            };
            let module = |path: PathBuf| -> Result<Top, ModelError> {
                let record = burn::store::ModuleRecord::from_bytes(read(path)?).map_err(fail)?;
                fresh.clone().try_load_record(record).map_err(fail)
            };
            let top = module(checkpoint.top(p.generation))?;
            optim = optim
                .from_bytes(read(checkpoint.optim(p.generation))?)
                .map_err(fail)?;
            let best = if p.best.is_some() {
                Some(module(checkpoint.best(p.generation))?)
            } else {
                None
            };
            observer.on_message(&format!(
                "resuming fine-tuning from the checkpoint in {}: epoch {}, step {}",
                checkpoint.dir.display(),
                p.epoch,
                p.step
            ));
            (top, p, best, true)
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
            (fresh, p, None, false)
        }
    };

    let mut counts = [0usize; 3];
    for l in train.1 {
        counts[l.index()] += 1;
    }
    let n = train.1.len() as f32;
    let weights = counts
        .iter()
        .map(|&c| if c == 0 { 0.0 } else { n / (3.0 * c as f32) })
        .collect();
    let loss_fn = CrossEntropyLossConfig::new()
        .with_weights(Some(weights))
        .init(&device);
    let batch = params.batch_size.max(1);
    let steps_per_epoch = train.0.len().div_ceil(batch);
    let total_steps = (steps_per_epoch * params.epochs).max(1);
    observer.on_start(params.epochs, steps_per_epoch);
    let mut since_checkpoint = 0;
    while progress.epoch <= params.epochs {
        let epoch = progress.epoch;
        let started = Instant::now();
        let batches = epoch_batches(train.0.len(), &frozen.lens, batch, params.seed, epoch);
        for (step, rows) in batches.iter().enumerate().skip(progress.step) {
            let (x, mask) = frozen.batch(rows, &device);
            let targets: Vec<i64> = rows.iter().map(|&i| train.1[i].index() as i64).collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(targets, [rows.len()]), &device);
            let loss = loss_fn.forward(top.logits(x, mask), targets);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &top);
            let global = (epoch - 1) * steps_per_epoch + step;
            let lr = params.learning_rate * (1.0 - 0.9 * global as f64 / total_steps as f64);
            top = optim.step(lr, top, grads);
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
        let (recall, log_loss) = score(&top.valid(), &sel, selection.1, &encoder.device)?;
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
    let layers = export_layers(&best_top.layers, upto, &checkpoint.dir)?;
    let weight = to_vec(best_top.head.weight.val())?;
    let bias = match &best_top.head.bias {
        Some(b) => to_vec(b.val())?,
        None => vec![0.0; 3],
    };
    let head = LinearHead {
        dim,
        weights: weight,
        bias: [bias[0], bias[1], bias[2]],
    };
    Ok(FineTuned {
        layers,
        head,
        best_epoch: best.epoch,
        history: progress.history,
        resumed,
    })
}

/// The tuned layers as safetensors with the pretrained file's names and layout (`[out, in]`
/// weights), numbered from `first`.
fn export_layers(
    layers: &[Layer],
    first: usize,
    path_for_errors: &Path,
) -> Result<Vec<u8>, ModelError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let p = format!("encoder.layer.{}", first + i);
        for (name, linear) in [
            ("attention.self.query", &layer.query),
            ("attention.self.key", &layer.key),
            ("attention.self.value", &layer.value),
            ("attention.output.dense", &layer.attention_out),
            ("intermediate.dense", &layer.intermediate),
            ("output.dense", &layer.output),
        ] {
            let w = linear.weight.val().transpose();
            let [o, i_] = w.dims();
            tensors.push((format!("{p}.{name}.weight"), vec![o, i_], to_vec(w)?));
            if let Some(b) = &linear.bias {
                let v = to_vec(b.val())?;
                tensors.push((format!("{p}.{name}.bias"), vec![v.len()], v));
            }
        }
        for (name, norm) in [
            ("attention.output.LayerNorm", &layer.attention_norm),
            ("output.LayerNorm", &layer.output_norm),
        ] {
            let g = to_vec(norm.gamma.val())?;
            tensors.push((format!("{p}.{name}.weight"), vec![g.len()], g));
            if let Some(beta) = &norm.beta {
                let v = to_vec(beta.val())?;
                tensors.push((format!("{p}.{name}.bias"), vec![v.len()], v));
            }
        }
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(name, shape, v)| (name.as_str(), shape.clone(), v.as_slice()))
        .collect();
    crate::kinds::fast::model::f32_safetensors(&refs, None, path_for_errors)
}
