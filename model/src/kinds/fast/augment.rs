//! Texts made from the training texts for distillation (Tang et al. 2019, "Distilling
//! task-specific knowledge from BERT into simple neural networks"): the teacher labels them,
//! and the student learns from the teacher's view of texts no label was written for. A
//! bag-of-n-grams student learns little from a teacher's probabilities for texts it already
//! has labels for; what shifts when words go is where the teacher knows more.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Salt for the augmentation's random stream, apart from the selection carve and the epochs'.
const AUGMENT_SALT: u64 = 0xA06E_0000_0000_0003;
/// Chance that a copy is a contiguous run of the text's words rather than the text with
/// words dropped.
const NGRAM_SHARE: f64 = 0.25;
/// Longest run an n-gram copy keeps.
const NGRAM_MAX: usize = 5;
/// Chance that a word is dropped from a copy that drops words.
const DROP_WORD: f64 = 0.15;

/// One made text and the training row it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Augmented {
    pub text: String,
    pub source: usize,
}

/// Up to `copies` new texts per text of `texts`, seeded: each either a run of 1 to 5 of its
/// words (a quarter of them) or the text with each word dropped at 15%. A copy equal to its
/// text or to a copy already made from it is not kept, so a one-word text adds nothing.
pub fn augment(texts: &[String], copies: usize, seed: u64) -> Vec<Augmented> {
    let mut rng = StdRng::seed_from_u64(seed ^ AUGMENT_SALT);
    let mut out = Vec::with_capacity(texts.len() * copies);
    for (source, text) in texts.iter().enumerate() {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.len() < 2 {
            continue;
        }
        let mut made: Vec<String> = Vec::with_capacity(copies);
        for _ in 0..copies {
            let kept: Vec<&str> = if rng.random_bool(NGRAM_SHARE) {
                let n = rng.random_range(1..=NGRAM_MAX.min(words.len() - 1));
                let start = rng.random_range(0..=words.len() - n);
                words[start..start + n].to_vec()
            } else {
                let kept: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|_| !rng.random_bool(DROP_WORD))
                    .collect();
                if kept.is_empty() {
                    vec![words[rng.random_range(0..words.len())]]
                } else {
                    kept
                }
            };
            let copy = kept.join(" ");
            if copy != words.join(" ") && !made.contains(&copy) {
                made.push(copy);
            }
        }
        out.extend(made.into_iter().map(|text| Augmented { text, source }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_new_seeded_and_made_of_the_texts_words() {
        let texts: Vec<String> = [
            "the service was awful and the food was cold",
            "lovely",
            "not bad at all really",
        ]
        .map(String::from)
        .to_vec();
        let a = augment(&texts, 3, 42);
        assert_eq!(a, augment(&texts, 3, 42));
        assert_ne!(a, augment(&texts, 3, 7));
        assert!(
            a.iter().all(|x| x.source != 1),
            "a one-word text adds nothing"
        );
        assert!(!a.is_empty() && a.len() <= 6);
        for x in &a {
            let source: Vec<&str> = texts[x.source].split_whitespace().collect();
            assert_ne!(x.text, texts[x.source]);
            assert!(
                x.text.split_whitespace().all(|w| source.contains(&w)),
                "{x:?}"
            );
        }
        assert!(augment(&texts, 0, 42).is_empty());
    }
}
