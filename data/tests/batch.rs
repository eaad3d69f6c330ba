use sentimentd_data::{
    BatchReader, DataError, Label, ReadOptions, Record, RejectReason, ScoredWriter, Scores,
    StreamOptions, read_batch, read_batch_bytes, scored_headers, write_atomic, write_rejections,
    write_rejections_to,
};

fn opts(max_text_chars: usize, require_label: bool) -> ReadOptions {
    ReadOptions {
        max_text_chars,
        require_label,
    }
}

fn read(text: &[u8]) -> sentimentd_data::CsvBatch {
    match read_batch_bytes(text, "batch.csv", &opts(100, false)) {
        Ok(b) => b,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The error reading `bytes` as the file `name` gives, or "" when it reads.
fn read_error(bytes: &[u8], name: &str, o: &ReadOptions) -> String {
    read_batch_bytes(bytes, name, o)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

fn rejections(batch: &sentimentd_data::CsvBatch) -> Vec<(u64, String)> {
    batch
        .rejected
        .iter()
        .map(|r| (r.line, r.reason.code().to_string()))
        .collect()
}

#[test]
fn rejected_rows_carry_their_line_after_a_multi_line_record() {
    let csv = b"id,text,label\n\
        1,fine,positive\n\
        2,\"spans\nthree\nlines\",neutral\n\
        3,,negative\n\
        4,ok,maybe\n\
        5,\"also \"\"quoted\"\", fine\",NEGATIVE\n\
        6,too,many,fields\n";
    let batch = read(csv);
    assert_eq!(
        rejections(&batch),
        [
            (6, "empty_text".to_string()),
            (7, "unknown_label".to_string()),
            (9, "wrong_field_count".to_string()),
        ]
    );
    let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 8]);
    assert_eq!(batch.rows[1].text(), "spans\nthree\nlines");
    assert_eq!(batch.rows[2].text(), "also \"quoted\", fine");
    assert_eq!(batch.rows[2].label, Some(Label::Negative));
    assert_eq!(batch.rejected[2].raw, "6,too,many,fields");
    assert_eq!(
        batch.rejected[2].reason,
        RejectReason::WrongFieldCount {
            expected: 3,
            found: 4
        }
    );
    assert_eq!(
        batch.rejected[1].reason.to_string(),
        "unknown label `maybe` (expected negative, neutral, positive or 0, 1, 2)"
    );
}

#[test]
fn invalid_utf8_rejects_only_its_row() {
    let mut csv = b"text,label\ngood one,positive\n".to_vec();
    csv.extend_from_slice(b"bad \xff\xfe bytes,negative\n");
    csv.extend_from_slice(b"another good one,neutral\n");
    let batch = read(&csv);
    assert_eq!(batch.rows.len(), 2);
    assert_eq!(batch.rows[0].line, 2);
    assert_eq!(batch.rows[1].line, 4);
    assert_eq!(batch.rejected.len(), 1);
    assert_eq!(batch.rejected[0].line, 3);
    assert_eq!(
        batch.rejected[0].reason,
        RejectReason::InvalidUtf8 {
            column: "text".into()
        }
    );
    assert!(batch.rejected[0].raw.starts_with("bad "));
    assert!(batch.rejected[0].raw.ends_with(" bytes,negative"));
}

#[test]
fn missing_text_column_is_a_clear_error() {
    assert_eq!(
        read_error(b"id,body\n1,hello\n", "batch.csv", &opts(100, false)),
        "batch.csv: no `text` column (found: id, body)"
    );
}

#[test]
fn training_data_needs_a_label_column_and_labels() {
    assert_eq!(
        read_error(b"text\nhello\n", "t.csv", &opts(100, true)),
        "t.csv: no `label` column (found: text)"
    );
    let batch = read_batch_bytes(b"text,label\nhello,\nhi,1\n", "t.csv", &opts(100, true));
    let batch = batch.unwrap_or_default();
    assert_eq!(rejections(&batch), [(2, "missing_label".to_string())]);
    // Scoring data: an empty label is just "no label".
    let batch = read(b"text,label\nhello,\n");
    assert_eq!(batch.rows[0].label, None);
}

#[test]
fn file_level_errors() {
    let o = opts(100, false);
    let msg = |bytes: &[u8]| read_error(bytes, "f.csv", &o);
    assert!(msg(b"").contains("f.csv: file is empty"));
    assert!(msg(b"\n \n").contains("f.csv: file is empty"));
    assert!(msg(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").starts_with("f.csv: not a CSV file"));
    assert!(msg(b"\xff\xfetext\n").starts_with("f.csv: not a CSV file"));
    assert!(msg(b"\"text,label\nhello,positive\n").starts_with("f.csv: not a CSV file"));
    assert_eq!(
        msg(b"text,TEXT\na,b\n"),
        "f.csv: more than one `text` column in the header"
    );
    let missing = read_batch(std::path::Path::new("/nonexistent/in.csv"), &o)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(missing.starts_with("/nonexistent/in.csv: "), "{missing}");
}

#[test]
fn header_match_is_case_insensitive_and_trimmed_and_bom_is_ignored() {
    let batch = read(b"\xEF\xBB\xBF Text ,Label,source\r\nhello,Positive,web\r\n");
    assert_eq!(batch.headers, [" Text ", "Label", "source"]);
    assert_eq!(batch.text_col, 0);
    assert_eq!(batch.label_col, Some(1));
    assert_eq!(batch.rows[0].fields, ["hello", "Positive", "web"]);
    assert_eq!(batch.rows[0].line, 2);
}

#[test]
fn labels_in_any_case_and_tweeteval_ids() {
    let batch =
        read(b"text,label\na,positive\nb,NEGATIVE\nc,Neutral\nd,0\ne,1\nf,2\ng, positive \nh,3\n");
    let labels: Vec<Option<Label>> = batch.rows.iter().map(|r| r.label).collect();
    use Label::*;
    assert_eq!(
        labels,
        [
            Some(Positive),
            Some(Negative),
            Some(Neutral),
            Some(Negative),
            Some(Neutral),
            Some(Positive),
            Some(Positive)
        ]
    );
    assert_eq!(rejections(&batch), [(9, "unknown_label".to_string())]);
}

#[test]
fn too_long_counts_characters_not_bytes() {
    let o = opts(5, false);
    let batch = read_batch_bytes("text\nhéllo\nhéllo!\n".as_bytes(), "x", &o).unwrap_or_default();
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(
        batch.rejected[0].reason,
        RejectReason::TextTooLong { chars: 6, max: 5 }
    );
    assert_eq!(
        batch.rejected[0].reason.to_string(),
        "text too long: 6 characters, maximum 5"
    );
}

#[test]
fn unterminated_quote_rejects_its_line_and_reading_resumes() {
    let csv = b"id,text,label\n\
        1,fine,positive\n\
        2,\"never closed,negative\n\
        3,still read,neutral\n\
        \n\
        4,also read,positive\n";
    let batch = read(csv);
    assert_eq!(rejections(&batch), [(3, "broken_quoting".to_string())]);
    assert_eq!(batch.rejected[0].raw, "2,\"never closed,negative");
    assert_eq!(
        batch.rejected[0].reason,
        RejectReason::BrokenQuoting {
            unterminated: true,
            last_line: 3
        }
    );
    let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 4, 6]);
}

/// "CSV (Macintosh)": lines end with a lone CR. Rejections name their own lines, and an
/// unterminated quote costs its line only (the rest of the file was dropped, for want of an
/// LF to resume at).
#[test]
fn lines_ended_by_a_lone_cr_are_lines() {
    let batch = read(b"text,label\rgood,positive\rbad,bogus\r\rnice,neutral\r,positive\r");
    assert_eq!(
        rejections(&batch),
        [
            (3, "unknown_label".to_string()),
            (6, "empty_text".to_string())
        ]
    );
    let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 5]);

    let batch = read(b"text\r\"unterminated,\rgood day\rbad day\r");
    assert_eq!(rejections(&batch), [(2, "broken_quoting".to_string())]);
    let texts: Vec<&str> = batch.rows.iter().map(|r| r.text()).collect();
    assert_eq!(texts, ["good day", "bad day"]);
    // Mixed with CRLF and LF lines, each ending counts once.
    let batch = read(b"text\r\na\rb\nc\r\nd\r");
    let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 4, 5]);
    // Streamed a byte at a time, a CR at the end of a read is judged by the byte after it.
    for block in [1, 2, 3] {
        assert_eq!(
            streamed(b"text\r\na\rb\nc\r\nd\r", opts(100, false), block),
            Ok(batch.clone()),
            "block {block}"
        );
    }
}

#[test]
fn stray_quote_merging_lines_is_broken_quoting() {
    let csv = b"id,text,label\n\
        1,\"opens here,positive\n\
        2,swallowed,neutral\n\
        3,closes\" here,negative,extra\n\
        4,after,positive\n";
    let batch = read(csv);
    assert_eq!(rejections(&batch), [(2, "broken_quoting".to_string())]);
    assert_eq!(
        batch.rejected[0].reason,
        RejectReason::BrokenQuoting {
            unterminated: false,
            last_line: 4
        }
    );
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].line, 5);
}

#[test]
fn streaming_reader_yields_records_in_file_order() {
    let csv = b"text\na\n\nb\n\"\"\nc\n";
    let reader = BatchReader::new(&csv[..], "s.csv", opts(10, false));
    let Ok(reader) = reader else {
        panic!("reader");
    };
    let lines: Vec<(u64, bool)> = reader
        .map(|r| match r {
            Ok(Record::Row(r)) => (r.line, true),
            Ok(Record::Rejected(r)) => (r.line, false),
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(lines, [(2, true), (4, true), (5, false), (6, true)]);
}

#[test]
fn scored_output_keeps_original_columns_and_appends_scores() -> Result<(), DataError> {
    let batch = read(b"id,text,label\n7,\"hi, you\",positive\n");
    assert_eq!(
        scored_headers(&batch.headers),
        [
            "id",
            "text",
            "input_label",
            "label",
            "score",
            "p_negative",
            "p_neutral",
            "p_positive",
            "model_version"
        ]
    );
    let mut w = ScoredWriter::new(Vec::new(), &batch.headers)?;
    let scores = Scores {
        label: Label::Positive,
        score: 0.75,
        probabilities: [0.05, 0.2, 0.75],
    };
    w.write_row(&batch.rows[0].fields, &scores, "v1")?;
    let out = String::from_utf8(w.finish()?).unwrap_or_default();
    assert_eq!(
        out,
        "id,text,input_label,label,score,p_negative,p_neutral,p_positive,model_version\n\
         7,\"hi, you\",positive,positive,0.75,0.05,0.2,0.75,v1\n"
    );
    Ok(())
}

#[test]
fn rejection_report_and_atomic_write() -> Result<(), DataError> {
    let mut csv = b"text\nok\n\n".to_vec();
    csv.extend_from_slice(b"\"multi\nline \xff\"\n \n");
    let batch = read(&csv);
    assert_eq!(
        rejections(&batch),
        [
            (4, "invalid_utf8".to_string()),
            (6, "empty_text".to_string())
        ]
    );
    let report =
        String::from_utf8(write_rejections_to(Vec::new(), &batch.rejected)?).unwrap_or_default();
    assert_eq!(
        report,
        "line,reason,raw\n\
         4,invalid UTF-8 in column `text`,\"\"\"multi\nline \u{fffd}\"\"\"\n\
         6,empty text, \n"
    );

    let dir = tempfile::tempdir().map_err(|source| DataError::Io {
        path: "tmp".into(),
        source,
    })?;
    let path = dir.path().join("in.errors.csv");
    write_rejections(&path, &batch.rejected)?;
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(written, report);
    // A failed write leaves neither the target nor a temporary file behind.
    let failed = dir.path().join("never.csv");
    let r: Result<(), DataError> = write_atomic(&failed, |_| Err(DataError::NoInput));
    assert!(r.is_err());
    assert!(!failed.exists());
    let leftovers = std::fs::read_dir(dir.path())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 1);
    Ok(())
}

// ---- accounting property -------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free randomness for the property test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Row(Option<Label>),
    Reject(&'static str),
}

/// Builds a random file of `id,text,label` records, each with a known expected outcome and
/// starting line, and checks the reader reports exactly those: every record accounted for
/// once, in order, with the right line.
fn check_case(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let crlf = rng.chance(30);
    let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let require_label = rng.chance(30);
    let max = 40;
    let mut file: Vec<u8> = Vec::new();
    file.extend_from_slice(b"id,text,label");
    file.extend_from_slice(nl);
    let mut line: u64 = 2;
    let mut expected: Vec<(u64, Expect)> = Vec::new();
    let n = 1 + rng.below(60);
    // At most one unterminated quote, and only with quote-free records after it, so the
    // expected outcome stays exact.
    let unterminated_at = if rng.chance(25) {
        Some(rng.below(n))
    } else {
        None
    };
    let mut quotes_allowed = true;
    for i in 0..n {
        while rng.chance(10) {
            file.extend_from_slice(nl);
            line += 1;
        }
        let start = line;
        let id = format!("{i}");
        if Some(i) == unterminated_at {
            file.extend_from_slice(format!("{id},\"never closed,positive").as_bytes());
            file.extend_from_slice(nl);
            line += 1;
            expected.push((start, Expect::Reject("broken_quoting")));
            quotes_allowed = false;
            continue;
        }
        let (label_field, label) = match rng.below(8) {
            0 => ("positive", Some(Label::Positive)),
            1 => ("NEGATIVE", Some(Label::Negative)),
            2 => ("Neutral", Some(Label::Neutral)),
            3 => ("0", Some(Label::Negative)),
            4 => ("2", Some(Label::Positive)),
            5 => ("", None),
            6 => ("1", Some(Label::Neutral)),
            _ => ("meh", None),
        };
        let kind = rng.below(10);
        let mut record: Vec<u8> = Vec::new();
        record.extend_from_slice(id.as_bytes());
        record.push(b',');
        let outcome = match kind {
            0 => {
                record.extend_from_slice(if rng.chance(50) { b"" } else { b"   " });
                Expect::Reject("empty_text")
            }
            1 => {
                record.extend_from_slice("é".repeat(max + 1).as_bytes());
                Expect::Reject("text_too_long")
            }
            2 => {
                record.extend_from_slice(b"bad \xc3\x28 bytes");
                Expect::Reject("invalid_utf8")
            }
            3 if quotes_allowed => {
                // Quoted text with an escaped quote, a comma and an embedded line break.
                record.extend_from_slice(b"\"she said \"\"hi\"\",");
                record.extend_from_slice(nl);
                record.extend_from_slice(b"then left\"");
                line += 1;
                Expect::Row(label)
            }
            4 => {
                record.extend_from_slice(b"extra,field");
                Expect::Reject("wrong_field_count")
            }
            _ => {
                record.extend_from_slice(format!("plain text {}", rng.below(1000)).as_bytes());
                Expect::Row(label)
            }
        };
        let outcome = match outcome {
            Expect::Row(_) if label_field == "meh" => Expect::Reject("unknown_label"),
            Expect::Row(_) if label_field.is_empty() && require_label => {
                Expect::Reject("missing_label")
            }
            other => other,
        };
        record.push(b',');
        record.extend_from_slice(label_field.as_bytes());
        let last = i + 1 == n;
        if !(last && rng.chance(30)) {
            record.extend_from_slice(nl);
        }
        file.extend_from_slice(&record);
        line += 1;
        expected.push((start, outcome));
    }

    let batch = read_batch_bytes(&file, "prop.csv", &opts(max, require_label));
    let Ok(batch) = batch else {
        panic!("seed {seed}: {:?}", batch.err());
    };
    // Any read-block size (a window boundary anywhere in a record) gives the same result.
    let block = 1 + (seed as usize % 9);
    let streamed = streamed(&file, opts(max, require_label), block);
    assert_eq!(
        streamed.as_ref().ok(),
        Some(&batch),
        "seed {seed}, block {block}"
    );
    let mut got: Vec<(u64, Expect)> = batch
        .rows
        .iter()
        .map(|r| (r.line, Expect::Row(r.label)))
        .chain(
            batch
                .rejected
                .iter()
                .map(|r| (r.line, Expect::Reject(r.reason.code()))),
        )
        .collect();
    got.sort_by_key(|(l, _)| *l);
    assert_eq!(
        batch.records(),
        expected.len(),
        "seed {seed}: record count\n{}",
        String::from_utf8_lossy(&file)
    );
    assert_eq!(
        got,
        expected,
        "seed {seed}\n{}",
        String::from_utf8_lossy(&file)
    );
}

#[test]
fn every_record_is_accepted_or_rejected_exactly_once() {
    for seed in 0..400 {
        check_case(seed);
    }
}

fn streamed(
    bytes: &[u8],
    o: ReadOptions,
    block_bytes: usize,
) -> Result<sentimentd_data::CsvBatch, String> {
    let stream = StreamOptions {
        block_bytes,
        ..StreamOptions::default()
    };
    BatchReader::with_stream(bytes, "prop.csv", o, stream)
        .and_then(BatchReader::into_batch)
        .map_err(|e| e.to_string())
}

/// Every record of `file` read with a small window and record limit, in file order.
fn records_with_limit(file: &[u8], block_bytes: usize, max_record_bytes: usize) -> Vec<Record> {
    let stream = StreamOptions {
        block_bytes,
        max_record_bytes,
        ..StreamOptions::default()
    };
    let reader = BatchReader::with_stream(file, "long.csv", opts(100, false), stream);
    let Ok(reader) = reader else {
        panic!("reader");
    };
    reader
        .map(|r| r.map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

/// Arbitrary bytes biased towards CSV syntax: the streamed reader, with read blocks of a few
/// bytes, agrees with the whole-file reader on every outcome, and every record it yields has
/// a line inside the file.
#[test]
fn streaming_agrees_with_whole_file_reading_on_arbitrary_bytes() {
    let alphabet: &[&[u8]] = &[
        b"a",
        b"text",
        b",",
        b"\"",
        b"\"\"",
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        b"\xc3\xa9",
        b"\xff",
        b"label",
        b"positive",
        b"1",
        b"\xEF\xBB\xBF",
        b"\t",
    ];
    for seed in 0..600u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let mut file: Vec<u8> = Vec::new();
        if rng.chance(70) {
            file.extend_from_slice(if rng.chance(50) {
                b"id,text,label\n"
            } else {
                b"text\n"
            });
        }
        for _ in 0..rng.below(200) {
            file.extend_from_slice(alphabet[rng.below(alphabet.len() as u64) as usize]);
        }
        let o = opts(20, rng.chance(20));
        let whole = read_batch_bytes(&file, "prop.csv", &o).map_err(|e| e.to_string());
        for block in [1, 2, 5, 64] {
            assert_eq!(
                streamed(&file, o, block),
                whole,
                "seed {seed}, block {block}: {:?}",
                String::from_utf8_lossy(&file)
            );
        }
        if let Ok(batch) = whole {
            // A line ends at `\n`, `\r\n` or a lone `\r`.
            let lone_crs = file
                .windows(2)
                .filter(|w| w[0] == b'\r' && w[1] != b'\n')
                .count()
                + usize::from(file.last() == Some(&b'\r'));
            let lines = 1 + (file.iter().filter(|&&b| b == b'\n').count() + lone_crs) as u64;
            for line in batch
                .rows
                .iter()
                .map(|r| r.line)
                .chain(batch.rejected.iter().map(|r| r.line))
            {
                assert!(
                    (1..=lines).contains(&line),
                    "seed {seed}: line {line} of {lines}"
                );
            }
        }
    }
}

#[test]
fn a_record_that_never_ends_is_cut_at_the_limit_and_reading_goes_on() {
    // The quote on line 2 never closes; without the limit it would swallow the whole file.
    let mut file = b"id,text\n1,\"opens and never closes\n".to_vec();
    for i in 2..2000 {
        file.extend_from_slice(format!("{i},row number {i}\n").as_bytes());
    }
    let records = records_with_limit(&file, 1024, 4096);
    let Some(Record::Rejected(first)) = records.first() else {
        panic!("the broken line is rejected first: {:?}", records.first());
    };
    assert_eq!(first.line, 2);
    assert_eq!(first.reason.code(), "record_too_long");
    assert_eq!(first.raw, "1,\"opens and never closes");
    // Every row after it is still read (the first few may be merged into the rejected
    // record's restart, but none is lost: each line is accounted for).
    let rows: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Row(r) => Some(r.line),
            Record::Rejected(_) => None,
        })
        .collect();
    assert_eq!(rows.len(), 1998, "{:?}", &records[..3]);
    assert_eq!(rows.first(), Some(&3));
}

#[test]
fn the_limit_stops_reading_at_the_claimed_size() {
    let file = b"text\nfirst\nsecond\nappended later\n";
    let claimed = b"text\nfirst\nsecond\n".len() as u64;
    let stream = StreamOptions {
        limit: Some(claimed),
        block_bytes: 4,
        ..StreamOptions::default()
    };
    let reader = BatchReader::with_stream(&file[..], "l.csv", opts(100, false), stream);
    let Ok(reader) = reader else {
        panic!("reader");
    };
    let texts: Vec<String> = reader
        .filter_map(|r| match r {
            Ok(Record::Row(r)) => Some(r.text().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[test]
fn a_line_longer_than_the_limit_is_rejected_and_the_rows_after_it_are_read() {
    // One 20 KiB line with an unclosed quote and no line break in reach of the limit.
    let mut file = b"id,text\n1,\"".to_vec();
    file.extend(std::iter::repeat_n(b'x', 20_000));
    file.extend_from_slice(b"\n2,after the long line\n3,and another\n");
    let records = records_with_limit(&file, 512, 4096);
    let summary: Vec<(u64, bool)> = records
        .iter()
        .map(|r| match r {
            Record::Row(r) => (r.line, true),
            Record::Rejected(r) => (r.line, false),
        })
        .collect();
    assert_eq!(summary, [(2, false), (3, true), (4, true)]);
}
