//! The watched folder against a hostile or unlucky inbox, through the real binary: files are
//! claimed before they are read, entries that are not plain files are refused and reported
//! once, failures back off and end in quarantine, output fields are safe to open in a
//! spreadsheet, and the folders must share a filesystem.

mod common;

use common::{Daemon, csv_text, names, read_csv};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

const SLOW_TEXT: &str = "__sentimentd_test_fault_slow__";

fn error_txt(d: &Daemon, name: &str) -> String {
    std::fs::read_to_string(d.root().join("rejected").join(format!("{name}.error.txt")))
        .unwrap_or_else(|e| panic!("{name}.error.txt: {e}"))
}

#[test]
fn symlinks_hard_links_fifos_and_directories_are_refused_once_and_never_read() {
    let d = Daemon::start();
    let outside = d.root().join("secret.txt");
    std::fs::write(&outside, "password,hunter2\n").expect("secret");
    let linked = d.root().join("linked.csv");
    std::fs::write(&linked, "text\nshared\n").expect("linked");
    let inbox = d.inbox();
    std::os::unix::fs::symlink(&outside, inbox.join("link.csv")).expect("symlink");
    std::fs::hard_link(&linked, inbox.join("hard.csv")).expect("hard link");
    std::fs::create_dir(inbox.join("dir.csv")).expect("dir");
    let status = std::process::Command::new("mkfifo")
        .arg(inbox.join("pipe.csv"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // A plain file after them: a FIFO must not block the reader.
    d.drop_file("ok.csv", b"text\nthis is fine\n");
    d.wait_processed("ok.csv", Duration::from_secs(30));
    d.wait_for("the refusals", Duration::from_secs(30), || {
        d.metric(r#"sentiment_batches_total{outcome="refused"}"#) >= 4.0
    });
    assert_eq!(names(&inbox), Vec::<String>::new(), "inbox is left clean");
    for (name, why) in [
        ("link.csv", "symbolic link"),
        ("hard.csv", "2 hard links"),
        ("dir.csv", "directory"),
        ("pipe.csv", "FIFO"),
    ] {
        let report = error_txt(&d, name);
        assert!(report.contains(why), "{name}: {report}");
        let moved = std::fs::symlink_metadata(d.root().join("rejected").join(name));
        assert!(moved.is_ok(), "{name} moved to rejected/");
        assert!(
            !d.root().join("outbox").join(name).exists(),
            "{name} was never scored"
        );
    }
    // The link's target is untouched and nothing of it leaked into any output.
    assert_eq!(
        std::fs::read_to_string(&outside).ok().as_deref(),
        Some("password,hunter2\n")
    );
    for dir in ["outbox", "rejected"] {
        for f in names(&d.root().join(dir)) {
            let p = d.root().join(dir).join(&f);
            if p.is_file() && !p.is_symlink() {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                assert!(!text.contains("hunter2"), "{dir}/{f} leaks the secret");
            }
        }
    }
    assert_eq!(
        d.metric(r#"sentiment_batches_total{outcome="refused"}"#),
        4.0,
        "each refused once"
    );
    assert_eq!(names(&d.root().join("outbox")), ["ok.csv"]);
    let logs = d.logs();
    assert_eq!(logs.matches("inbox entry refused").count(), 4, "{logs}");
}

#[test]
fn a_file_rewritten_in_the_inbox_after_its_claim_is_a_new_batch() {
    let d = Daemon::start_with("test_faults = true", "chunk_rows = 5", "", "");
    // Slow rows keep the first batch in flight long enough to write the inbox path again.
    let first = csv_text("id,text", (0..20).map(|i| format!("a{i},{SLOW_TEXT}")));
    d.drop_file("export.csv", first.as_bytes());
    d.wait_claimed("export.csv");
    d.drop_file("export.csv", b"id,text\nb0,second export\nb1,also second\n");
    d.wait_for("both batches", Duration::from_secs(60), || {
        names(&d.root().join("archive")).len() == 2
            && names(&d.root().join("processing")).is_empty()
    });
    assert_eq!(
        names(&d.root().join("outbox")),
        ["export.1.csv", "export.csv"]
    );
    let ids = |name: &str| -> Vec<String> {
        read_csv(&d.root().join("outbox").join(name))[1..]
            .iter()
            .map(|r| r[0].clone())
            .collect()
    };
    let a = ids("export.csv");
    assert_eq!(a.len(), 20);
    assert!(a.iter().all(|id| id.starts_with('a')), "{a:?}");
    assert_eq!(ids("export.1.csv"), ["b0", "b1"]);
}

/// A writer that creates its file, then writes it in parts with pauses longer than
/// settle_ms (a slow export, a script that flushes as it goes): nothing is taken while it
/// holds the file open, and every row is scored once it closes it.
#[test]
fn a_file_held_open_by_its_writer_is_waited_for_past_the_settle_time() {
    let d = Daemon::start_with("", "", "", "");
    let path = d.inbox().join("held.csv");
    let mut f = std::fs::File::create(&path).expect("create");
    std::thread::sleep(Duration::from_millis(800));
    f.write_all(b"id,text\n1,I love this\n2,this is not bad at a")
        .expect("write");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(800));
    let untouched = ["processing", "archive", "rejected", "outbox"]
        .iter()
        .all(|dir| !d.root().join(dir).join("held.csv").exists());
    assert!(
        path.exists() && untouched,
        "taken while its writer held it open:\n{}",
        d.logs()
    );
    f.write_all(b"ll and it is terrible\n3,great\n")
        .expect("write");
    drop(f);
    d.wait_processed("held.csv", Duration::from_secs(30));
    let out = read_csv(&d.root().join("outbox/held.csv"));
    let texts: Vec<&str> = out[1..].iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        texts,
        [
            "I love this",
            "this is not bad at all and it is terrible",
            "great"
        ],
        "{}",
        d.logs()
    );
}

#[test]
fn a_file_still_written_after_its_claim_is_scored_again_whole() {
    let mut d = Daemon::configure(
        "test_faults = true",
        "chunk_rows = 2\nretry_initial_ms = 200\nretry_max_ms = 400",
        "",
        "",
    );
    // Where Linux cannot say whether a writer holds the file (not the daemon's file and no
    // CAP_LEASE, or a filesystem without leases), only the settle rule decides.
    d.spawn(&[("SENTIMENTD_TEST_NO_LEASES", "1")]);
    // A writer that pauses longer than settle_ms with the file open: the settle rule claims
    // it, then the writer goes on through its open descriptor.
    let path = d.inbox().join("slow-writer.csv");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(b"id,text\n").expect("write");
    for i in 0..10 {
        f.write_all(format!("{i},{SLOW_TEXT}\n").as_bytes())
            .expect("write");
    }
    f.flush().expect("flush");
    d.wait_claimed("slow-writer.csv");
    f.write_all(b"10,written after the claim\n")
        .expect("append");
    drop(f);
    d.wait_processed("slow-writer.csv", Duration::from_secs(60));
    let out = read_csv(&d.root().join("outbox/slow-writer.csv"));
    let ids: Vec<&str> = out[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids.len(), 11, "every row, the late one included: {ids:?}");
    assert!(ids.contains(&"10"));
    let logs = d.logs();
    assert!(
        logs.contains("the file changed after it was claimed"),
        "{logs}"
    );
}

/// A daemon with the `[ingest]` retry settings `retry` whose outbox is a plain file: every
/// attempt fails to write its output, a cause that has nothing to do with the file's content.
fn blocked_outbox_daemon(retry: &str) -> (Daemon, PathBuf) {
    let d = Daemon::start_with("", retry, "", "");
    let outbox = d.root().join("outbox");
    std::fs::remove_dir_all(&outbox).expect("remove outbox");
    std::fs::write(&outbox, "not a folder").expect("block outbox");
    (d, outbox)
}

#[test]
fn a_file_that_keeps_failing_backs_off_then_is_quarantined_with_every_error() {
    let (d, _outbox) =
        blocked_outbox_daemon("retry_initial_ms = 300\nretry_max_ms = 600\nmax_attempts = 3");
    d.drop_file("doomed.csv", b"id,text,label\n1,fine text,positive\n");
    d.wait_for("the quarantine", Duration::from_secs(30), || {
        d.root().join("rejected/doomed.csv").exists()
    });
    d.wait_processed("doomed.csv", Duration::from_secs(10));
    let report = error_txt(&d, "doomed.csv");
    for n in 1..=3 {
        assert!(report.contains(&format!("attempt {n} at ")), "{report}");
    }
    assert!(!report.contains("attempt 4"), "{report}");
    assert!(report.contains("outbox"), "names what failed: {report}");
    d.assert_metrics(&[
        (r#"sentiment_batch_attempts_total{result="failed"}"#, 3.0),
        (r#"sentiment_batches_total{outcome="quarantined"}"#, 1.0),
        (r#"sentiment_batches_total{outcome="processed"}"#, 0.0),
    ]);
    assert!(
        names(&d.root().join("labelled")).is_empty(),
        "a quarantined file delivers nothing"
    );
    // The retries backed off: 300 ms, then 600 ms (the cap).
    let logs = d.logs();
    assert!(logs.contains("retry_in_secs=0.3"), "{logs}");
    assert!(logs.contains("retry_in_secs=0.6"), "{logs}");
    assert!(logs.contains("batch file quarantined after repeated failures"));
}

#[test]
fn output_fields_a_spreadsheet_would_run_are_neutralised_and_recoverable() {
    let texts = [
        "=HYPERLINK(\"http://evil.example\",\"click\")",
        "+cmd|' /C calc'!A0",
        "-2+3 is my rating",
        "@SUM(A1:A2) wow",
        "'=already quoted",
        "'tis a fine day",
        "plain and happy",
    ];
    // A column name can carry a formula too.
    let mut input = String::from("id,text,@note\n");
    for (i, t) in texts.iter().enumerate() {
        input.push_str(&format!("-{i},\"{}\",n\n", t.replace('"', "\"\"")));
    }
    for neutralize in [true, false] {
        let d = Daemon::start_with("", &format!("neutralize_formulas = {neutralize}"), "", "");
        d.drop_file("f.csv", input.as_bytes());
        d.wait_processed("f.csv", Duration::from_secs(30));
        let out = read_csv(&d.root().join("outbox/f.csv"));
        let got: Vec<&str> = out[1..].iter().map(|r| r[1].as_str()).collect();
        if neutralize {
            for field in &got {
                assert!(
                    !field.starts_with(['=', '+', '-', '@']),
                    "{field:?} would run as a formula"
                );
            }
            // Plain numbers are left alone: an id of -3 stays a number.
            assert_eq!(out[4][0], "-3");
            assert_eq!(out[0][2], "'@note");
            assert_eq!(got[5], "'tis a fine day");
            let recovered: Vec<&str> = got
                .iter()
                .map(|f| sentimentd_data::recover_formula(f))
                .collect();
            assert_eq!(recovered, texts, "the original text is recoverable");
        } else {
            assert_eq!(got, texts);
            assert_eq!(out[0][2], "@note");
        }
    }
}

#[test]
fn folders_on_different_filesystems_stop_the_start_with_their_names() {
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs folder in /dev/shm");
    let processing = shm.path().join("processing");
    let mut d = Daemon::configure("", "", "", "");
    let config = std::fs::read_to_string(&d.config).expect("config");
    let moved = config
        .lines()
        .map(|l| {
            if l.starts_with("processing = ") {
                format!("processing = \"{}\"", processing.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&d.config, moved).expect("config");
    d.spawn_no_wait(&[]);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = d.logs();
    assert!(logs.contains("different filesystem"), "{logs}");
    assert!(logs.contains(&processing.display().to_string()), "{logs}");
    assert!(logs.contains("ingest.processing"), "{logs}");
}

/// Peak resident memory of a process, in MiB, from `/proc/<pid>/status`.
fn peak_rss_mib(d: &Daemon) -> f64 {
    let pid = d.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

#[test]
fn a_file_of_rejected_rows_or_a_huge_column_name_costs_no_more_than_a_chunk() {
    let d = Daemon::start();
    d.drop_file("warmup.csv", b"text\nwarm the model up\n");
    d.wait_processed("warmup.csv", Duration::from_secs(30));
    let before = peak_rss_mib(&d);
    // Two million records that are all rejected (empty text): a chunk used to end only
    // after `chunk_rows` accepted rows, so the whole file was held at once.
    let mut empty = b"text,other\n".to_vec();
    for _ in 0..2_000_000 {
        empty.extend_from_slice(b",\n");
    }
    d.drop_file("empty.csv", &empty);
    d.wait_processed("empty.csv", Duration::from_secs(240));
    assert_eq!(
        d.metric(r#"sentiment_batch_rows_total{outcome="rejected"}"#),
        2_000_000.0,
        "every row accounted"
    );
    let grew = peak_rss_mib(&d) - before;
    assert!(
        grew < 120.0,
        "peak RSS grew by {grew:.0} MiB for a file of {} MiB",
        empty.len() >> 20
    );
    // A 2 MiB column name, then rows whose bytes in that column are not UTF-8: each
    // rejection used to carry its own copy of the name, 300 of them in one chunk.
    let mut wide = b"text,".to_vec();
    wide.extend(std::iter::repeat_n(b'n', 2 << 20));
    wide.push(b'\n');
    for _ in 0..300 {
        wide.extend_from_slice(b"fine text,\xff\xfe\n");
    }
    d.drop_file("wide.csv", &wide);
    d.wait_processed("wide.csv", Duration::from_secs(60));
    let report = error_txt(&d, "wide.csv");
    assert!(report.contains("column 2 of the header row"), "{report}");
    assert!(report.contains("over the limit of 1024"), "{report}");
    let grew = peak_rss_mib(&d) - before;
    assert!(
        grew < 120.0,
        "peak RSS grew by {grew:.0} MiB after a file of {} MiB",
        wide.len() >> 20
    );
}

#[test]
fn a_file_that_kills_the_process_is_quarantined_after_max_attempts_starts() {
    let mut d = Daemon::configure(
        "test_faults = true",
        "max_attempts = 3\nchunk_rows = 5",
        "",
        "",
    );
    let mut content = String::from("id,text\n");
    for i in 0..50 {
        content.push_str(&format!(
            "{i},row {i} of a file that brings the process down\n"
        ));
    }
    d.drop_file("poison.csv", content.as_bytes());
    // The hook aborts the process in the middle of the file, as an OOM kill would.
    let crash = [("SENTIMENTD_TEST_CRASH_AT", "after_chunk")];
    for start in 1..=3 {
        d.spawn_no_wait(&crash);
        let status = d.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "start {start} should have crashed");
    }
    // The fourth start does not touch the file again: it is quarantined, and the daemon runs.
    d.spawn(&crash);
    d.wait_processed("poison.csv", Duration::from_secs(30));
    assert!(d.root().join("rejected/poison.csv").exists());
    let report = error_txt(&d, "poison.csv");
    for n in 1..=3 {
        assert!(report.contains(&format!("attempt {n} at ")), "{report}");
    }
    assert!(!report.contains("attempt 4"), "{report}");
    assert!(
        report.contains("the process stopped during this attempt"),
        "{report}"
    );
    assert!(!d.root().join("outbox/poison.csv").exists());
    assert_eq!(d.get("/health").status, 200);
    assert_eq!(
        d.metric(r#"sentiment_batches_total{outcome="quarantined"}"#),
        1.0
    );
}

#[test]
fn a_new_file_never_takes_a_name_a_pending_batch_will_write() {
    // The first attempt at a.csv fails (the outbox is not a folder), so its entry waits for
    // a retry, holding the names a.csv and a.csv.errors.csv.
    let (d, outbox) =
        blocked_outbox_daemon("retry_initial_ms = 1500\nretry_max_ms = 1500\nmax_attempts = 5");
    d.drop_file("a.csv", b"id,text\n1,every row of this file is fine\n");
    d.wait_for("the first attempt to fail", Duration::from_secs(30), || {
        d.metric(r#"sentiment_batch_attempts_total{result="failed"}"#) >= 1.0
    });
    // A file named like a.csv's rejection report, rejected whole (no text column).
    let intruder = b"id,body\n1,no text column here\n";
    d.drop_file("a.csv.errors.csv", intruder);
    d.wait_for("the intruder's rejection", Duration::from_secs(30), || {
        d.metric(r#"sentiment_batches_total{outcome="rejected"}"#) >= 1.0
    });
    std::fs::remove_file(&outbox).expect("unblock outbox");
    std::fs::create_dir(&outbox).expect("outbox");
    d.wait_processed("a.csv", Duration::from_secs(30));
    assert!(outbox.join("a.csv").exists());
    // a.csv had no rejected row, so its run clears its report name: that must not be the
    // rejected intruder.
    let rejected = d.root().join("rejected");
    let kept: Vec<String> = names(&rejected)
        .into_iter()
        .filter(|n| std::fs::read(rejected.join(n)).ok().as_deref() == Some(&intruder[..]))
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the intruder is kept in rejected/: {:?}",
        names(&rejected)
    );
    let report = error_txt(&d, &kept[0]);
    assert!(report.contains("file: a.csv.errors.csv"), "{report}");
}

/// Names a filesystem holds but the outputs could not: one so long that `<name>.errors.csv`
/// would pass the 255-byte limit (every attempt failed, for good, before it could even be
/// quarantined), and one that is not UTF-8 (Latin-1 from a Windows share; it was ignored
/// without a trace). Both are scored, under names every output can take.
#[test]
fn inbox_files_with_overlong_or_non_utf8_names_are_scored() {
    use std::os::unix::ffi::OsStrExt;
    let d = Daemon::start_with("", "", "", "");
    let long = format!("{}.csv", "a".repeat(247));
    assert_eq!(long.len(), 251);
    std::fs::write(
        d.inbox().join(&long),
        "text,label\nhello,bogus\ngreat day,positive\n",
    )
    .expect("long name");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.csv");
    std::fs::write(d.inbox().join(latin1), "text\nwhat a lovely cafe\n").expect("Latin-1 name");
    d.wait_for(
        "both files to leave the inbox",
        Duration::from_secs(30),
        || {
            names(&d.inbox()).is_empty()
                && names(&d.root().join("processing")).is_empty()
                && names(&d.root().join("journal")).is_empty()
        },
    );
    let outbox = names(&d.root().join("outbox"));
    assert_eq!(outbox.len(), 2, "{outbox:?}\n{}", d.logs());
    assert!(
        outbox.contains(&"caf\u{FFFD}.csv".to_string()),
        "{outbox:?}"
    );
    let short = outbox
        .iter()
        .find(|n| n.starts_with("aaa"))
        .unwrap_or_else(|| panic!("{outbox:?}"));
    assert!(
        short.ends_with(".csv") && short.len() + ".errors.csv".len() <= 255,
        "{short}"
    );
    let scored = read_csv(&d.root().join("outbox").join(short));
    assert_eq!(scored.len(), 2, "the good row: {scored:?}");
    // The bad row's report fits beside it.
    let report = d
        .root()
        .join("rejected")
        .join(format!("{short}.errors.csv"));
    assert!(report.exists(), "{:?}", names(&d.root().join("rejected")));
}
