//! The frozen layers' output, computed once per run by the serving forward and kept on disk
//! in f16: read back a batch at a time, so it sits in the page cache rather than in the
//! process (45,000 tweets are about 1 GB of f16 hidden states; f32 in memory was 2 GB of the
//! old run's 3.4 GB peak). A resumed run reads the file its first attempt wrote.

use half::f16;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::ModelError;
use crate::kinds::transformer::encoder::SentenceEncoder;
use crate::kinds::transformer::finetune::top::Packed;

/// Where each text's hidden states are in the data file.
#[derive(Serialize, Deserialize)]
struct Index {
    /// The run the file belongs to.
    key: String,
    dim: usize,
    lens: Vec<usize>,
    /// First token of each text, counted in tokens from the start of the file.
    offsets: Vec<u64>,
}

pub(super) struct Frozen {
    file: std::fs::File,
    path: PathBuf,
    index: Index,
}

impl Frozen {
    /// The hidden states of `texts` after the encoder's first `upto` layers, from `path` if
    /// an earlier attempt of the same run (`key`) wrote them there, computed otherwise.
    pub(super) fn open_or_build(
        path: &Path,
        key: &str,
        encoder: &SentenceEncoder,
        texts: &[String],
        upto: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Frozen, ModelError> {
        let index_path = path.with_extension("json");
        let dim = encoder.dim();
        if let Some(f) = Self::open(path, &index_path, key, dim, texts.len()) {
            progress(texts.len(), texts.len());
            return Ok(f);
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| encoder.tokenize(t))
            .collect::<Result<_, _>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let partial = path.with_extension("partial");
        let out = std::fs::File::create(&partial).map_err(ModelError::io(&partial))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut offsets = vec![0u64; ids.len()];
        let mut at = 0u64;
        let mut done = 0;
        let mut bytes = Vec::new();
        for chunk in order.chunks(64) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let hidden = encoder.hidden_states(&batch, upto)?;
            let fits = |v: &&f32| v.is_finite() && v.abs() <= f32::from(f16::MAX);
            if let Some(v) = hidden.iter().find(|v| !fits(v)) {
                return Err(ModelError::Training(format!(
                    "a hidden state of the frozen layers is {v}, outside f16's range: this \
                     encoder cannot be fine-tuned from f16 frozen states"
                )));
            }
            bytes.clear();
            bytes.extend(hidden.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()));
            out.write_all(&bytes).map_err(ModelError::io(&partial))?;
            for &i in chunk {
                offsets[i] = at;
                at += ids[i].len() as u64;
            }
            done += chunk.len();
            progress(done, ids.len());
        }
        let file = out
            .into_inner()
            .map_err(|e| ModelError::io(&partial)(e.into_error()))?;
        file.sync_all().map_err(ModelError::io(&partial))?;
        std::fs::rename(&partial, path).map_err(ModelError::io(path))?;
        let index = Index {
            key: key.to_string(),
            dim,
            lens: ids.iter().map(Vec::len).collect(),
            offsets,
        };
        // The index goes last: a file without one is never read back.
        let json = serde_json::to_vec(&index).map_err(ModelError::json)?;
        sentimentd_data::atomic::write_bytes_atomic(&index_path, &json)
            .map_err(ModelError::io(&index_path))?;
        let file = std::fs::File::open(path).map_err(ModelError::io(path))?;
        Ok(Frozen {
            file,
            path: path.to_path_buf(),
            index,
        })
    }

    fn open(path: &Path, index_path: &Path, key: &str, dim: usize, texts: usize) -> Option<Frozen> {
        let index: Index = serde_json::from_slice(&std::fs::read(index_path).ok()?).ok()?;
        let tokens: u64 = index.lens.iter().map(|&l| l as u64).sum();
        let file = std::fs::File::open(path).ok()?;
        let complete = file.metadata().ok()?.len() == tokens * dim as u64 * 2;
        let consistent = index.offsets.len() == index.lens.len()
            && index
                .offsets
                .iter()
                .zip(&index.lens)
                .all(|(&o, &l)| o + l as u64 <= tokens);
        (index.key == key
            && index.dim == dim
            && index.lens.len() == texts
            && complete
            && consistent)
            .then_some(Frozen {
                file,
                path: path.to_path_buf(),
                index,
            })
    }

    /// Token counts of the texts.
    pub(super) fn lens(&self) -> &[usize] {
        &self.index.lens
    }

    /// Texts `rows`, their tokens one after another.
    pub(super) fn batch(&self, rows: &[usize]) -> Result<Packed, ModelError> {
        let dim = self.index.dim;
        let lens: Vec<usize> = rows.iter().map(|&i| self.index.lens[i]).collect();
        let tokens: usize = lens.iter().sum();
        let mut x = vec![0.0f32; tokens * dim];
        let mut bytes = Vec::new();
        let mut at = 0;
        for &i in rows {
            let n = self.index.lens[i] * dim;
            bytes.resize(n * 2, 0);
            self.file
                .read_exact_at(&mut bytes, self.index.offsets[i] * dim as u64 * 2)
                .map_err(ModelError::io(&self.path))?;
            for (v, b) in x[at..at + n].iter_mut().zip(bytes.chunks_exact(2)) {
                *v = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            at += n;
        }
        Ok(Packed { x, lens })
    }
}
