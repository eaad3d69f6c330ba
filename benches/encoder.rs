//! Throughput of the pretrained sentence encoder (all-MiniLM-L6-v2) on real tweets, batch 1
//! and batch 32: the serving forward `embed` runs, with its dense layers in bf16 (where the
//! CPU has AVX512-BF16, the default) and in f32, and the burn network on the flex backend it
//! replaced for inference. Texts per second is the element throughput criterion reports;
//! the token statistics of the texts are printed first, since the work grows with them.
//!
//! `./scripts/fetch-pretrained.sh ~/.cache/sentimentd-pretrained` first, then
//! `cargo bench --bench encoder` (`SENTIMENTD_PRETRAINED` overrides the directory).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use sentimentd_config::{Backend, Precision};
use sentimentd_model::ModelError;
use sentimentd_model::kinds::transformer::encoder::SentenceEncoder;

fn bench(c: &mut Criterion) {
    let cfg = common::config();
    let texts = common::val_texts(&cfg);
    let texts: Vec<&str> = texts.iter().take(256).map(String::as_str).collect();
    let load = |precision| {
        let dir = common::pretrained_encoder_dir();
        match SentenceEncoder::load_tuned(&dir, 128, Backend::Flex, precision, None) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    };
    let enc = load(Precision::Auto);
    let f32_enc = load(Precision::F32);
    let mut lens: Vec<usize> = texts
        .iter()
        .map(|t| enc.tokenize(t).map_or(0, |ids| ids.len()))
        .collect();
    lens.sort_unstable();
    let total: usize = lens.iter().sum();
    eprintln!(
        "{} texts, tokens per text: mean {:.1}, median {}, p90 {}, max {}",
        lens.len(),
        total as f64 / lens.len().max(1) as f64,
        lens.get(lens.len() / 2).copied().unwrap_or(0),
        lens.get(lens.len() * 9 / 10).copied().unwrap_or(0),
        lens.last().copied().unwrap_or(0),
    );
    let burn = match enc.burn() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    type Embed<'a> = Box<dyn Fn(&[&str], usize) -> Result<Vec<Vec<f32>>, ModelError> + 'a>;
    let serving = format!("fast-{}", enc.serving_precision());
    let mut paths: Vec<(&str, Embed)> = vec![
        (&serving, Box::new(|t, b| enc.embed(t, b))),
        ("fast-f32", Box::new(|t, b| f32_enc.embed(t, b))),
        ("burn-flex", Box::new(|t, b| burn.embed(t, b))),
    ];
    // Without AVX512-BF16 the serving forward is the f32 one: measured once.
    paths.dedup_by_key(|p| p.0);
    for (name, embed) in paths {
        let mut group = c.benchmark_group(format!("encoder/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_function("batch_1", |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                black_box(embed(&texts[i..=i], 1))
            })
        });
        group.throughput(Throughput::Elements(texts.len() as u64));
        group.bench_function("batch_32", |b| b.iter(|| black_box(embed(&texts, 32))));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
