//! An entry's own claims: a JSON object merged into every JWT-SVID of the
//! entry, whose string values (at any depth) may hold templates over the
//! calling workload's selectors and the entry's SPIFFE ID:
//!
//! ```text
//! {"https://aws.amazon.com/tags": {"principal_tags": {"unit": ["{{ systemd:unit }}"]}},
//!  "team": "{{ container:label:team }}", "service": "svc-{{ spiffe_id.path }}"}
//! ```
//!
//! A reference is `spiffe_id`, `spiffe_id.path`, `spiffe_id.trust_domain`,
//! or a selector prefix with exactly one value per caller: `unix:uid`,
//! `unix:gid`, `unix:user`, `unix:group`, `unix:sha256`,
//! `systemd:unit`, `systemd:slice`, `container:id`, `container:runtime`,
//! `container:image`, `container:image_id`, `container:name` and
//! `container:label:<key>`. The server checks a template when the entry is
//! written; the agent attests the kinds it names and sends their values with
//! each mint; the server renders from them. There is no escape for a
//! literal `{{`. `unix:path` is not offered: anyone may run a copy of a
//! binary from a path of their choosing, so it would let the caller write
//! its own claim.

use serde_json::{Map, Value};

use crate::selector::{
    CONTAINER_SELECTOR_TYPE, SYSTEMD_SELECTOR_TYPE, Selector, UNIX_SELECTOR_TYPE,
};
use crate::spiffe_id::SpiffeId;

/// Claims a JWT-SVID sets itself, and claims relying parties read in place
/// of or beside those (`azp` for `aud`; `nonce`, `cnf`, `act` for binding
/// and delegation): an entry may set none of them.
pub const RESERVED_CLAIMS: [&str; 11] = [
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "azp", "nonce", "cnf", "act",
];

/// Longest claims text an entry may hold.
pub const MAX_CLAIMS_BYTES: usize = 4096;

/// Longest JWT-SVID the server signs: AWS takes 20,000 characters of token,
/// but the request's headers count against the same limits in proxies.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Deepest nesting of objects and arrays in an entry's claims.
const MAX_DEPTH: usize = 8;

/// Most template references in one entry's claims, and most places they
/// are used: each use copies a caller's value into the token.
const MAX_REFERENCES: usize = 32;
const MAX_TEMPLATE_USES: usize = 64;

/// Selector prefixes a template may name (plus `container:label:<key>`).
const SINGLE_VALUED: [(&str, &str); 12] = [
    (UNIX_SELECTOR_TYPE, "uid"),
    (UNIX_SELECTOR_TYPE, "gid"),
    (UNIX_SELECTOR_TYPE, "user"),
    (UNIX_SELECTOR_TYPE, "group"),
    (UNIX_SELECTOR_TYPE, "sha256"),
    (SYSTEMD_SELECTOR_TYPE, "unit"),
    (SYSTEMD_SELECTOR_TYPE, "slice"),
    (CONTAINER_SELECTOR_TYPE, "id"),
    (CONTAINER_SELECTOR_TYPE, "runtime"),
    (CONTAINER_SELECTOR_TYPE, "image"),
    (CONTAINER_SELECTOR_TYPE, "image_id"),
    (CONTAINER_SELECTOR_TYPE, "name"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimsError {
    #[error("claims are not JSON: {0}")]
    NotJson(String),
    #[error("claims must be a JSON object")]
    NotObject,
    #[error("claims are {0} bytes, over the {MAX_CLAIMS_BYTES}-byte limit")]
    TooLong(usize),
    #[error("claims nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "claim {0:?} is reserved: iss, sub, aud, exp, iat, nbf and jti are the server's, and azp, nonce, cnf and act are read by relying parties in their place"
    )]
    Reserved(String),
    #[error("claim names may not be empty")]
    EmptyName,
    #[error("template in {0:?} has a '{{{{' without its '}}}}'")]
    Unclosed(String),
    #[error(
        "template {{{{ {0} }}}} names nothing the agent knows: use spiffe_id, spiffe_id.path, spiffe_id.trust_domain, unix:uid, unix:gid, unix:user, unix:group, unix:sha256, systemd:unit, systemd:slice, container:id, container:runtime, container:image, container:image_id, container:name or container:label:<key>"
    )]
    UnknownReference(String),
    #[error("template {{{{ {0} }}}} names a kind with several values per caller")]
    SeveralValues(String),
    #[error(
        "claims name more than {MAX_REFERENCES} different templates or use templates more than {MAX_TEMPLATE_USES} times"
    )]
    TooManyReferences,
    #[error(
        "template {{{{ unix:path }}}} is not offered: the caller chooses the path it runs a binary from"
    )]
    CallerChosen,
    #[error("the caller has no {0} selector, which the entry's claims use")]
    Missing(String),
    #[error("the caller has several {0} selectors, which the entry's claims use as one value")]
    Ambiguous(String),
    #[error("selector {0} was sent, but the entry's claims use no {0} value")]
    Unasked(String),
}

/// What a template names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    SpiffeId,
    SpiffeIdPath,
    TrustDomain,
    /// A selector prefix without the trailing ':', e.g. `unix:user` or
    /// `container:label:team`.
    Selector(String),
}

impl Reference {
    fn parse(text: &str) -> Result<Self, ClaimsError> {
        match text {
            "spiffe_id" => return Ok(Self::SpiffeId),
            "spiffe_id.path" => return Ok(Self::SpiffeIdPath),
            "spiffe_id.trust_domain" => return Ok(Self::TrustDomain),
            _ => {}
        }
        let unknown = || ClaimsError::UnknownReference(text.to_owned());
        let (kind, key) = text.split_once(':').ok_or_else(unknown)?;
        if SINGLE_VALUED.contains(&(kind, key)) {
            return Ok(Self::Selector(text.to_owned()));
        }
        if kind == UNIX_SELECTOR_TYPE && key.starts_with("supplementary_") {
            return Err(ClaimsError::SeveralValues(text.to_owned()));
        }
        if (kind, key) == (UNIX_SELECTOR_TYPE, "path") {
            return Err(ClaimsError::CallerChosen);
        }
        match key.split_once(':') {
            Some(("label", label))
                if kind == CONTAINER_SELECTOR_TYPE
                    && !label.is_empty()
                    && !label.contains(':')
                    && Selector::parse_known(&format!("{text}:x")).is_ok() =>
            {
                Ok(Self::Selector(text.to_owned()))
            }
            _ => Err(unknown()),
        }
    }

    /// The selector kind and key it needs attested (`container`, `label`).
    pub fn selector_kind_and_key(&self) -> Option<(&str, &str)> {
        let Self::Selector(prefix) = self else {
            return None;
        };
        let (kind, rest) = prefix.split_once(':')?;
        Some((kind, rest.split_once(':').map_or(rest, |(key, _)| key)))
    }

    /// The prefix its selector starts with (`unix:user:`), for selector references.
    pub fn selector_prefix(&self) -> Option<String> {
        match self {
            Self::Selector(prefix) => Some(format!("{prefix}:")),
            _ => None,
        }
    }
}

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(Reference),
}

/// An entry's claims, checked. Two are equal (and hash alike) when their
/// compact JSON is the same.
#[derive(Debug, Clone)]
pub struct EntryClaims {
    claims: Map<String, Value>,
    /// Sorted, without duplicates.
    references: Vec<Reference>,
    /// The claims as compact JSON.
    json: String,
}

impl PartialEq for EntryClaims {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for EntryClaims {}

impl std::hash::Hash for EntryClaims {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.json.hash(state);
    }
}

impl EntryClaims {
    /// Checks claims text as an operator wrote it: a JSON object within the
    /// size and depth limits, no reserved names, every template known.
    pub fn parse(text: &str) -> Result<Self, ClaimsError> {
        if text.len() > MAX_CLAIMS_BYTES {
            return Err(ClaimsError::TooLong(text.len()));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| ClaimsError::NotJson(e.to_string()))?;
        let Value::Object(claims) = value else {
            return Err(ClaimsError::NotObject);
        };
        for name in claims.keys() {
            if name.is_empty() {
                return Err(ClaimsError::EmptyName);
            }
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                return Err(ClaimsError::Reserved(name.clone()));
            }
        }
        let mut references = Vec::new();
        for value in claims.values() {
            collect_references(value, 1, &mut references)?;
        }
        if references.len() > MAX_TEMPLATE_USES {
            return Err(ClaimsError::TooManyReferences);
        }
        references.sort();
        references.dedup();
        if references.len() > MAX_REFERENCES {
            return Err(ClaimsError::TooManyReferences);
        }
        let json = Value::Object(claims.clone()).to_string();
        Ok(Self {
            claims,
            references,
            json,
        })
    }

    /// The claims as compact JSON (what is stored and sent to agents).
    pub fn to_json(&self) -> String {
        self.json.clone()
    }

    pub fn references(&self) -> &[Reference] {
        &self.references
    }

    /// Of `selectors`, those the templates use, sorted: what the agent
    /// sends with a mint, and what sets two callers' tokens apart.
    pub fn inputs(&self, selectors: &[Selector]) -> Result<Vec<Selector>, ClaimsError> {
        let mut inputs = Vec::new();
        for reference in &self.references {
            let Some(prefix) = reference.selector_prefix() else {
                continue;
            };
            // A value must be there and not empty (a label may be set to ""):
            // a caller without one gets no token rather than an empty claim.
            let mut found = selectors.iter().filter(|s| {
                s.to_string()
                    .strip_prefix(&prefix)
                    .is_some_and(|value| !value.is_empty())
            });
            let missing = || ClaimsError::Missing(prefix.trim_end_matches(':').to_owned());
            let first = found.next().ok_or_else(missing)?;
            if found.next().is_some() {
                return Err(ClaimsError::Ambiguous(
                    prefix.trim_end_matches(':').to_owned(),
                ));
            }
            inputs.push(first.clone());
        }
        inputs.sort();
        inputs.dedup();
        Ok(inputs)
    }

    /// The claims with every template filled in from `inputs` (exactly the
    /// selectors [`EntryClaims::inputs`] picks) and `spiffe_id`.
    pub fn render(
        &self,
        spiffe_id: &SpiffeId,
        inputs: &[Selector],
    ) -> Result<Map<String, Value>, ClaimsError> {
        if let Some(unasked) = inputs.iter().find(|input| {
            let text = input.to_string();
            !self.references.iter().any(|r| {
                r.selector_prefix()
                    .is_some_and(|prefix| text.starts_with(&prefix))
            })
        }) {
            return Err(ClaimsError::Unasked(unasked.to_string()));
        }
        let chosen: Vec<String> = self
            .inputs(inputs)?
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut values = Vec::new();
        for reference in &self.references {
            let value = match reference {
                Reference::SpiffeId => spiffe_id.to_string(),
                Reference::SpiffeIdPath => spiffe_id.path().to_owned(),
                Reference::TrustDomain => spiffe_id.trust_domain_name().to_owned(),
                Reference::Selector(_) => {
                    let prefix = reference.selector_prefix().unwrap_or_default();
                    chosen
                        .iter()
                        .find_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
                        .unwrap_or_default()
                }
            };
            values.push((reference.clone(), value));
        }
        let mut rendered = Map::new();
        for (name, value) in &self.claims {
            rendered.insert(name.clone(), render_value(value, &values));
        }
        Ok(rendered)
    }
}

fn collect_references(
    value: &Value,
    depth: usize,
    out: &mut Vec<Reference>,
) -> Result<(), ClaimsError> {
    if depth > MAX_DEPTH {
        return Err(ClaimsError::TooDeep);
    }
    match value {
        Value::String(text) => {
            for piece in pieces(text)? {
                if let Piece::Ref(reference) = piece {
                    out.push(reference);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_references(item, depth + 1, out)?;
            }
        }
        Value::Object(fields) => {
            for item in fields.values() {
                collect_references(item, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `text` split into literal text and `{{ reference }}`s.
fn pieces(text: &str) -> Result<Vec<Piece>, ClaimsError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| ClaimsError::Unclosed(text.to_owned()))?;
        out.push(Piece::Ref(Reference::parse(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    Ok(out)
}

fn render_value(value: &Value, values: &[(Reference, String)]) -> Value {
    match value {
        // Checked at parse: every piece parses and every reference has a value.
        Value::String(text) => match pieces(text) {
            Ok(pieces) => Value::String(
                pieces
                    .into_iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text,
                        Piece::Ref(reference) => values
                            .iter()
                            .find(|(r, _)| *r == reference)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
            ),
            Err(_) => value.clone(),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| render_value(v, values)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), render_value(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(list: &[&str]) -> Vec<Selector> {
        list.iter()
            .filter_map(|s| Selector::parse(s).ok())
            .collect()
    }

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/billing/api").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn templates_render_from_the_callers_selectors() -> Result<(), ClaimsError> {
        let claims = EntryClaims::parse(
            r#"{"https://aws.amazon.com/tags": {"principal_tags": {"unit": ["{{ systemd:unit }}"]}},
                "who": "{{unix:user}}@{{ spiffe_id.trust_domain }}",
                "path": "{{ spiffe_id.path }}", "id": "{{ spiffe_id }}",
                "team": "{{ container:label:team }}", "n": 3, "flag": true}"#,
        )?;
        let caller = selectors(&[
            "unix:uid:1000",
            "unix:user:alice",
            "systemd:unit:web.service",
            "systemd:slice:system.slice",
            "container:label:team:billing",
            "container:label:tier:db",
        ]);
        let inputs = claims.inputs(&caller)?;
        assert_eq!(
            inputs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "container:label:team:billing",
                "systemd:unit:web.service",
                "unix:user:alice"
            ]
        );
        let rendered = Value::Object(claims.render(&id(), &inputs)?);
        assert_eq!(
            rendered,
            serde_json::json!({
                "https://aws.amazon.com/tags": {"principal_tags": {"unit": ["web.service"]}},
                "who": "alice@example.org",
                "path": "/billing/api",
                "id": "spiffe://example.org/billing/api",
                "team": "billing", "n": 3, "flag": true
            })
        );
        Ok(())
    }

    #[test]
    fn a_missing_or_empty_value_is_refused_never_rendered_empty() -> Result<(), ClaimsError> {
        let claims = EntryClaims::parse(r#"{"team": "{{ container:label:team }}"}"#)?;
        assert_eq!(
            claims.inputs(&selectors(&["unix:uid:1"])),
            Err(ClaimsError::Missing("container:label:team".into()))
        );
        assert_eq!(
            claims.inputs(&selectors(&["container:label:team:"])),
            Err(ClaimsError::Missing("container:label:team".into()))
        );
        assert_eq!(
            claims.render(&id(), &[]),
            Err(ClaimsError::Missing("container:label:team".into()))
        );
        // An input the templates do not use is refused, not ignored.
        let extra = selectors(&["container:label:team:a", "unix:uid:1"]);
        assert_eq!(
            claims.render(&id(), &extra),
            Err(ClaimsError::Unasked("unix:uid:1".into()))
        );
        Ok(())
    }

    #[test]
    fn bad_claims_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            ("[1]", "must be a JSON object"),
            ("{", "not JSON"),
            (r#"{"sub": "x"}"#, "\"sub\" is reserved"),
            (r#"{"nbf": 1}"#, "\"nbf\" is reserved"),
            (r#"{"": 1}"#, "may not be empty"),
            (r#"{"a": "{{ unix:user"}"#, "without its '}}'"),
            (r#"{"a": "{{ k8s:ns }}"}"#, "names nothing the agent knows"),
            (
                r#"{"a": "{{ unix:shoe }}"}"#,
                "names nothing the agent knows",
            ),
            (r#"{"a": "{{ container:label: }}"}"#, "names nothing"),
            (r#"{"a": "{{ container:label:a:b }}"}"#, "names nothing"),
            (r#"{"a": "{{ }}"}"#, "names nothing"),
            (
                r#"{"a": "{{ unix:supplementary_group }}"}"#,
                "several values",
            ),
            (r#"{"a": "{{ unix:path }}"}"#, "the caller chooses"),
            (r#"{"azp": "x"}"#, "\"azp\" is reserved"),
            (r#"{"cnf": {}}"#, "\"cnf\" is reserved"),
            (r#"{"a": [[[[[[[[["deep"]]]]]]]]]}"#, "deeper than 8"),
        ];
        for (text, reason) in cases {
            match EntryClaims::parse(text) {
                Err(e) => assert!(e.to_string().contains(reason), "{text}: {e}"),
                Ok(parsed) => panic!("{text} was accepted: {parsed:?}"),
            }
        }
        let many = format!(
            r#"{{"a": "{}"}}"#,
            "{{unix:uid}}".repeat(MAX_TEMPLATE_USES + 1)
        );
        assert!(matches!(
            EntryClaims::parse(&many),
            Err(ClaimsError::TooManyReferences)
        ));
        let long = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_CLAIMS_BYTES));
        assert!(matches!(
            EntryClaims::parse(&long),
            Err(ClaimsError::TooLong(_))
        ));
    }

    #[test]
    fn compact_json_round_trips() -> Result<(), ClaimsError> {
        let claims = EntryClaims::parse("{ \"a\" : \"{{unix:uid}}\" }")?;
        assert_eq!(claims.to_json(), r#"{"a":"{{unix:uid}}"}"#);
        assert_eq!(EntryClaims::parse(&claims.to_json())?, claims);
        Ok(())
    }
}
