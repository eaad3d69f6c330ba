//! The gate a retrained candidate must pass to serve: pure functions of the two models'
//! scores on the same sets, and of which labelled rows the recent holdout takes.

use sentimentd_config::Config;
use sentimentd_data::Label;
use serde::Serialize;

use crate::metrics::EvalMetrics;

/// Outcome of the gate, with every rule's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct GateVerdict {
    pub passed: bool,
    /// Every rule with PASS or FAIL, in order.
    pub reasons: Vec<String>,
}

/// Which rows (oldest first) form the recent holdout: the newest `n`, except that an origin
/// stops at `max_share` of `n` while older rows of other origins can fill the rest; only
/// when they cannot does the holdout take more of it, so its size never shrinks.
pub fn pick_holdout(origins: &[&str], n: usize, max_share: f64) -> Vec<bool> {
    let cap = ((n as f64) * max_share).ceil().max(1.0) as usize;
    let mut chosen = vec![false; origins.len()];
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut count = 0;
    for i in (0..origins.len()).rev() {
        if count == n {
            break;
        }
        let t = taken.entry(origins[i]).or_default();
        if *t < cap {
            *t += 1;
            chosen[i] = true;
            count += 1;
        }
    }
    for i in (0..origins.len()).rev() {
        if count == n {
            break;
        }
        if !chosen[i] {
            chosen[i] = true;
            count += 1;
        }
    }
    chosen
}

pub fn gate(
    cfg: &Config,
    cand_val: &EvalMetrics,
    cur_val: &EvalMetrics,
    cand_hold: Option<&EvalMetrics>,
    cur_hold: Option<&EvalMetrics>,
    holdout_rows: usize,
    by_origin: &[(String, f64, u64)],
) -> GateVerdict {
    let g = &cfg.gate;
    let mut reasons = Vec::new();
    let mut passed = true;
    let mut rule = |ok: bool, text: String| {
        passed &= ok;
        reasons.push(format!("{} {text}", if ok { "PASS" } else { "FAIL" }));
    };
    rule(
        cand_val.macro_recall >= g.min_val_macro_recall,
        format!(
            "reporting-split macro-recall {:.4} >= floor {:.4}",
            cand_val.macro_recall, g.min_val_macro_recall
        ),
    );
    rule(
        cand_val.macro_recall >= cur_val.macro_recall - g.max_val_drop,
        format!(
            "reporting-split macro-recall {:.4} vs serving {:.4} (at most {:.4} lost)",
            cand_val.macro_recall, cur_val.macro_recall, g.max_val_drop
        ),
    );
    match (cand_hold, cur_hold) {
        (Some(c), Some(s)) if holdout_rows >= g.min_holdout_rows => rule(
            c.macro_recall - s.macro_recall >= g.min_holdout_gain,
            format!(
                "recent-holdout macro-recall {:.4} vs serving {:.4} (at least {:+.4} gained)",
                c.macro_recall, s.macro_recall, g.min_holdout_gain
            ),
        ),
        _ => rule(
            false,
            format!(
                "recent holdout has {holdout_rows} rows, fewer than [gate] min_holdout_rows = {}",
                g.min_holdout_rows
            ),
        ),
    }
    if g.min_label_agreement > 0.0 {
        match cur_hold.map(polar_agreement) {
            Some((agree, n)) if n >= MIN_POLAR_ROWS => rule(
                agree >= g.min_label_agreement,
                format!(
                    "recent labels agree with the serving model's negative/positive \
                     predictions on {:.1}% of {n} rows (at least {:.1}%)",
                    agree * 100.0,
                    g.min_label_agreement * 100.0
                ),
            ),
            Some((_, n)) => rule(
                true,
                format!(
                    "label agreement not judged: {n} recent rows with a negative/positive \
                     label and prediction, fewer than {MIN_POLAR_ROWS}"
                ),
            ),
            None => {}
        }
        for (origin, agree, n) in by_origin.iter().filter(|o| o.2 >= MIN_POLAR_ROWS) {
            rule(
                *agree >= g.min_label_agreement,
                format!(
                    "labels from {origin} agree with the serving model's negative/positive \
                     predictions on {:.1}% of {n} rows (at least {:.1}%)",
                    agree * 100.0,
                    g.min_label_agreement * 100.0
                ),
            );
        }
    }
    GateVerdict { passed, reasons }
}

/// Fewest holdout rows with a negative/positive label and prediction for the label-agreement
/// rule to judge.
pub const MIN_POLAR_ROWS: u64 = 20;

/// Of the rows whose label and prediction are both negative or positive, the share where they
/// agree, and how many such rows there are.
pub fn polar_agreement(m: &EvalMetrics) -> (f64, u64) {
    let cm = &m.confusion_matrix;
    let (neg, pos) = (Label::Negative.index(), Label::Positive.index());
    let agree = cm[neg][neg] + cm[pos][pos];
    let n = agree + cm[neg][pos] + cm[pos][neg];
    (if n == 0 { 0.0 } else { agree as f64 / n as f64 }, n)
}

#[cfg(test)]
mod tests {
    use super::pick_holdout;

    fn picked<'a>(origins: &[&'a str], n: usize, share: f64) -> Vec<&'a str> {
        origins
            .iter()
            .zip(pick_holdout(origins, n, share))
            .filter(|(_, h)| *h)
            .map(|(o, _)| *o)
            .collect()
    }

    #[test]
    fn one_origin_fills_at_most_its_share_while_others_have_rows() {
        // Oldest first: three batch rows, then five feedback rows.
        let origins = ["a.csv", "a.csv", "b.csv", "fb", "fb", "fb", "fb", "fb"];
        assert_eq!(
            picked(&origins, 4, 0.5),
            ["a.csv", "b.csv", "fb", "fb"],
            "two feedback rows, then the newest others"
        );
        // Share 1: simply the newest rows.
        assert_eq!(picked(&origins, 4, 1.0), ["fb"; 4]);
        // Too few other rows: the holdout keeps its size with more of the big origin.
        assert_eq!(picked(&["a.csv", "fb", "fb", "fb"], 3, 0.5).len(), 3);
        assert_eq!(picked(&["fb"; 5], 2, 0.5), ["fb", "fb"]);
    }
}
