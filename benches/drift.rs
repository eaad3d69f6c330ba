//! One drift check at the default config: a 10,000-observation window of 64-dimensional
//! embeddings against a baseline with a 1,000-embedding sample (so the MMD test runs at its
//! configured cap of samples and permutations).
//!
//! `cargo bench --bench drift`. Synthetic observations: the cost of a check depends on the
//! sizes, not on what the embeddings mean, and this keeps the bench free of a trained model.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use sentimentd_config::DriftConfig;
use sentimentd_data::Label;
use sentimentd_data::drift::{self, Baseline, Observation};

const DIM: usize = 64;

/// splitmix64: the root package has no rand dependency, and a bench only needs noise.
struct Noise(u64);

impl Noise {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn observations(n: usize, seed: u64) -> Vec<Observation> {
    let mut r = Noise(seed);
    let words = [
        "good",
        "bad",
        "meh",
        "@user",
        "http://t.co/x",
        "today",
        "again",
    ];
    (0..n)
        .map(|_| {
            let label = Label::ALL[(r.next_u64() % 3) as usize];
            let embedding: Vec<f32> = (0..DIM).map(|_| r.normal()).collect();
            let len = 3 + (r.next_u64() % 20) as usize;
            let text: Vec<&str> = (0..len)
                .map(|_| words[(r.next_u64() % words.len() as u64) as usize])
                .collect();
            let oov = (r.next_u64() % 10) as f32 / 10.0;
            Observation::new(label, Some(embedding), Some(oov), &text.join(" "))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cfg = DriftConfig::default();
    let reference = observations(2000, 1);
    let baseline = Baseline::build(
        "bench",
        "2024-01-01T00:00:00Z",
        vec!["synthetic".into()],
        &reference,
        cfg.baseline_sample,
        7,
    );
    assert_eq!(baseline.embedding_sample.len(), 1000);
    let window = observations(10_000, 2);

    let mut g = c.benchmark_group("drift");
    g.sample_size(20);
    g.bench_function("check_10k_window_64d", |b| {
        b.iter(|| {
            black_box(drift::check(
                black_box(&baseline),
                black_box(&window),
                &cfg,
                "bench",
                "now",
                11,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
