//! Selectors: the `type:value` facts an attestor observes about a caller,
//! e.g. `unix:uid:1000` (type `unix`, value `uid:1000`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The selector type produced by the unix workload attestor.
pub const UNIX_SELECTOR_TYPE: &str = "unix";
/// The selector type of a caller's systemd unit and slice (from its cgroup).
pub const SYSTEMD_SELECTOR_TYPE: &str = "systemd";
/// The selector type of a caller's container (from its cgroup, and the
/// container engine's API when one is configured).
pub const CONTAINER_SELECTOR_TYPE: &str = "container";

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

/// `systemd:unit:<name>`, `systemd:slice:<name>`.
pub const SYSTEMD_SELECTOR_KEYS: [&str; 2] = ["unit", "slice"];

/// `container:<key>:<value>`; `label` values are `<label key>:<label value>`.
pub const CONTAINER_SELECTOR_KEYS: [&str; 6] =
    ["id", "runtime", "image", "image_id", "name", "label"];

/// The container runtimes whose cgroup paths the agent recognises.
pub const CONTAINER_RUNTIMES: [&str; 4] = ["docker", "podman", "containerd", "cri-o"];

/// The keys workload attestation knows for `kind`, if it is a workload kind.
fn workload_keys(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        UNIX_SELECTOR_TYPE => Some(&UNIX_SELECTOR_KEYS),
        SYSTEMD_SELECTOR_TYPE => Some(&SYSTEMD_SELECTOR_KEYS),
        CONTAINER_SELECTOR_TYPE => Some(&CONTAINER_SELECTOR_KEYS),
        _ => None,
    }
}

/// The facts node attestation proves about a node, as `<method>:<key>:<value>`
/// (keys may hold a colon themselves: `x509pop:subject:cn:web-1`).
pub const NODE_SELECTOR_KEYS: [(&str, &str); 8] = [
    ("x509pop", "subject:cn"),
    ("x509pop", "subject:ou"),
    ("x509pop", "san:dns"),
    ("x509pop", "ca:sha256"),
    ("x509pop", "serial"),
    ("sshpop", "principal"),
    ("sshpop", "key_id"),
    ("sshpop", "ca:sha256"),
];

/// Longest value of a node selector taken from a certificate (a CN, an OU,
/// a principal, a key ID): longer ones are not turned into selectors.
pub const MAX_NODE_SELECTOR_VALUE_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
        "unknown selector {0:?}: known are unix:uid, unix:gid, unix:user, unix:group, unix:supplementary_gid, unix:supplementary_group, unix:path, unix:sha256, systemd:unit, systemd:slice, container:id, container:runtime, container:image, container:image_id, container:name, container:label"
    )]
    Unknown(String),
    /// A known selector whose value the attestor can never produce.
    #[error("selector {selector:?} can never match: {rule}")]
    BadValue {
        selector: String,
        rule: &'static str,
    },
    #[error(
        "unknown node selector {0:?}: known are x509pop:subject:cn, x509pop:subject:ou, x509pop:san:dns, x509pop:ca:sha256, x509pop:serial, sshpop:principal, sshpop:key_id, sshpop:ca:sha256"
    )]
    UnknownNode(String),
    /// An entry's selectors name a binary but no uid or gid (see [`check_anchored`]).
    #[error("{BINARY_WITHOUT_UID_RULE}")]
    BinaryWithoutUid,
    /// An entry's selectors name a systemd unit or slice but no uid or gid.
    #[error("{UNIT_WITHOUT_UID_RULE}")]
    UnitWithoutUid,
}

/// Why an entry that selects `unix:path` or `unix:sha256` must also select
/// `unix:uid` or `unix:gid`, as operators are told.
pub const BINARY_WITHOUT_UID_RULE: &str = "an entry that selects unix:path or unix:sha256 must also select unix:uid or unix:gid: \
     any local user who can run that binary could borrow the identity through an exec race, \
     so a uid or gid must bound who gets it";

/// Why an entry that selects `systemd:*` must also select `unix:uid` or
/// `unix:gid`, as operators are told.
pub const UNIT_WITHOUT_UID_RULE: &str = "an entry that selects systemd:unit or systemd:slice must also select unix:uid or unix:gid: \
     some units run other users' code (cron.service and atd.service run every user's jobs), \
     so a uid or gid must bound who gets it";

/// The rules over an entry's selectors taken together, applied where an
/// entry is registered (Admin API, config file) and again by the agent to
/// what the server sends (entries stored before a rule are not issued): a
/// selector naming a binary (`unix:path`, `unix:sha256`) or a systemd unit or
/// slice needs a `unix:uid` or `unix:gid` beside it. A process racing an
/// exec of that binary, or a user's job that a shared unit runs, then gains
/// only what its own uid or gid could already reach.
pub fn check_anchored(selectors: &[Selector]) -> Result<(), SelectorError> {
    let has = |keys: &[&str]| {
        selectors
            .iter()
            .any(|s| s.unix_key().is_some_and(|key| keys.contains(&key)))
    };
    let anchored = has(&["uid", "gid"]);
    if has(&["path", "sha256"]) && !anchored {
        return Err(SelectorError::BinaryWithoutUid);
    }
    if selectors.iter().any(|s| s.kind() == SYSTEMD_SELECTOR_TYPE) && !anchored {
        return Err(SelectorError::UnitWithoutUid);
    }
    Ok(())
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

    /// Parses a selector and checks that an attestor of this release produces
    /// it, with a value of the form it produces: what an operator registers.
    /// (`parse` stays lenient: it reads what attestors and the datastore hold.)
    pub fn parse_known(input: &str) -> Result<Self, SelectorError> {
        let selector = Self::parse(input)?;
        let Some((key, value)) = selector.value.split_once(':').filter(|(key, _)| {
            workload_keys(&selector.kind).is_some_and(|keys| keys.contains(key))
        }) else {
            return Err(SelectorError::Unknown(input.to_owned()));
        };
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(input.to_owned()));
        }
        let rule = match selector.kind.as_str() {
            UNIX_SELECTOR_TYPE => unix_value_rule(key, value),
            SYSTEMD_SELECTOR_TYPE => systemd_value_rule(key, value),
            _ => container_value_rule(key, value),
        };
        rule.map_or(Ok(()), |rule| {
            Err(SelectorError::BadValue {
                selector: input.to_owned(),
                rule,
            })
        })?;
        Ok(selector)
    }

    /// Parses a node selector that node attestation of this release proves,
    /// with a value of the form it produces: what a node alias may select.
    pub fn parse_known_node(input: &str) -> Result<Self, SelectorError> {
        let selector = Self::parse(input)?;
        let Some((key, value)) = NODE_SELECTOR_KEYS
            .iter()
            .filter(|(kind, _)| *kind == selector.kind)
            .find_map(|(_, key)| {
                selector
                    .value
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|value| (*key, value))
            })
        else {
            return Err(SelectorError::UnknownNode(input.to_owned()));
        };
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(input.to_owned()));
        }
        node_value_rule(key, value).map_or(Ok(()), |rule| {
            Err(SelectorError::BadValue {
                selector: input.to_owned(),
                rule,
            })
        })?;
        Ok(selector)
    }

    /// The attestor that produces it, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// What the attestor observed, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// `uid` of `unix:uid:1000`; None for other attestors' selectors.
    fn unix_key(&self) -> Option<&str> {
        if self.kind != UNIX_SELECTOR_TYPE {
            return None;
        }
        self.value.split_once(':').map(|(key, _)| key)
    }
}

/// Linux's PATH_MAX: no executable path the kernel reports is longer.
const MAX_PATH_LEN: usize = 4096;

/// The rule a non-empty `unix:<key>:<value>` breaks, if any: each value must
/// be one the unix attestor could report, or the entry never matches.
fn unix_value_rule(key: &str, value: &str) -> Option<&'static str> {
    match key {
        "uid" | "gid" | "supplementary_gid" => (!is_canonical_u32(value)).then_some(
            "the value must be a decimal number from 0 to 4294967295, without sign, spaces or leading zeros",
        ),
        "sha256" => (!is_sha256_hex(value)).then_some("the value must be exactly 64 lowercase hex digits (a SHA-256)"),
        "path" => path_rule(value),
        // user, group, supplementary_group: names from the passwd and group databases.
        _ => value
            .chars()
            .any(char::is_control)
            .then_some("the name must not contain control characters (NUL, CR, LF, ...)"),
    }
}

/// systemd's own limit on a unit name (UNIT_NAME_MAX, with its suffix).
const MAX_UNIT_NAME_LEN: usize = 255;

/// The unit types a process's cgroup can name (slices are `systemd:slice`).
pub const SYSTEMD_UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// Whether `name` could be a systemd unit name of any type: systemd's
/// alphabet (ASCII letters, digits, `:-_.\@`), at most 255 bytes.
pub fn is_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_UNIT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// The rule a non-empty `systemd:<key>:<value>` breaks, if any.
fn systemd_value_rule(key: &str, value: &str) -> Option<&'static str> {
    const UNIT: &str = "the value must be a unit name ending in .service, .scope, .socket, .mount or .swap (letters, digits and :-_.\\@, at most 255 bytes)";
    const SLICE: &str = "the value must be a slice name ending in .slice (letters, digits and :-_.\\@, at most 255 bytes)";
    if key == "slice" {
        return (!is_unit_name(value) || !value.ends_with(".slice")).then_some(SLICE);
    }
    (!is_unit_name(value) || !SYSTEMD_UNIT_SUFFIXES.iter().any(|s| value.ends_with(s)))
        .then_some(UNIT)
}

/// Longest container image reference, name or label the agent turns into a
/// selector (Docker's own limits are lower for all but label values).
pub const MAX_CONTAINER_VALUE_LEN: usize = 1024;

/// Whether `value` is 64 lowercase hex digits (a SHA-256, a container ID).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The rule a non-empty `container:<key>:<value>` breaks, if any.
fn container_value_rule(key: &str, value: &str) -> Option<&'static str> {
    let text_rule = |v: &str| v.len() > MAX_CONTAINER_VALUE_LEN || v.chars().any(char::is_control);
    match key {
        "id" => (!is_sha256_hex(value))
            .then_some("the value must be the full container ID: exactly 64 lowercase hex digits"),
        "runtime" => (!CONTAINER_RUNTIMES.contains(&value))
            .then_some("the value must be one of docker, podman, containerd, cri-o"),
        "image_id" => (!value.strip_prefix("sha256:").is_some_and(is_sha256_hex))
            .then_some("the value must be sha256: and 64 lowercase hex digits"),
        "label" => match value.split_once(':') {
            Some((label, text)) if !label.is_empty() && !text_rule(label) && !text_rule(text) => {
                None
            }
            _ => Some(
                "the value must be <label key>:<label value>, the key non-empty and without ':', both at most 1024 bytes without control characters",
            ),
        },
        // image, name: text the engine reports.
        _ => text_rule(value)
            .then_some("the value must be at most 1024 bytes without control characters"),
    }
}

/// The rule a non-empty node selector value breaks, if any: each must be a
/// value node attestation could prove, or the alias never matches.
fn node_value_rule(key: &str, value: &str) -> Option<&'static str> {
    let is_lower_hex = |v: &str| v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match key {
        "ca:sha256" => (!is_sha256_hex(value))
            .then_some("the value must be exactly 64 lowercase hex digits (a SHA-256)"),
        "serial" => (!is_lower_hex(value) || (value.len() > 1 && value.starts_with('0')))
            .then_some("the value must be lowercase hex without leading zeros"),
        "san:dns" => (value.len() > 253
            || !value
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*')))
        .then_some(
            "the value must be a DNS name in lowercase (letters, digits, '.', '-', '*'), at most 253 bytes",
        ),
        // subject:cn, subject:ou, principal, key_id: text from a certificate.
        _ => (value.len() > MAX_NODE_SELECTOR_VALUE_LEN || value.chars().any(char::is_control))
            .then_some("the value must be at most 255 bytes without control characters"),
    }
}

/// What the attestor prints for an id: `0`, or digits without a leading zero, within u32.
fn is_canonical_u32(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'))
        && value.parse::<u32>().is_ok()
}

/// The kernel reports an executable's path absolute and normalised.
fn path_rule(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("the path must be absolute (start with '/')");
    }
    if path.contains('\0') {
        return Some("the path must not contain NUL");
    }
    if path.len() > MAX_PATH_LEN {
        return Some("the path must be at most 4096 bytes");
    }
    if path == "/" {
        return None;
    }
    if path
        .split('/')
        .skip(1)
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Some(
            "the path must be normalised: no '.', '..' or empty segments and no trailing slash",
        );
    }
    None
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
    fn node_selectors_of_each_kind_parse() -> Result<(), SelectorError> {
        for input in [
            "x509pop:subject:cn:web-1.example.org",
            "x509pop:subject:ou:web",
            "x509pop:san:dns:web-1.example.org",
            "x509pop:ca:sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "x509pop:serial:1f",
            "x509pop:serial:0",
            "sshpop:principal:web1",
            "sshpop:key_id:node 17",
            "sshpop:ca:sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(Selector::parse_known_node(input)?.to_string(), input);
        }
        Ok(())
    }

    #[test]
    fn node_selectors_that_can_never_match_are_refused() {
        for input in [
            "x509pop:subject:o:acme",
            "x509pop:subject:cn:",
            "x509pop:serial:0f",
            "x509pop:serial:1F",
            "x509pop:ca:sha256:abc",
            "x509pop:san:dns:Web.example.org",
            "sshpop:principal:a\nb",
            "unix:uid:0",
        ] {
            assert!(Selector::parse_known_node(input).is_err(), "{input}");
        }
        assert!(Selector::parse_known("x509pop:subject:ou:web").is_err());
    }

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
            Err(SelectorError::EmptyValue(_))
        ));
    }

    #[test]
    fn values_the_attestor_can_produce_are_accepted() {
        let sha = "0123456789abcdef".repeat(4);
        for good in [
            "unix:uid:0".to_owned(),
            "unix:uid:1000".to_owned(),
            "unix:uid:4294967295".to_owned(),
            "unix:gid:0".to_owned(),
            "unix:supplementary_gid:27".to_owned(),
            format!("unix:sha256:{sha}"),
            "unix:path:/".to_owned(),
            "unix:path:/usr/bin/python3.12".to_owned(),
            "unix:path:/opt/my app/bin".to_owned(),
            "unix:path:/a/..b/.c/d..".to_owned(),
            "unix:user:root".to_owned(),
            "unix:user:Dom User".to_owned(),
            "unix:group:www-data".to_owned(),
            "unix:supplementary_group:docker".to_owned(),
        ] {
            let parsed = Selector::parse_known(&good);
            assert!(parsed.is_ok(), "{good:?}: {parsed:?}");
        }
    }

    /// The examples, and each rule's edge: refused, naming selector and rule.
    #[test]
    fn values_that_can_never_match_are_refused() {
        let long_path = format!("unix:path:/{}", "a".repeat(4096));
        let cases: Vec<(String, &str)> = vec![
            ("unix:uid:-1".into(), "decimal"),
            ("unix:uid:+1".into(), "decimal"),
            ("unix:uid:abc".into(), "decimal"),
            ("unix:uid:99999999999".into(), "decimal"),
            ("unix:uid:4294967296".into(), "decimal"),
            ("unix:uid:1e3".into(), "decimal"),
            ("unix:uid:01000".into(), "leading zeros"),
            ("unix:uid:00".into(), "leading zeros"),
            ("unix:uid: 1000".into(), "spaces"),
            ("unix:uid:1000 ".into(), "spaces"),
            ("unix:uid:1000\n".into(), "decimal"),
            ("unix:uid:\u{0661}".into(), "decimal"),
            ("unix:gid:xyz".into(), "decimal"),
            ("unix:supplementary_gid:foo".into(), "decimal"),
            ("unix:sha256:not-hex".into(), "64 lowercase hex"),
            (
                format!("unix:sha256:{}", "A".repeat(64)),
                "64 lowercase hex",
            ),
            (
                format!("unix:sha256:{}", "a".repeat(63)),
                "64 lowercase hex",
            ),
            (
                format!("unix:sha256:{}", "a".repeat(65)),
                "64 lowercase hex",
            ),
            ("unix:path:relative/bin".into(), "absolute"),
            ("unix:path:/a/../b".into(), "normalised"),
            ("unix:path:/a/./b".into(), "normalised"),
            ("unix:path:/a//b".into(), "normalised"),
            ("unix:path:/usr/bin/".into(), "normalised"),
            ("unix:path:/a\0b".into(), "NUL"),
            (long_path, "4096"),
            ("unix:user:root\0admin".into(), "control characters"),
            ("unix:user:root\r\n".into(), "control characters"),
            ("unix:group:wheel\u{7f}".into(), "control characters"),
            (
                "unix:supplementary_group:a\u{85}".into(),
                "control characters",
            ),
        ];
        for (input, rule) in cases {
            match Selector::parse_known(&input) {
                Err(e @ SelectorError::BadValue { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(rule), "{input:?}: {message}");
                    assert!(
                        message.contains(&format!("{input:?}")),
                        "names the selector: {message}"
                    );
                    assert!(!message.contains('\n'), "one line: {message:?}");
                }
                other => panic!("{input:?} was not refused for its value: {other:?}"),
            }
        }
        assert!(matches!(
            Selector::parse_known("unix:user:"),
            Err(SelectorError::EmptyValue(_))
        ));
    }

    /// Issue 11, finding 1: a binary selector needs a uid or gid beside it.
    #[test]
    fn binary_selectors_need_a_uid_or_gid() -> Result<(), SelectorError> {
        let sha = format!("unix:sha256:{}", "0123456789abcdef".repeat(4));
        let set = |list: &[&str]| -> Result<Vec<Selector>, SelectorError> {
            list.iter().map(|s| Selector::parse(s)).collect()
        };
        for refused in [
            vec!["unix:path:/usr/bin/sleep"],
            vec![sha.as_str()],
            vec!["unix:path:/usr/bin/sleep", sha.as_str()],
            vec!["unix:path:/usr/bin/sleep", "unix:user:root"],
            vec!["unix:path:/usr/bin/sleep", "unix:group:wheel"],
            vec!["unix:path:/usr/bin/sleep", "unix:supplementary_gid:0"],
            // Another attestor's uid bounds nothing here.
            vec!["unix:path:/usr/bin/sleep", "k8s:uid:0"],
        ] {
            let error = check_anchored(&set(&refused)?);
            assert_eq!(error, Err(SelectorError::BinaryWithoutUid), "{refused:?}");
        }
        for accepted in [
            vec!["unix:path:/usr/bin/sleep", "unix:uid:1000"],
            vec![sha.as_str(), "unix:gid:0"],
            vec!["unix:path:/usr/bin/sleep", sha.as_str(), "unix:uid:0"],
            vec!["unix:uid:1000"],
            vec!["unix:user:www-data"],
            vec![],
        ] {
            assert_eq!(check_anchored(&set(&accepted)?), Ok(()), "{accepted:?}");
        }
        for refused in [
            vec!["systemd:unit:cron.service"],
            vec!["systemd:slice:batch.slice", "unix:user:batch"],
        ] {
            let error = check_anchored(&set(&refused)?);
            assert_eq!(error, Err(SelectorError::UnitWithoutUid), "{refused:?}");
        }
        assert_eq!(
            check_anchored(&set(&["systemd:unit:billing.service", "unix:uid:990"])?),
            Ok(())
        );
        assert_eq!(
            check_anchored(&set(&["systemd:slice:batch.slice", "unix:gid:990"])?),
            Ok(())
        );
        let message = SelectorError::BinaryWithoutUid.to_string();
        assert!(
            message.contains("unix:path or unix:sha256 must also select unix:uid or unix:gid"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message:?}");
        Ok(())
    }

    #[test]
    fn systemd_and_container_selectors_are_known() {
        let id = "0123456789abcdef".repeat(4);
        for good in [
            "systemd:unit:billing.service".to_owned(),
            "systemd:unit:session-3.scope".to_owned(),
            "systemd:unit:user@1000.service".to_owned(),
            "systemd:unit:getty@tty1.service".to_owned(),
            "systemd:unit:sys-kernel-debug.mount".to_owned(),
            "systemd:unit:dev-disk-by\\x2duuid-ab.swap".to_owned(),
            "systemd:slice:system.slice".to_owned(),
            "systemd:slice:user-1000.slice".to_owned(),
            format!("container:id:{id}"),
            "container:runtime:podman".to_owned(),
            "container:runtime:cri-o".to_owned(),
            "container:image:docker.io/library/nginx:1.25".to_owned(),
            format!("container:image_id:sha256:{id}"),
            "container:name:billing-1".to_owned(),
            "container:label:team:billing".to_owned(),
            "container:label:com.example.url:https://x".to_owned(),
            "container:label:empty:".to_owned(),
        ] {
            let parsed = Selector::parse_known(&good);
            assert!(parsed.is_ok(), "{good:?}: {parsed:?}");
        }
        let cases: Vec<(String, &str)> = vec![
            ("systemd:unit:billing".into(), "unit name ending"),
            ("systemd:unit:system.slice".into(), "unit name ending"),
            ("systemd:unit:bad name.service".into(), "unit name ending"),
            (
                format!("systemd:unit:{}.service", "a".repeat(250)),
                "at most 255",
            ),
            ("systemd:slice:billing.service".into(), "slice name"),
            ("container:id:abc".into(), "64 lowercase hex"),
            (
                format!("container:id:{}", id.to_uppercase()),
                "64 lowercase hex",
            ),
            ("container:runtime:lxc".into(), "one of docker"),
            (format!("container:image_id:{id}"), "sha256:"),
            ("container:label:team".into(), "<label key>:<label value>"),
            ("container:label::x".into(), "<label key>:<label value>"),
            ("container:label:team:a\nb".into(), "control characters"),
            ("container:name:a\tb".into(), "control characters"),
        ];
        for (input, rule) in cases {
            match Selector::parse_known(&input) {
                Err(e @ SelectorError::BadValue { .. }) => {
                    assert!(e.to_string().contains(rule), "{input:?}: {e}");
                }
                other => panic!("{input:?} was not refused for its value: {other:?}"),
            }
        }
        for unknown in [
            "systemd:user_unit:a.service",
            "container:pid:1",
            "docker:id:1",
        ] {
            assert!(
                matches!(
                    Selector::parse_known(unknown),
                    Err(SelectorError::Unknown(_))
                ),
                "{unknown}"
            );
        }
    }

    /// What attestors report and the datastore holds is read as it is.
    #[test]
    fn parse_stays_lenient() {
        assert!(Selector::parse("unix:sha256:ab12").is_ok());
        assert!(Selector::parse("unix:uid:01000").is_ok());
    }
}
