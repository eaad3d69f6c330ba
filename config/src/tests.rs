use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/sentimentd/test.toml"))
}

#[test]
fn empty_document_is_the_default() {
    assert_eq!(parse("").ok(), Some(Config::default()));
    assert_eq!(Config::load_or_default(None).ok(), Some(Config::default()));
}

#[test]
fn default_is_valid() {
    assert!(Config::default().validate().is_ok());
}

#[test]
fn documented_file_is_exactly_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sentimentd.toml");
    let config = Config::load(&path).map_err(|e| e.to_string());
    assert_eq!(config, Ok(Config::default()));
}

#[test]
fn documented_file_mentions_every_key() {
    // `to_toml_string` lists every key that has a value; the documented file must have each
    // of them (admin.token_file and tracking.mlflow_uri are commented out: their default is
    // "unset").
    let documented = include_str!("../sentimentd.toml");
    let effective = Config::default().to_toml_string();
    for line in effective.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            assert!(
                documented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "key {key} is not documented in sentimentd.toml"
            );
        }
    }
    assert!(documented.contains("# token_file = "));
    assert!(documented.contains("# mlflow_uri = "));
}

#[test]
fn effective_config_round_trips() {
    let mut config = Config::default();
    config.admin.token_file = Some("/etc/sentimentd/admin.token".into());
    config.tracking.mlflow_uri = Some("http://127.0.0.1:5000".into());
    config.data.train.push("more.csv".into());
    let text = config.to_toml_string();
    assert_eq!(parse(&text).map_err(|e| e.to_string()), Ok(config));
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let text = "[server]\nport = 9000\nbogus = 1\n";
    let err = parse(text).err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        msg.starts_with(
            "/etc/sentimentd/test.toml:3:1: unknown key `bogus` in [server] (expected one of: bind, port,"
        ),
        "{msg}"
    );
    assert!(msg.contains("test_faults"), "{msg}");
    match err {
        Some(ConfigError::UnknownKey {
            key,
            section,
            location,
            ..
        }) => {
            assert_eq!(key, "bogus");
            assert_eq!(section, "[server]");
            assert_eq!(location.line, Some(3));
            assert_eq!(location.column, Some(1));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_section_is_reported_at_top_level() {
    let msg = parse_error("\n[sever]\nport = 1\n");
    assert!(
        msg.starts_with("/etc/sentimentd/test.toml:2:2: unknown key `sever` in the top level (expected one of: paths, data, model, train, server, ingest, logging, drift, retrain, gate, admin, feedback, tracking, reputation, transformer, cluster)"),
        "{msg}"
    );
}

#[test]
fn unknown_key_in_dotted_and_inline_forms() {
    let msg = parse_error("train.epochz = 3\n");
    assert!(
        msg.contains(":1:7: unknown key `epochz` in [train]"),
        "{msg}"
    );
    let msg = parse_error("model = { kind = \"fast\", dim = 3 }\n");
    assert!(msg.contains(":1:26: unknown key `dim` in [model]"), "{msg}");
}

#[test]
fn type_error_names_line_and_key() {
    let text = "# comment\n[train]\nseed = 1\nepochs = \"many\"\n";
    let err = parse(text).err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        msg.starts_with("/etc/sentimentd/test.toml:4:10: invalid value for `train.epochs`: "),
        "{msg}"
    );
    assert!(
        matches!(err, Some(ConfigError::InvalidValue { ref key, .. }) if key == "train.epochs")
    );
}

#[test]
fn bad_enum_and_negative_integer_and_array_item() {
    let msg = parse_error("[model]\nkind = \"huge\"\n");
    assert!(
        msg.contains(":2:8: invalid value for `model.kind`: unknown variant `huge`"),
        "{msg}"
    );
    let msg = parse_error("[server]\nport = -3\n");
    assert!(
        msg.contains(":2:8: invalid value for `server.port`"),
        "{msg}"
    );
    let msg = parse_error("[data]\ntrain = [\"a.csv\",\n  7]\n");
    assert!(
        msg.contains(":3:3: invalid value for `data.train[1]`"),
        "{msg}"
    );
}

#[test]
fn syntax_error_has_line() {
    let msg = parse_error("[server\nport = 1\n");
    assert!(msg.starts_with("/etc/sentimentd/test.toml:1:"), "{msg}");
    assert!(msg.contains("TOML syntax error"), "{msg}");
}

#[test]
fn validation_error_names_key_and_line() {
    let text = "[train]\nepochs = 3\nlearning_rate = -1.0\n";
    let msg = parse_error(text);
    assert_eq!(
        msg,
        "/etc/sentimentd/test.toml:3:17: train.learning_rate must be > 0, got -1"
    );
}

#[test]
fn validation_reports_every_issue() {
    let mut c = Config::default();
    c.model.embedding_dim = 0;
    c.train.batch_size = 0;
    c.train.learning_rate = f64::NAN;
    c.server.workers = 0;
    c.ingest.settle_ms = 600_001;
    c.model.char_ngram_min = 6;
    c.model.char_ngram_max = 5;
    let Err(ConfigError::Invalid { issues }) = c.validate() else {
        panic!("expected validation errors");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "model.embedding_dim",
            "model.char_ngram_min",
            "train.batch_size",
            "train.learning_rate",
            "server.workers",
            "ingest.settle_ms",
        ]
    );
    assert_eq!(
        issues[0].to_string(),
        "model.embedding_dim must be between 1 and 1024, got 0"
    );
}

#[test]
fn char_ngrams_can_be_disabled_and_port_zero_is_allowed() {
    let c = parse("[model]\nchar_ngram_max = 0\nchar_ngram_min = 0\n[server]\nport = 0\n");
    assert!(c.is_ok(), "{c:?}");
    let msg = parse_error("[model]\nchar_ngram_max = 9\n");
    assert!(
        msg.contains(":2:18: model.char_ngram_max must be between 1 and 8, got 9"),
        "{msg}"
    );
}

/// Retention trims the labelled store to `labelled_max_bytes`; a feedback limit at or below
/// it refused feedback for good once the store passed it (the old defaults, 1 GiB under
/// 2 GiB, did). Said only where feedback is on; a warning, since files written for earlier
/// versions spell the old defaults out.
#[test]
fn a_feedback_limit_under_what_retention_keeps_is_warned_about() {
    let on = "[admin]\ntoken_file = \"t\"\n";
    assert_eq!(warned(on), "", "the defaults agree");
    let text =
        format!("{on}[ingest]\nlabelled_max_bytes = 1000\n[feedback]\nmax_store_bytes = 1000\n");
    let msg = warned(&text);
    assert!(
        msg.contains("feedback.max_store_bytes should be above [ingest] labelled_max_bytes (1000)")
            && msg.contains("e.g. 1500"),
        "{msg}"
    );
    // Feedback off, or no size retention: nothing to agree with.
    assert_eq!(
        warned("[ingest]\nlabelled_max_bytes = 1000\n[feedback]\nmax_store_bytes = 10\n"),
        ""
    );
    let unbounded =
        format!("{on}[ingest]\nlabelled_max_bytes = 0\n[feedback]\nmax_store_bytes = 10\n");
    assert_eq!(warned(&unbounded), "");
}

/// TOML spells NaN, and NaN compares false both ways: a range check must still refuse it.
#[test]
fn a_nan_is_refused_where_a_range_is_required() {
    for (table, key) in [
        ("train", "selection_share"),
        ("gate", "max_val_drop"),
        ("retrain", "holdout_share"),
        ("drift", "chi2_p_value"),
    ] {
        let msg = parse_error(&format!("[{table}]\n{key} = nan\n"));
        assert!(
            msg.contains(&format!("{table}.{key} must be between")) && msg.contains("got NaN"),
            "{table}.{key}: {msg}"
        );
    }
}

/// The first retrain holds out ceil(min_new_rows * holdout_share) rows; fewer than the gate
/// needs and every such run is rejected, its rows spent.
#[test]
fn a_retrain_holdout_smaller_than_the_gate_needs_is_warned_about() {
    let short = warned("[retrain]\nmin_new_rows = 200\n");
    for part in [
        "retrain.min_new_rows",
        "retrain.holdout_share",
        "gate.min_holdout_rows = 50",
        "ceil(200 * 0.2) = 40",
        "raise retrain.min_new_rows to 250",
        "raise retrain.holdout_share to 0.25",
        "lower gate.min_holdout_rows to 40",
    ] {
        assert!(short.contains(part), "{part:?} missing in {short}");
    }
    let none = warned("[retrain]\nholdout_share = 0.0\n");
    assert!(
        none.contains("retrain.holdout_share should be above 0 while retrain.enabled = true"),
        "{none}"
    );
    // Exactly enough, a smaller gate, or no retraining at all: nothing to say.
    for ok in [
        "",
        "[retrain]\nmin_new_rows = 250\n",
        "[retrain]\nmin_new_rows = 200\n[gate]\nmin_holdout_rows = 40\n",
        "[retrain]\nenabled = false\nmin_new_rows = 10\nholdout_share = 0.0\n",
    ] {
        assert_eq!(warned(ok), "", "{ok}");
    }
}

/// The error of a config that must not parse, as shown; empty if it parses.
fn parse_error(text: &str) -> String {
    parse(text).err().map(|e| e.to_string()).unwrap_or_default()
}

/// The warnings of a valid config, one per line.
fn warned(text: &str) -> String {
    let c = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let lines: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    lines.join("\n")
}

#[test]
fn transformer_settings_are_validated_with_their_keys() {
    let cfg = parse("[model]\nkind = \"transformer\"\n[transformer]\nmax_batch = 4\n");
    assert!(cfg.is_ok(), "{:?}", cfg.err().map(|e| e.to_string()));
    let text = "[transformer]\nencoder = \"../x\"\nmax_seq_len = 2\nhead_l2 = -1.0\n";
    let Err(ConfigError::Invalid { issues }) = parse(text) else {
        panic!("expected validation errors");
    };
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    for key in [
        "transformer.encoder",
        "transformer.max_seq_len",
        "transformer.head_l2",
    ] {
        assert!(
            shown.iter().any(|s| s.contains(key)),
            "{key} missing in {shown:?}"
        );
    }
}

#[test]
fn finetune_layers_is_auto_or_a_number_and_a_word_is_refused_with_its_line() {
    let auto = parse("[transformer]\nfinetune_layers = \"auto\"\n").map(|c| c.transformer);
    assert_eq!(
        auto.map(|t| t.finetune_layers).ok(),
        Some(FineTuneLayers::Auto)
    );
    let four = parse("[transformer]\nfinetune_layers = 4\n").map(|c| c.transformer);
    assert_eq!(
        four.map(|t| t.finetune_layers).ok(),
        Some(FineTuneLayers::Fixed(4))
    );
    let msg = parse_error("[transformer]\n\nfinetune_layers = \"most\"\n");
    assert!(msg.contains(":3:"), "{msg}");
    assert!(msg.contains("finetune_layers"), "{msg}");
    assert!(msg.contains("\"auto\" or a number of layers"), "{msg}");
    let Err(ConfigError::Invalid { issues }) =
        parse("[transformer]\nfinetune_layers = 65\ntime_budget_mins = 0\n")
    else {
        panic!("expected validation errors");
    };
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    for key in [
        "transformer.finetune_layers",
        "transformer.time_budget_mins",
    ] {
        assert!(
            shown.iter().any(|s| s.contains(key)),
            "{key} missing in {shown:?}"
        );
    }
}

#[test]
fn publishing_the_inbox_needs_a_nats_server() {
    let Err(ConfigError::Invalid { issues }) = parse("[cluster]\npublish_inbox = true\n") else {
        panic!("expected a validation error");
    };
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.contains("cluster.publish_inbox") && s.contains("nats_url")),
        "{shown:?}"
    );
    let ok = parse("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\npublish_inbox = true\n");
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
}

/// Both reach the NATS server or the topology as arithmetic that breaks out of range: a
/// share becomes `round(1 / share)`, a window nanoseconds.
#[test]
fn observation_share_and_duplicate_window_are_bounded() {
    let cluster = |line: &str| {
        parse_error(&format!(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n{line}\n"
        ))
    };
    for share in ["nan", "-3.0", "inf", "1.5"] {
        let msg = cluster(&format!("observation_share = {share}"));
        assert!(
            msg.contains(":3:21: cluster.observation_share must be between 0 and 1"),
            "{share}: {msg}"
        );
    }
    let msg = cluster("duplicate_window_secs = 100000000000");
    assert!(
        msg.contains("cluster.duplicate_window_secs must be at most 604800"),
        "{msg}"
    );
    for ok in [
        "observation_share = 0.0",
        "observation_share = 1.0",
        "duplicate_window_secs = 604800",
    ] {
        assert_eq!(cluster(ok), "", "{ok}");
    }
}

#[test]
fn ingest_folders_must_be_distinct_and_outside_inbox() {
    let text = "[ingest]\ninbox = \"in\"\noutbox = \"./in/\"\narchive = \"in/archive\"\n";
    let Err(ConfigError::Invalid { issues }) = parse(text) else {
        panic!("expected validation errors");
    };
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "/etc/sentimentd/test.toml:3:10: ingest.outbox must differ from ingest.inbox (both are ./in/)",
            "/etc/sentimentd/test.toml:4:11: ingest.archive must not be inside ingest.inbox (in)",
        ]
    );
}

#[test]
fn missing_file_names_the_path() {
    let msg = Config::load(Path::new("/nonexistent/sentimentd.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.starts_with("/nonexistent/sentimentd.toml: cannot read config file:"),
        "{msg}"
    );
}

#[test]
fn resolve_paths_makes_relative_paths_absolute() {
    let mut c = Config::default();
    c.ingest.outbox = PathBuf::from("/srv/out");
    c.resolve_paths(Path::new("/var/lib/sentimentd"));
    assert_eq!(
        c.paths.model_store,
        Path::new("/var/lib/sentimentd/state/models")
    );
    assert_eq!(
        c.data.train,
        [PathBuf::from(
            "/var/lib/sentimentd/data/datasets/tweeteval/train.csv"
        )]
    );
    assert_eq!(c.ingest.inbox, Path::new("/var/lib/sentimentd/state/inbox"));
    assert_eq!(c.ingest.outbox, Path::new("/srv/out"));
    assert_eq!(
        c.ingest.labelled_dir,
        Path::new("/var/lib/sentimentd/state/labelled")
    );
    assert!(c.validate().is_ok());
}
