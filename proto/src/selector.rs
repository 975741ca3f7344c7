//! Selectors: the `type:value` facts an attestor observes about a caller,
//! e.g. `unix:uid:1000` (type `unix`, value `uid:1000`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The selector type produced by the unix workload attestor.
pub const UNIX_SELECTOR_TYPE: &str = "unix";

/// The facts the unix attestor can observe: `unix:<key>:<value>`.
pub const UNIX_SELECTOR_KEYS: [&str; 8] = [
    "uid",
    "gid",
    "user",
    "group",
    "supplementary_gid",
    "supplementary_group",
    "path",
    "sha256",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector {0:?} is not of the form type:value")]
    MissingSeparator(String),
    #[error("selector {0:?} has an empty type")]
    EmptyType(String),
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    #[error("selector type {0:?} may only contain lowercase letters, digits, '_' and '-'")]
    BadType(String),
    #[error(
        "unknown selector {0:?}: known types are unix:uid, unix:gid, unix:user, unix:group, unix:supplementary_gid, unix:supplementary_group, unix:path, unix:sha256"
    )]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    pub fn new(kind: &str, value: impl Into<String>) -> Result<Self, SelectorError> {
        let value = value.into();
        let display = format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(display));
        }
        if !kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(display));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value,
        })
    }

    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) = input
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingSeparator(input.to_owned()))?;
        Self::new(kind, value)
    }

    /// Parses a selector and checks that an attestor of this release produces it.
    pub fn parse_known(input: &str) -> Result<Self, SelectorError> {
        let selector = Self::parse(input)?;
        let known = selector.kind == UNIX_SELECTOR_TYPE
            && selector
                .value
                .split_once(':')
                .is_some_and(|(key, v)| UNIX_SELECTOR_KEYS.contains(&key) && !v.is_empty());
        if known {
            Ok(selector)
        } else {
            Err(SelectorError::Unknown(input.to_owned()))
        }
    }

    /// The attestor that produces it, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// What the attestor observed, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_and_value() -> Result<(), SelectorError> {
        let s = Selector::parse("unix:uid:1000")?;
        assert_eq!((s.kind(), s.value()), ("unix", "uid:1000"));
        assert_eq!(s.to_string(), "unix:uid:1000");
        Ok(())
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            Selector::parse("unix"),
            Err(SelectorError::MissingSeparator(_))
        ));
        assert!(matches!(
            Selector::parse(":uid:1"),
            Err(SelectorError::EmptyType(_))
        ));
        assert!(matches!(
            Selector::parse("unix:"),
            Err(SelectorError::EmptyValue(_))
        ));
        assert!(matches!(
            Selector::parse("Unix:uid:1"),
            Err(SelectorError::BadType(_))
        ));
    }

    #[test]
    fn known_selectors_are_the_unix_attestors() {
        assert!(Selector::parse_known("unix:uid:1000").is_ok());
        assert!(Selector::parse_known("unix:sha256:ab12").is_ok());
        assert!(matches!(
            Selector::parse_known("k8s:ns:default"),
            Err(SelectorError::Unknown(_))
        ));
        assert!(matches!(
            Selector::parse_known("unix:shoe:9"),
            Err(SelectorError::Unknown(_))
        ));
        assert!(matches!(
            Selector::parse_known("unix:uid:"),
            Err(SelectorError::Unknown(_))
        ));
    }
}
