//! The `transformer` kind: a pretrained MiniLM encoder, a classifier head trained on its
//! embeddings, optionally fine-tuned top layers and an averaged fast partner.

pub mod encoder;
pub mod finetune;
pub mod head;
pub mod model;
pub mod params;

/// The head's file in a version directory.
pub const HEAD: &str = "head.safetensors";
/// The fine-tuned encoder layers in a version directory.
pub const TUNED: &str = "encoder_tuned.safetensors";

use sentimentd_config::Config;
use std::path::Path;
use std::sync::Arc;

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::kinds::fast::train::EpochReport;
use crate::kinds::fast::{load_fast, save_fast};
use crate::kinds::{Candidate, Kind, LoadInputs, TrainInputs, VersionFiles};
use crate::manifest::{MANIFEST, ModelParams, short, verify};
use crate::metrics::EvalMetrics;
use model::{Trained, TransformerModel, load_head, save_head, shared_encoder};

pub struct Transformer;

impl Kind for Transformer {
    fn trains_fast_models(&self, cfg: &Config) -> bool {
        cfg.transformer.ensemble
    }

    fn train(&self, t: TrainInputs<'_>) -> Result<Box<dyn Candidate>, ModelError> {
        Ok(Box::new(model::train(t)?))
    }

    fn load(&self, l: LoadInputs<'_>) -> Result<Arc<dyn Classifier>, ModelError> {
        let (m, dir) = (l.manifest, l.dir);
        let ModelParams::Transformer(t) = &m.params else {
            return Err(ModelError::Corrupt {
                path: dir.to_path_buf(),
                reason: "a transformer version without transformer parameters".into(),
            });
        };
        Ok(Arc::new(load_transformer(&l, t)?))
    }
}

fn load_transformer(
    l: &LoadInputs<'_>,
    t: &params::TransformerParams,
) -> Result<TransformerModel, ModelError> {
    let (m, dir) = (l.manifest, l.dir);
    let unsupported = |reason: String| ModelError::Unsupported {
        version: m.version.clone(),
        reason,
    };
    let Some((pretrained, backend, precision)) = l.pretrained else {
        return Err(unsupported(
            "a transformer version needs [transformer] pretrained_dir, and this store was \
             opened without a config"
                .into(),
        ));
    };
    // The name comes from the manifest: it must stay inside pretrained_dir.
    if !sentimentd_config::TransformerConfig::is_encoder_name(&t.encoder) {
        return Err(ModelError::Corrupt {
            path: dir.join(MANIFEST),
            reason: format!("encoder name {:?} is not a directory name", t.encoder),
        });
    }
    verify(m, dir, &[HEAD])?;
    let tuned = match &t.finetune {
        Some(_) => {
            verify(m, dir, &[TUNED])?;
            let path = dir.join(TUNED);
            Some(std::fs::read(&path).map_err(ModelError::io(&path))?)
        }
        None => None,
    };
    let encoder = shared_encoder(
        &pretrained.join(&t.encoder),
        t.max_seq_len,
        *backend,
        *precision,
        tuned.as_deref(),
    )?;
    if encoder.fingerprint() != t.encoder_fingerprint {
        return Err(unsupported(format!(
            "it was trained on encoder {} with fingerprint {}, and {} holds a different one \
             ({}); put the encoder it was trained with there, or train a new version",
            t.encoder,
            short(&t.encoder_fingerprint),
            encoder.dir().display(),
            short(encoder.fingerprint())
        )));
    }
    let head = load_head(&dir.join(HEAD))?;
    let partner = match &t.ensemble {
        Some(e) => Some((load_fast(m, dir, &e.fast)?, e.weight)),
        None => None,
    };
    TransformerModel::new(encoder, head, partner, l.embed_batch, m.version.clone())
}

impl VersionFiles for Trained {
    fn params(&self) -> ModelParams {
        ModelParams::Transformer(self.params.clone())
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        save_head(&self.model.head, &dir.join(HEAD))?;
        if let Some(bytes) = &self.tuned {
            std::fs::write(dir.join(TUNED), bytes).map_err(ModelError::io(dir.join(TUNED)))?;
        }
        if let Some((fast, _)) = &self.model.partner {
            save_fast(&fast.featurizer, &fast.weights, dir)?;
        }
        Ok(())
    }
}

impl Candidate for Trained {
    fn classifier(&self) -> &dyn Classifier {
        &self.model
    }

    fn selection(&self) -> &EvalMetrics {
        &self.selection
    }

    fn history(&self) -> &[EpochReport] {
        &self.history
    }

    fn best_epoch(&self) -> usize {
        self.head_report.best_epoch
    }

    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn stored(&self) {
        // Stored: the fine-tuning checkpoints have served their purpose.
        if let Some(dir) = &self.checkpoints
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the fine-tuning checkpoints");
        }
    }
}
