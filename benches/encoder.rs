//! Throughput of the pretrained sentence encoder (all-MiniLM-L6-v2 in burn) on real tweets:
//! batch 1 and batch 32, on each pure-Rust CPU backend. Texts per second is the element
//! throughput criterion reports.
//!
//! `./scripts/fetch-pretrained.sh ~/.cache/sentimentd-pretrained` first, then
//! `cargo bench --bench encoder` (`SENTIMENTD_PRETRAINED` overrides the directory).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use sentimentd_config::Backend;
use sentimentd_model::encoder::SentenceEncoder;

fn bench(c: &mut Criterion) {
    let cfg = common::config();
    let texts = common::val_texts(&cfg);
    let texts: Vec<&str> = texts.iter().take(256).map(String::as_str).collect();
    for (name, backend) in [("flex", Backend::Flex), ("ndarray", Backend::Ndarray)] {
        let enc = match SentenceEncoder::load(&common::pretrained_encoder_dir(), 128, backend) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        };
        let mut group = c.benchmark_group(format!("encoder/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_function("batch_1", |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                black_box(enc.embed(&texts[i..=i], 1))
            })
        });
        group.throughput(Throughput::Elements(texts.len() as u64));
        group.bench_function("batch_32", |b| b.iter(|| black_box(enc.embed(&texts, 32))));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
