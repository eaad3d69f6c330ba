//! A one-epoch training run of the default model on the bundled train split: vocabulary,
//! featurisation, one epoch and the selection pass (val.csv stands in for the selection split:
//! a timing benchmark, not a reported score). The full default run is this plus
//! further epochs, so (full run - this) / (epochs - 1) is the cost of one more epoch.
//!
//! `cargo bench --bench train`

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

use sentimentd_model::kinds::fast::train::{self, Quiet, TrainParams};

mod common;

fn bench(c: &mut Criterion) {
    let cfg = common::config();
    let train_set = match sentimentd_data::load_dataset(&cfg.data.train, cfg.data.max_text_chars) {
        Ok(d) => d,
        Err(e) => panic!("bundled train data: {e}"),
    };
    let val_set = match sentimentd_data::load_dataset(
        std::slice::from_ref(&cfg.data.val),
        cfg.data.max_text_chars,
    ) {
        Ok(d) => d,
        Err(e) => panic!("bundled validation data: {e}"),
    };
    let mut params = TrainParams::from_config(&cfg);
    params.epochs = 1;
    let mut g = c.benchmark_group("train");
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    g.bench_function("one_epoch_full_run", |b| {
        b.iter(|| {
            match train::train(
                &params,
                &train_set.texts,
                &train_set.labels,
                &val_set.texts,
                &val_set.labels,
                &mut Quiet,
            ) {
                Ok(o) => o.selection_metrics.macro_recall,
                Err(e) => panic!("training: {e}"),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
