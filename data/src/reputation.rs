//! The reputation view: sentiment counts per source and time bucket, the negative share, and
//! a spike detector that compares a source's latest bucket with its own recent history.
//!
//! The set of tracked sources is bounded (a configured list, or the busiest `max_sources`), so
//! whatever names the input carries, the state and the metric series stay small: any other
//! source is counted as [`OTHER`], a row without one as [`UNKNOWN`].

use crate::label::Label;
use sentimentd_config::{MAX_SOURCE_CHARS, ReputationConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Where the rows of untracked sources are counted.
pub const OTHER: &str = "other";
/// Where rows without a source are counted.
pub const UNKNOWN: &str = "unknown";

/// Counts per label, in [`Label::ALL`] order.
pub type Counts = [u64; 3];

/// Distinct (source, bucket) keys one [`Tally`] keeps; beyond, rows count as [`OTHER`].
const TALLY_KEYS: usize = 10_000;
/// A candidate takes a tracked source's slot only with this much more recent volume.
const SWAP_MARGIN: f64 = 1.25;

/// The book's settings: the `[reputation]` section (validated, so sizes are at least 1).
pub type Settings = ReputationConfig;

/// Start of the `bucket_secs` bucket holding Unix time `t`.
pub fn bucket_of(settings: &Settings, t: i64) -> i64 {
    let size = settings.bucket_secs.max(1) as i64;
    t.div_euclid(size) * size
}

/// A source name as kept: trimmed and cut to [`MAX_SOURCE_CHARS`]; `None` if empty.
pub fn clean_source(raw: &str) -> Option<&str> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    match s.char_indices().nth(MAX_SOURCE_CHARS) {
        Some((cut, _)) => Some(s[..cut].trim_end()),
        None => Some(s),
    }
}

/// Counts of one batch file, by raw source name and bucket, applied to the book once the
/// file's outcome is final (a rerun after a crash must not count its rows twice).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    counts: HashMap<(Option<String>, i64), Counts>,
}

impl Tally {
    pub fn add(&mut self, source: Option<&str>, bucket: i64, label: Label) {
        let source = source.and_then(clean_source);
        let key = (source.map(str::to_string), bucket);
        if self.counts.len() >= TALLY_KEYS && !self.counts.contains_key(&key) {
            // Past the cap, new names count as other; past twice the cap, new buckets too go
            // to one key older than any history (totals only): memory stays bounded.
            let mut other = (Some(OTHER.to_string()), bucket);
            if self.counts.len() >= 2 * TALLY_KEYS && !self.counts.contains_key(&other) {
                other.1 = i64::MIN;
            }
            self.counts.entry(other).or_default()[label.index()] += 1;
            return;
        }
        self.counts.entry(key).or_default()[label.index()] += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, i64, Counts)> {
        self.counts.iter().map(|((s, b), c)| (s.as_deref(), *b, *c))
    }

    pub fn by_label(&self) -> Counts {
        let mut total = [0; 3];
        for c in self.counts.values() {
            for i in 0..3 {
                total[i] += c[i];
            }
        }
        total
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SourceState {
    /// Bucket start (Unix seconds) -> counts; the latest bucket and its history.
    buckets: BTreeMap<i64, Counts>,
    /// Every text counted for this source since it was tracked.
    total: Counts,
}

impl SourceState {
    fn latest(&self) -> Option<(i64, Counts)> {
        self.buckets.iter().next_back().map(|(b, c)| (*b, *c))
    }

    /// Volume with each bucket weighted by half per bucket of age: what top-N ranks by.
    fn recent_volume(&self, now_bucket: i64, bucket_secs: u64) -> f64 {
        self.buckets
            .iter()
            .map(|(b, c)| {
                let age = ((now_bucket - b) / bucket_secs as i64).max(0) as i32;
                sum(c) as f64 * 0.5f64.powi(age)
            })
            .sum()
    }
}

/// The book as saved to disk.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BookState {
    pub bucket_secs: u64,
    sources: BTreeMap<String, SourceState>,
    /// Untracked sources (top-N mode), who may take a slot: decayed volume and the part of
    /// it inherited from the candidate it replaced (space-saving's error bound).
    candidates: HashMap<String, Candidate>,
    /// The bucket the last re-ranking ran in.
    ranked_bucket: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Candidate {
    count: f64,
    error: f64,
}

impl Candidate {
    /// Volume the candidate certainly had: a flood of one-off names cannot inflate it.
    fn lower_bound(&self) -> f64 {
        self.count - self.error
    }
}

/// Spike test of one bucket against the history before it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Spike {
    /// Negative share of the bucket.
    pub share: f64,
    /// Negative share over the history buckets.
    pub baseline: f64,
    /// Standard errors above the baseline.
    pub z: f64,
    pub spike: bool,
}

/// One bucket of a source's trend.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BucketReport {
    /// Bucket start, RFC 3339.
    pub start: String,
    pub start_unix: i64,
    pub negative: u64,
    pub neutral: u64,
    pub positive: u64,
    pub total: u64,
    pub negative_share: f64,
    /// Spike test against the buckets before it; absent with too little data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spike: Option<Spike>,
}

/// One source's summary.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceReport {
    pub source: String,
    /// Texts counted since the source was tracked, by label.
    pub negative: u64,
    pub neutral: u64,
    pub positive: u64,
    pub total: u64,
    /// Negative share in the source's latest bucket (0 with no bucket).
    pub negative_share: f64,
    /// The latest bucket is a spike, and it is the current or the previous bucket.
    pub alert: bool,
    /// Oldest first.
    pub trend: Vec<BucketReport>,
}

/// What `GET /reputation` returns.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub bucket_secs: u64,
    pub history_buckets: usize,
    /// "configured" (`[reputation] sources`) or "top" (the busiest `max_sources`).
    pub mode: &'static str,
    /// Busiest first.
    pub sources: Vec<SourceReport>,
}

pub struct Book {
    settings: Settings,
    state: BookState,
}

fn sum(c: &Counts) -> u64 {
    c.iter().sum()
}

fn add_counts(into: &mut Counts, c: &Counts) {
    for i in 0..3 {
        into[i] += c[i];
    }
}

impl Book {
    pub fn new(settings: Settings) -> Book {
        let mut state = BookState {
            bucket_secs: settings.bucket_secs,
            ..BookState::default()
        };
        for name in settings
            .sources
            .iter()
            .map(String::as_str)
            .chain([OTHER, UNKNOWN])
        {
            state.sources.entry(name.to_string()).or_default();
        }
        Book { settings, state }
    }

    /// A saved book under (possibly changed) settings: buckets are merged into the new size,
    /// and sources no longer tracked are merged into [`OTHER`].
    pub fn restore(settings: Settings, saved: BookState) -> Book {
        let mut book = Book::new(settings);
        let configured = !book.settings.sources.is_empty();
        let mut kept = 0;
        // Busiest first, so a smaller max_sources keeps the ones that matter.
        let mut saved_sources: Vec<(String, SourceState)> = saved.sources.into_iter().collect();
        saved_sources.sort_by_key(|(_, s)| std::cmp::Reverse(sum(&s.total)));
        for (name, old) in saved_sources {
            let special = name == OTHER || name == UNKNOWN;
            let tracked = special
                || if configured {
                    book.settings.sources.contains(&name)
                } else {
                    kept < book.settings.max_sources
                };
            if tracked && !special {
                kept += 1;
            }
            let target = if tracked { name } else { OTHER.to_string() };
            let entry = book.state.sources.entry(target).or_default();
            add_counts(&mut entry.total, &old.total);
            for (b, c) in &old.buckets {
                add_counts(
                    entry
                        .buckets
                        .entry(bucket_of(&book.settings, *b))
                        .or_default(),
                    c,
                );
            }
        }
        if !configured {
            book.state.candidates = saved.candidates;
            let sources = &book.state.sources;
            book.state
                .candidates
                .retain(|name, _| !sources.contains_key(name));
        }
        book.state.ranked_bucket = saved.ranked_bucket;
        let names: Vec<String> = book.state.sources.keys().cloned().collect();
        for name in names {
            book.prune(&name);
        }
        book
    }

    pub fn state(&self) -> &BookState {
        &self.state
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Names of the tracked sources, [`OTHER`] and [`UNKNOWN`] included.
    pub fn tracked(&self) -> impl Iterator<Item = &str> {
        self.state.sources.keys().map(String::as_str)
    }

    fn top_mode(&self) -> bool {
        self.settings.sources.is_empty()
    }

    /// The tracked name `raw` counts under. In top-N mode a new source takes a free slot, or
    /// else gains volume as a candidate for the next re-ranking.
    pub fn resolve(&mut self, raw: Option<&str>, texts: u64) -> &str {
        let Some(name) = raw.and_then(clean_source) else {
            return UNKNOWN;
        };
        let known = self.state.sources.contains_key(name);
        if !known && !self.top_mode() {
            return OTHER;
        }
        if known || self.state.sources.len() < self.settings.max_sources + 2 {
            if !known {
                self.state.candidates.remove(name);
                self.state
                    .sources
                    .insert(name.to_string(), SourceState::default());
            }
            return self
                .state
                .sources
                .get_key_value(name)
                .map_or(OTHER, |(k, _)| k.as_str());
        }
        let cap = (self.settings.max_sources * 4).max(64);
        if !self.state.candidates.contains_key(name) && self.state.candidates.len() >= cap {
            // Space-saving: the weakest candidate makes room and the newcomer inherits its
            // count as error, so a source that keeps coming back climbs while a stream of
            // one-off names stays at the bottom (ranking uses count minus error).
            let weakest = self
                .state
                .candidates
                .iter()
                .min_by(|a, b| a.1.count.total_cmp(&b.1.count))
                .map(|(k, v)| (k.clone(), v.count));
            if let Some((k, count)) = weakest {
                self.state.candidates.remove(&k);
                self.state.candidates.insert(
                    name.to_string(),
                    Candidate {
                        count,
                        error: count,
                    },
                );
            }
        }
        self.state
            .candidates
            .entry(name.to_string())
            .or_default()
            .count += texts as f64;
        OTHER
    }

    /// Adds counts to a tracked source (a name [`Book::resolve`] returned).
    pub fn add(&mut self, tracked: &str, bucket: i64, counts: Counts) {
        let Some(s) = self.state.sources.get_mut(tracked) else {
            return;
        };
        add_counts(&mut s.total, &counts);
        let (newest, _) = s.latest().unwrap_or((bucket, [0; 3]));
        let oldest_kept = newest.max(bucket)
            - self.settings.history_buckets as i64 * self.settings.bucket_secs as i64;
        // Older than the history kept: in the totals, not in the trend.
        if bucket >= oldest_kept {
            add_counts(s.buckets.entry(bucket).or_default(), &counts);
            self.prune(tracked);
        }
    }

    fn prune(&mut self, name: &str) {
        let keep = self.settings.history_buckets as i64 * self.settings.bucket_secs as i64;
        if let Some(s) = self.state.sources.get_mut(name)
            && let Some((newest, _)) = s.latest()
        {
            s.buckets = s.buckets.split_off(&(newest - keep));
        }
    }

    /// Top-N mode, once per bucket: a candidate busier than the quietest tracked source takes
    /// its slot (the quiet one's counts move to [`OTHER`]); candidates' volume then halves.
    /// Returns the names that stopped being tracked.
    pub fn rerank(&mut self, now: i64) -> Vec<String> {
        let now_bucket = bucket_of(&self.settings, now);
        if !self.top_mode() || now_bucket <= self.state.ranked_bucket {
            return Vec::new();
        }
        self.state.ranked_bucket = now_bucket;
        let secs = self.settings.bucket_secs;
        let mut removed = Vec::new();
        // Decay first, so the bucket that just ended weighs one half on both sides, as it
        // does in a tracked source's `recent_volume`.
        let sources = &self.state.sources;
        self.state.candidates.retain(|name, v| {
            v.count *= 0.5;
            v.error *= 0.5;
            v.lower_bound() >= 0.5 && !sources.contains_key(name)
        });
        let mut candidates: Vec<(String, f64)> = self
            .state
            .candidates
            .iter()
            .map(|(k, v)| (k.clone(), v.lower_bound()))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        // A source promoted in this pass has no buckets yet: it is not the next one out.
        let mut promoted: Vec<String> = Vec::new();
        for (name, volume) in candidates {
            let quietest = self
                .state
                .sources
                .iter()
                .filter(|(k, _)| {
                    k.as_str() != OTHER && k.as_str() != UNKNOWN && !promoted.contains(k)
                })
                .map(|(k, s)| (k.clone(), s.recent_volume(now_bucket, secs)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((quiet, quiet_volume)) = quietest else {
                break;
            };
            // A margin, so two sources of about the same volume do not trade the slot (and
            // their history) back and forth.
            if volume <= SWAP_MARGIN * quiet_volume.max(1.0) {
                break;
            }
            if let Some(old) = self.state.sources.remove(&quiet) {
                let other = self.state.sources.entry(OTHER.to_string()).or_default();
                add_counts(&mut other.total, &old.total);
                for (b, c) in &old.buckets {
                    add_counts(other.buckets.entry(*b).or_default(), c);
                }
                self.state.candidates.insert(
                    quiet.clone(),
                    Candidate {
                        count: quiet_volume,
                        error: 0.0,
                    },
                );
            }
            self.state.candidates.remove(&name);
            self.state
                .sources
                .insert(name.clone(), SourceState::default());
            promoted.push(name);
            removed.push(quiet);
        }
        self.prune(OTHER);
        removed
    }

    /// Spike test of `bucket` against the buckets before it.
    fn spike(&self, bucket: &Counts, history: &Counts) -> Option<Spike> {
        let (n, h) = (sum(bucket), sum(history));
        let min = self.settings.spike_min_texts;
        if n < min || h < min {
            return None;
        }
        let share = bucket[Label::Negative.index()] as f64 / n as f64;
        let baseline = history[Label::Negative.index()] as f64 / h as f64;
        // A history with no negatives at all would make any negative infinitely surprising.
        let variance = (baseline * (1.0 - baseline)).max(1.0 / h as f64) / n as f64;
        let z = (share - baseline) / variance.sqrt();
        Some(Spike {
            share,
            baseline,
            z,
            spike: z >= self.settings.spike_z
                && share - baseline >= self.settings.spike_min_increase,
        })
    }

    /// One source's report; `now` decides whether a spike is current enough to alert.
    fn source_report(&self, name: &str, s: &SourceState, now: i64) -> SourceReport {
        let mut trend = Vec::with_capacity(s.buckets.len());
        let secs = self.settings.bucket_secs as i64;
        let span = self.settings.history_buckets as i64 * secs;
        // The history of each bucket as a running sum over a sliding window: linear in the
        // buckets kept, since this runs under the lock `/predict` records with.
        let mut window: std::collections::VecDeque<(i64, Counts)> = Default::default();
        let mut history = [0u64; 3];
        for (&start, counts) in &s.buckets {
            while let Some(&(old, c)) = window.front() {
                if old >= start - span {
                    break;
                }
                for i in 0..3 {
                    history[i] -= c[i];
                }
                window.pop_front();
            }
            let total = sum(counts);
            trend.push(BucketReport {
                start: rfc3339(start),
                start_unix: start,
                negative: counts[0],
                neutral: counts[1],
                positive: counts[2],
                total,
                negative_share: share(counts),
                spike: self.spike(counts, &history),
            });
            add_counts(&mut history, counts);
            window.push_back((start, *counts));
        }
        // The bucket judged now: the latest one with enough texts for a verdict, if it is the
        // current or the previous bucket. A new bucket's first texts do not clear an alert
        // the bucket before raised.
        let previous = bucket_of(&self.settings, now) - secs;
        let judged = trend
            .iter()
            .rev()
            .take(2)
            .find(|b| b.spike.is_some() && b.start_unix >= previous);
        let latest = judged.or(trend.last());
        SourceReport {
            source: name.to_string(),
            negative: s.total[0],
            neutral: s.total[1],
            positive: s.total[2],
            total: sum(&s.total),
            negative_share: latest.map_or(0.0, |b| b.negative_share),
            alert: judged.is_some_and(|b| b.spike.is_some_and(|s| s.spike)),
            trend,
        }
    }

    pub fn report(&self, now: i64) -> Report {
        let mut sources: Vec<SourceReport> = self
            .state
            .sources
            .iter()
            .map(|(name, s)| self.source_report(name, s, now))
            .collect();
        sources.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.source.cmp(&b.source)));
        Report {
            bucket_secs: self.settings.bucket_secs,
            history_buckets: self.settings.history_buckets,
            mode: if self.top_mode() { "top" } else { "configured" },
            sources,
        }
    }
}

fn share(c: &Counts) -> f64 {
    let n = sum(c);
    if n == 0 {
        0.0
    } else {
        c[Label::Negative.index()] as f64 / n as f64
    }
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Unix seconds of a timestamp in one of the formats social-media exports use: RFC 3339,
/// `YYYY-MM-DD HH:MM:SS[.f][±zz:zz]` (UTC without an offset), `YYYY-MM-DD`, Unix seconds or
/// milliseconds, Twitter's `Wed Oct 10 20:19:24 +0000 2018`, RFC 2822.
pub fn parse_time(raw: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if s.len() == 8
            && let Ok(d) = NaiveDate::parse_from_str(s, "%Y%m%d")
        {
            return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
        }
        let v: f64 = s.parse().ok()?;
        // Past 1e11 seconds (year 5138) it can only be milliseconds; before 1e9 (2001) it
        // is not a social-media post's Unix time but some other number.
        let secs = if v >= 1e11 { v / 1000.0 } else { v };
        return (secs.is_finite() && (1e9..1e13).contains(&secs)).then_some(secs as i64);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%a %b %d %H:%M:%S %z %Y",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp());
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
    }
    DateTime::parse_from_rfc2822(s).ok().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_sources: 2,
            bucket_secs: 3600,
            history_buckets: 4,
            spike_min_texts: 10,
            ..Settings::default()
        }
    }

    #[test]
    fn timestamps_in_common_formats() {
        let t = 1_539_202_764; // 2018-10-10T20:19:24Z
        for s in [
            "2018-10-10T20:19:24Z",
            "2018-10-10T22:19:24+02:00",
            "2018-10-10 20:19:24",
            "2018-10-10T20:19:24",
            "2018-10-10 20:19:24.250",
            "2018-10-10 20:19:24+00:00",
            "1539202764",
            "1539202764000",
            "Wed Oct 10 20:19:24 +0000 2018",
            "Wed, 10 Oct 2018 20:19:24 +0000",
        ] {
            assert_eq!(parse_time(s), Some(t), "{s}");
        }
        assert_eq!(parse_time("2018-10-10"), Some(1_539_129_600));
        assert_eq!(parse_time("20181010"), Some(1_539_129_600));
        for bad in [
            "",
            "yesterday",
            "2018-13-45",
            "10/10/2018",
            "1.2.3",
            "42",
            "20181345",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn sources_are_bounded_and_the_busiest_take_the_slots() {
        let mut book = Book::new(settings());
        let t0 = 100 * 3600;
        for (name, n) in [("a", 5), ("b", 1), ("c", 50)] {
            let key = book.resolve(Some(name), n).to_string();
            book.add(&key, t0, [n, 0, 0]);
        }
        // Two slots: a and b took them; c is counted as other for now.
        let tracked: Vec<&str> = book.tracked().collect();
        assert_eq!(tracked, ["a", "b", "other", "unknown"]);
        assert_eq!(book.resolve(None, 1), UNKNOWN);
        assert_eq!(book.resolve(Some("   "), 1), UNKNOWN);
        // The next bucket: c is busier than b, so c replaces b and b's counts go to other.
        let removed = book.rerank(t0 + 3600);
        assert_eq!(removed, ["b"]);
        let tracked: Vec<&str> = book.tracked().collect();
        assert_eq!(tracked, ["a", "c", "other", "unknown"]);
        let r = book.report(t0 + 3600);
        let other = r
            .sources
            .iter()
            .find(|s| s.source == OTHER)
            .map(|s| s.total);
        assert_eq!(other, Some(51));
        // Re-ranking runs once per bucket.
        assert!(book.rerank(t0 + 3601).is_empty());
        // Two busy newcomers take both slots in one pass; neither evicts the other.
        for (name, n) in [("d", 40), ("e", 30)] {
            let key = book.resolve(Some(name), n).to_string();
            book.add(&key, t0 + 3600, [n, 0, 0]);
        }
        let mut removed = book.rerank(t0 + 7200);
        removed.sort();
        assert_eq!(removed, ["a", "c"]);
        let tracked: Vec<&str> = book.tracked().collect();
        assert_eq!(tracked, ["d", "e", "other", "unknown"]);
        // Thousands of distinct names never grow the tracked set or the candidates past cap.
        for i in 0..5000 {
            let name = format!("spam{i}");
            let key = book.resolve(Some(&name), 1).to_string();
            assert_eq!(key, OTHER);
        }
        assert_eq!(book.tracked().count(), 4);
        assert!(book.state().candidates.len() <= 64);
    }

    #[test]
    fn a_configured_list_tracks_only_those() {
        let mut s = settings();
        s.sources = vec!["acme".to_string()];
        let mut book = Book::new(s);
        assert_eq!(book.resolve(Some("acme"), 1), "acme");
        assert_eq!(book.resolve(Some("globex"), 1), OTHER);
        assert!(book.rerank(10 * 86_400).is_empty());
    }

    #[test]
    fn a_negative_spike_against_its_own_history() {
        let mut book = Book::new(settings());
        let key = book.resolve(Some("acme"), 1).to_string();
        let h = 3600;
        let t0 = 1000 * h;
        for i in 0..3 {
            book.add(&key, t0 + i * h, [10, 40, 50]);
        }
        // Same share: no spike.
        book.add(&key, t0 + 3 * h, [11, 40, 49]);
        let r = book.report(t0 + 3 * h);
        let acme = r.sources.iter().find(|s| s.source == "acme").cloned();
        let acme = acme.unwrap_or_else(|| panic!("acme missing"));
        assert!(!acme.alert);
        assert_eq!(acme.trend.len(), 4);
        assert!(
            acme.trend[0].spike.is_none(),
            "no history before the first bucket"
        );
        // A bucket with 60 % negative against a 10 % history.
        book.add(&key, t0 + 4 * h, [60, 20, 20]);
        let r = book.report(t0 + 4 * h + 10);
        let acme = r.sources.iter().find(|s| s.source == "acme").cloned();
        let acme = acme.unwrap_or_else(|| panic!("acme missing"));
        assert!(acme.alert, "{acme:?}");
        assert!((acme.negative_share - 0.6).abs() < 1e-9);
        let spike = acme.trend.last().and_then(|b| b.spike);
        assert!(spike.is_some_and(|s| s.z > 3.0 && s.baseline < 0.15));
        // History is bounded: 4 buckets of history plus the latest.
        assert_eq!(acme.trend.len(), 5);
        // Yesterday's spike does not alert today.
        let late = book.report(t0 + 30 * h);
        assert!(late.sources.iter().all(|s| !s.alert));
        // Buckets older than the history fall out of the trend, not out of the totals.
        book.add(&key, t0 + 9 * h, [1, 0, 0]);
        let r = book.report(t0 + 9 * h);
        let acme = r.sources.iter().find(|s| s.source == "acme").cloned();
        let acme = acme.unwrap_or_else(|| panic!("acme missing"));
        assert_eq!(acme.trend.len(), 1, "{:?}", acme.trend);
        assert_eq!(acme.total, 501);
    }

    #[test]
    fn restoring_merges_into_new_settings() {
        let mut book = Book::new(settings());
        for (name, n) in [("a", 5), ("b", 7)] {
            let key = book.resolve(Some(name), n).to_string();
            book.add(&key, 7200, [n, 0, 0]);
            book.add(&key, 7200 + 1800, [0, n, 0]);
        }
        let json = serde_json::to_string(book.state()).unwrap_or_default();
        let saved: BookState = serde_json::from_str(&json).unwrap_or_default();
        let mut s = settings();
        s.max_sources = 1;
        s.bucket_secs = 7200;
        let back = Book::restore(s, saved);
        let r = back.report(7200);
        let find = |n: &str| r.sources.iter().find(|s| s.source == n).cloned();
        let b = find("b").unwrap_or_else(|| panic!("b kept"));
        assert_eq!((b.total, b.trend.len()), (14, 1));
        assert!(find("a").is_none());
        assert_eq!(find(OTHER).map(|s| s.total), Some(10));
    }

    #[test]
    fn long_names_are_cut_and_tallies_are_bounded() {
        let long = "x".repeat(500);
        assert_eq!(clean_source(&long).map(str::len), Some(MAX_SOURCE_CHARS));
        let mut t = Tally::default();
        for i in 0..(TALLY_KEYS + 10) {
            t.add(Some(&format!("s{i}")), 0, Label::Neutral);
        }
        assert_eq!(t.iter().count(), TALLY_KEYS + 1);
        assert_eq!(t.by_label(), [0, TALLY_KEYS as u64 + 10, 0]);
    }
}
