//! Event topics: NATS-style subjects (`.`-separated tokens) and patterns with `*`
//! (exactly one token) and `>` (one or more tokens, last position only).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest subject or pattern accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;

/// Why a subject or pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_SUBJECT_LEN`].
    #[error("topic is {len} bytes, the limit is {max}")]
    TooLong {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A token is empty (`a..b`, leading or trailing dot).
    #[error("topic has an empty token at position {index}")]
    EmptyToken {
        /// Zero-based token index.
        index: usize,
    },
    /// A token contains whitespace.
    #[error("topic token {index} contains whitespace")]
    Whitespace {
        /// Zero-based token index.
        index: usize,
    },
    /// A wildcard appears in a subject that is published to.
    #[error("a published subject cannot contain wildcards ('*' or '>')")]
    WildcardInSubject,
    /// `>` is not the last token, or a wildcard is mixed with other characters.
    #[error("wildcard misplaced at token {index}: '*' and '>' must be whole tokens, '>' last")]
    MisplacedWildcard {
        /// Zero-based token index.
        index: usize,
    },
}

fn check_tokens(s: &str) -> Result<Vec<&str>, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: MAX_SUBJECT_LEN,
        });
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (index, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(TopicError::EmptyToken { index });
        }
        if t.chars().any(char::is_whitespace) {
            return Err(TopicError::Whitespace { index });
        }
    }
    Ok(tokens)
}

/// A concrete subject an event is published on, e.g. `mesh.event.user.login`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    /// The subject text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Subject {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        let tokens = check_tokens(s)?;
        if tokens.iter().any(|t| t.contains('*') || t.contains('>')) {
            return Err(TopicError::WildcardInSubject);
        }
        Ok(Subject(s.to_string()))
    }
}

/// A subscription pattern, e.g. `mesh.event.*.login` or `mesh.event.>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern {
    text: String,
}

impl SubjectPattern {
    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `subject` matches this pattern.
    pub fn matches(&self, subject: &Subject) -> bool {
        let mut subj = subject.0.split('.');
        for p in self.text.split('.') {
            match p {
                ">" => return subj.next().is_some(),
                "*" => {
                    if subj.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if subj.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        subj.next().is_none()
    }

    /// The literal tokens before the first wildcard (for indexing).
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.text.split('.').take_while(|t| *t != "*" && *t != ">")
    }
}

impl FromStr for SubjectPattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        let tokens = check_tokens(s)?;
        let last = tokens.len() - 1;
        for (index, t) in tokens.iter().enumerate() {
            let has_wild = t.contains('*') || t.contains('>');
            let whole = *t == "*" || (*t == ">" && index == last);
            if has_wild && !whole {
                return Err(TopicError::MisplacedWildcard { index });
            }
        }
        Ok(SubjectPattern {
            text: s.to_string(),
        })
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Subject);
string_serde!(SubjectPattern);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, s: &str) -> bool {
        p.parse::<SubjectPattern>()
            .unwrap()
            .matches(&s.parse().unwrap())
    }

    #[test]
    fn nats_semantics() {
        assert!(m(
            "mesh.event.scraping.*",
            "mesh.event.scraping.profile_found"
        ));
        assert!(!m(
            "mesh.event.scraping.*",
            "mesh.event.scraping.linkedin.profile_found"
        ));
        assert!(m("mesh.event.>", "mesh.event.a"));
        assert!(m("mesh.event.>", "mesh.event.a.b.c"));
        assert!(!m("mesh.event.>", "mesh.event"));
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.b.d"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("*", "x"));
        assert!(m(">", "x.y"));
    }

    #[test]
    fn invalid_patterns_and_subjects() {
        assert_eq!("".parse::<Subject>(), Err(TopicError::Empty));
        assert_eq!(
            "a..b".parse::<Subject>(),
            Err(TopicError::EmptyToken { index: 1 })
        );
        assert_eq!("a.*".parse::<Subject>(), Err(TopicError::WildcardInSubject));
        assert_eq!(
            "a.>.b".parse::<SubjectPattern>(),
            Err(TopicError::MisplacedWildcard { index: 1 })
        );
        assert_eq!(
            "a.b*".parse::<SubjectPattern>(),
            Err(TopicError::MisplacedWildcard { index: 1 })
        );
        assert!("a b".parse::<Subject>().is_err());
        assert!("x".repeat(600).parse::<Subject>().is_err());
    }

    proptest! {
        #[test]
        fn a_subject_matches_itself_and_gt_of_its_prefix(toks in prop::collection::vec("[a-z0-9_]{1,6}", 1..6)) {
            let text = toks.join(".");
            let subj: Subject = text.parse().unwrap();
            prop_assert!(text.parse::<SubjectPattern>().unwrap().matches(&subj));
            if toks.len() > 1 {
                let gt = format!("{}.>", toks[0]);
                prop_assert!(gt.parse::<SubjectPattern>().unwrap().matches(&subj));
            }
            let stars = vec!["*"; toks.len()].join(".");
            prop_assert!(stars.parse::<SubjectPattern>().unwrap().matches(&subj));
        }

        #[test]
        fn parsing_garbage_never_panics(s in ".{0,64}") {
            let _ = s.parse::<Subject>();
            let _ = s.parse::<SubjectPattern>();
        }
    }
}
