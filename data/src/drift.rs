//! Drift statistics: a baseline of what a model saw on reference data, and a check of a
//! window of recent observations against it (label, embedding and text-shape tests), with the
//! report as JSON and as a self-contained HTML page. Pure functions; the daemon decides when
//! to run them and where the results go.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sentimentd_config::DriftConfig;
use serde::{Deserialize, Serialize};

use crate::{DataError, Label};

/// Version of the baseline JSON layout; `from_json` refuses any other.
pub const BASELINE_FORMAT: u32 = 1;

/// The text-shape samples (length, OOV share) are cheap, and the KS tests lose power with a
/// small reference, so they keep at least this many values whatever the embedding sample size.
pub const TEXT_SAMPLE_MIN: usize = 10_000;

pub const PSI: &str = "psi";
pub const JS_DISTANCE: &str = "js_distance";
pub const CHI2: &str = "chi2";
pub const MEAN_SHIFT: &str = "mean_shift";
pub const MMD: &str = "mmd";
pub const LENGTH_KS: &str = "length_ks";
pub const OOV_KS: &str = "oov_ks";
/// Every test a check runs, in report order.
pub const TESTS: [&str; 7] = [PSI, JS_DISTANCE, CHI2, MEAN_SHIFT, MMD, LENGTH_KS, OOV_KS];

pub const FAMILY_LABEL: &str = "label";
pub const FAMILY_EMBEDDING: &str = "embedding";
pub const FAMILY_TEXT: &str = "text";

/// The family a test belongs to (`None` for an unknown name).
pub fn family_of(test: &str) -> Option<&'static str> {
    match test {
        PSI | JS_DISTANCE | CHI2 => Some(FAMILY_LABEL),
        MEAN_SHIFT | MMD => Some(FAMILY_EMBEDDING),
        LENGTH_KS | OOV_KS => Some(FAMILY_TEXT),
        _ => None,
    }
}

/// Empty label bins would make PSI infinite; shares are floored at this.
const PSI_EPSILON: f64 = 1e-4;
/// p-values are clamped here before taking logs, so a score is always finite.
const P_FLOOR: f64 = 1e-300;
const LENGTH_BINS: usize = 12;
pub const OOV_BINS: usize = 10;

/// Text-shape statistics of one text, computed by the data crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextShape {
    pub chars: u32,
    pub has_url: bool,
    pub has_mention: bool,
}

impl TextShape {
    /// URL: `http://`, `https://` or `www.` (any case); mention: `@` starting a word.
    pub fn of(text: &str) -> TextShape {
        let bytes = text.as_bytes();
        TextShape {
            chars: u32::try_from(text.chars().count()).unwrap_or(u32::MAX),
            has_url: [&b"http://"[..], b"https://", b"www."]
                .iter()
                .any(|n| contains_ignore_ascii_case(bytes, n)),
            has_mention: has_mention(bytes),
        }
    }
}

fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// An `@` followed by a word character and not preceded by one, so e-mail addresses
/// (`me@example.com`) are not mentions.
fn has_mention(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'@'
            && bytes.get(i + 1).is_some_and(|&n| is_word_byte(n))
            && (i == 0 || !is_word_byte(bytes[i - 1]))
    })
}

/// What drift detection records about one classified text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Observation {
    /// The predicted label.
    pub label: Label,
    /// The model's sentence embedding (dim 64 for the fast model); `None` for the lexicon.
    pub embedding: Option<Vec<f32>>,
    /// Share of words not in the model vocabulary, 0..1; `None` for models without one.
    pub oov_share: Option<f32>,
    pub chars: u32,
    pub has_url: bool,
    pub has_mention: bool,
}

impl Observation {
    /// Non-finite embeddings and OOV shares are recorded as absent: one NaN would otherwise
    /// poison every mean and make the baseline JSON unreadable (serde writes NaN as null).
    pub fn new(
        label: Label,
        embedding: Option<Vec<f32>>,
        oov_share: Option<f32>,
        text: &str,
    ) -> Observation {
        let shape = TextShape::of(text);
        Observation {
            label,
            embedding: embedding.filter(|e| !e.is_empty() && e.iter().all(|x| x.is_finite())),
            oov_share: oov_share
                .filter(|x| x.is_finite())
                .map(|x| x.clamp(0.0, 1.0)),
            chars: shape.chars,
            has_url: shape.has_url,
            has_mention: shape.has_mention,
        }
    }
}

/// What a model saw on reference data, saved next to the model version it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    pub format: u32,
    pub model_version: String,
    pub created_at: String,
    /// Where the reference data came from (file names, "recent window of N").
    pub reference: Vec<String>,
    pub count: usize,
    pub label_counts: [u64; 3],
    /// Per-dimension mean and sample standard deviation over every reference embedding
    /// (empty when the model has none).
    pub embedding_mean: Vec<f32>,
    pub embedding_sd: Vec<f32>,
    /// Seeded reservoir sample of reference embeddings, at most `sample` of them.
    pub embedding_sample: Vec<Vec<f32>>,
    /// Seeded reservoir samples for the KS tests, at most `max(sample, TEXT_SAMPLE_MIN)`.
    pub length_sample: Vec<u32>,
    pub oov_sample: Vec<f32>,
    pub url_share: f64,
    pub mention_share: f64,
}

impl Baseline {
    /// Embeddings whose dimension differs from the first one seen are left out of the
    /// embedding statistics (they cannot come from the same model).
    pub fn build(
        model_version: &str,
        created_at: &str,
        reference: Vec<String>,
        obs: &[Observation],
        sample: usize,
        seed: u64,
    ) -> Baseline {
        let mut label_counts = [0u64; 3];
        for o in obs {
            label_counts[o.label.index()] += 1;
        }
        let dim = obs
            .iter()
            .find_map(|o| o.embedding.as_ref().map(Vec::len))
            .unwrap_or(0);
        let embeddings = embeddings_of(obs, dim);
        let (mean, sd) = mean_sd(&embeddings, dim);

        let mut rng = StdRng::seed_from_u64(seed);
        let embedding_sample = reservoir(embeddings.len(), sample, &mut rng)
            .into_iter()
            .map(|i| embeddings[i].to_vec())
            .collect();
        let text_sample = sample.max(TEXT_SAMPLE_MIN);
        let length_sample = reservoir(obs.len(), text_sample, &mut rng)
            .into_iter()
            .map(|i| obs[i].chars)
            .collect();
        let oovs: Vec<f32> = obs.iter().filter_map(|o| o.oov_share).collect();
        let oov_sample = reservoir(oovs.len(), text_sample, &mut rng)
            .into_iter()
            .map(|i| oovs[i])
            .collect();

        Baseline {
            format: BASELINE_FORMAT,
            model_version: model_version.to_string(),
            created_at: created_at.to_string(),
            reference,
            count: obs.len(),
            label_counts,
            embedding_mean: mean,
            embedding_sd: sd,
            embedding_sample,
            length_sample,
            oov_sample,
            url_share: exact_in_json(share(obs.iter().filter(|o| o.has_url).count(), obs.len())),
            mention_share: exact_in_json(share(
                obs.iter().filter(|o| o.has_mention).count(),
                obs.len(),
            )),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: plain structs and vectors, no maps with non-string keys, no custom
        // serialisers; an empty result would be refused by `from_json` anyway.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks the layout (format, consistent embedding dimensions), so a check
    /// never runs against a half-valid baseline.
    pub fn from_json(bytes: &[u8]) -> Result<Baseline, DataError> {
        let bad = |reason: String| DataError::Baseline { reason };
        let b: Baseline = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if b.format != BASELINE_FORMAT {
            return Err(bad(format!(
                "format {} (this build reads format {BASELINE_FORMAT})",
                b.format
            )));
        }
        let dim = b.embedding_mean.len();
        if b.embedding_sd.len() != dim {
            return Err(bad(format!(
                "embedding mean has {dim} dimensions, standard deviation {}",
                b.embedding_sd.len()
            )));
        }
        if let Some(e) = b.embedding_sample.iter().find(|e| e.len() != dim) {
            return Err(bad(format!(
                "a sampled embedding has {} dimensions, the mean {dim}",
                e.len()
            )));
        }
        let total: u64 = b.label_counts.iter().sum();
        if usize::try_from(total).ok() != Some(b.count) {
            return Err(bad(format!(
                "label counts sum to {total}, count is {}",
                b.count
            )));
        }
        Ok(b)
    }
}

fn share(part: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// serde_json (without its `float_roundtrip` feature) parses long decimals to within an ulp
/// only; a share rounded to 12 decimals parses back to exactly the same f64, so a stored
/// baseline compares equal to the one computed.
fn exact_in_json(share: f64) -> f64 {
    (share * 1e12).round() / 1e12
}

fn embeddings_of(obs: &[Observation], dim: usize) -> Vec<&[f32]> {
    if dim == 0 {
        return Vec::new();
    }
    obs.iter()
        .filter_map(|o| o.embedding.as_deref())
        .filter(|e| e.len() == dim && e.iter().all(|x| x.is_finite()))
        .collect()
}

/// Per-dimension mean and sample standard deviation, accumulated in f64 (two passes, so a
/// large common offset does not eat the variance).
fn mean_sd(embeddings: &[&[f32]], dim: usize) -> (Vec<f32>, Vec<f32>) {
    if embeddings.is_empty() || dim == 0 {
        return (Vec::new(), Vec::new());
    }
    let mean = mean_of(embeddings, dim);
    let mut ss = vec![0f64; dim];
    for e in embeddings {
        for ((s, &x), &m) in ss.iter_mut().zip(e.iter()).zip(&mean) {
            let d = f64::from(x) - m;
            *s += d * d;
        }
    }
    let denom = embeddings.len().saturating_sub(1).max(1) as f64;
    (
        mean.iter().map(|&m| m as f32).collect(),
        ss.iter().map(|&s| (s / denom).sqrt() as f32).collect(),
    )
}

fn mean_of(embeddings: &[&[f32]], dim: usize) -> Vec<f64> {
    let mut sum = vec![0f64; dim];
    for e in embeddings {
        for (s, &x) in sum.iter_mut().zip(e.iter()) {
            *s += f64::from(x);
        }
    }
    let n = embeddings.len().max(1) as f64;
    sum.iter().map(|s| s / n).collect()
}

/// Indices of a uniform sample of `k` out of `n` (Algorithm R), in reservoir order.
fn reservoir(n: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut out: Vec<usize> = (0..n.min(k)).collect();
    for i in k..n {
        let j = rng.random_range(0..=i);
        if let Some(slot) = out.get_mut(j) {
            *slot = i;
        }
    }
    out
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too few observations in the window to say anything.
    Insufficient,
    NoDrift,
    Drift,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Insufficient => "insufficient",
            Verdict::NoDrift => "no_drift",
            Verdict::Drift => "drift",
        }
    }
}

/// One statistical test of a check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TestResult {
    /// One of [`TESTS`].
    pub test: String,
    /// "label", "embedding" or "text".
    pub family: String,
    /// The statistic (chi-square statistic, MMD² estimate, distance, KS D).
    pub value: f64,
    /// For the tests with a p-value (chi2, mmd).
    #[schema(required = true)]
    pub p_value: Option<f64>,
    /// The configured threshold: a distance for distance tests, a p-value for the others.
    pub threshold: f64,
    /// Threshold-normalised, so tests of different kinds compare: 1.0 exactly at the
    /// threshold, above 1 fires. Distance tests: value / threshold; p-value tests:
    /// ln(p) / ln(threshold).
    pub score: f64,
    pub fired: bool,
    /// Why the test did not run (it then never fires and scores 0).
    #[schema(required = true)]
    pub skipped: Option<String>,
}

impl TestResult {
    fn new(test: &str, value: f64, p_value: Option<f64>, threshold: f64, score: f64) -> Self {
        TestResult {
            test: test.to_string(),
            family: family_of(test).unwrap_or_default().to_string(),
            value,
            p_value,
            threshold,
            score,
            // Same as `score > 1` up to rounding; compared on the raw numbers so the
            // decision matches the config comments ("fires above" / "fires below").
            fired: match p_value {
                Some(p) => p < threshold,
                None => value > threshold,
            },
            skipped: None,
        }
    }

    /// A test that fires when `value` is above `threshold`.
    pub fn distance(test: &str, value: f64, threshold: f64) -> Self {
        TestResult::new(
            test,
            value,
            None,
            threshold,
            distance_score(value, threshold),
        )
    }

    /// A test that fires when `p` is below `threshold`; `value` is its statistic.
    pub fn p_value(test: &str, value: f64, p: f64, threshold: f64) -> Self {
        TestResult::new(test, value, Some(p), threshold, p_score(p, threshold))
    }

    pub fn skipped(test: &str, threshold: f64, reason: impl Into<String>) -> Self {
        TestResult {
            skipped: Some(reason.into()),
            fired: false,
            score: 0.0,
            ..TestResult::new(test, 0.0, None, threshold, 0.0)
        }
    }
}

/// Thresholds are validated positive; the floor only keeps a hand-built config from
/// producing infinities (which JSON cannot carry).
pub fn distance_score(value: f64, threshold: f64) -> f64 {
    value / threshold.max(1e-12)
}

/// ln(p) / ln(threshold): 1 at the threshold and growing as p falls below it, on the same
/// "above 1 fires" scale as the distances. p is floored so a p-value of 0 stays finite.
pub fn p_score(p: f64, threshold: f64) -> f64 {
    let t = threshold.clamp(P_FLOOR, 1.0 - 1e-12);
    p.clamp(P_FLOOR, 1.0).ln() / t.ln()
}

/// Shares of one side of a check, for the report's charts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Distribution {
    /// Predicted-label shares in `Label::ALL` order.
    pub label_shares: [f64; 3],
    /// (lower bin edge in characters, share); the last bin is open-ended.
    pub length_histogram: Vec<(u32, f64)>,
    /// (lower bin edge, share) over 0..1 in tenths; empty when there are no OOV shares.
    pub oov_histogram: Vec<(f32, f64)>,
    pub url_share: f64,
    pub mention_share: f64,
    pub count: usize,
}

/// The outcome of one drift check, as stored (JSON) and shown (HTML).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DriftReport {
    #[schema(format = DateTime)]
    pub checked_at: String,
    pub model_version: String,
    #[schema(format = DateTime)]
    pub baseline_created_at: String,
    pub samples: usize,
    pub min_samples: usize,
    pub verdict: Verdict,
    /// Largest test score (0 when Insufficient).
    pub drift_score: f64,
    /// Names of the tests that fired.
    pub fired: Vec<String>,
    pub tests: Vec<TestResult>,
    pub reference: Distribution,
    pub current: Distribution,
    /// Time the check took.
    pub seconds: f64,
}

/// Checks `window` against `baseline` with the thresholds of `cfg`. `seed` drives the MMD
/// subsampling and permutations, so a check is reproducible.
pub fn check(
    baseline: &Baseline,
    window: &[Observation],
    cfg: &DriftConfig,
    model_version: &str,
    checked_at: &str,
    seed: u64,
) -> DriftReport {
    let start = Instant::now();
    let lengths: Vec<u32> = window.iter().map(|o| o.chars).collect();
    let oovs: Vec<f32> = window.iter().filter_map(|o| o.oov_share).collect();
    let (reference, current) = distributions(baseline, window, &lengths, &oovs);

    let (verdict, tests) = if window.len() < cfg.min_samples || window.is_empty() {
        let reason = format!(
            "window has {} observations, a check needs at least {}",
            window.len(),
            cfg.min_samples.max(1)
        );
        let tests = TESTS
            .iter()
            .map(|t| TestResult::skipped(t, threshold_of(cfg, t), reason.clone()))
            .collect();
        (Verdict::Insufficient, tests)
    } else {
        let mut tests = label_tests(baseline, window, cfg);
        tests.extend(embedding_tests(baseline, window, cfg, seed));
        tests.extend(text_tests(baseline, &lengths, &oovs, cfg));
        let verdict = if tests.iter().any(|t| t.fired) {
            Verdict::Drift
        } else {
            Verdict::NoDrift
        };
        (verdict, tests)
    };
    let drift_score = match verdict {
        Verdict::Insufficient => 0.0,
        _ => tests.iter().map(|t| t.score).fold(0.0, f64::max),
    };
    DriftReport {
        checked_at: checked_at.to_string(),
        model_version: model_version.to_string(),
        baseline_created_at: baseline.created_at.clone(),
        samples: window.len(),
        min_samples: cfg.min_samples,
        verdict,
        drift_score,
        fired: tests
            .iter()
            .filter(|t| t.fired)
            .map(|t| t.test.clone())
            .collect(),
        tests,
        reference,
        current,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The configured threshold of a test (0 for an unknown name).
pub fn threshold_of(cfg: &DriftConfig, test: &str) -> f64 {
    match test {
        PSI => cfg.psi_threshold,
        JS_DISTANCE => cfg.js_distance_threshold,
        CHI2 => cfg.chi2_p_value,
        MEAN_SHIFT => cfg.mean_shift_threshold,
        MMD => cfg.mmd_p_value,
        LENGTH_KS => cfg.length_ks_threshold,
        OOV_KS => cfg.oov_ks_threshold,
        _ => 0.0,
    }
}

fn label_tests(baseline: &Baseline, window: &[Observation], cfg: &DriftConfig) -> Vec<TestResult> {
    let mut counts = [0u64; 3];
    for o in window {
        counts[o.label.index()] += 1;
    }
    let reference = baseline.label_counts;
    if reference.iter().sum::<u64>() == 0 {
        let why = "baseline has no observations";
        return vec![
            TestResult::skipped(PSI, cfg.psi_threshold, why),
            TestResult::skipped(JS_DISTANCE, cfg.js_distance_threshold, why),
            TestResult::skipped(CHI2, cfg.chi2_p_value, why),
        ];
    }
    let p = shares(&reference);
    let q = shares(&counts);
    let (x2, chi_p) = chi_square(&reference, &counts);
    vec![
        TestResult::distance(PSI, psi(&p, &q), cfg.psi_threshold),
        TestResult::distance(JS_DISTANCE, js_distance(&p, &q), cfg.js_distance_threshold),
        TestResult::p_value(CHI2, x2, chi_p, cfg.chi2_p_value),
    ]
}

fn shares(counts: &[u64; 3]) -> [f64; 3] {
    let total: u64 = counts.iter().sum();
    let mut out = [0.0; 3];
    if total > 0 {
        for (o, &c) in out.iter_mut().zip(counts) {
            *o = c as f64 / total as f64;
        }
    }
    out
}

/// Population stability index of `current` against `reference` shares.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(&p, &q)| {
            let (p, q) = (p.max(PSI_EPSILON), q.max(PSI_EPSILON));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Jensen-Shannon distance, base 2: the square root of the divergence, between 0 and 1.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let kl_to_mid = |a: f64, b: f64| {
        let m = (a + b) / 2.0;
        if a > 0.0 { a * (a / m).log2() } else { 0.0 }
    };
    let div: f64 = p
        .iter()
        .zip(q)
        .map(|(&a, &b)| 0.5 * kl_to_mid(a, b) + 0.5 * kl_to_mid(b, a))
        .sum();
    div.clamp(0.0, 1.0).sqrt()
}

/// Chi-square test of homogeneity of two count vectors (a 2 x k contingency table):
/// (statistic, p-value). Categories empty on both sides carry no information and are
/// dropped, which lowers the degrees of freedom.
pub fn chi_square(a: &[u64], b: &[u64]) -> (f64, f64) {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let total = na + nb;
    if na == 0.0 || nb == 0.0 {
        return (0.0, 1.0);
    }
    let mut x2 = 0.0;
    let mut categories = 0usize;
    for (&ca, &cb) in a.iter().zip(b) {
        let col = (ca + cb) as f64;
        if col == 0.0 {
            continue;
        }
        categories += 1;
        let (ea, eb) = (na * col / total, nb * col / total);
        x2 += (ca as f64 - ea).powi(2) / ea + (cb as f64 - eb).powi(2) / eb;
    }
    (x2, chi_square_sf(x2, categories.saturating_sub(1)))
}

/// Survival function of the chi-square distribution for the small degrees of freedom a
/// 2 x 3 table produces.
fn chi_square_sf(x: f64, df: usize) -> f64 {
    match df {
        0 => 1.0,
        1 => erfc((x / 2.0).sqrt()).min(1.0),
        // Exact for 2 degrees of freedom.
        2 => (-x / 2.0).exp(),
        _ => {
            // Even df: closed form exp(-x/2) * sum_{k<df/2} (x/2)^k / k!; odd df adds the
            // erfc term and a series. Only reached for tables wider than the label set.
            let h = x / 2.0;
            if df.is_multiple_of(2) {
                let mut term = 1.0;
                let mut sum = 1.0;
                for k in 1..df / 2 {
                    term *= h / k as f64;
                    sum += term;
                }
                ((-h).exp() * sum).min(1.0)
            } else {
                let mut term = (x / std::f64::consts::PI).sqrt() * (-h).exp();
                let mut sum = 0.0;
                for k in 1..=(df - 1) / 2 {
                    sum += term;
                    term *= x / (2 * k + 1) as f64;
                }
                (erfc(h.sqrt()) + sum).min(1.0)
            }
        }
    }
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error below
/// 1.2e-7), enough for a p-value compared against a threshold.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn embedding_tests(
    baseline: &Baseline,
    window: &[Observation],
    cfg: &DriftConfig,
    seed: u64,
) -> Vec<TestResult> {
    let skip = |why: String| {
        vec![
            TestResult::skipped(MEAN_SHIFT, cfg.mean_shift_threshold, why.clone()),
            TestResult::skipped(MMD, cfg.mmd_p_value, why),
        ]
    };
    let Some(dim) = window
        .iter()
        .find_map(|o| o.embedding.as_ref().map(Vec::len))
    else {
        return skip("model has no embeddings".into());
    };
    let ref_dim = baseline.embedding_mean.len();
    if ref_dim == 0 {
        return skip("baseline has no embeddings".into());
    }
    if dim != ref_dim {
        return skip(format!(
            "embedding dimension changed: baseline {ref_dim}, window {dim}"
        ));
    }
    let current = embeddings_of(window, dim);
    let inv_sd = inverse_sd(&baseline.embedding_sd);

    let mean = mean_of(&current, dim);
    let msq: f64 = mean
        .iter()
        .zip(&baseline.embedding_mean)
        .zip(&inv_sd)
        .map(|((&w, &r), &s)| ((w - f64::from(r)) * f64::from(s)).powi(2))
        .sum::<f64>()
        / dim as f64;
    let mean_shift = TestResult::distance(MEAN_SHIFT, msq.sqrt(), cfg.mean_shift_threshold);

    let reference: Vec<&[f32]> = baseline
        .embedding_sample
        .iter()
        .map(Vec::as_slice)
        .filter(|e| e.len() == dim)
        .collect();
    let mmd = if reference.len() < 2 || current.len() < 2 {
        TestResult::skipped(
            MMD,
            cfg.mmd_p_value,
            format!(
                "too few embeddings: {} in the baseline sample, {} in the window",
                reference.len(),
                current.len()
            ),
        )
    } else {
        let (stat, p) = mmd_test(
            &current,
            &reference,
            &inv_sd,
            cfg.mmd_max_samples.max(2),
            cfg.mmd_permutations,
            seed,
        );
        TestResult::p_value(MMD, stat, p, cfg.mmd_p_value)
    };
    vec![mean_shift, mmd]
}

/// 1 / sd per dimension. A dimension that hardly varies on the reference would turn any
/// movement into an enormous shift, so sds are floored at a thousandth of the mean sd.
fn inverse_sd(sd: &[f32]) -> Vec<f32> {
    let mean_sd = sd.iter().map(|&s| f64::from(s)).sum::<f64>() / sd.len().max(1) as f64;
    let floor = (mean_sd * 1e-3).max(1e-12);
    sd.iter()
        .map(|&s| (1.0 / f64::from(s).max(floor)) as f32)
        .collect()
}

/// Unbiased MMD² between `x` and `y` with an RBF kernel on the scaled embeddings, and its
/// permutation p-value. At most `max_samples` per side (subsampled with `seed`); the pooled
/// kernel matrix is computed once and every permutation only re-partitions it.
pub fn mmd_test(
    x: &[&[f32]],
    y: &[&[f32]],
    scale: &[f32],
    max_samples: usize,
    permutations: usize,
    seed: u64,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let xs = subsample(x, max_samples, &mut rng);
    let ys = subsample(y, max_samples, &mut rng);
    let (n, m) = (xs.len(), ys.len());
    if n < 2 || m < 2 {
        return (0.0, 1.0);
    }
    let big = n + m;

    // Scaled points, each zero-padded to whole lanes (padding changes no distance).
    let zl = scale.len().div_ceil(LANES);
    let mut z = vec![[0f32; LANES]; big * zl];
    for (p, v) in xs.iter().chain(&ys).enumerate() {
        for (d, (a, s)) in v.iter().zip(scale).enumerate() {
            z[p * zl + d / LANES][d % LANES] = a * s;
        }
    }
    let point = |p: usize| &z[p * zl..(p + 1) * zl];

    // Squared distances of the upper triangle, row by row.
    let mut upper = Vec::with_capacity(big * (big - 1) / 2);
    for i in 0..big {
        let zi = point(i);
        for j in i + 1..big {
            upper.push(squared_distance(zi, point(j)));
        }
    }
    // Median heuristic: bandwidth sigma = median pairwise distance, k = exp(-d²/(2 sigma²)).
    let median = {
        let mut sorted = upper.clone();
        let mid = sorted.len() / 2;
        let (_, med, _) = sorted.select_nth_unstable_by(mid, f32::total_cmp);
        *med
    };
    let gamma = if median > 0.0 {
        0.5 / median
    } else {
        // Every point identical: any bandwidth gives MMD 0.
        1.0
    };

    // The kernel matrix, rows padded to whole lanes with zeros (the mask is zero there too).
    let kl = big.div_ceil(LANES);
    let mut k = vec![[0f32; LANES]; big * kl];
    let mut next = upper.iter();
    for i in 0..big {
        k[i * kl + i / LANES][i % LANES] = 1.0;
        for j in i + 1..big {
            let v = next.next().map_or(0.0, |&d2| (-gamma * d2).exp());
            k[i * kl + j / LANES][j % LANES] = v;
            k[j * kl + i / LANES][i % LANES] = v;
        }
    }
    drop(upper);
    let row = |i: usize| &k[i * kl..(i + 1) * kl];
    let row_total: Vec<f64> = (0..big).map(|i| lane_sum_f64(row(i))).collect();
    let total: f64 = row_total.iter().sum();

    // With X the first n points of an assignment and r_i = sum_{j in X} K_ij, only the rows
    // of X are needed: Sxx = sum_X r_i, Sxy = sum_X (rowtotal_i - r_i), Syy = T - Sxx - 2 Sxy.
    let (nf, mf) = (n as f64, m as f64);
    let mut mask = vec![[0f32; LANES]; kl];
    let stat = |members: &[usize], mask: &mut [[f32; LANES]]| {
        mask.fill([0.0; LANES]);
        for &i in members {
            mask[i / LANES][i % LANES] = 1.0;
        }
        let mut sxx = 0.0;
        let mut sx = 0.0;
        for &i in members {
            sxx += f64::from(dot(row(i), mask));
            sx += row_total[i];
        }
        let sxy = sx - sxx;
        let syy = total - sxx - 2.0 * sxy;
        (sxx - nf) / (nf * (nf - 1.0)) + (syy - mf) / (mf * (mf - 1.0)) - 2.0 * sxy / (nf * mf)
    };

    let mut order: Vec<usize> = (0..big).collect();
    let observed = stat(&order[..n], &mut mask);
    let mut at_least = 0usize;
    for _ in 0..permutations {
        let (chosen, _) = order.partial_shuffle(&mut rng, n);
        if stat(chosen, &mut mask) >= observed {
            at_least += 1;
        }
    }
    let p = (1 + at_least) as f64 / (1 + permutations) as f64;
    (observed, p)
}

fn subsample<'a>(v: &[&'a [f32]], max: usize, rng: &mut StdRng) -> Vec<&'a [f32]> {
    if v.len() <= max {
        return v.to_vec();
    }
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let (chosen, _) = idx.partial_shuffle(rng, max);
    chosen.iter().map(|&i| v[i]).collect()
}

const LANES: usize = 8;

// The MMD's two hot loops work on zero-padded lanes of eight with eight independent
// accumulators: floating-point addition is not reassociated by the compiler, so one
// accumulator would serialise the loop and defeat vectorisation. `while` loops and constant
// lane indices (rather than iterator adaptors, each a real call there) keep unoptimised test
// builds usable too.
fn dot(a: &[[f32; LANES]], b: &[[f32; LANES]]) -> f32 {
    let n = a.len().min(b.len());
    let mut s = [0f32; LANES];
    let mut k = 0;
    while k < n {
        let (x, y) = (&a[k], &b[k]);
        s[0] += x[0] * y[0];
        s[1] += x[1] * y[1];
        s[2] += x[2] * y[2];
        s[3] += x[3] * y[3];
        s[4] += x[4] * y[4];
        s[5] += x[5] * y[5];
        s[6] += x[6] * y[6];
        s[7] += x[7] * y[7];
        k += 1;
    }
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
}

fn squared_distance(a: &[[f32; LANES]], b: &[[f32; LANES]]) -> f32 {
    let n = a.len().min(b.len());
    let mut s = [0f32; LANES];
    let mut k = 0;
    while k < n {
        let (x, y) = (&a[k], &b[k]);
        let d = [
            x[0] - y[0],
            x[1] - y[1],
            x[2] - y[2],
            x[3] - y[3],
            x[4] - y[4],
            x[5] - y[5],
            x[6] - y[6],
            x[7] - y[7],
        ];
        s[0] += d[0] * d[0];
        s[1] += d[1] * d[1];
        s[2] += d[2] * d[2];
        s[3] += d[3] * d[3];
        s[4] += d[4] * d[4];
        s[5] += d[5] * d[5];
        s[6] += d[6] * d[6];
        s[7] += d[7] * d[7];
        k += 1;
    }
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
}

fn lane_sum_f64(row: &[[f32; LANES]]) -> f64 {
    row.iter().flatten().map(|&v| f64::from(v)).sum()
}

fn text_tests(
    baseline: &Baseline,
    lengths: &[u32],
    oovs: &[f32],
    cfg: &DriftConfig,
) -> Vec<TestResult> {
    let length = if baseline.length_sample.is_empty() {
        TestResult::skipped(
            LENGTH_KS,
            cfg.length_ks_threshold,
            "baseline has no observations",
        )
    } else {
        let a: Vec<f64> = baseline
            .length_sample
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let b: Vec<f64> = lengths.iter().map(|&v| f64::from(v)).collect();
        TestResult::distance(LENGTH_KS, ks_statistic(a, b), cfg.length_ks_threshold)
    };
    let oov = if oovs.is_empty() {
        TestResult::skipped(
            OOV_KS,
            cfg.oov_ks_threshold,
            "model reports no vocabulary coverage",
        )
    } else if baseline.oov_sample.is_empty() {
        TestResult::skipped(
            OOV_KS,
            cfg.oov_ks_threshold,
            "baseline has no vocabulary coverage",
        )
    } else {
        let a: Vec<f64> = baseline.oov_sample.iter().map(|&v| f64::from(v)).collect();
        let b: Vec<f64> = oovs.iter().map(|&v| f64::from(v)).collect();
        TestResult::distance(OOV_KS, ks_statistic(a, b), cfg.oov_ks_threshold)
    };
    vec![length, oov]
}

/// Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.
/// Ties (text lengths are integers) are stepped over together on both sides.
pub fn ks_statistic(mut a: Vec<f64>, mut b: Vec<f64>) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

fn distributions(
    baseline: &Baseline,
    window: &[Observation],
    lengths: &[u32],
    oovs: &[f32],
) -> (Distribution, Distribution) {
    let width = length_bin_width(&baseline.length_sample, lengths);
    let mut counts = [0u64; 3];
    for o in window {
        counts[o.label.index()] += 1;
    }
    let reference = Distribution {
        label_shares: shares(&baseline.label_counts),
        length_histogram: length_histogram(&baseline.length_sample, width),
        oov_histogram: oov_histogram(&baseline.oov_sample),
        url_share: baseline.url_share,
        mention_share: baseline.mention_share,
        count: baseline.count,
    };
    let current = Distribution {
        label_shares: shares(&counts),
        length_histogram: length_histogram(lengths, width),
        oov_histogram: oov_histogram(oovs),
        url_share: share(window.iter().filter(|o| o.has_url).count(), window.len()),
        mention_share: share(
            window.iter().filter(|o| o.has_mention).count(),
            window.len(),
        ),
        count: window.len(),
    };
    (reference, current)
}

/// Bins shared by both sides, sized so the 99th percentile of the longer side falls in the
/// last bin (which is open-ended), at a round width.
fn length_bin_width(a: &[u32], b: &[u32]) -> u32 {
    let p99 = |v: &[u32]| {
        if v.is_empty() {
            return 0;
        }
        let mut s = v.to_vec();
        let k = (s.len() - 1) * 99 / 100;
        let (_, x, _) = s.select_nth_unstable(k);
        *x
    };
    let hi = p99(a).max(p99(b)).max(1);
    let raw = hi.div_ceil(LENGTH_BINS as u32 - 1).max(1);
    if raw > 10 { raw.div_ceil(10) * 10 } else { raw }
}

fn length_histogram(v: &[u32], width: u32) -> Vec<(u32, f64)> {
    let mut counts = [0usize; LENGTH_BINS];
    for &x in v {
        counts[((x / width.max(1)) as usize).min(LENGTH_BINS - 1)] += 1;
    }
    (0..LENGTH_BINS)
        .map(|b| (b as u32 * width, share(counts[b], v.len())))
        .collect()
}

fn oov_histogram(v: &[f32]) -> Vec<(f32, f64)> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut counts = [0usize; OOV_BINS];
    for &x in v {
        let bin = (x.clamp(0.0, 1.0) * OOV_BINS as f32) as usize;
        counts[bin.min(OOV_BINS - 1)] += 1;
    }
    (0..OOV_BINS)
        .map(|b| (b as f32 / OOV_BINS as f32, share(counts[b], v.len())))
        .collect()
}
