//! The three sentiment classes and how they are spelled in input files.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Sentiment class. The discriminant is the TweetEval id and the model's output index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Negative = 0,
    Neutral = 1,
    Positive = 2,
}

impl Label {
    pub const ALL: [Label; 3] = [Label::Negative, Label::Neutral, Label::Positive];
    pub const COUNT: usize = 3;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Label> {
        Label::ALL.get(i).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Negative => "negative",
            Label::Neutral => "neutral",
            Label::Positive => "positive",
        }
    }

    /// Accepts `negative|neutral|positive` in any case (surrounding blanks ignored)
    /// and the TweetEval ids `0|1|2`.
    pub fn parse(s: &str) -> Option<Label> {
        let s = s.trim();
        match s {
            "0" => return Some(Label::Negative),
            "1" => return Some(Label::Neutral),
            "2" => return Some(Label::Positive),
            _ => {}
        }
        Label::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_in_any_case_and_ids() {
        assert_eq!(Label::parse("Positive"), Some(Label::Positive));
        assert_eq!(Label::parse(" NEGATIVE "), Some(Label::Negative));
        assert_eq!(Label::parse("1"), Some(Label::Neutral));
        assert_eq!(Label::parse("3"), None);
        assert_eq!(Label::parse("meh"), None);
    }
}
