//! Why a retrain did or did not learn a drifted domain, measured: the fast kind trained on
//! the bundled tweets plus N in-domain labelled rows of the SST-2 stream, as the daemon's
//! Trainer would (the newest `holdout_share` of the N rows held out as the gate's recent
//! holdout), for several ways of mixing the two parts. Each line gives the macro-recall on
//! that holdout, on SST-2 dev (sentences no stream row comes from) and on the reporting split
//! (`tweeteval/val.csv`); none of these three selects anything.
//!
//! ```text
//! scripts/sst2-stream.py /tmp/sst2-stream
//! STREAM=/tmp/sst2-stream cargo bench --bench adapt
//! ```
//!
//! `ROWS=500,2000,8000` sets the N's; `VARIANTS=serving,old,w3,...` picks the variants (see
//! `Variant::parse`). Macro-recall is over the classes a set has rows of (SST-2 has no neutral
//! rows), and the old three-class mean is printed next to it.

use std::path::PathBuf;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sentimentd_data::{Dataset, Label, load_dataset};
use sentimentd_model::Classifier;
use sentimentd_model::kinds::fast::train::{Quiet, SplitWeights, TrainParams};
use sentimentd_model::pipeline::{
    self, RecentWeighting, WeightedSplits, choose_recent_weight, selection_mask, weighted_splits,
};

mod common;

#[derive(Clone, Debug)]
enum Variant {
    /// The base model alone: what serves before any retrain.
    Serving,
    /// The Trainer before this change: recent rows appended, weight 1, selection carved from
    /// the mix by label only.
    Old,
    /// Recent rows weigh `w` base rows each; selection stratified by origin, weighted alike.
    Weight(f64),
    /// Recent rows together weigh `s` of the training weight (w = s/(1-s) · base/recent).
    Share(f64),
    /// Weight `w`, but early stopping and calibration on an unweighted selection split.
    WeightUnweightedSelection(f64),
    /// No base rows but a replay sample `k` times the recent rows' count, weight 1.
    Replay(f64),
    /// The retrain's rule: the weights of `GRID` (default 1,2,4,8,16) tried, the one kept with
    /// the best recent selection macro-recall whose base selection macro-recall is within `t`
    /// of the smallest weight's.
    Auto(f64),
}

impl Variant {
    fn parse(s: &str) -> Option<Variant> {
        let num = |p: &str| s.strip_prefix(p).and_then(|v| v.parse::<f64>().ok());
        Some(match s {
            "serving" => Variant::Serving,
            "old" => Variant::Old,
            _ if s.starts_with("share") => Variant::Share(num("share")?),
            _ if s.starts_with("wu") => Variant::WeightUnweightedSelection(num("wu")?),
            _ if s.starts_with('w') => Variant::Weight(num("w")?),
            _ if s.starts_with("replay") => Variant::Replay(num("replay")?),
            _ if s.starts_with("auto") => Variant::Auto(num("auto")?),
            _ => return None,
        })
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn load(path: &PathBuf, max: usize) -> Dataset {
    match load_dataset(std::slice::from_ref(path), max) {
        Ok(d) => d,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// The stream's rows in order: every `*.csv` of `dir` by name.
fn stream(dir: &PathBuf, max: usize) -> Dataset {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect(),
        Err(e) => panic!(
            "STREAM={}: {e} (make it with scripts/sst2-stream.py)",
            dir.display()
        ),
    };
    files.sort();
    match load_dataset(&files, max) {
        Ok(d) => d,
        Err(e) => panic!("{}: {e}", dir.display()),
    }
}

fn slice(d: &Dataset, from: usize, to: usize) -> Dataset {
    Dataset::from_examples(d.texts[from..to].to_vec(), d.labels[from..to].to_vec())
}

fn recall(m: &dyn Classifier, d: &Dataset) -> (f64, f64) {
    (
        pipeline::macro_recall_present(m, d),
        pipeline::evaluate(m, d).macro_recall,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let cfg = common::config();
    let root = common::root();
    let dir = std::env::var_os("STREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/sst2-stream"));
    let max = cfg.data.max_text_chars;
    let base = load(&cfg.data.train[0], max);
    let val = load(&cfg.data.val, max);
    let dev = load(&root.join("data/datasets/sst2/dev.csv"), max);
    let all = stream(&dir, max);
    let holdout_share = cfg.retrain.holdout_share;
    let share = cfg.train.selection_share;
    let seed = cfg.train.seed;
    let mut params = TrainParams::from_config(&cfg);
    // Overrides, to measure what capacity and training length do to adaptation.
    if let Some(h) = std::env::var("HIDDEN").ok().and_then(|v| v.parse().ok()) {
        params.hidden_dim = h;
    }
    if let Some(e) = std::env::var("EPOCHS").ok().and_then(|v| v.parse().ok()) {
        params.epochs = e;
    }
    if let Some(t) = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()) {
        params.threads = t;
    }
    let ns: Vec<usize> = env_list("ROWS", "500,2000,8000")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let variants: Vec<(String, Variant)> = env_list(
        "VARIANTS",
        "serving,old,w1,w3,w10,w30,share0.1,share0.2,share0.3,wu10,replay3,auto0.005",
    )
    .into_iter()
    .filter_map(|s| Variant::parse(&s).map(|v| (s, v)))
    .collect();
    println!(
        "base {} rows, stream {} rows from {}, reporting split {} rows, SST-2 dev {} rows",
        base.len(),
        all.len(),
        dir.display(),
        val.len(),
        dev.len()
    );
    println!(
        "{:>6} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
        "N",
        "variant",
        "holdout",
        "(3-cl)",
        "dev",
        "(3-cl)",
        "val",
        "recent%",
        "secs",
        "sel-base",
        "sel-new"
    );
    let mut serving: Option<Box<dyn Classifier>> = None;
    for &n in &ns {
        let n = n.min(all.len());
        let hold_n = ((n as f64) * holdout_share).ceil() as usize;
        let extra = slice(&all, 0, n - hold_n);
        let holdout = slice(&all, n - hold_n, n);
        for (name, v) in &variants {
            let started = Instant::now();
            let (model, recent_share, sel): (Box<dyn Classifier>, f64, Option<(Dataset, Dataset)>) =
                match v {
                    Variant::Serving => {
                        let m = serving.get_or_insert_with(|| {
                            train(
                                &params,
                                weighted_splits(base.clone(), None, 1.0, share, seed),
                            )
                        });
                        let line = score_line(
                            n,
                            name,
                            m.as_ref(),
                            &holdout,
                            &dev,
                            &val,
                            0.0,
                            None,
                            started,
                        );
                        println!("{line}");
                        continue;
                    }
                    Variant::Old => {
                        let mut mixed = base.clone();
                        mixed.extend(extra.clone());
                        let mask = selection_mask(&mixed.labels, share, seed);
                        let (mut t, mut s) = (Vec::new(), Vec::new());
                        for ((text, label), sel) in mixed.texts.iter().zip(&mixed.labels).zip(mask)
                        {
                            if sel { &mut s } else { &mut t }.push((text.clone(), *label));
                        }
                        let ds = |v: Vec<(String, Label)>| {
                            let (a, b) = v.into_iter().unzip();
                            Dataset::from_examples(a, b)
                        };
                        let splits = WeightedSplits {
                            train: ds(t),
                            selection: ds(s),
                            weights: SplitWeights::default(),
                            weighting: Default::default(),
                        };
                        let r = extra.len() as f64 / (base.len() + extra.len()) as f64;
                        (train(&params, splits), r, None)
                    }
                    Variant::Weight(w) => {
                        let s = weighted_splits(base.clone(), Some(extra.clone()), *w, share, seed);
                        let r = recent(&s);
                        let parts = sel_parts(&s);
                        (train(&params, s), r, parts)
                    }
                    Variant::Share(sh) => {
                        let b = base.len() as f64 * (1.0 - share);
                        let w =
                            (sh / (1.0 - sh) * b / (extra.len() as f64 * (1.0 - share))).max(1.0);
                        let s = weighted_splits(base.clone(), Some(extra.clone()), w, share, seed);
                        let r = recent(&s);
                        let parts = sel_parts(&s);
                        (train(&params, s), r, parts)
                    }
                    Variant::WeightUnweightedSelection(w) => {
                        let mut s =
                            weighted_splits(base.clone(), Some(extra.clone()), *w, share, seed);
                        s.weights.selection = None;
                        let r = recent(&s);
                        let parts = sel_parts(&s);
                        (train(&params, s), r, parts)
                    }
                    Variant::Auto(t) => {
                        let mut s =
                            weighted_splits(base.clone(), Some(extra.clone()), 1.0, share, seed);
                        let rule = RecentWeighting {
                            grid: env_list("GRID", "1,2,4,8,16")
                                .iter()
                                .filter_map(|g| g.parse().ok())
                                .collect(),
                            tolerance: *t,
                        };
                        let m = match choose_recent_weight(&params, &mut s, &rule, &mut Quiet) {
                            Ok(m) => m,
                            Err(e) => panic!("training: {e}"),
                        };
                        for t in &s.weighting.trials {
                            println!(
                                "{:>17} w{:<4} sel-base {:.4} sel-new {:.4}{}",
                                "",
                                t.row_weight,
                                t.selection_base,
                                t.selection_recent,
                                if t.chosen { "  <- kept" } else { "" }
                            );
                        }
                        let r = recent(&s);
                        let parts = sel_parts(&s);
                        (Box::new(m.model), r, parts)
                    }
                    Variant::Replay(k) => {
                        let mut idx: Vec<usize> = (0..base.len()).collect();
                        idx.shuffle(&mut StdRng::seed_from_u64(seed));
                        idx.truncate(((extra.len() as f64) * k) as usize);
                        idx.sort_unstable();
                        let replay = Dataset::from_examples(
                            idx.iter().map(|&i| base.texts[i].clone()).collect(),
                            idx.iter().map(|&i| base.labels[i]).collect(),
                        );
                        let w = 1.0;
                        let s = weighted_splits(replay, Some(extra.clone()), w, share, seed);
                        let r = recent(&s);
                        let parts = sel_parts(&s);
                        (train(&params, s), r, parts)
                    }
                };
            println!(
                "{}",
                score_line(
                    n,
                    name,
                    model.as_ref(),
                    &holdout,
                    &dev,
                    &val,
                    recent_share,
                    sel.as_ref(),
                    started
                )
            );
        }
    }
}

fn sel_parts(s: &WeightedSplits) -> Option<(Dataset, Dataset)> {
    Some(s.selection_parts())
}

fn recent(s: &WeightedSplits) -> f64 {
    s.weighting.recent().map_or(0.0, |p| p.share)
}

fn train(params: &TrainParams, s: WeightedSplits) -> Box<dyn Classifier> {
    match pipeline::train_fast(params, &s.train, &s.selection, &s.weights, &mut Quiet) {
        Ok(t) => Box::new(t.model),
        Err(e) => panic!("training: {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn score_line(
    n: usize,
    name: &str,
    m: &dyn Classifier,
    holdout: &Dataset,
    dev: &Dataset,
    val: &Dataset,
    recent_share: f64,
    sel: Option<&(Dataset, Dataset)>,
    started: Instant,
) -> String {
    let secs = started.elapsed().as_secs_f64();
    let (h, h3) = recall(m, holdout);
    let (d, d3) = recall(m, dev);
    let (v, _) = recall(m, val);
    let (sb, sr) = sel.map_or((f64::NAN, f64::NAN), |(b, r)| {
        (recall(m, b).0, recall(m, r).0)
    });
    format!(
        "{n:>6} {name:<10} {h:>8.4} {h3:>8.4} {d:>8.4} {d3:>8.4} {v:>8.4} {:>7.1}% {secs:>6.1} {sb:>8.4} {sr:>8.4}",
        recent_share * 100.0,
    )
}
