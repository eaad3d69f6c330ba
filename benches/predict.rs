//! Predict throughput of the default model, tokenisation included, on one thread:
//! batch size 1 (one text per call) and batch size 1,024.
//!
//! `cargo bench --bench predict` (trains the default model into `target-bench-store/` on first
//! run; set SENTIMENTD_BENCH_STORE to reuse another store).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

mod common;

fn bench(c: &mut Criterion) {
    let cfg = common::config();
    let texts = common::val_texts(&cfg);
    let model = common::model(&cfg);
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();

    let mut g = c.benchmark_group("predict");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("batch_1", |b| {
        b.iter(|| {
            i = (i + 1) % refs.len();
            black_box(model.predict(black_box(refs[i])))
        })
    });
    let batch: Vec<&str> = refs.iter().cycle().take(1024).copied().collect();
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("batch_1024", |b| {
        b.iter(|| black_box(model.predict_batch(black_box(&batch))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
