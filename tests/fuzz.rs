//! Arbitrary bytes through the public surface: as CSV files dropped into the inbox and as
//! HTTP bodies. Whatever arrives, the daemon does not panic, never answers 5xx, and accounts
//! for every record of every file (scored in the outbox or listed in the rejection report),
//! the count checked against the data crate's whole-file reader.

mod common;

use common::{Daemon, names, read_csv};
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes biased towards CSV syntax (quotes, separators, line ends, UTF-8 and broken UTF-8),
/// or, one time in four, uniformly random bytes.
fn arbitrary(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let pieces: &[&[u8]] = &[
        b"a",
        b"good day",
        b"awful",
        b",",
        b"\"",
        b"\"\"",
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        b"\xc3\xa9",
        b"\xff",
        b"\xe2\x82",
        b"positive",
        b"2",
        b"=cmd()",
        b"\t",
        b"\0",
        b"\xEF\xBB\xBF",
        b"{\"text\":",
        b"[",
        b"]",
        b"}",
    ];
    let mut out = Vec::new();
    if rng.below(4) == 0 {
        for _ in 0..rng.below(max_len) {
            out.push(rng.next() as u8);
        }
        return out;
    }
    match rng.below(3) {
        0 => out.extend_from_slice(b"id,text,label\n"),
        1 => out.extend_from_slice(b"text\n"),
        _ => {}
    }
    while out.len() < max_len && rng.below(max_len / 8 + 1) != 0 {
        out.extend_from_slice(pieces[rng.below(pieces.len())]);
    }
    out
}

#[test]
fn arbitrary_files_are_accounted_row_by_row_and_never_crash_the_daemon() {
    let d = Daemon::start_with("", "chunk_rows = 7", "", "");
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut files = Vec::new();
    for i in 0..60 {
        let bytes = arbitrary(&mut rng, 600);
        let name = format!("fuzz-{i:02}.csv");
        d.drop_file(&name, &bytes);
        files.push((name, bytes));
    }
    d.wait_for(
        "every file to be finished",
        Duration::from_secs(120),
        || {
            names(&d.inbox()).is_empty()
                && names(&d.root().join("processing")).is_empty()
                && names(&d.root().join("journal")).is_empty()
        },
    );
    let opts = sentimentd_data::ReadOptions {
        max_text_chars: 1000,
        require_label: false,
    };
    for (name, bytes) in &files {
        let oracle = sentimentd_data::read_batch_bytes(bytes, name, &opts);
        let context = format!("{name}: {:?}", String::from_utf8_lossy(bytes));
        match oracle {
            Ok(batch) => {
                assert!(
                    d.root().join("archive").join(name).exists(),
                    "processed and archived: {context}"
                );
                let out = read_csv(&d.root().join("outbox").join(name));
                let errors_path = d.root().join("rejected").join(format!("{name}.errors.csv"));
                let errors = if errors_path.exists() {
                    read_csv(&errors_path)
                } else {
                    vec![vec![]]
                };
                let scored = out.len() - 1;
                let rejected = errors.len() - 1;
                assert_eq!(scored, batch.rows.len(), "scored rows: {context}");
                assert_eq!(rejected, batch.rejected.len(), "rejected rows: {context}");
                let lines: Vec<String> = errors[1..].iter().map(|r| r[0].clone()).collect();
                let expected: Vec<String> =
                    batch.rejected.iter().map(|r| r.line.to_string()).collect();
                assert_eq!(lines, expected, "rejection lines: {context}");
            }
            Err(_) => {
                assert!(
                    d.root().join("rejected").join(name).exists()
                        && d.root()
                            .join("rejected")
                            .join(format!("{name}.error.txt"))
                            .exists(),
                    "rejected whole with a reason: {context}"
                );
            }
        }
    }
    assert_eq!(
        d.metric(r#"sentiment_actor_restarts_total{actor="batch_processor"}"#),
        0.0,
        "no panic"
    );
    assert_eq!(
        d.metric(r#"sentiment_batch_attempts_total{result="failed"}"#),
        0.0
    );
    assert!(!d.logs().contains("panic"), "{}", d.logs());
}

#[test]
fn arbitrary_http_bodies_never_get_a_5xx() {
    // With a token, so the bodies reach the /feedback and /admin parsers.
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_file = secrets.path().join("token");
    let token = "fuzz-admin-token-0123456789";
    common::write_secret(&token_file, token);
    let d = Daemon::start_with(
        "",
        "",
        "",
        &format!("[admin]\ntoken_file = \"{}\"", token_file.display()),
    );
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    let agent = common::agent();
    for i in 0..300 {
        let body = arbitrary(&mut rng, 300);
        let path = ["/predict", "/feedback", "/admin/retrain"][i % 3];
        let content_type = ["application/json", "text/csv", "application/x+json"][rng.below(3)];
        let r = agent
            .post(d.url(path))
            .header("content-type", content_type)
            .header("authorization", &format!("Bearer {token}"))
            .send(&body[..]);
        let status = match r {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                assert!(
                    text.starts_with('{') && text.contains("\"error\"") || status == 200,
                    "{path} {status}: {text}"
                );
                status
            }
            Err(e) => panic!("{path}: {e}"),
        };
        assert!(
            status < 500,
            "{path} answered {status} to {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        d.metric(r#"sentiment_requests_total{outcome="server_error"}"#),
        0.0
    );
    assert_eq!(d.get("/health").status, 200);
    assert!(!d.logs().contains("panic"), "{}", d.logs());
}
