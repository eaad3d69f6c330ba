//! VADER-style lexicon scorer: the fallback that answers while no trained model exists, and
//! the source of the fast model's lexicon features.
//!
//! The rules follow vaderSentiment 3.3.2 (Hutto and Gilbert, ICWSM 2014) where they matter:
//! negation within three preceding tokens (×-0.74), booster words (±0.293, damped with
//! distance), ALL-CAPS emphasis when the text mixes case (±0.733), `no` before a sentiment
//! word, `but` (sentiment before it ×0.5, after it ×1.5), `least`, `never so/this` (×1.25),
//! exclamation (+0.292 each, up to 4) and question marks, and
//! `compound = sum / sqrt(sum² + 15)`.
//!
//! Deliberate differences: a token is looked up as written first (so case-sensitive
//! emoticons such as `:D` match), then lower-cased, then with surrounding ASCII punctuation
//! removed (VADER keeps the punctuation on short words, so `ok!` never matched there); the
//! typographic apostrophe and the literal `\u2019` escape found in some tweets count as `'`
//! (so `don’t` negates); the multi-word idiom list is not used.
//!
//! Mapping to probabilities: with `c` the compound score, `t = 0.05` the VADER threshold and
//! `k = 4`, the logits are `negative = k(-c - t)`, `neutral = k(t - |c|)`,
//! `positive = k(c - t)`, and the probabilities are their softmax. The largest logit is
//! positive exactly when `c > t`, negative when `c < -t`, neutral when `|c| < t`, so the
//! argmax is VADER's rule label (`c >= 0.05` positive, `c <= -0.05` negative); on the
//! boundary itself, where two logits tie, the rule label is returned. A text with no
//! sentiment word at all gets about 0.43 neutral, a compound of ±0.5 about 0.96 for its side.

use crate::classifier::{Classifier, ModelKind, Prediction};
use sentimentd_data::Label;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

const B_INCR: f32 = 0.293;
const B_DECR: f32 = -0.293;
const C_INCR: f32 = 0.733;
const N_SCALAR: f32 = -0.74;
const EXCLAMATION: f32 = 0.292;
const THRESHOLD: f32 = 0.05;
const LOGIT_SCALE: f32 = 4.0;
const VERSION: &str = "lexicon-vader";

/// The bundled lexicon, compiled in so the fallback needs no files.
const EMBEDDED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/lexicons/vader/vader_lexicon.txt"
));

const NEGATIONS: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

const BOOSTERS_UP: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];

const BOOSTERS_DOWN: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sorta",
    "sortof",
    "sort-of",
];

#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    #[error("{}: cannot read lexicon: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: the lexicon has no entries")]
    Empty { origin: String },
}

/// Words whose identity matters to a rule, resolved once per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Word {
    Other,
    No,
    But,
    Never,
    SoThis,
    Without,
    Doubt,
    Least,
    AtVery,
    Kind,
    Sort,
    Of,
    Just,
    Enough,
    OrNor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Plain,
    Negation,
    Booster(i8),
}

/// Per-word facts that do not depend on the text, precomputed for lexicon and rule words.
#[derive(Clone, Copy, Debug)]
struct Entry {
    valence: Option<f32>,
    role: Role,
    word: Word,
}

/// One token of a text, as the rules see it.
#[derive(Clone, Copy, Debug)]
struct Tok {
    valence: Option<f32>,
    booster: f32,
    negation: bool,
    upper: bool,
    word: Word,
}

/// FxHash: lexicon lookups run for every token of every text the fast model scores, and
/// SipHash's flooding resistance buys nothing for a fixed, trusted key set.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<V> = HashMap<String, V, BuildHasherDefault<FxHasher>>;

/// VADER-style rule scorer over a sentiment lexicon.
pub struct LexiconClassifier {
    entries: FastMap<Entry>,
    lexicon_len: usize,
}

/// Scratch buffers reused across calls so scoring does not allocate per text.
#[derive(Default)]
struct Scratch {
    toks: Vec<Tok>,
    sentiments: Vec<f32>,
    lower: String,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// What the rules make of one text.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Analysis {
    compound: f32,
    /// VADER's `pos` and `neg` shares of the sentiment mass, in [0, 1].
    pos: f32,
    neg: f32,
    hits: usize,
}

impl LexiconClassifier {
    /// The lexicon bundled with sentimentd (`data/lexicons/vader/vader_lexicon.txt`).
    pub fn embedded() -> Self {
        // The embedded file is tested to parse; fall back to an empty lexicon (everything
        // neutral) rather than panic should that ever change.
        Self::parse(EMBEDDED, "embedded vader_lexicon.txt").unwrap_or_else(|e| {
            tracing::error!(error = %e, "embedded lexicon failed to parse");
            Self::with_lexicon(FastMap::default())
        })
    }

    /// The fallback scorer: the lexicon at `path` (`[data] lexicon`), or the bundled one.
    pub fn fallback(path: Option<&Path>) -> Result<Self, LexiconError> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::embedded()),
        }
    }

    /// Loads a VADER-format lexicon file: `token <TAB> mean valence [<TAB> ...]` per line.
    pub fn load(path: &Path) -> Result<Self, LexiconError> {
        let text = std::fs::read_to_string(path).map_err(|source| LexiconError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses VADER-format lexicon text. Named `from_str` for symmetry with `load`; it is not
    /// `FromStr` because the error names an origin.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Self, LexiconError> {
        Self::parse(text, "<lexicon>")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, LexiconError> {
        let mut lexicon = FastMap::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split('\t');
            let token = fields.next().unwrap_or("").trim();
            let value = fields.next().map(str::trim);
            let parse_error = |message: String| LexiconError::Parse {
                origin: origin.to_string(),
                line: i + 1,
                message,
            };
            let Some(value) = value else {
                return Err(parse_error(format!(
                    "expected `token<TAB>valence`, got {line:?}"
                )));
            };
            if token.is_empty() {
                return Err(parse_error("empty token".to_string()));
            }
            let valence: f32 = value
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| parse_error(format!("invalid valence {value:?}")))?;
            // Later entries win, as in vaderSentiment (the file lists a few tokens twice).
            lexicon.insert(token.to_string(), valence);
        }
        if lexicon.is_empty() {
            return Err(LexiconError::Empty {
                origin: origin.to_string(),
            });
        }
        Ok(Self::with_lexicon(lexicon))
    }

    fn with_lexicon(lexicon: FastMap<f32>) -> Self {
        let lexicon_len = lexicon.len();
        let mut entries: FastMap<Entry> = lexicon
            .into_iter()
            .map(|(k, v)| {
                let e = Entry {
                    valence: Some(v),
                    role: Role::Plain,
                    word: Word::Other,
                };
                (k, e)
            })
            .collect();
        let mut set = |word: &str, f: &dyn Fn(&mut Entry)| {
            let e = entries.entry(word.to_string()).or_insert(Entry {
                valence: None,
                role: Role::Plain,
                word: Word::Other,
            });
            f(e);
        };
        for w in NEGATIONS {
            set(w, &|e| e.role = Role::Negation);
        }
        for w in BOOSTERS_UP {
            set(w, &|e| e.role = Role::Booster(1));
        }
        for w in BOOSTERS_DOWN {
            set(w, &|e| e.role = Role::Booster(-1));
        }
        let words = [
            ("no", Word::No),
            ("but", Word::But),
            ("never", Word::Never),
            ("so", Word::SoThis),
            ("this", Word::SoThis),
            ("without", Word::Without),
            ("doubt", Word::Doubt),
            ("least", Word::Least),
            ("at", Word::AtVery),
            ("very", Word::AtVery),
            ("kind", Word::Kind),
            ("sort", Word::Sort),
            ("of", Word::Of),
            ("just", Word::Just),
            ("enough", Word::Enough),
            ("or", Word::OrNor),
            ("nor", Word::OrNor),
        ];
        for (w, word) in words {
            set(w, &|e| e.word = word);
        }
        LexiconClassifier {
            entries,
            lexicon_len,
        }
    }

    /// Number of distinct tokens in the lexicon.
    pub fn len(&self) -> usize {
        self.lexicon_len
    }

    pub fn is_empty(&self) -> bool {
        self.lexicon_len == 0
    }

    /// Valence of a token as listed (exact spelling), if any.
    pub fn valence(&self, token: &str) -> Option<f32> {
        self.entries.get(token).and_then(|e| e.valence)
    }

    /// The VADER compound score in [-1, 1].
    pub fn compound(&self, text: &str) -> f32 {
        self.analyse(text).compound
    }

    /// Extra input features for the fast model, each roughly in [-1, 1]:
    /// `[compound, positive share, -negative share, hits / (hits + 2)]`, where the shares are
    /// VADER's `pos` and `neg` (sentiment mass over all tokens) and `hits` counts the tokens
    /// that carry sentiment after the rules.
    pub fn features(&self, text: &str) -> [f32; 4] {
        let a = self.analyse(text);
        let hits = a.hits as f32;
        [a.compound, a.pos, -a.neg, hits / (hits + 2.0)]
    }

    fn lookup(&self, raw: &str, lower: &mut String) -> Tok {
        let upper = is_upper(raw);
        // Emoticons such as `:D` are listed with their case.
        let exact = self.entries.get(raw).copied();

        lower.clear();
        for c in raw.chars() {
            match c {
                'A'..='Z' => lower.push(c.to_ascii_lowercase()),
                '\u{2019}' | '\u{2018}' => lower.push('\''),
                c if c.is_ascii() => lower.push(c),
                c => lower.extend(c.to_lowercase()),
            }
        }
        if lower.contains("\\u2019") {
            *lower = lower.replace("\\u2019", "'");
        }
        let stripped = lower.trim_matches(|c: char| c.is_ascii_punctuation());
        let context = if stripped.is_empty() {
            lower.as_str()
        } else {
            stripped
        };
        let entry = exact
            .filter(|e| e.valence.is_some())
            .or_else(|| self.entries.get(lower.as_str()).copied())
            .or_else(|| self.entries.get(context).copied());
        let context_entry = if context.len() == lower.len() {
            entry
        } else {
            self.entries.get(context).copied()
        };
        let (role, word) = context_entry.map_or((Role::Plain, Word::Other), |e| (e.role, e.word));
        let negation = role == Role::Negation || context.contains("n't");
        let booster = match role {
            Role::Booster(1) => B_INCR,
            Role::Booster(_) => B_DECR,
            _ => 0.0,
        };
        Tok {
            valence: entry.and_then(|e| e.valence),
            booster,
            negation,
            upper,
            word,
        }
    }

    fn analyse(&self, text: &str) -> Analysis {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.analyse_with(text, &mut scratch),
            // Re-entrant use on one thread cannot happen today; stay correct if it does.
            Err(_) => self.analyse_with(text, &mut Scratch::default()),
        })
    }

    fn analyse_with(&self, text: &str, s: &mut Scratch) -> Analysis {
        let Scratch {
            toks,
            sentiments,
            lower,
        } = s;
        toks.clear();
        sentiments.clear();
        let mut upper_count = 0;
        for raw in text.split_whitespace() {
            let t = self.lookup(raw, lower);
            upper_count += usize::from(t.upper);
            toks.push(t);
        }
        let n = toks.len();
        let cap_diff = upper_count > 0 && upper_count < n;

        for i in 0..n {
            let t = toks[i];
            let kind_of =
                t.word == Word::Kind && toks.get(i + 1).is_some_and(|x| x.word == Word::Of);
            if t.booster != 0.0 || kind_of {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(valence_at(toks, i, cap_diff));
        }

        if let Some(b) = toks.iter().position(|t| t.word == Word::But) {
            for (i, s) in sentiments.iter_mut().enumerate() {
                if i < b {
                    *s *= 0.5;
                } else if i > b {
                    *s *= 1.5;
                }
            }
        }

        let (exclaims, questions) = text.bytes().fold((0u32, 0u32), |(e, q), b| {
            (e + u32::from(b == b'!'), q + u32::from(b == b'?'))
        });
        let mut punct = exclaims.min(4) as f32 * EXCLAMATION;
        if questions > 1 {
            punct += if questions <= 3 {
                questions as f32 * 0.18
            } else {
                0.96
            };
        }

        let mut sum: f32 = sentiments.iter().sum();
        if sum > 0.0 {
            sum += punct;
        } else if sum < 0.0 {
            sum -= punct;
        }
        let compound = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);

        let (mut pos, mut neg, mut neu, mut hits) = (0.0f32, 0.0f32, 0usize, 0usize);
        for &s in sentiments.iter() {
            if s > 0.0 {
                // +1 balances the neutral words that count 1 each, as in VADER.
                pos += s + 1.0;
                hits += 1;
            } else if s < 0.0 {
                neg += s - 1.0;
                hits += 1;
            } else {
                neu += 1;
            }
        }
        if pos > neg.abs() {
            pos += punct;
        } else if pos < neg.abs() {
            neg -= punct;
        }
        let total = pos + neg.abs() + neu as f32;
        let (pos, neg) = if total > 0.0 {
            ((pos / total).abs(), (neg / total).abs())
        } else {
            (0.0, 0.0)
        };
        Analysis {
            compound,
            pos,
            neg,
            hits,
        }
    }
}

fn valence_at(toks: &[Tok], i: usize, cap_diff: bool) -> f32 {
    let t = toks[i];
    let Some(base) = t.valence else {
        return 0.0;
    };
    let mut v = base;
    // "no" before a sentiment word is a determiner ("no problems"), not a sentiment.
    if t.word == Word::No && toks.get(i + 1).is_some_and(|x| x.valence.is_some()) {
        v = 0.0;
    }
    let w = |k: usize| toks[i - k].word;
    if (i > 0 && w(1) == Word::No)
        || (i > 1 && w(2) == Word::No)
        || (i > 2 && w(3) == Word::No && w(1) == Word::OrNor)
    {
        v = base * N_SCALAR;
    }
    if t.upper && cap_diff {
        v += if v > 0.0 { C_INCR } else { -C_INCR };
    }
    for start in 0..3 {
        if i <= start {
            break;
        }
        let p = toks[i - start - 1];
        if p.valence.is_some() {
            continue;
        }
        let mut s = scalar_inc_dec(p, v, cap_diff);
        if start == 1 {
            s *= 0.95;
        } else if start == 2 {
            s *= 0.9;
        }
        v += s;
        v = negation_check(v, toks, start, i);
        if start == 2 {
            v = dampener_bigrams(v, toks, i);
        }
    }
    // "least" negates unless it is "at least" / "very least".
    if i > 0 && w(1) == Word::Least && toks[i - 1].valence.is_none() {
        let at_or_very = i > 1 && w(2) == Word::AtVery;
        if !at_or_very {
            v *= N_SCALAR;
        }
    }
    v
}

/// VADER's multi-word dampeners (`kind of`, `sort of`, `just enough`) in the two word pairs
/// before the sentiment word; like VADER, applied once the third word back is checked.
fn dampener_bigrams(v: f32, toks: &[Tok], i: usize) -> f32 {
    let is_dampener = |a: Word, b: Word| {
        matches!(
            (a, b),
            (Word::Kind | Word::Sort, Word::Of) | (Word::Just, Word::Enough)
        )
    };
    let w = |k: usize| toks[i - k].word;
    let mut v = v;
    if is_dampener(w(3), w(2)) {
        v += B_DECR;
    }
    if is_dampener(w(2), w(1)) {
        v += B_DECR;
    }
    v
}

fn scalar_inc_dec(p: Tok, valence: f32, cap_diff: bool) -> f32 {
    if p.booster == 0.0 {
        return 0.0;
    }
    let mut s = if valence < 0.0 { -p.booster } else { p.booster };
    if p.upper && cap_diff {
        s += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    s
}

fn negation_check(v: f32, toks: &[Tok], start: usize, i: usize) -> f32 {
    let w = |k: usize| toks[i - k].word;
    let neg = |k: usize| toks[i - k].negation;
    match start {
        0 if neg(1) => v * N_SCALAR,
        1 if w(2) == Word::Never && w(1) == Word::SoThis => v * 1.25,
        1 if w(2) == Word::Without && w(1) == Word::Doubt => v,
        1 if neg(2) => v * N_SCALAR,
        2 if w(3) == Word::Never && (w(2) == Word::SoThis || w(1) == Word::SoThis) => v * 1.25,
        2 if w(3) == Word::Without && (w(2) == Word::Doubt || w(1) == Word::Doubt) => v,
        2 if neg(3) => v * N_SCALAR,
        _ => v,
    }
}

/// Python's `str.isupper`: at least one cased character and no lower-case one.
fn is_upper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// Softmax over the logits described in the module documentation.
fn probabilities(compound: f32) -> [f32; 3] {
    let c = compound;
    let z = [
        LOGIT_SCALE * (-c - THRESHOLD),
        LOGIT_SCALE * (THRESHOLD - c.abs()),
        LOGIT_SCALE * (c - THRESHOLD),
    ];
    let m = z[0].max(z[1]).max(z[2]);
    let e = z.map(|x| (x - m).exp());
    let sum = e[0] + e[1] + e[2];
    e.map(|x| x / sum)
}

fn rule_label(compound: f32) -> Label {
    if compound >= THRESHOLD {
        Label::Positive
    } else if compound <= -THRESHOLD {
        Label::Negative
    } else {
        Label::Neutral
    }
}

impl Classifier for LexiconClassifier {
    fn version(&self) -> &str {
        VERSION
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Lexicon
    }

    fn predict(&self, text: &str) -> Prediction {
        let compound = self.compound(text);
        let probabilities = probabilities(compound);
        let label = rule_label(compound);
        Prediction {
            label,
            score: probabilities[label.index()],
            probabilities,
        }
    }
}

/// The lexicon as a kind: the fallback that serves when no trained version does. It is built
/// from its word list, never trained or stored.
pub struct Lexicon;

impl crate::kinds::Kind for Lexicon {
    fn trains_fast_models(&self, _cfg: &sentimentd_config::Config) -> bool {
        false
    }

    fn train(
        &self,
        _inputs: crate::kinds::TrainInputs<'_>,
    ) -> Result<Box<dyn crate::kinds::Candidate>, crate::ModelError> {
        Err(crate::ModelError::Training(
            "the lexicon kind is the fallback; it is not trained (model.kind is fast or \
             transformer)"
                .into(),
        ))
    }

    fn load(
        &self,
        inputs: crate::kinds::LoadInputs<'_>,
    ) -> Result<std::sync::Arc<dyn Classifier>, crate::ModelError> {
        Err(crate::ModelError::Unsupported {
            version: inputs.manifest.version.clone(),
            reason: "the lexicon fallback is never stored as a version".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex() -> LexiconClassifier {
        LexiconClassifier::embedded()
    }

    #[test]
    fn embedded_lexicon_loads() {
        let l = lex();
        assert_eq!(l.len(), 7_506);
        assert_eq!(l.valence("good"), Some(1.9));
        // Duplicated token: the later line wins.
        assert_eq!(l.valence("lol"), Some(1.8));
        assert_eq!(l.valence(":D"), Some(2.3));
        assert_eq!(l.version(), "lexicon-vader");
        assert_eq!(l.kind(), ModelKind::Lexicon);
        assert!(l.is_fallback());
    }

    #[test]
    fn loads_from_file_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("lexicon-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("lex.txt");
        let _ = std::fs::write(&path, "good\t2.0\t0.5\t[2, 2]\nbad\t-2\n");
        let l = LexiconClassifier::load(&path);
        assert_eq!(l.as_ref().map(|l| l.len()).ok(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);

        let err = LexiconClassifier::from_str("good\t2\nbad\tterrible\n").err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("<lexicon>:2: invalid valence \"terrible\"")
        );
        let err = LexiconClassifier::from_str("just-a-word\n").err();
        assert!(err.is_some());
        assert!(matches!(
            LexiconClassifier::from_str("\n\n"),
            Err(LexiconError::Empty { .. })
        ));
        let missing = LexiconClassifier::load(Path::new("/nonexistent/lex.txt")).err();
        assert!(
            missing
                .map(|e| e.to_string())
                .unwrap_or_default()
                .starts_with("/nonexistent/lex.txt: cannot read lexicon")
        );
    }

    #[test]
    fn clear_cases() {
        let l = lex();
        assert_eq!(
            l.predict("I love this, it is great!").label,
            Label::Positive
        );
        assert_eq!(
            l.predict("This is terrible and I hate it").label,
            Label::Negative
        );
        assert_eq!(l.predict("The meeting is at 3pm").label, Label::Neutral);
        assert_eq!(l.predict("").label, Label::Neutral);
        assert_eq!(l.predict("   \n\t ").label, Label::Neutral);
    }

    #[test]
    fn matches_vader_reference_scores() {
        // Compound scores of vaderSentiment 3.3.2 for sentences from its README.
        let l = lex();
        let cases = [
            ("VADER is smart, handsome, and funny.", 0.8316),
            ("VADER is smart, handsome, and funny!", 0.8439),
            ("VADER is very smart, handsome, and funny.", 0.8545),
            ("VADER is VERY SMART, handsome, and FUNNY.", 0.9227),
            ("VADER is VERY SMART, handsome, and FUNNY!!!", 0.9342),
            ("The book was good.", 0.4404),
            ("The book was kind of good.", 0.3832),
            ("A really bad, horrible book.", -0.8211),
            ("At least it isn't a horrible book.", 0.431),
            ("Today SUX!", -0.5461),
            ("Not bad at all", 0.431),
            ("The book was only kind of good.", 0.3832),
            (
                "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
                0.9469,
            ),
            ("VADER is not smart, handsome, nor funny.", -0.7424),
            ("Today only kinda sux! But I'll get by, lol", 0.5249),
            ("Make sure you :) or :D today!", 0.8633),
        ];
        for (text, expected) in cases {
            let got = l.compound(text);
            assert!(
                (got - expected).abs() < 0.002,
                "{text:?}: got {got}, vaderSentiment says {expected}"
            );
        }
    }

    #[test]
    fn negation_boosters_caps_but_and_exclamation() {
        let l = lex();
        assert!(l.compound("not good") < l.compound("good"));
        assert!(l.compound("not good") < 0.0);
        assert!(l.compound("I don’t like it") < 0.0);
        assert!(l.compound("I don\\u2019t like it") < 0.0);
        assert!(l.compound("very good") > l.compound("good"));
        assert!(l.compound("slightly good") < l.compound("good"));
        assert!(l.compound("this is GOOD") > l.compound("this is good"));
        assert!(l.compound("good!!") > l.compound("good"));
        assert_eq!(l.compound("good!!!!!!"), l.compound("good!!!!"));
        // After "but" counts more than before it.
        assert!(l.compound("the food was good but the service was awful") < 0.0);
        assert!(l.compound("the food was awful but the service was good") > 0.0);
        // Emoticons, hashtags and trailing punctuation.
        assert!(l.compound(":)") > 0.0);
        assert!(l.compound(":(") < 0.0);
        assert!(l.compound("<3") > 0.0);
        assert!(l.compound("#happy") > 0.0);
        assert!(l.compound("ok!") > 0.0);
    }

    #[test]
    fn probabilities_agree_with_the_rule_label() {
        let mut c = -1.0f32;
        while c <= 1.0 {
            let p = probabilities(c);
            let sum: f32 = p.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            let label = rule_label(c);
            let best = p.iter().cloned().fold(f32::MIN, f32::max);
            assert_eq!(p[label.index()], best, "compound {c}: {p:?} vs {label}");
            c += 0.001;
        }
        for text in ["good", "bad", "table", "not bad", "I love it!!"] {
            let pred = lex().predict(text);
            assert_eq!(pred.score, pred.probabilities[pred.label.index()]);
            let from_probs = Prediction::from_probabilities(pred.probabilities);
            assert_eq!(from_probs.label, pred.label, "{text}");
        }
    }

    #[test]
    fn macro_recall_on_bundled_validation_split() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/datasets/tweeteval/val.csv");
        let val = match sentimentd_data::load_dataset(&[path], 1000) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        let l = lex();
        let mut confusion = [[0usize; 3]; 3];
        let t0 = std::time::Instant::now();
        for (text, gold) in val.texts.iter().zip(&val.labels) {
            confusion[gold.index()][l.predict(text).label.index()] += 1;
        }
        let elapsed = t0.elapsed();
        let recall: Vec<f64> = confusion
            .iter()
            .enumerate()
            .map(|(i, row)| row[i] as f64 / row.iter().sum::<usize>().max(1) as f64)
            .collect();
        let macro_recall = recall.iter().sum::<f64>() / 3.0;
        let correct: usize = (0..3).map(|i| confusion[i][i]).sum();
        println!(
            "lexicon on val.csv: macro-recall {macro_recall:.4}, accuracy {:.4}, \
             recall neg/neu/pos {:.3}/{:.3}/{:.3}, {} texts in {elapsed:?}\nconfusion (rows gold, \
             cols predicted, neg/neu/pos): {confusion:?}",
            correct as f64 / val.len() as f64,
            recall[0],
            recall[1],
            recall[2],
            val.len(),
        );
        assert!(macro_recall > 0.45, "macro-recall {macro_recall}");
    }

    #[test]
    fn features_are_bounded() {
        let l = lex();
        let f = l.features("I love this, it is great!");
        assert!(f[0] > 0.5 && f[1] > 0.0 && f[2] == 0.0 && f[3] > 0.0);
        let f = l.features("This is terrible and I hate it");
        assert!(f[0] < -0.5 && f[1] == 0.0 && f[2] < 0.0);
        assert_eq!(l.features("the meeting is at 3pm"), [0.0, 0.0, 0.0, 0.0]);
        let long = "good bad ".repeat(500) + "!!!!!";
        for x in l.features(&long) {
            assert!((-1.0..=1.0).contains(&x));
        }
    }
}
