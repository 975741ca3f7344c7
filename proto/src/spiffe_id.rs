//! SPIFFE IDs and trust domains, parsed by every rule of the SPIFFE ID standard.
//!
//! `spiffe://` + trust domain (`[a-z0-9._-]+`, at most 255 bytes) + zero or more
//! `/segment`s (`[A-Za-z0-9._-]+`, never `.` or `..`), with no trailing slash,
//! port, userinfo, query, fragment or percent-encoding, and at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain; each variant is one rule of the standard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID must start with the scheme \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("trust domain may not contain a port")]
    Port,
    #[error("trust domain may not contain userinfo")]
    UserInfo,
    #[error(
        "trust domain may only contain lowercase letters, digits, '.', '-' and '_' (found {0:?})"
    )]
    BadTrustDomainChar(char),
    #[error("path may not end with a slash")]
    TrailingSlash,
    #[error("path may not contain an empty segment")]
    EmptySegment,
    #[error("path may not contain a '.' or '..' segment")]
    DotSegment,
    #[error("SPIFFE ID may not contain a query")]
    Query,
    #[error("SPIFFE ID may not contain a fragment")]
    Fragment,
    #[error("SPIFFE ID may not contain percent-encoding")]
    PercentEncoding,
    #[error("path may only contain letters, digits, '.', '-' and '_' (found {0:?})")]
    BadPathChar(char),
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
}

/// The first path segment of the IDs the system gives itself (its server,
/// the local agent, agents attested with a join token): `/lanyard/...`.
pub const SYSTEM_SEGMENT: &str = "lanyard";

/// Why a valid SPIFFE ID may not be handed to a workload or an agent by an
/// operator; the message reads after the ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssignError {
    #[error("is the trust domain's own ID: a workload or agent ID needs a path")]
    NoPath,
    #[error("is under /lanyard/, which is reserved for the system (its server and agents)")]
    Reserved,
}

/// The name of a trust domain, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`: the key of its bundle.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// The SPIFFE ID with this trust domain and `path` (which must start with `/`).
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the end of the trust domain).
    path_start: usize,
}

impl SpiffeId {
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (trust_domain, path) = rest.split_at(td_len);
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            id: input.to_owned(),
            path_start: SCHEME.len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.as_str()
    }

    /// True when the first path segment is `lanyard`: the system's IDs.
    pub fn is_reserved(&self) -> bool {
        self.path().split('/').nth(1) == Some(SYSTEM_SEGMENT)
    }

    /// May an operator give this ID to an entry or a join token? Not the
    /// bare trust-domain ID (it names the bundle, not a workload) and not a
    /// reserved one (a remote node holding the local agent's ID would get
    /// every identity registered on the server's host).
    pub fn check_assignable(&self) -> Result<(), AssignError> {
        if self.path().is_empty() {
            return Err(AssignError::NoPath);
        }
        if self.is_reserved() {
            return Err(AssignError::Reserved);
        }
        Ok(())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(&raw).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            other => return Err(reserved_or(other, SpiffeIdError::BadTrustDomainChar)),
        }
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty prefix.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(reserved_or(bad, SpiffeIdError::BadPathChar));
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
    }
    Ok(())
}

/// Names the URI feature a reserved character would introduce, else the plain bad-character error.
fn reserved_or(c: char, otherwise: fn(char) -> SpiffeIdError) -> SpiffeIdError {
    match c {
        '?' => SpiffeIdError::Query,
        '#' => SpiffeIdError::Fragment,
        '%' => SpiffeIdError::PercentEncoding,
        other => otherwise(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_split() {
        let cases = [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://a-b_c.9/ns/prod/sa/Web_1.x-y",
                "a-b_c.9",
                "/ns/prod/sa/Web_1.x-y",
            ),
            ("spiffe://td/..a/a../...", "td", "/..a/a../..."),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.as_str(), input);
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
        }
    }

    #[test]
    fn each_rule_rejects_its_violation() {
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let max_td = format!("spiffe://{}", "a".repeat(255));
        let long_id = format!(
            "spiffe://td/{}",
            "a".repeat(2048 - "spiffe://td/".len() + 1)
        );
        let cases: Vec<(&str, &str, SpiffeIdError)> = vec![
            ("empty string", "", SpiffeIdError::Empty),
            (
                "scheme missing",
                "example.org/x",
                SpiffeIdError::WrongScheme,
            ),
            (
                "other scheme",
                "https://example.org/x",
                SpiffeIdError::WrongScheme,
            ),
            (
                "uppercase scheme",
                "SPIFFE://example.org",
                SpiffeIdError::WrongScheme,
            ),
            (
                "single slash",
                "spiffe:/example.org",
                SpiffeIdError::WrongScheme,
            ),
            (
                "empty trust domain",
                "spiffe://",
                SpiffeIdError::EmptyTrustDomain,
            ),
            (
                "empty trust domain with path",
                "spiffe:///path",
                SpiffeIdError::EmptyTrustDomain,
            ),
            (
                "uppercase trust domain",
                "spiffe://Example.org",
                SpiffeIdError::BadTrustDomainChar('E'),
            ),
            (
                "space in trust domain",
                "spiffe://exa mple",
                SpiffeIdError::BadTrustDomainChar(' '),
            ),
            (
                "non-ASCII trust domain",
                "spiffe://exämple.org",
                SpiffeIdError::BadTrustDomainChar('ä'),
            ),
            ("port", "spiffe://example.org:8443/x", SpiffeIdError::Port),
            (
                "userinfo",
                "spiffe://user@example.org/x",
                SpiffeIdError::UserInfo,
            ),
            (
                "trust domain over 255 bytes",
                &long_td,
                SpiffeIdError::TrustDomainTooLong,
            ),
            (
                "trailing slash after trust domain",
                "spiffe://example.org/",
                SpiffeIdError::TrailingSlash,
            ),
            (
                "trailing slash after path",
                "spiffe://example.org/a/",
                SpiffeIdError::TrailingSlash,
            ),
            (
                "empty segment",
                "spiffe://example.org/a//b",
                SpiffeIdError::EmptySegment,
            ),
            (
                "dot segment",
                "spiffe://example.org/a/./b",
                SpiffeIdError::DotSegment,
            ),
            (
                "dot-dot segment",
                "spiffe://example.org/a/..",
                SpiffeIdError::DotSegment,
            ),
            ("query", "spiffe://example.org/a?x=1", SpiffeIdError::Query),
            (
                "query on trust domain",
                "spiffe://example.org?x=1",
                SpiffeIdError::Query,
            ),
            (
                "fragment",
                "spiffe://example.org/a#frag",
                SpiffeIdError::Fragment,
            ),
            (
                "percent-encoding",
                "spiffe://example.org/a%20b",
                SpiffeIdError::PercentEncoding,
            ),
            (
                "bad path character",
                "spiffe://example.org/a b",
                SpiffeIdError::BadPathChar(' '),
            ),
            (
                "non-ASCII path",
                "spiffe://example.org/ü",
                SpiffeIdError::BadPathChar('ü'),
            ),
            ("id over 2048 bytes", &long_id, SpiffeIdError::TooLong),
        ];
        for (rule, input, expected) in cases {
            assert_eq!(SpiffeId::parse(input), Err(expected), "rule: {rule}");
        }
        assert!(
            SpiffeId::parse(&max_td).is_ok(),
            "255-byte trust domain is allowed"
        );
        let max_id = format!("spiffe://td/{}", "a".repeat(2048 - "spiffe://td/".len()));
        assert!(SpiffeId::parse(&max_id).is_ok(), "2048-byte id is allowed");
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(
            TrustDomain::new("example.org").map(|t| t.id_string()),
            Ok("spiffe://example.org".into())
        );
        assert_eq!(TrustDomain::new(""), Err(SpiffeIdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("spiffe://example.org"),
            Err(SpiffeIdError::Port)
        );
        assert_eq!(
            TrustDomain::new("Example"),
            Err(SpiffeIdError::BadTrustDomainChar('E'))
        );
    }

    #[test]
    fn system_ids_and_the_bare_trust_domain_are_not_assignable() -> Result<(), SpiffeIdError> {
        for reserved in [
            "spiffe://example.org/lanyard",
            "spiffe://example.org/lanyard/agent/local",
            "spiffe://example.org/lanyard/server",
            "spiffe://example.org/lanyard/agent/join_token/abc",
        ] {
            let id = SpiffeId::parse(reserved)?;
            assert!(id.is_reserved(), "{reserved}");
            assert_eq!(
                id.check_assignable(),
                Err(AssignError::Reserved),
                "{reserved}"
            );
        }
        assert_eq!(
            SpiffeId::parse("spiffe://example.org")?.check_assignable(),
            Err(AssignError::NoPath)
        );
        for fine in [
            "spiffe://example.org/lanyardx",
            "spiffe://example.org/lanyard-agent",
            "spiffe://example.org/Lanyard/agent",
            "spiffe://example.org/web/lanyard/agent/local",
            "spiffe://lanyard/web",
        ] {
            let id = SpiffeId::parse(fine)?;
            assert_eq!(id.check_assignable(), Ok(()), "{fine}");
        }
        Ok(())
    }

    #[test]
    fn membership_and_serde_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let td = TrustDomain::new("example.org")?;
        let id = td.id_with_path("/web")?;
        assert!(id.is_member_of(&td));
        assert!(!id.is_member_of(&TrustDomain::new("example.com")?));
        let json = serde_json::to_string(&id)?;
        assert_eq!(json, "\"spiffe://example.org/web\"");
        let back: SpiffeId = serde_json::from_str(&json)?;
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/\"").is_err());
        Ok(())
    }
}
