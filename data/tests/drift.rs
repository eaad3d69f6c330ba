//! Drift statistics on synthetic data: what fires for which shift, what does not fire
//! without one, and the report formats.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sentimentd_config::DriftConfig;
use sentimentd_data::Label;
use sentimentd_data::drift::{
    self, Baseline, DriftReport, Observation, TESTS, TestResult, TextShape, Verdict,
};

const DIM: usize = 64;
const WORDS: [&str; 12] = [
    "so",
    "good",
    "awful",
    "today",
    "#fail",
    "really",
    "the",
    "a",
    "is",
    "not",
    "@user",
    "www.example.com",
];

/// How a synthetic population looks.
#[derive(Clone)]
struct Population {
    label_shares: [f64; 3],
    /// Added to every embedding dimension (unit-variance noise around it).
    embedding_shift: f32,
    /// Texts have this many words on average (length varies uniformly ±50 %).
    words: usize,
    oov: f32,
    embeddings: bool,
}

impl Default for Population {
    fn default() -> Self {
        Population {
            label_shares: [0.2, 0.45, 0.35],
            embedding_shift: 0.0,
            words: 12,
            oov: 0.2,
            embeddings: true,
        }
    }
}

fn normal(r: &mut StdRng) -> f32 {
    let (u, v): (f64, f64) = (r.random::<f64>().max(1e-12), r.random());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

fn draw(p: &Population, n: usize, seed: u64) -> Vec<Observation> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u: f64 = r.random();
            let label = if u < p.label_shares[0] {
                Label::Negative
            } else if u < p.label_shares[0] + p.label_shares[1] {
                Label::Neutral
            } else {
                Label::Positive
            };
            // Embeddings loosely tied to the label, as a real model's are.
            let embedding = p.embeddings.then(|| {
                (0..DIM)
                    .map(|d| {
                        let signal = if d % 3 == label.index() { 0.5 } else { 0.0 };
                        normal(&mut r) + signal + p.embedding_shift
                    })
                    .collect()
            });
            let words = r.random_range(p.words / 2..=p.words * 3 / 2).max(1);
            let text: Vec<&str> = (0..words)
                .map(|_| WORDS[r.random_range(0..WORDS.len())])
                .collect();
            let oov = if r.random::<f32>() < p.oov { 0.5 } else { 0.0 } * r.random::<f32>();
            Observation::new(
                label,
                embedding,
                p.embeddings.then_some(oov),
                &text.join(" "),
            )
        })
        .collect()
}

fn baseline_of(p: &Population) -> Baseline {
    let obs = draw(p, 3000, 1);
    Baseline::build(
        "v1",
        "2024-05-01T00:00:00Z",
        vec!["synthetic reference".into()],
        &obs,
        1000,
        42,
    )
}

fn run(baseline: &Baseline, window: &[Observation], cfg: &DriftConfig) -> DriftReport {
    drift::check(baseline, window, cfg, "v1", "2024-05-02T00:00:00Z", 9)
}

fn test<'a>(r: &'a DriftReport, name: &str) -> &'a TestResult {
    match r.tests.iter().find(|t| t.test == name) {
        Some(t) => t,
        None => panic!("no {name} in {:?}", r.tests),
    }
}

fn assert_fired(r: &DriftReport, names: &[&str]) {
    for n in names {
        assert!(test(r, n).fired, "{n} did not fire: {:#?}", test(r, n));
    }
    assert_eq!(r.verdict, Verdict::Drift);
}

#[test]
fn identical_distributions_do_not_drift() {
    let p = Population::default();
    let b = baseline_of(&p);
    let cfg = DriftConfig::default();
    for seed in 2..6 {
        let r = run(&b, &draw(&p, 2000, seed), &cfg);
        assert_eq!(r.verdict, Verdict::NoDrift, "seed {seed}: {:#?}", r.tests);
        assert!(r.fired.is_empty());
        assert!(
            r.drift_score > 0.0 && r.drift_score < 1.0,
            "{}",
            r.drift_score
        );
        assert_eq!(r.tests.len(), TESTS.len());
        for (t, name) in r.tests.iter().zip(TESTS) {
            assert_eq!(t.test, name);
            assert!(t.skipped.is_none(), "{t:?}");
        }
        let mmd = test(&r, "mmd");
        assert!(mmd.p_value.is_some_and(|p| p > 0.01), "{mmd:?}");
    }
}

#[test]
fn shifted_label_shares_fire_the_label_tests() {
    let b = baseline_of(&Population::default());
    let shifted = Population {
        label_shares: [0.45, 0.35, 0.2],
        ..Population::default()
    };
    let r = run(&b, &draw(&shifted, 2000, 3), &DriftConfig::default());
    assert_fired(&r, &["psi", "js_distance", "chi2"]);
    for t in ["length_ks", "oov_ks"] {
        assert!(!test(&r, t).fired, "{:?}", test(&r, t));
    }
    assert!(r.current.label_shares[0] > 0.4);
    assert!((r.reference.label_shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

#[test]
fn shifted_embedding_means_fire_the_embedding_tests() {
    let b = baseline_of(&Population::default());
    let shifted = Population {
        embedding_shift: 0.5,
        ..Population::default()
    };
    let r = run(&b, &draw(&shifted, 2000, 4), &DriftConfig::default());
    assert_fired(&r, &["mean_shift", "mmd"]);
    let ms = test(&r, "mean_shift");
    // Every dimension moved by half a standard deviation (sd is about 1.05 with the label
    // signal mixed in).
    assert!((ms.value - 0.5 / 1.05).abs() < 0.06, "{ms:?}");
    for t in ["psi", "js_distance", "chi2", "length_ks"] {
        assert!(!test(&r, t).fired, "{:?}", test(&r, t));
    }
}

#[test]
fn longer_texts_fire_the_length_test() {
    let b = baseline_of(&Population::default());
    let longer = Population {
        words: 20,
        ..Population::default()
    };
    let r = run(&b, &draw(&longer, 2000, 5), &DriftConfig::default());
    assert_fired(&r, &["length_ks"]);
    assert!(test(&r, "length_ks").value > 0.5);
    assert!(!test(&r, "mean_shift").fired);
}

#[test]
fn more_unknown_words_fire_the_oov_test() {
    let b = baseline_of(&Population::default());
    let unknown = Population {
        oov: 0.8,
        ..Population::default()
    };
    let r = run(&b, &draw(&unknown, 2000, 6), &DriftConfig::default());
    assert_fired(&r, &["oov_ks"]);
}

#[test]
fn below_min_samples_is_insufficient_and_never_fires() {
    let b = baseline_of(&Population::default());
    let cfg = DriftConfig::default();
    // Even a wildly shifted window gives no verdict when it is too small.
    let shifted = Population {
        label_shares: [1.0, 0.0, 0.0],
        embedding_shift: 3.0,
        words: 40,
        ..Population::default()
    };
    for n in [0, 1, cfg.min_samples - 1] {
        let r = run(&b, &draw(&shifted, n, 7), &cfg);
        assert_eq!(r.verdict, Verdict::Insufficient);
        assert_eq!(r.drift_score, 0.0);
        assert!(r.fired.is_empty());
        assert_eq!(r.samples, n);
        assert_eq!(r.min_samples, cfg.min_samples);
        assert!(r.tests.iter().all(|t| !t.fired && t.score == 0.0));
    }
    let r = run(&b, &draw(&shifted, cfg.min_samples, 7), &cfg);
    assert_eq!(r.verdict, Verdict::Drift);
}

#[test]
fn models_without_embeddings_skip_the_embedding_tests() {
    let lexicon = Population {
        embeddings: false,
        ..Population::default()
    };
    let b = baseline_of(&lexicon);
    assert!(b.embedding_mean.is_empty() && b.embedding_sample.is_empty());
    let r = run(&b, &draw(&lexicon, 1000, 8), &DriftConfig::default());
    assert_eq!(r.verdict, Verdict::NoDrift);
    for t in ["mean_shift", "mmd", "oov_ks"] {
        let t = test(&r, t);
        assert!(t.skipped.is_some() && !t.fired && t.score == 0.0, "{t:?}");
    }
    assert_eq!(
        test(&r, "mmd").skipped.as_deref(),
        Some("model has no embeddings")
    );
    assert!(r.current.oov_histogram.is_empty());

    // A model with embeddings checked against a lexicon baseline (or the reverse) cannot
    // compare them either.
    let r = run(
        &b,
        &draw(&Population::default(), 1000, 8),
        &DriftConfig::default(),
    );
    assert!(test(&r, "mmd").skipped.is_some());
}

#[test]
fn baseline_summarises_and_samples_the_reference() {
    let p = Population::default();
    let obs = draw(&p, 3000, 1);
    let b = baseline_of(&p);
    assert_eq!(b.format, drift::BASELINE_FORMAT);
    assert_eq!(b.count, 3000);
    assert_eq!(b.label_counts.iter().sum::<u64>(), 3000);
    assert_eq!(b.embedding_mean.len(), DIM);
    assert_eq!(b.embedding_sd.len(), DIM);
    assert_eq!(b.embedding_sample.len(), 1000);
    assert!(b.embedding_sample.iter().all(|e| e.len() == DIM));
    // Text samples keep everything up to TEXT_SAMPLE_MIN.
    assert_eq!(b.length_sample.len(), 3000);
    assert_eq!(b.oov_sample.len(), 3000);
    let mean_sd: f32 = b.embedding_sd.iter().sum::<f32>() / DIM as f32;
    assert!((mean_sd - 1.05).abs() < 0.05, "{mean_sd}");
    // Every sampled embedding is one of the reference's.
    for e in &b.embedding_sample {
        assert!(obs.iter().any(|o| o.embedding.as_ref() == Some(e)));
    }
    // Seeded: the same inputs give the same baseline.
    assert_eq!(b, baseline_of(&p));
    let other_seed = Baseline::build("v1", "t", vec![], &obs, 1000, 43);
    assert_ne!(b.embedding_sample, other_seed.embedding_sample);
}

#[test]
fn baseline_and_report_round_trip_through_json() {
    let b = baseline_of(&Population::default());
    let bytes = b.to_json();
    assert_eq!(Baseline::from_json(&bytes).unwrap(), b);

    let r = run(
        &b,
        &draw(&Population::default(), 800, 10),
        &DriftConfig::default(),
    );
    let json = serde_json::to_string(&r).unwrap();
    let back: DriftReport = serde_json::from_str(&json).unwrap();
    // serde_json is built without `float_roundtrip` here, so long decimals come back to
    // within an ulp; everything else is exact.
    assert_json_close(
        &serde_json::to_value(&back).unwrap(),
        &serde_json::to_value(&r).unwrap(),
        "report",
    );
    assert_eq!(
        (back.verdict, &back.fired, back.samples),
        (r.verdict, &r.fired, r.samples)
    );
    assert!(json.contains("\"verdict\":\"no_drift\""), "{json}");

    let mut wrong = b.clone();
    wrong.format = 99;
    assert!(Baseline::from_json(&wrong.to_json()).is_err());
    let mut wrong = b.clone();
    wrong.embedding_sd.pop();
    assert!(Baseline::from_json(&wrong.to_json()).is_err());
    let mut wrong = b;
    wrong.count += 1;
    assert!(Baseline::from_json(&wrong.to_json()).is_err());
    let e = Baseline::from_json(b"{not json").unwrap_err();
    assert!(e.to_string().starts_with("drift baseline:"), "{e}");
}

fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                x == y || (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_json_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (k, v) in x {
                assert_json_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn scores_are_normalised_to_one_at_the_threshold() {
    let t = TestResult::p_value("chi2", 12.0, 0.001, 0.001);
    assert!((t.score - 1.0).abs() < 1e-12, "{t:?}");
    assert!(!t.fired);
    let t = TestResult::p_value("mmd", 0.01, 0.0001, 0.001);
    assert!((t.score - 4.0 / 3.0).abs() < 1e-12, "{t:?}");
    assert!(t.fired);
    assert_eq!(t.family, "embedding");
    let t = TestResult::p_value("chi2", 1e4, 0.0, 0.001);
    assert!(t.score.is_finite() && t.score > 1.0 && t.fired, "{t:?}");
    let t = TestResult::p_value("chi2", 0.0, 1.0, 0.001);
    assert_eq!(t.score, 0.0);

    let t = TestResult::distance("psi", 0.2, 0.2);
    assert_eq!(t.score, 1.0);
    assert!(!t.fired);
    let t = TestResult::distance("length_ks", 0.3, 0.15);
    assert!((t.score - 2.0).abs() < 1e-12 && t.fired);
    assert_eq!(t.family, "text");
}

#[test]
fn statistics_match_known_values() {
    // Chi-square with 2 degrees of freedom: p = exp(-x/2).
    let (x2, p) = drift::chi_square(&[100, 100, 100], &[150, 100, 50]);
    let expected = {
        // Expected counts are 125, 100, 75 on each side.
        let d = 25.0f64.powi(2);
        2.0 * (d / 125.0 + d / 75.0)
    };
    assert!((x2 - expected).abs() < 1e-9, "{x2} vs {expected}");
    assert!((p - (-x2 / 2.0).exp()).abs() < 1e-15);
    let (x2, p) = drift::chi_square(&[10, 20, 30], &[10, 20, 30]);
    assert_eq!((x2, p), (0.0, 1.0));
    // An empty category drops a degree of freedom: 1 df, x = 3.841 is the 5 % point.
    let (x2, p) = drift::chi_square(&[0, 50, 50], &[0, 50, 50]);
    assert_eq!((x2, p), (0.0, 1.0));

    let same = [0.2, 0.3, 0.5];
    assert!(drift::psi(&same, &same).abs() < 1e-15);
    assert!(drift::js_distance(&same, &same).abs() < 1e-7);
    assert!((drift::js_distance(&[1.0, 0.0, 0.0], &[0.0, 0.0, 1.0]) - 1.0).abs() < 1e-12);
    // PSI of (0.5, 0.5) -> (0.25, 0.75): 0.25 ln 2 + 0.25 ln 1.5... with signs.
    let v = drift::psi(&[0.5, 0.5], &[0.25, 0.75]);
    let want = -0.25 * (0.5f64).ln() + 0.25 * (1.5f64).ln();
    assert!((v - want).abs() < 1e-12);
    // An empty bin does not make PSI infinite.
    assert!(drift::psi(&[0.0, 1.0], &[0.5, 0.5]).is_finite());

    assert_eq!(
        drift::ks_statistic(vec![1.0, 2.0, 3.0], vec![1.0, 2.0, 3.0]),
        0.0
    );
    assert_eq!(drift::ks_statistic(vec![1.0, 2.0], vec![3.0, 4.0]), 1.0);
    // Ties are stepped over together: F_a(1) = 2/3, F_b(1) = 1/3.
    let d = drift::ks_statistic(vec![1.0, 1.0, 5.0], vec![1.0, 5.0, 5.0]);
    assert!((d - 1.0 / 3.0).abs() < 1e-12, "{d}");
}

#[test]
fn text_shape_finds_urls_and_mentions() {
    let s = TextShape::of("héllo @user see HTTPS://x.y");
    assert_eq!(s.chars, 27);
    assert!(s.has_url && s.has_mention);
    let s = TextShape::of("mail me@example.com or visit WWW.example.com");
    assert!(s.has_url && !s.has_mention);
    let s = TextShape::of("@ alone, http:/ broken");
    assert!(!s.has_url && !s.has_mention);
    assert!(TextShape::of("@_x").has_mention);
    assert_eq!(TextShape::of("").chars, 0);

    // Non-finite model outputs are recorded as absent.
    let o = Observation::new(
        Label::Neutral,
        Some(vec![1.0, f32::NAN]),
        Some(f32::NAN),
        "x",
    );
    assert_eq!((o.embedding, o.oov_share), (None, None));
    let o = Observation::new(Label::Neutral, None, Some(1.5), "x");
    assert_eq!(o.oov_share, Some(1.0));
}

#[test]
fn mmd_permutation_test_is_calibrated_and_reproducible() {
    // Same distribution: the p-value is roughly uniform, so over many seeds small p-values
    // are rare; a shifted sample gets the smallest p the permutations can give.
    let p = Population::default();
    let a = draw(&p, 200, 20);
    let emb = |o: &[Observation]| -> Vec<Vec<f32>> {
        o.iter().filter_map(|o| o.embedding.clone()).collect()
    };
    let ea = emb(&a);
    let ra: Vec<&[f32]> = ea.iter().map(Vec::as_slice).collect();
    let scale = vec![1.0; DIM];
    let mut small = 0;
    for seed in 0..20 {
        let eb = emb(&draw(&p, 200, 100 + seed));
        let rb: Vec<&[f32]> = eb.iter().map(Vec::as_slice).collect();
        let (_, pv) = drift::mmd_test(&rb, &ra, &scale, 100, 99, seed);
        assert!(pv > 0.0 && pv <= 1.0);
        if pv < 0.05 {
            small += 1;
        }
    }
    assert!(small <= 3, "{small} of 20 null p-values below 0.05");

    let shifted = Population {
        embedding_shift: 0.5,
        ..p
    };
    let eb = emb(&draw(&shifted, 200, 30));
    let rb: Vec<&[f32]> = eb.iter().map(Vec::as_slice).collect();
    let (stat, pv) = drift::mmd_test(&rb, &ra, &scale, 100, 99, 1);
    assert!(stat > 0.0);
    assert_eq!(pv, 0.01);
    assert_eq!(drift::mmd_test(&rb, &ra, &scale, 100, 99, 1), (stat, pv));
}
