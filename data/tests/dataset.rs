use sentimentd_data::{DataError, Dataset, Label, load_dataset};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn bundled(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/tweeteval")
        .join(name)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, content) {
        panic!("write {}: {e}", path.display());
    }
    path
}

/// A temp directory, its failure a [`DataError`] like the rest of these tests'.
fn temp_dir() -> Result<tempfile::TempDir, DataError> {
    tempfile::tempdir().map_err(|source| DataError::Io {
        path: "tmp".into(),
        source,
    })
}

#[test]
fn bundled_train_and_val_load_with_documented_counts() -> Result<(), DataError> {
    let t0 = Instant::now();
    let train = load_dataset(&[bundled("train.csv")], 1000)?;
    let elapsed = t0.elapsed();
    println!(
        "loaded {} training rows in {elapsed:?} (debug build of this crate)",
        train.len()
    );
    assert_eq!(train.len(), 45_615);
    assert!(train.rejected.is_empty(), "{:?}", train.rejected.first());
    let d = train.label_distribution();
    assert_eq!(d.counts, [7_093, 20_673, 17_849]);
    assert_eq!(d.count(Label::Neutral), 20_673);
    assert_eq!(train.fingerprint.len(), 64);
    assert!(elapsed.as_secs_f64() < 2.0, "{elapsed:?}");

    let val = load_dataset(&[bundled("val.csv")], 1000)?;
    assert_eq!(val.len(), 2_000);
    assert_eq!(val.label_distribution().counts, [312, 869, 819]);
    assert_ne!(val.fingerprint, train.fingerprint);
    Ok(())
}

#[test]
fn text_stats_and_frame() -> Result<(), DataError> {
    let val = load_dataset(&[bundled("val.csv")], 1000)?;
    let df = val.to_frame()?;
    assert_eq!(df.height(), 2_000);
    assert_eq!(df.width(), 4);
    let stats = val.text_stats()?;
    println!("val text lengths: {stats:?}");
    assert_eq!(stats.all.count, 2_000);
    assert!(stats.all.mean > 20.0 && stats.all.mean < 200.0);
    assert!(stats.all.median <= stats.all.p95);
    assert!(f64::from(stats.all.max) >= stats.all.p95);
    let per: usize = stats.per_label.iter().flatten().map(|s| s.count).sum();
    assert_eq!(per, 2_000);

    let small = Dataset::from_examples(
        vec!["ab".into(), "abcd".into(), "abcdef".into()],
        vec![Label::Positive, Label::Positive, Label::Negative],
    );
    let s = small.text_stats()?;
    assert_eq!(s.all.count, 3);
    assert!((s.all.mean - 4.0).abs() < 1e-9);
    assert!((s.all.median - 4.0).abs() < 1e-9);
    assert_eq!((s.all.min, s.all.max), (2, 6));
    assert_eq!(s.per_label[Label::Neutral.index()], None);
    assert_eq!(
        s.per_label[Label::Positive.index()]
            .as_ref()
            .map(|p| p.mean),
        Some(3.0)
    );
    Ok(())
}

#[test]
fn fingerprint_depends_on_content_not_spelling() -> Result<(), DataError> {
    let dir = temp_dir()?;
    let a = write(dir.path(), "a.csv", "text,label\nhello,positive\nbye,0\n");
    let b = write(
        dir.path(),
        "b.csv",
        "\"text\",\"LABEL\"\r\n\"hello\",2\r\nbye,Negative\r\n",
    );
    let c = write(dir.path(), "c.csv", "text,label\nhello,positive\nbye,1\n");
    let fa = load_dataset(std::slice::from_ref(&a), 100)?.fingerprint;
    let fb = load_dataset(&[b], 100)?.fingerprint;
    let fc = load_dataset(&[c], 100)?.fingerprint;
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);

    let two = load_dataset(&[a.clone(), a.clone()], 100)?;
    assert_eq!(two.len(), 4);
    assert_eq!(two.sources, [a.clone(), a]);
    Ok(())
}

#[test]
fn rejected_rows_are_kept_and_all_rejected_is_an_error() -> Result<(), DataError> {
    let dir = temp_dir()?;
    let some = write(
        dir.path(),
        "some.csv",
        "text,label\ngood,positive\n,negative\nfine,\nok,neutral\n",
    );
    let ds = load_dataset(std::slice::from_ref(&some), 100)?;
    assert_eq!(ds.texts, ["good", "ok"]);
    assert_eq!(ds.labels, [Label::Positive, Label::Neutral]);
    let lines: Vec<(u64, &str)> = ds
        .rejected
        .iter()
        .map(|(_, r)| (r.line, r.reason.code()))
        .collect();
    assert_eq!(lines, [(3, "empty_text"), (4, "missing_label")]);
    assert_eq!(ds.rejected[0].0, some);

    let none = write(dir.path(), "none.csv", "text,label\n,positive\nx,bogus\n");
    let err = load_dataset(&[none], 100).err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.ends_with("none.csv: no usable rows (2 rejected; first: line 2: empty text)"),
        "{err}"
    );
    assert!(matches!(load_dataset(&[], 100), Err(DataError::NoInput)));
    Ok(())
}
