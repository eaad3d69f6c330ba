//! Classification metrics over the three sentiment classes.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use sentimentd_data::{Dataset, Label};

use crate::classifier::Classifier;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// The evaluation report; its JSON form is what `sentimentd eval --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub accuracy: f64,
    /// Mean of per-class recall: the TweetEval sentiment metric.
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Keyed by label name.
    pub per_class: std::collections::BTreeMap<String, ClassMetrics>,
    /// `confusion_matrix[true][predicted]`, rows and columns in negative, neutral, positive order.
    pub confusion_matrix: [[u64; 3]; 3],
    pub count: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl EvalMetrics {
    pub fn from_confusion(cm: [[u64; 3]; 3]) -> EvalMetrics {
        let count: u64 = cm.iter().flatten().sum();
        let correct: u64 = (0..3).map(|i| cm[i][i]).sum();
        let mut per_class = std::collections::BTreeMap::new();
        let (mut sum_r, mut sum_f1) = (0.0, 0.0);
        for label in Label::ALL {
            let i = label.index();
            let tp = cm[i][i];
            let support: u64 = cm[i].iter().sum();
            let predicted: u64 = (0..3).map(|t| cm[t][i]).sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            sum_r += recall;
            sum_f1 += f1;
            per_class.insert(
                label.as_str().to_string(),
                ClassMetrics {
                    precision,
                    recall,
                    f1,
                    support,
                },
            );
        }
        EvalMetrics {
            accuracy: ratio(correct, count),
            macro_recall: sum_r / 3.0,
            macro_f1: sum_f1 / 3.0,
            per_class,
            confusion_matrix: cm,
            count,
        }
    }

    pub fn compute(truth: &[Label], predicted: &[Label]) -> EvalMetrics {
        let mut cm = [[0u64; 3]; 3];
        for (t, p) in truth.iter().zip(predicted) {
            cm[t.index()][p.index()] += 1;
        }
        EvalMetrics::from_confusion(cm)
    }

    /// Human-readable report: headline metrics, per-class table, confusion matrix.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rows {}  accuracy {:.4}  macro-recall {:.4}  macro-F1 {:.4}\n",
            self.count, self.accuracy, self.macro_recall, self.macro_f1
        );
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9} {:>9}",
            "class", "precision", "recall", "f1", "support"
        );
        for label in Label::ALL {
            if let Some(m) = self.per_class.get(label.as_str()) {
                let _ = writeln!(
                    s,
                    "{:<10} {:>9.4} {:>9.4} {:>9.4} {:>9}",
                    label.as_str(),
                    m.precision,
                    m.recall,
                    m.f1,
                    m.support
                );
            }
        }
        let _ = writeln!(s, "\nconfusion matrix (rows: true, columns: predicted)");
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9}",
            "", "negative", "neutral", "positive"
        );
        for label in Label::ALL {
            let r = self.confusion_matrix[label.index()];
            let _ = writeln!(
                s,
                "{:<10} {:>9} {:>9} {:>9}",
                label.as_str(),
                r[0],
                r[1],
                r[2]
            );
        }
        s
    }
}

/// Macro-recall with each row counted by its weight (`None`: once), over the classes that have
/// rows: the score early stopping and the ensemble weight are chosen by.
pub fn weighted_macro_recall(truth: &[Label], predicted: &[Label], weights: Option<&[f32]>) -> f64 {
    let (mut hit, mut support) = ([0f64; 3], [0f64; 3]);
    for (i, (t, p)) in truth.iter().zip(predicted).enumerate() {
        let w = weights.map_or(1.0, |w| f64::from(w[i]));
        support[t.index()] += w;
        if t == p {
            hit[t.index()] += w;
        }
    }
    let present: Vec<usize> = (0..3).filter(|&c| support[c] > 0.0).collect();
    if present.is_empty() {
        return 0.0;
    }
    present.iter().map(|&c| hit[c] / support[c]).sum::<f64>() / present.len() as f64
}

/// Macro-recall of `model` on `data` over the classes `data` has rows of (a set without
/// neutral rows is judged on its two classes; `evaluate` averages all three).
pub fn macro_recall_present(model: &dyn Classifier, data: &Dataset) -> f64 {
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let predicted: Vec<Label> = model
        .predict_batch(&texts)
        .into_iter()
        .map(|p| p.label)
        .collect();
    weighted_macro_recall(&data.labels, &predicted, None)
}

/// Scores every text of a labelled dataset and compares with its labels.
pub fn evaluate(model: &dyn Classifier, data: &Dataset) -> EvalMetrics {
    let texts: Vec<&str> = data.texts.iter().map(|s| s.as_str()).collect();
    let predicted: Vec<_> = model
        .predict_batch(&texts)
        .into_iter()
        .map(|p| p.label)
        .collect();
    EvalMetrics::compute(&data.labels, &predicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_confusion_matrix() {
        // true \ pred   neg neu pos
        // negative       8   2   0
        // neutral        1   6   3
        // positive       0   4  16
        let m = EvalMetrics::from_confusion([[8, 2, 0], [1, 6, 3], [0, 4, 16]]);
        assert_eq!(m.count, 40);
        assert!((m.accuracy - 30.0 / 40.0).abs() < 1e-12);
        // recalls: 8/10, 6/10, 16/20 -> mean 0.7333..
        assert!((m.macro_recall - (0.8 + 0.6 + 0.8) / 3.0).abs() < 1e-12);
        let neg = &m.per_class["negative"];
        assert!((neg.precision - 8.0 / 9.0).abs() < 1e-12);
        let neu = &m.per_class["neutral"];
        assert!((neu.precision - 6.0 / 12.0).abs() < 1e-12);
        let f1_neu = 2.0 * 0.5 * 0.6 / 1.1;
        assert!((neu.f1 - f1_neu).abs() < 1e-12);
        let pos = &m.per_class["positive"];
        assert!((pos.precision - 16.0 / 19.0).abs() < 1e-12);
        let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
        let macro_f1 = (f1(8.0 / 9.0, 0.8) + f1_neu + f1(16.0 / 19.0, 0.8)) / 3.0;
        assert!((m.macro_f1 - macro_f1).abs() < 1e-12);
    }

    #[test]
    fn compute_counts_pairs_and_handles_empty_classes() {
        use Label::*;
        let m = EvalMetrics::compute(
            &[Negative, Negative, Positive],
            &[Negative, Positive, Positive],
        );
        assert_eq!(m.confusion_matrix, [[1, 0, 1], [0, 0, 0], [0, 0, 1]]);
        assert_eq!(m.per_class["neutral"].recall, 0.0);
        assert_eq!(m.per_class["neutral"].precision, 0.0);
        assert!((m.macro_recall - (0.5 + 0.0 + 1.0) / 3.0).abs() < 1e-12);
        let json = serde_json::to_value(&m).unwrap();
        for key in [
            "accuracy",
            "macro_recall",
            "macro_f1",
            "per_class",
            "confusion_matrix",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
