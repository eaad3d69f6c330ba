//! Drift detection quality on real data through a real trained model, at the default
//! `[drift]` thresholds: windows from the reference distribution rarely alarm, and a label
//! shift and two topic shifts (another domain; a narrow topic of the same data that the
//! reference and training never contained) always do.
//!
//! Prints the false-alarm rate, what fired under each shift and the spread of every statistic,
//! so thresholds can be re-calibrated from its output (`-- --nocapture`). With
//! `SENTIMENTD_DRIFT_CALIBRATE=1` it also checks windows of `min_samples` texts and of twice
//! the val.csv half.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use sentimentd_config::{Config, DriftConfig};
use sentimentd_data::drift::{self, Baseline, DriftReport, Observation, TESTS, Verdict};
use sentimentd_data::{Label, load_dataset};
use sentimentd_model::kinds::fast::train::{self, Quiet, TrainParams};
use sentimentd_model::{Classifier, FastModel};

const WINDOW: usize = 1000;
const NULL_WINDOWS: usize = 100;
const SHIFTED_WINDOWS: usize = 20;

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/datasets/tweeteval")
        .join(file)
}

/// The served model's shape (64-dim embeddings, lexicon features), trained briefly on a
/// subset: enough for realistic embeddings and predictions in a few seconds.
fn params() -> TrainParams {
    let mut p = TrainParams::from_config(&Config::default());
    p.features.buckets = 1 << 15;
    p.vocab_size = 8000;
    p.epochs = 2;
    p.patience = 1;
    assert_eq!(p.embedding_dim, 64);
    p
}

/// Tweets about consumer tech: the narrow topic, kept out of training and the reference.
fn is_tech(text: &str) -> bool {
    const WORDS: [&str; 10] = [
        "iphone",
        "apple",
        "ipad",
        "google",
        "samsung",
        "android",
        "windows",
        "microsoft",
        "xbox",
        "playstation",
    ];
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| WORDS.contains(&w))
}

/// Product reviews: a domain the model never saw, a few hundred distinct texts.
fn product_reviews() -> Vec<String> {
    let products = [
        "blender",
        "vacuum cleaner",
        "coffee maker",
        "air fryer",
        "toaster",
        "electric kettle",
        "office chair",
        "backpack",
        "bluetooth speaker",
        "yoga mat",
    ];
    let opinions = [
        "works perfectly and was easy to set up",
        "is worth every penny",
        "exceeded my expectations in every way",
        "is sturdy, quiet and easy to clean",
        "arrived quickly and well packaged",
        "stopped working after two weeks",
        "arrived damaged and customer service never replied",
        "feels flimsy and is overpriced for what you get",
        "makes a horrible rattling noise",
        "is about the size described in the listing",
        "comes with a manual and a one year warranty",
        "does what it says, nothing more",
    ];
    let templates = [
        "I bought this {p} for my apartment and it {o}.",
        "The {p} {o}. Would I order it again? Probably.",
        "Ordered the {p} last month: it {o}.",
        "Honest review of the {p} after daily use - it {o}.",
    ];
    let mut out = Vec::new();
    for t in templates {
        for p in products {
            for o in opinions {
                out.push(t.replace("{p}", p).replace("{o}", o));
            }
        }
    }
    out
}

fn observe(model: &FastModel, texts: &[String]) -> Vec<Observation> {
    texts
        .iter()
        .map(|t| {
            let a = model.analyse(t);
            Observation::new(a.prediction.label, a.embedding, a.oov_share, t)
        })
        .collect()
}

fn sample_from(pool: &[Observation], n: usize, rng: &mut StdRng) -> Vec<Observation> {
    if pool.len() >= n {
        pool.choose_multiple(rng, n).cloned().collect()
    } else {
        (0..n).filter_map(|_| pool.choose(rng).cloned()).collect()
    }
}

struct Pools {
    baseline: Baseline,
    /// Reference-distribution texts not in the baseline: the other half of val.csv, and
    /// held-out training rows, kept apart so windows mix them as the baseline does.
    val_rest: Vec<Observation>,
    train_rest: Vec<Observation>,
    /// Observations of the same texts whose true label is negative / not negative.
    negative: Vec<Observation>,
    not_negative: Vec<Observation>,
    reviews: Vec<Observation>,
    tech: Vec<Observation>,
}

fn pools() -> Pools {
    let t0 = Instant::now();
    let train = load_dataset(&[data("train.csv")], 1000).unwrap();
    let val = load_dataset(&[data("val.csv")], 1000).unwrap();
    let mut rng = StdRng::seed_from_u64(1);

    let mut train_rows: Vec<(String, Label)> = train.texts.into_iter().zip(train.labels).collect();
    let mut val_rows: Vec<(String, Label)> = val.texts.into_iter().zip(val.labels).collect();
    train_rows.shuffle(&mut rng);
    val_rows.shuffle(&mut rng);
    let (tech_train, train_rows): (Vec<_>, Vec<_>) =
        train_rows.into_iter().partition(|(t, _)| is_tech(t));
    let (tech_val, val_rows): (Vec<_>, Vec<_>) =
        val_rows.into_iter().partition(|(t, _)| is_tech(t));

    let (fit, rest) = train_rows.split_at(8000);
    let (sel, held_out) = rest.split_at(1000);
    let texts = |rows: &[(String, Label)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    let labels = |rows: &[(String, Label)]| rows.iter().map(|r| r.1).collect::<Vec<_>>();
    let p = params();
    let outcome = train::train(
        &p,
        &texts(fit),
        &labels(fit),
        &texts(sel),
        &labels(sel),
        &mut Quiet,
    )
    .unwrap();
    let model = FastModel::new(outcome.featurizer, outcome.weights, "v".into()).unwrap();
    println!(
        "trained on {} texts in {:.1}s (selection macro-recall {:.3})",
        fit.len(),
        t0.elapsed().as_secs_f64(),
        outcome.selection_metrics.macro_recall
    );

    // Baseline: half of val.csv plus as many held-out training rows.
    let half = val_rows.len() / 2;
    let (val_ref, val_rest) = val_rows.split_at(half);
    let (train_ref, train_rest) = held_out.split_at(half);
    let reference: Vec<(String, Label)> = val_ref.iter().chain(train_ref).cloned().collect();
    let ref_obs = observe(&model, &texts(&reference));
    let cfg = DriftConfig::default();
    let baseline = Baseline::build(
        "v",
        "2024-01-01T00:00:00Z",
        vec![
            "half of val.csv".into(),
            format!("{half} held-out train.csv rows"),
        ],
        &ref_obs,
        cfg.baseline_sample,
        42,
    );
    // Bytes on disk are what the daemon checks against.
    let baseline = Baseline::from_json(&baseline.to_json()).unwrap();

    let val_rest_obs = observe(&model, &texts(val_rest));
    let train_rest_obs = observe(&model, &texts(train_rest));
    let mut negative = Vec::new();
    let mut not_negative = Vec::new();
    for (o, (_, l)) in val_rest_obs
        .iter()
        .zip(val_rest)
        .chain(train_rest_obs.iter().zip(train_rest))
    {
        if *l == Label::Negative {
            negative.push(o.clone());
        } else {
            not_negative.push(o.clone());
        }
    }
    let tech: Vec<String> = tech_train
        .iter()
        .chain(&tech_val)
        .map(|r| r.0.clone())
        .collect();
    let pools = Pools {
        baseline,
        val_rest: val_rest_obs,
        train_rest: train_rest_obs,
        negative,
        not_negative,
        reviews: observe(&model, &product_reviews()),
        tech: observe(&model, &tech),
    };
    println!(
        "baseline of {} texts; pools: {} val + {} train reference, {} negative, {} reviews, \
         {} tech tweets ({:.1}s)",
        pools.baseline.count,
        pools.val_rest.len(),
        pools.train_rest.len(),
        pools.negative.len(),
        pools.reviews.len(),
        pools.tech.len(),
        t0.elapsed().as_secs_f64()
    );
    pools
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Null,
    LabelShift,
    Reviews,
    Tech,
}

fn window(p: &Pools, s: Scenario, size: usize, rng: &mut StdRng) -> Vec<Observation> {
    let mut w = match s {
        // Same val/train mix as the baseline.
        Scenario::Null => {
            let mut w = sample_from(&p.val_rest, size / 2, rng);
            w.extend(sample_from(&p.train_rest, size - size / 2, rng));
            w
        }
        // 60 % of the texts truly negative (the reference has about 16 %).
        Scenario::LabelShift => {
            let neg = size * 6 / 10;
            let mut w = sample_from(&p.negative, neg, rng);
            w.extend(sample_from(&p.not_negative, size - neg, rng));
            w
        }
        Scenario::Reviews => sample_from(&p.reviews, size, rng),
        Scenario::Tech => sample_from(&p.tech, size, rng),
    };
    w.shuffle(rng);
    w
}

/// Runs the checks on both cores (the data crate is unoptimised in test builds).
fn run_all(
    p: &Pools,
    jobs: Vec<(Scenario, Vec<Observation>)>,
    cfg: &DriftConfig,
) -> Vec<(Scenario, DriftReport)> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((scenario, w)) = jobs.get(i) else {
                        break;
                    };
                    let r = drift::check(&p.baseline, w, cfg, "v", "now", 1000 + i as u64);
                    out.lock().unwrap().push((i, *scenario, r));
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|x| x.0);
    out.into_iter().map(|(_, s, r)| (s, r)).collect()
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Per test: how often it fired and the spread of its statistic (p-value for p-value tests).
fn summarise(name: &str, reports: &[&DriftReport]) {
    let alarms = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Drift)
        .count();
    println!(
        "{name}: {alarms}/{} windows alarmed; per test: fired, statistic min / median / 95% / max",
        reports.len()
    );
    for t in TESTS {
        let results: Vec<_> = reports
            .iter()
            .filter_map(|r| r.tests.iter().find(|x| x.test == t))
            .filter(|x| x.skipped.is_none())
            .collect();
        if results.is_empty() {
            println!("  {t:<12} skipped");
            continue;
        }
        let fired = results.iter().filter(|x| x.fired).count();
        let mut v: Vec<f64> = results
            .iter()
            .map(|x| x.p_value.unwrap_or(x.value))
            .collect();
        println!(
            "  {t:<12} {fired:>3}  {:.4} / {:.4} / {:.4} / {:.4}  (threshold {})",
            quantile(&mut v, 0.0),
            quantile(&mut v, 0.5),
            quantile(&mut v, 0.95),
            quantile(&mut v, 1.0),
            results[0].threshold
        );
    }
}

#[test]
fn default_thresholds_alarm_on_shifts_and_rarely_otherwise() {
    let t0 = Instant::now();
    let p = pools();
    let cfg = DriftConfig::default();
    let mut rng = StdRng::seed_from_u64(7);
    let mut jobs = Vec::new();
    for (s, n) in [
        (Scenario::Null, NULL_WINDOWS),
        (Scenario::LabelShift, SHIFTED_WINDOWS),
        (Scenario::Reviews, SHIFTED_WINDOWS),
        (Scenario::Tech, SHIFTED_WINDOWS),
    ] {
        for _ in 0..n {
            jobs.push((s, window(&p, s, WINDOW, &mut rng)));
        }
    }
    let t1 = Instant::now();
    let reports = run_all(&p, jobs, &cfg);
    println!(
        "{} checks of {WINDOW}-text windows in {:.1}s",
        reports.len(),
        t1.elapsed().as_secs_f64()
    );

    let mut by: BTreeMap<Scenario, Vec<&DriftReport>> = BTreeMap::new();
    for (s, r) in &reports {
        by.entry(*s).or_default().push(r);
    }
    for (s, rs) in &by {
        summarise(&format!("{s:?}"), rs);
    }

    let null = &by[&Scenario::Null];
    let false_alarms = null.iter().filter(|r| r.verdict == Verdict::Drift).count();
    let rate = false_alarms as f64 / null.len() as f64;
    println!(
        "false-alarm rate {:.1} % ({false_alarms}/{})",
        100.0 * rate,
        null.len()
    );
    assert!(null.iter().all(|r| r.verdict != Verdict::Insufficient));
    assert!(rate <= 0.05, "false-alarm rate {rate}");

    for s in [Scenario::LabelShift, Scenario::Reviews, Scenario::Tech] {
        for r in &by[&s] {
            assert_eq!(
                r.verdict,
                Verdict::Drift,
                "{s:?} window did not alarm: {:#?}",
                r.tests
            );
        }
    }
    // A label shift is what the label tests are for.
    for r in &by[&Scenario::LabelShift] {
        for t in ["psi", "js_distance", "chi2"] {
            assert!(
                r.fired.iter().any(|f| f == t),
                "label shift without {t}: {:?}",
                r.fired
            );
        }
    }

    if std::env::var_os("SENTIMENTD_DRIFT_CALIBRATE").is_some() {
        // Larger windows than this would repeat texts of the val.csv half.
        for size in [cfg.min_samples, 2 * p.val_rest.len()] {
            let jobs = (0..NULL_WINDOWS)
                .map(|_| (Scenario::Null, window(&p, Scenario::Null, size, &mut rng)))
                .collect();
            let reports = run_all(&p, jobs, &cfg);
            let rs: Vec<&DriftReport> = reports.iter().map(|x| &x.1).collect();
            summarise(&format!("Null, windows of {size}"), &rs);
            for s in [Scenario::LabelShift, Scenario::Reviews, Scenario::Tech] {
                let jobs = (0..SHIFTED_WINDOWS)
                    .map(|_| (s, window(&p, s, size, &mut rng)))
                    .collect();
                let reports = run_all(&p, jobs, &cfg);
                let rs: Vec<&DriftReport> = reports.iter().map(|x| &x.1).collect();
                summarise(&format!("{s:?}, windows of {size}"), &rs);
            }
        }
    }
    println!("whole test {:.1}s", t0.elapsed().as_secs_f64());
}
