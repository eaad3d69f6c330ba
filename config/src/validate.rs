//! Range and consistency rules that serde's types cannot express.

use crate::error::{Location, ValidationIssue};
use crate::schema::{Config, RetrainConfig, held_out};
use std::fmt::Display;
use std::path::{Component, Path, PathBuf};

#[derive(Default)]
struct Checker {
    issues: Vec<ValidationIssue>,
}

impl Checker {
    fn fail(&mut self, key: &str, message: String) {
        self.issues.push(ValidationIssue {
            key: key.to_string(),
            message,
            location: Location::default(),
        });
    }

    fn range<T: PartialOrd + Display>(&mut self, key: &str, value: T, min: T, max: T) {
        // Unordered (NaN, which TOML can spell) fails too.
        let inside = value.partial_cmp(&min).is_some_and(|o| o.is_ge())
            && value.partial_cmp(&max).is_some_and(|o| o.is_le());
        if !inside {
            self.fail(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    fn at_least<T: PartialOrd + Display>(&mut self, key: &str, value: T, min: T) {
        if value < min {
            self.fail(key, format!("must be >= {min}, got {value}"));
        }
    }

    fn positive(&mut self, key: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.fail(key, format!("must be > 0, got {value}"));
        }
    }

    fn non_negative(&mut self, key: &str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.fail(key, format!("must be >= 0, got {value}"));
        }
    }

    fn path(&mut self, key: &str, path: &Path) {
        if path.as_os_str().is_empty() {
            self.fail(key, "must not be empty".to_string());
        }
    }
}

/// Longest `[cluster] duplicate_window_secs`: a week.
const MAX_DUPLICATE_WINDOW_SECS: u64 = 7 * 86_400;

/// A retrain starts once `min_new_rows` new labelled rows arrived, and holds out the newest
/// `ceil(rows * holdout_share)` of the whole labelled store (as the trainer computes it) for
/// the gate. The first run sees the fewest rows, so a holdout that is short of
/// `gate.min_holdout_rows` there fails the gate every time, and the run spends its rows.
fn holdout_fits_gate(k: &mut Checker, r: &RetrainConfig, min_holdout_rows: usize) {
    let share = r.holdout_share;
    // Out of range (NaN included) is reported by the range check already.
    if !(0.0..=0.9).contains(&share) {
        return;
    }
    if share == 0.0 {
        k.fail(
            "retrain.holdout_share",
            format!(
                "should be above 0 while retrain.enabled = true: with no recent holdout the gate \
                 (gate.min_holdout_rows = {min_holdout_rows}) rejects every retrain (try 0.2, or \
                 set retrain.enabled = false)"
            ),
        );
        return;
    }
    let held = r.held_out(r.min_new_rows);
    if held >= min_holdout_rows {
        return;
    }
    let mut fixes = Vec::new();
    // The fewest rows whose holdout reaches the gate's minimum; the float product is
    // searched near the quotient rather than trusted, so the advice matches the trainer's
    // arithmetic (and an absurd minimum gets no advice instead of an overflow).
    let start = ((min_holdout_rows as f64) / share).floor() as usize;
    if let Some(rows) =
        (start..start.saturating_add(1000)).find(|n| held_out(*n, share) >= min_holdout_rows)
    {
        fixes.push(format!("raise retrain.min_new_rows to {rows}"));
    }
    // The smallest share in hundredths that is enough, when the range allows one.
    let hundredths =
        (1..=90).find(|h| held_out(r.min_new_rows, f64::from(*h) / 100.0) >= min_holdout_rows);
    if let Some(h) = hundredths {
        fixes.push(format!(
            "raise retrain.holdout_share to {}",
            f64::from(h) / 100.0
        ));
    }
    if held > 0 {
        fixes.push(format!("lower gate.min_holdout_rows to {held}"));
    }
    let advice = if fixes.is_empty() {
        String::new()
    } else {
        format!(": {}", fixes.join(", or "))
    };
    k.fail(
        "retrain.min_new_rows",
        format!(
            "holds out ceil(retrain.min_new_rows * retrain.holdout_share) = ceil({} * {share}) \
             = {held} rows at the first retrain, fewer than gate.min_holdout_rows = \
             {min_holdout_rows}, so the gate rejects it and its rows are spent{advice}",
            r.min_new_rows,
        ),
    );
}

/// Settings that are valid one by one but work against each other: the daemon runs, and
/// `config check` and the start say what will go wrong. Warnings rather than errors because
/// files written for earlier versions have them (the old shipped `sentimentd.toml` spelt out
/// both old defaults), and serving must not stop over what only retraining or feedback needs.
pub fn advise(c: &Config) -> Vec<ValidationIssue> {
    let mut k = Checker::default();
    if c.retrain.enabled {
        holdout_fits_gate(&mut k, &c.retrain, c.gate.min_holdout_rows);
    }
    // Retention trims the store to labelled_max_bytes; a feedback limit at or below that
    // refuses feedback (507) for good once the store grows past it, waiting for room
    // retention never makes.
    let feedback_on = c.feedback.token_file.is_some() || c.admin.token_file.is_some();
    let retained = c.ingest.labelled_max_bytes;
    if feedback_on && retained > 0 && c.feedback.max_store_bytes <= retained {
        k.fail(
            "feedback.max_store_bytes",
            format!(
                "should be above [ingest] labelled_max_bytes ({retained}), the size retention \
                 trims the labelled-data store to, or feedback is refused for good once the \
                 store passes it; got {} (e.g. {})",
                c.feedback.max_store_bytes,
                retained.saturating_add(retained / 2)
            ),
        );
    }
    k.issues
}

pub fn validate(c: &Config) -> Vec<ValidationIssue> {
    let mut k = Checker::default();

    k.path("paths.model_store", &c.paths.model_store);
    k.path("paths.state_dir", &c.paths.state_dir);

    if c.data.train.is_empty() {
        k.fail("data.train", "must list at least one CSV file".to_string());
    }
    for (i, p) in c.data.train.iter().enumerate() {
        k.path(&format!("data.train[{i}]"), p);
    }
    k.path("data.val", &c.data.val);
    if let Some(p) = &c.data.lexicon {
        k.path("data.lexicon", p);
    }
    k.range("data.max_text_chars", c.data.max_text_chars, 1, 1_000_000);

    let m = &c.model;
    let t = &c.transformer;
    k.path("transformer.pretrained_dir", &t.pretrained_dir);
    if !crate::schema::TransformerConfig::is_encoder_name(&t.encoder) {
        k.fail(
            "transformer.encoder",
            format!(
                "must name a directory inside pretrained_dir, got {:?}",
                t.encoder
            ),
        );
    }
    k.range("transformer.max_seq_len", t.max_seq_len, 8, 512);
    k.range("transformer.embed_batch", t.embed_batch, 1, 1024);
    k.range("transformer.head_epochs", t.head_epochs, 1, 100_000);
    k.positive("transformer.head_learning_rate", t.head_learning_rate);
    k.non_negative("transformer.head_l2", t.head_l2);
    if let crate::FineTuneLayers::Fixed(n) = t.finetune_layers {
        k.range("transformer.finetune_layers", n, 0, 64);
    }
    k.range("transformer.finetune_epochs", t.finetune_epochs, 1, 100);
    k.range("transformer.finetune_batch", t.finetune_batch, 1, 1024);
    k.positive("transformer.time_budget_mins", t.time_budget_mins);
    k.range(
        "transformer.time_budget_mins",
        t.time_budget_mins,
        0.01,
        100_000.0,
    );
    k.positive(
        "transformer.finetune_learning_rate",
        t.finetune_learning_rate,
    );
    k.at_least(
        "transformer.checkpoint_every_steps",
        t.checkpoint_every_steps,
        1,
    );
    k.range("transformer.max_batch", t.max_batch, 1, 1024);
    k.range("transformer.max_wait_ms", t.max_wait_ms, 0, 1000);
    k.range("model.embedding_dim", m.embedding_dim, 1, 1024);
    k.range("model.hidden_dim", m.hidden_dim, 0, 4096);
    k.range("model.vocab_size", m.vocab_size, 100, 1_000_000);
    k.at_least("model.min_token_frequency", m.min_token_frequency, 1);
    k.range("model.buckets", m.buckets, 1, 1 << 24);
    k.range("model.word_ngrams", m.word_ngrams, 1, 5);
    if m.char_ngram_max != 0 {
        k.range("model.char_ngram_max", m.char_ngram_max, 1, 8);
        if m.char_ngram_min == 0 || m.char_ngram_min > m.char_ngram_max {
            k.fail(
                "model.char_ngram_min",
                format!(
                    "must be between 1 and model.char_ngram_max ({}), got {}",
                    m.char_ngram_max, m.char_ngram_min
                ),
            );
        }
    }
    k.range("model.max_tokens", m.max_tokens, 1, 100_000);

    let t = &c.train;
    k.range("train.epochs", t.epochs, 1, 10_000);
    k.range("train.batch_size", t.batch_size, 1, 1_000_000);
    k.positive("train.learning_rate", t.learning_rate);
    k.non_negative("train.weight_decay", t.weight_decay);
    if !(t.dropout.is_finite() && (0.0..1.0).contains(&t.dropout)) {
        k.fail(
            "train.dropout",
            format!("must be >= 0 and < 1, got {}", t.dropout),
        );
    }
    k.range("train.threads", t.threads, 0, 1024);

    let s = &c.server;
    if s.bind.trim().is_empty() || s.bind.chars().any(char::is_whitespace) {
        k.fail(
            "server.bind",
            format!("must be an address or host name, got {:?}", s.bind),
        );
    }
    k.range("server.workers", s.workers, 1, 256);
    k.range("server.inference_threads", s.inference_threads, 1, 256);
    k.range("server.max_body_bytes", s.max_body_bytes, 1, 1 << 30);
    k.range("server.max_batch_texts", s.max_batch_texts, 1, 1_000_000);
    k.range(
        "server.max_inflight_texts",
        s.max_inflight_texts,
        s.max_batch_texts,
        100_000_000,
    );
    k.range(
        "server.shutdown_timeout_secs",
        s.shutdown_timeout_secs,
        1,
        3600,
    );

    let d = &c.drift;
    k.range("drift.check_every_secs", d.check_every_secs, 1, 86_400 * 7);
    k.range(
        "drift.check_every_samples",
        d.check_every_samples,
        1,
        100_000_000,
    );
    k.range(
        "drift.min_check_interval_secs",
        d.min_check_interval_secs,
        0,
        86_400,
    );
    k.range("drift.window", d.window, 10, 1_000_000);
    k.range("drift.min_samples", d.min_samples, 1, d.window.max(1));
    for (i, p) in d.reference.iter().enumerate() {
        k.path(&format!("drift.reference[{i}]"), p);
    }
    k.range("drift.baseline_sample", d.baseline_sample, 10, 100_000);
    k.positive("drift.psi_threshold", d.psi_threshold);
    k.range(
        "drift.js_distance_threshold",
        d.js_distance_threshold,
        1e-9,
        1.0,
    );
    k.range("drift.chi2_p_value", d.chi2_p_value, 1e-300, 0.5);
    k.positive("drift.mean_shift_threshold", d.mean_shift_threshold);
    k.range("drift.mmd_p_value", d.mmd_p_value, 1e-300, 0.5);
    k.range("drift.mmd_permutations", d.mmd_permutations, 10, 100_000);
    // A permutation test cannot give a p-value below 1 / (1 + permutations).
    let floor = 1.0 / (1.0 + d.mmd_permutations as f64);
    if d.mmd_p_value <= floor {
        k.fail(
            "drift.mmd_p_value",
            format!(
                "must be above 1 / (1 + drift.mmd_permutations) = {floor:.6}, or the MMD test can never fire (raise mmd_permutations or mmd_p_value)"
            ),
        );
    }
    k.range("drift.mmd_max_samples", d.mmd_max_samples, 10, 20_000);
    k.range(
        "drift.length_ks_threshold",
        d.length_ks_threshold,
        1e-9,
        1.0,
    );
    k.range("drift.oov_ks_threshold", d.oov_ks_threshold, 1e-9, 1.0);
    k.range("drift.reports_kept", d.reports_kept, 1, 1_000_000);

    let r = &c.retrain;
    k.range("retrain.cooldown_secs", r.cooldown_secs, 0, 86_400 * 365);
    k.range("retrain.holdout_share", r.holdout_share, 0.0, 0.9);
    if r.recent_weights.is_empty() {
        k.fail(
            "retrain.recent_weights",
            "must list at least one weight".into(),
        );
    }
    for w in &r.recent_weights {
        if !(w.is_finite() && *w > 0.0 && *w <= 1000.0) {
            k.fail(
                "retrain.recent_weights",
                format!("each weight must be above 0 and at most 1000, got {w}"),
            );
            break;
        }
    }
    k.range(
        "retrain.recent_weight_tolerance",
        r.recent_weight_tolerance,
        0.0,
        1.0,
    );
    k.range("retrain.threads", r.threads, 1, 1024);
    k.range("retrain.nice", r.nice, 0, 19);
    k.range("train.selection_share", c.train.selection_share, 0.01, 0.5);

    let gate = &c.gate;
    k.range("gate.max_val_drop", gate.max_val_drop, 0.0, 1.0);
    k.range("gate.min_holdout_gain", gate.min_holdout_gain, -1.0, 1.0);
    k.range(
        "gate.min_val_macro_recall",
        gate.min_val_macro_recall,
        0.0,
        1.0,
    );
    k.at_least("gate.min_holdout_rows", gate.min_holdout_rows, 1);
    if !(gate.holdout_max_origin_share > 0.0 && gate.holdout_max_origin_share <= 1.0) {
        k.fail(
            "gate.holdout_max_origin_share",
            format!(
                "must be above 0 and at most 1, got {}",
                gate.holdout_max_origin_share
            ),
        );
    }
    k.range(
        "gate.min_label_agreement",
        gate.min_label_agreement,
        0.0,
        1.0,
    );

    if let Some(p) = &c.admin.token_file {
        k.path("admin.token_file", p);
    }
    if let Some(p) = &c.feedback.token_file {
        k.path("feedback.token_file", p);
    }
    k.range(
        "feedback.max_source_chars",
        c.feedback.max_source_chars,
        1,
        100_000,
    );
    k.at_least("feedback.max_store_bytes", c.feedback.max_store_bytes, 1);
    let cl = &c.cluster;
    if cl.publish_inbox && cl.nats_url.is_none() {
        k.fail(
            "cluster.publish_inbox",
            "needs cluster.nats_url: the watched folder's rows are published to its input stream"
                .to_string(),
        );
    }
    if cl.nats_url.is_some() {
        k.range("cluster.ack_wait_secs", cl.ack_wait_secs, 1, 3600);
        k.range("cluster.max_deliver", cl.max_deliver, 1, 100);
        k.range("cluster.batch", cl.batch, 1, 10_000);
        if let Some(p) = &cl.credentials_file {
            k.path("cluster.credentials_file", p);
        }
        k.range("cluster.lease_ttl_secs", cl.lease_ttl_secs, 3, 3600);
        k.range(
            "cluster.champion_poll_secs",
            cl.champion_poll_secs,
            1,
            86_400,
        );
        k.range("cluster.max_in_flight", cl.max_in_flight, 1, 100_000);
        if cl.max_in_flight < cl.batch {
            k.fail(
                "cluster.max_in_flight",
                format!(
                    "must be at least cluster.batch = {} (a fetch cannot hold more than the \
                     consumer lets out unacknowledged), got {}",
                    cl.batch, cl.max_in_flight
                ),
            );
        }
        let needed = cl
            .ack_wait_secs
            .saturating_mul(cl.max_deliver.max(0) as u64)
            + 60;
        if cl.duplicate_window_secs < needed {
            k.fail(
                "cluster.duplicate_window_secs",
                format!(
                    "must be at least ack_wait_secs * max_deliver + 60 = {needed} (a message \
                     delivered again after that window would be scored twice), got {}",
                    cl.duplicate_window_secs
                ),
            );
        } else if cl.duplicate_window_secs > MAX_DUPLICATE_WINDOW_SECS {
            // The stream keeps every message id of the window, and sends the window to the
            // server in nanoseconds, which overflow past a few hundred years. The longest
            // redelivery span allowed above (3600 s * 100 deliveries) fits in a week.
            k.fail(
                "cluster.duplicate_window_secs",
                format!(
                    "must be at most {MAX_DUPLICATE_WINDOW_SECS} (a week), got {}",
                    cl.duplicate_window_secs
                ),
            );
        }
        // 0 sends none; any other share is every round(1 / share)-th observation.
        k.range("cluster.observation_share", cl.observation_share, 0.0, 1.0);
        for (key, name) in [
            ("cluster.input_stream", &cl.input_stream),
            ("cluster.output_stream", &cl.output_stream),
            ("cluster.consumer", &cl.consumer),
            ("cluster.lease_bucket", &cl.lease_bucket),
        ] {
            if name.is_empty() || name.contains(|ch: char| ch.is_whitespace() || ".*>".contains(ch))
            {
                k.fail(
                    key,
                    format!("must be a name without spaces, '.', '*' or '>', got {name:?}"),
                );
            }
        }
        for (key, subject) in [
            ("cluster.input_subject", &cl.input_subject),
            ("cluster.output_subject", &cl.output_subject),
            ("cluster.rejected_subject", &cl.rejected_subject),
            ("cluster.observations_subject", &cl.observations_subject),
        ] {
            if subject.is_empty() || subject.contains(char::is_whitespace) {
                k.fail(
                    key,
                    format!("must be a NATS subject without spaces, got {subject:?}"),
                );
            }
        }
        if cl.input_subject == cl.output_subject {
            k.fail(
                "cluster.output_subject",
                "must differ from cluster.input_subject".into(),
            );
        }
    }
    // The filter is parsed as the daemon parses it at start, so a bad one is refused here
    // with its key rather than by every command afterwards.
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.logging.level) {
        k.fail(
            "logging.level",
            format!(
                "must be a tracing filter such as \"info\" or \"info,sentimentd_model=debug\" \
                 ({e}), got {:?}",
                c.logging.level
            ),
        );
    }
    if let Some(uri) = &c.tracking.mlflow_uri
        && !(uri.starts_with("http://") || uri.starts_with("https://"))
    {
        k.fail(
            "tracking.mlflow_uri",
            format!("must be an http:// or https:// URL, got {uri:?}"),
        );
    }
    if c.tracking.experiment.trim().is_empty() {
        k.fail("tracking.experiment", "must not be empty".to_string());
    }
    if c.tracking.registered_model.trim().is_empty() {
        k.fail("tracking.registered_model", "must not be empty".to_string());
    }
    k.range("tracking.keep_runs", c.tracking.keep_runs, 1, 1_000_000);
    k.range(
        "tracking.record_max_attempts",
        c.tracking.record_max_attempts,
        1,
        1000,
    );

    let rep = &c.reputation;
    if rep.source_columns.iter().any(|c| c.trim().is_empty()) {
        k.fail(
            "reputation.source_columns",
            "column names must not be empty".to_string(),
        );
    }
    for (i, name) in rep.sources.iter().enumerate() {
        let key = format!("reputation.sources[{i}]");
        if name.trim().is_empty() || name.chars().count() > crate::MAX_SOURCE_CHARS {
            k.fail(
                &key,
                format!(
                    "must be 1 to {} characters, got {name:?}",
                    crate::MAX_SOURCE_CHARS
                ),
            );
        } else if crate::RESERVED_SOURCES.contains(&name.as_str()) {
            k.fail(
                &key,
                format!("{name:?} is reserved (rows of untracked sources, rows without a source)"),
            );
        } else if rep.sources[..i].contains(name) {
            k.fail(&key, format!("{name:?} is listed twice"));
        }
    }
    k.range("reputation.sources", rep.sources.len(), 0, 1000);
    k.range("reputation.max_sources", rep.max_sources, 1, 1000);
    k.range("reputation.bucket_secs", rep.bucket_secs, 60, 86_400 * 31);
    k.range("reputation.history_buckets", rep.history_buckets, 2, 1000);
    k.positive("reputation.spike_z", rep.spike_z);
    k.range(
        "reputation.spike_min_increase",
        rep.spike_min_increase,
        0.0,
        1.0,
    );
    k.at_least("reputation.spike_min_texts", rep.spike_min_texts, 1);
    if rep.time_column.trim().is_empty() {
        k.fail("reputation.time_column", "must not be empty".to_string());
    }
    k.range("reputation.save_every_secs", rep.save_every_secs, 1, 86_400);

    let g = &c.ingest;
    let folders = [
        ("ingest.inbox", &g.inbox),
        ("ingest.outbox", &g.outbox),
        ("ingest.archive", &g.archive),
        ("ingest.rejected", &g.rejected),
        ("ingest.processing", &g.processing),
        ("ingest.journal", &g.journal),
    ];
    for (key, path) in folders {
        k.path(key, path);
    }
    k.path("ingest.labelled_dir", &g.labelled_dir);
    let normalised: Vec<PathBuf> = folders.iter().map(|(_, p)| lexical(p)).collect();
    for i in 0..folders.len() {
        for j in 0..i {
            if normalised[i] == normalised[j] {
                k.fail(
                    folders[i].0,
                    format!(
                        "must differ from {} (both are {})",
                        folders[j].0,
                        folders[i].1.display()
                    ),
                );
            }
        }
    }
    // Outputs written inside the watched inbox would be picked up again as new batches.
    for i in 1..folders.len() {
        if normalised[i] != normalised[0] && normalised[i].starts_with(&normalised[0]) {
            k.fail(
                folders[i].0,
                format!(
                    "must not be inside ingest.inbox ({})",
                    folders[0].1.display()
                ),
            );
        }
    }
    // The labelled store inside a folder the batch pipeline moves files in and out of would
    // have its files claimed, archived or cleared as batches (at start the processing folder
    // is recovered into the inbox).
    let labelled = lexical(&g.labelled_dir);
    if let Some((key, path)) = folders
        .iter()
        .zip(&normalised)
        .find(|(_, n)| labelled.starts_with(n))
        .map(|((key, path), _)| (key, path))
    {
        k.fail(
            "ingest.labelled_dir",
            format!("must not be {key} ({}) or inside it", path.display()),
        );
    }
    k.range("ingest.settle_ms", g.settle_ms, 0, 600_000);
    k.range("ingest.chunk_rows", g.chunk_rows, 1, 10_000_000);
    k.at_least("ingest.max_file_bytes", g.max_file_bytes, 1);
    k.range("ingest.retry_initial_ms", g.retry_initial_ms, 1, 86_400_000);
    k.range(
        "ingest.retry_max_ms",
        g.retry_max_ms,
        g.retry_initial_ms,
        86_400_000,
    );
    k.range("ingest.max_attempts", g.max_attempts, 1, 1000);

    if c.logging.level.trim().is_empty() {
        k.fail(
            "logging.level",
            "must be a tracing filter such as \"info\"".to_string(),
        );
    }

    k.issues
}

/// Drops `.` components so `state/inbox` and `./state/inbox/` compare equal; `..` is kept
/// because resolving it lexically is wrong in the presence of symlinks.
pub fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}
