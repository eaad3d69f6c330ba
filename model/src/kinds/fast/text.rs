//! Text normalisation and WordPiece tokenisation.
//!
//! The pipeline is defined once with the `tokenizers` crate and saved as `tokenizer.json`, so any
//! Hugging Face compatible tool reads the same vocabulary. Serving re-implements that same
//! pipeline without `tokenizers`' per-call allocations (offsets, alignments, `Encoding`), because
//! the predict path has a budget of a few microseconds per text; `tests::mirror_matches_tokenizers`
//! proves the two agree token for token, and [`TextPipeline::load`] refuses a `tokenizer.json`
//! whose pipeline is not the one mirrored here.

use regex::Regex;
use rustc_hash::FxHashMap;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{Lowercase, NFKC, Replace, Sequence};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl,
};
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::ModelError;

type HfTokenizer = TokenizerImpl<
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

pub const UNK_TOKEN: &str = "[UNK]";
const SUBWORD_PREFIX: &str = "##";
const MAX_CHARS_PER_WORD: usize = 100;

/// Literal replacements applied after NFKC and lower-casing, in order. Tweets carry HTML
/// entities and, in the 2013 SemEval data, literal `\u2019` escapes for the apostrophe.
const REPLACEMENTS: [(&str, &str); 6] = [
    ("\u{2019}", "'"),
    ("\\u2019", "'"),
    ("&amp;", "&"),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", "\""),
];

/// Links carry no sentiment of their own but their presence does; they all become one token.
pub const URL_PATTERN: &str = r"https?://\S+|www\.\S+";
const URL_REPLACEMENT: &str = " http ";

/// What a token is: words (with inner apostrophes, hashtags, mentions), emoticons, runs of
/// `!?.`, and any other single visible character (emoji, symbols). Text is lower-cased first,
/// so `:D` arrives as `:d`.
pub const TOKEN_PATTERN: &str = r"[\w#@]+(?:'\w+)*|[:;=][\-o'^]?[)\](\[dp/\\|}{3*]|</?3|[!?.]+|\S";

/// Normaliser + pre-tokeniser + WordPiece vocabulary.
pub struct TextPipeline {
    vocab: FxHashMap<String, u32>,
    /// Tokens by id, for the vocabulary size and debugging.
    vocab_len: usize,
    unk_id: u32,
    url_re: Regex,
    token_re: Regex,
    hf: HfTokenizer,
}

fn build_hf(model: ModelWrapper) -> Result<HfTokenizer, ModelError> {
    let tok_err = |e: tokenizers::Error| ModelError::Tokenizer(e.to_string());
    let mut normalizers: Vec<NormalizerWrapper> = vec![NFKC.into(), Lowercase.into()];
    for (from, to) in REPLACEMENTS {
        normalizers.push(Replace::new(from.to_string(), to).map_err(tok_err)?.into());
    }
    normalizers.push(
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(URL_PATTERN.to_string()),
            URL_REPLACEMENT,
        )
        .map_err(tok_err)?
        .into(),
    );
    let split = Split::new(
        SplitPattern::Regex(TOKEN_PATTERN.to_string()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(tok_err)?;
    TokenizerBuilder::new()
        .with_model(model)
        .with_normalizer(Some(Sequence::new(normalizers).into()))
        .with_pre_tokenizer(Some(split.into()))
        .build()
        .map_err(tok_err)
}

/// The pipeline without its vocabulary, as JSON: what `load` compares against.
fn pipeline_signature(hf: &HfTokenizer) -> Result<String, ModelError> {
    let n = serde_json::to_string(&hf.get_normalizer()).map_err(ModelError::json)?;
    let p = serde_json::to_string(&hf.get_pre_tokenizer()).map_err(ModelError::json)?;
    Ok(format!("{n}|{p}"))
}

impl TextPipeline {
    /// Learns a WordPiece vocabulary of at most `vocab_size` tokens from `texts`: the words
    /// seen at least `min_frequency` times, most frequent first, plus every character seen
    /// (word-initial and `##` continuation), so an unseen word still splits into known pieces.
    ///
    /// `tokenizers`' own WordPiece trainer breaks ties between equally frequent merges in hash
    /// map order, so two runs on the same data give different vocabularies and a run could not
    /// be reproduced from its seed; this frequency rule is deterministic.
    pub fn train(
        texts: &[String],
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<TextPipeline, ModelError> {
        let re = |p: &str| Regex::new(p).map_err(|e| ModelError::Tokenizer(e.to_string()));
        // A pipeline with an empty vocabulary, for its normaliser and pre-tokeniser.
        let bare = TextPipeline {
            vocab: FxHashMap::default(),
            vocab_len: 0,
            unk_id: 0,
            url_re: re(URL_PATTERN)?,
            token_re: re(TOKEN_PATTERN)?,
            hf: build_hf(ModelWrapper::WordPiece(WordPiece::default()))?,
        };
        let mut counts: FxHashMap<String, u64> = FxHashMap::default();
        let mut norm = String::new();
        for t in texts {
            bare.normalize_into(t, &mut norm);
            for w in bare.pre_tokens(&norm) {
                match counts.get_mut(w) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(w.to_string(), 1);
                    }
                }
            }
        }
        let mut pieces: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for w in counts.keys() {
            for (i, c) in w.chars().enumerate() {
                pieces.insert(if i == 0 {
                    c.to_string()
                } else {
                    format!("{SUBWORD_PREFIX}{c}")
                });
            }
        }
        let mut words: Vec<(&String, u64)> = counts
            .iter()
            .filter(|(w, c)| **c >= min_frequency.max(1) && !pieces.contains(*w))
            .map(|(w, c)| (w, *c))
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let room = vocab_size.saturating_sub(1 + pieces.len());
        let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::new();
        vocab.insert(UNK_TOKEN.to_string(), 0);
        for token in words
            .into_iter()
            .take(room)
            .map(|(w, _)| w.clone())
            .chain(pieces)
        {
            let id = vocab.len() as u32;
            vocab.entry(token).or_insert(id);
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token(UNK_TOKEN.to_string())
            .continuing_subword_prefix(SUBWORD_PREFIX.to_string())
            .max_input_chars_per_word(MAX_CHARS_PER_WORD)
            .build()
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Self::from_hf(build_hf(model.into())?)
    }

    /// Reads a `tokenizer.json` written by [`TextPipeline::save`].
    pub fn load(path: &Path) -> Result<TextPipeline, ModelError> {
        let hf = HfTokenizer::from_file(path).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("tokenizer.json cannot be read: {e}"),
        })?;
        let expected =
            pipeline_signature(&build_hf(ModelWrapper::WordPiece(WordPiece::default()))?)?;
        if pipeline_signature(&hf)? != expected {
            return Err(ModelError::Corrupt {
                path: path.to_path_buf(),
                reason: "tokenizer.json has a normaliser or pre-tokeniser this build does not \
                         implement"
                    .into(),
            });
        }
        if !matches!(hf.get_model(), ModelWrapper::WordPiece(_)) {
            return Err(ModelError::Corrupt {
                path: path.to_path_buf(),
                reason: "tokenizer.json does not hold a WordPiece model".into(),
            });
        }
        Self::from_hf(hf)
    }

    fn from_hf(hf: HfTokenizer) -> Result<TextPipeline, ModelError> {
        let vocab: FxHashMap<String, u32> = hf.get_vocab(false).into_iter().collect();
        let unk_id = *vocab
            .get(UNK_TOKEN)
            .ok_or_else(|| ModelError::Tokenizer("vocabulary has no [UNK] token".into()))?;
        let vocab_len = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let re = |p: &str| Regex::new(p).map_err(|e| ModelError::Tokenizer(e.to_string()));
        Ok(TextPipeline {
            vocab_len,
            vocab,
            unk_id,
            url_re: re(URL_PATTERN)?,
            token_re: re(TOKEN_PATTERN)?,
            hf,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.hf
            .save(path, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Number of ids the vocabulary uses (ids are `0..vocab_len`).
    pub fn vocab_len(&self) -> usize {
        self.vocab_len
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// NFKC, lower-case, literal replacements, links: the same steps as the saved normaliser.
    pub fn normalize_into(&self, text: &str, out: &mut String) {
        out.clear();
        if text.is_ascii() {
            // NFKC is the identity on ASCII, and ASCII lower-casing is one byte per byte.
            out.push_str(text);
            out.make_ascii_lowercase();
        } else {
            for (c, _) in text.nfkc() {
                out.extend(c.to_lowercase());
            }
        }
        for (from, to) in REPLACEMENTS {
            if out.contains(from) {
                *out = out.replace(from, to);
            }
        }
        if out.contains("http") || out.contains("www.") {
            let replaced = self.url_re.replace_all(out, URL_REPLACEMENT);
            if let std::borrow::Cow::Owned(s) = replaced {
                *out = s;
            }
        }
    }

    /// Pre-tokens of an already normalised text.
    pub fn pre_tokens<'a>(&'a self, normalized: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.token_re.find_iter(normalized).map(|m| m.as_str())
    }

    /// WordPiece ids of one pre-token, greedy longest match as `tokenizers` does it.
    pub fn word_ids(&self, word: &str, buf: &mut String, out: &mut Vec<u32>) {
        if let Some(&id) = self.vocab.get(word) {
            out.push(id);
            return;
        }
        if word.chars().count() > MAX_CHARS_PER_WORD {
            out.push(self.unk_id);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                buf.clear();
                if start > 0 {
                    buf.push_str(SUBWORD_PREFIX);
                }
                buf.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(buf.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= word[start..end]
                    .chars()
                    .next_back()
                    .map_or(1, |c| c.len_utf8());
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk_id);
                    return;
                }
            }
        }
    }

    /// Token ids of a text, identical to `tokenizers`' `encode(text).get_ids()`.
    pub fn encode_ids(&self, text: &str) -> Vec<u32> {
        let mut norm = String::new();
        let mut buf = String::new();
        let mut ids = Vec::new();
        self.normalize_into(text, &mut norm);
        for w in self.pre_tokens(&norm) {
            self.word_ids(w, &mut buf, &mut ids);
        }
        ids
    }

    /// The reference encoding by the `tokenizers` crate itself.
    pub fn encode_ids_reference(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.hf
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<String> {
        [
            "I love this phone, it's great!!! :)",
            "@user worst service ever... not happy :(",
            "Check https://example.com/x?y=1 NOW &amp; tell me",
            "Don\\u2019t you dare \u{1F600}\u{1F600}",
            "the game tomorrow is at 8pm #football",
            "ｆｕｌｌｗｉｄｔｈ text and Ωmega",
            "soooooo goooood <3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn mirror_matches_tokenizers() {
        let texts = sample();
        let p = TextPipeline::train(&texts, 200, 1).unwrap();
        for t in texts.iter().chain(
            [
                "unseenword zzzz qqq",
                "",
                "   ",
                "ÀÉÎ ñ ß ŉ ǅ",
                &"x".repeat(150),
            ]
            .map(String::from)
            .iter(),
        ) {
            assert_eq!(
                p.encode_ids(t),
                p.encode_ids_reference(t).unwrap(),
                "text {t:?}"
            );
        }
    }

    #[test]
    fn vocabulary_training_is_deterministic() {
        let texts: Vec<String> = (0..400)
            .map(|i| {
                format!(
                    "word{} shared tokens here and there {} {}",
                    i % 37,
                    i % 11,
                    i % 5
                )
            })
            .collect();
        let a = TextPipeline::train(&texts, 120, 1).unwrap();
        let b = TextPipeline::train(&texts, 120, 1).unwrap();
        let mut va: Vec<_> = a.vocab.iter().collect();
        let mut vb: Vec<_> = b.vocab.iter().collect();
        va.sort();
        vb.sort();
        assert_eq!(va, vb);
    }

    #[test]
    fn tokenizer_json_round_trip() {
        let texts = sample();
        let p = TextPipeline::train(&texts, 200, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        p.save(&path).unwrap();
        let q = TextPipeline::load(&path).unwrap();
        assert_eq!(p.vocab_len(), q.vocab_len());
        for t in &texts {
            assert_eq!(p.encode_ids(t), q.encode_ids(t));
            assert_eq!(q.encode_ids(t), q.encode_ids_reference(t).unwrap());
        }
    }

    #[test]
    fn corrupt_tokenizer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{\"not\": \"a tokenizer\"").unwrap();
        let err = TextPipeline::load(&path).err().unwrap();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn normalises_links_entities_and_case() {
        let p = TextPipeline::train(&sample(), 200, 1).unwrap();
        let mut out = String::new();
        p.normalize_into("Look HTTPS://t.co/abc &amp; Don\u{2019}t", &mut out);
        assert_eq!(out, "look  http  & don't");
        let toks: Vec<&str> = p.pre_tokens(&out).collect();
        assert_eq!(toks, ["look", "http", "&", "don't"]);
        p.normalize_into(":D :-( <3 !!!", &mut out);
        let toks: Vec<&str> = p.pre_tokens(&out).collect();
        assert_eq!(toks, [":d", ":-(", "<3", "!!!"]);
    }
}
