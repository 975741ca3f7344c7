//! Property tests over the parsers of lanyard-proto that meet untrusted
//! bytes (issue 11, "standing defence"): SPIFFE IDs and trust domains,
//! selectors, audiences. Each property is checked against a model written
//! from the rules in DESIGN.md, not just for the absence of a panic.
//!
//! Bounded for CI: a fixed number of cases per property and no failure
//! persistence files (a failing case is printed, shrunk, by proptest).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test shares its package's dependency list; the library target is where unused dependencies are caught"
)]

use lanyard_proto::audience::{self, AudienceError, MAX_AUDIENCE_LEN, MAX_AUDIENCES};
use lanyard_proto::selector::{CONTAINER_SELECTOR_KEYS, SYSTEMD_SELECTOR_KEYS, UNIX_SELECTOR_KEYS};
use lanyard_proto::{AssignError, Selector, SelectorError, SpiffeId, SpiffeIdError, TrustDomain};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// 256 cases per property, or `PROPTEST_CASES` for a longer search by hand.
fn config() -> Config {
    Config {
        cases: cases(256),
        failure_persistence: None,
        ..Config::default()
    }
}

fn cases(bounded: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(bounded)
}

const TD_CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789.-_";
const MAX_TD_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

fn is_td_char(c: char) -> bool {
    TD_CHARS.contains(c)
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// The trust-domain rules of DESIGN.md, stated on their own.
fn model_trust_domain(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TD_LEN && name.chars().all(is_td_char)
}

/// The SPIFFE ID rules of DESIGN.md, stated on their own: `spiffe://`, a
/// trust domain, then `/segment`s of `[A-Za-z0-9._-]+` that are not `.` or
/// `..`, no trailing slash, at most 2048 bytes.
fn model_spiffe_id(input: &str) -> bool {
    let Some(rest) = input.strip_prefix("spiffe://") else {
        return false;
    };
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path_ok = path.is_empty()
        || path[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.chars().all(is_path_char)
        });
    model_trust_domain(td) && path_ok && input.len() <= MAX_ID_LEN
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Everything an accepted ID must satisfy, checked on the parsed value.
fn check_id(input: &str, id: &SpiffeId) -> Result<(), TestCaseError> {
    prop_assert_eq!(id.as_str(), input, "an ID is kept byte for byte");
    prop_assert_eq!(id.to_string(), input);
    prop_assert!(id.as_str().len() <= MAX_ID_LEN);
    let td = id.trust_domain_name();
    prop_assert!(
        model_trust_domain(td),
        "trust domain {:?} of {:?}",
        td,
        input
    );
    let path = id.path();
    prop_assert!(path.is_empty() || path.starts_with('/'), "{:?}", input);
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            prop_assert!(!segment.is_empty(), "empty segment in {:?}", input);
            prop_assert!(
                segment != "." && segment != "..",
                "dot segment in {:?}",
                input
            );
            prop_assert!(
                segment.chars().all(is_path_char),
                "{:?} in {:?}",
                segment,
                input
            );
        }
    }
    prop_assert_eq!(format!("spiffe://{td}{path}"), input);
    // It re-parses from its text to an equal ID, also through serde.
    prop_assert_eq!(SpiffeId::parse(&id.to_string()).ok(), Some(id.clone()));
    prop_assert_eq!(input.parse::<SpiffeId>().ok(), Some(id.clone()));
    let json = serde_json::to_string(id).map_err(fail)?;
    prop_assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).ok(),
        Some(id.clone())
    );
    // Its trust domain is one on its own, and names the ID's bundle.
    let trust_domain = TrustDomain::new(td).map_err(fail)?;
    prop_assert!(id.is_member_of(&trust_domain));
    prop_assert_eq!(id.trust_domain(), trust_domain.clone());
    prop_assert!(input.starts_with(&trust_domain.id_string()));
    // Reserved and assignable follow the first segment and the path alone.
    let first = path.split('/').nth(1);
    prop_assert_eq!(id.is_reserved(), first == Some("lanyard"), "{:?}", input);
    let expected = if path.is_empty() {
        Err(AssignError::NoPath)
    } else if first == Some("lanyard") {
        Err(AssignError::Reserved)
    } else {
        Ok(())
    };
    prop_assert_eq!(id.check_assignable(), expected, "{:?}", input);
    Ok(())
}

/// A trust domain from the grammar, 1 to `max` bytes.
fn trust_domain_name(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(TD_CHARS.chars().collect::<Vec<_>>()),
        1..=max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A path segment from the grammar (never `.` or `..`).
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

/// IDs from the grammar: some just over the length cap, so both sides of it are seen.
fn grammar_id() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        prop_oneof![trust_domain_name(24), trust_domain_name(MAX_TD_LEN)],
        prop_oneof![
            3 => proptest::collection::vec(segment(), 0..8),
            1 => proptest::collection::vec(segment(), 70..120),
        ],
    )
}

/// Characters that matter to a SPIFFE ID parser, and some that do not belong.
fn id_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "abcz09.-_/AZ:@?#%[] \\".chars().collect::<Vec<_>>()
        ),
        1 => proptest::sample::select(vec!['\0', '\n', '\u{7f}', 'é', 'İ', '\u{2215}', '\u{ff0f}', '😀']),
        1 => any::<char>(),
    ]
}

/// One edit of a string at a char boundary: insert, delete or replace a char.
fn mutate(text: &str, position: usize, edit: u8, c: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = if chars.is_empty() {
        0
    } else {
        position % (chars.len() + 1)
    };
    match edit % 3 {
        0 => chars.insert(at, c),
        1 if at < chars.len() => {
            chars.remove(at);
        }
        _ if at < chars.len() => chars[at] = c,
        _ => chars.push(c),
    }
    chars.into_iter().collect()
}

fn id_text(td: &str, segments: &[String]) -> String {
    let mut text = format!("spiffe://{td}");
    for segment in segments {
        text.push('/');
        text.push_str(segment);
    }
    text
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary strings: no panic, and accepted exactly when the rules say so.
    #[test]
    fn spiffe_id_parse_agrees_with_the_rules_on_any_string(input in any::<String>()) {
        let parsed = SpiffeId::parse(&input);
        prop_assert_eq!(parsed.is_ok(), model_spiffe_id(&input), "{:?}: {:?}", input, parsed);
        if let Ok(id) = parsed {
            check_id(&input, &id)?;
        }
    }

    /// Strings that start like an ID, over the characters that matter.
    #[test]
    fn spiffe_id_parse_agrees_with_the_rules_near_the_grammar(
        rest in proptest::collection::vec(id_char(), 0..80)
    ) {
        let input: String = format!("spiffe://{}", rest.into_iter().collect::<String>());
        let parsed = SpiffeId::parse(&input);
        prop_assert_eq!(parsed.is_ok(), model_spiffe_id(&input), "{:?}: {:?}", input, parsed);
        if let Ok(id) = parsed {
            check_id(&input, &id)?;
        }
    }

    /// IDs generated from the grammar are accepted, up to the 2048-byte cap and not past it.
    #[test]
    fn grammar_ids_are_accepted_up_to_the_length_cap((td, segments) in grammar_id()) {
        let input = id_text(&td, &segments);
        let parsed = SpiffeId::parse(&input);
        if input.len() <= MAX_ID_LEN {
            let id = parsed.map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
            prop_assert_eq!(id.trust_domain_name(), td.as_str());
            prop_assert_eq!(id.path(), &input[9 + td.len()..]);
            check_id(&input, &id)?;
            prop_assert_eq!(TrustDomain::new(&td).and_then(|t| t.id_with_path(id.path())), Ok(id));
        } else {
            prop_assert_eq!(parsed, Err(SpiffeIdError::TooLong));
        }
    }

    /// One edit of a valid ID: no panic, and still exactly the rules.
    #[test]
    fn spiffe_id_parse_agrees_with_the_rules_after_one_edit(
        (td, segments) in grammar_id(),
        position in any::<usize>(),
        edit in any::<u8>(),
        c in id_char(),
    ) {
        let input = mutate(&id_text(&td, &segments), position, edit, c);
        let parsed = SpiffeId::parse(&input);
        prop_assert_eq!(parsed.is_ok(), model_spiffe_id(&input), "{:?}: {:?}", input, parsed);
        if let Ok(id) = parsed {
            check_id(&input, &id)?;
        }
    }

    /// Trust domains: no panic; accepted exactly by the rules; the accepted
    /// ones name an ID (their bundle's key) that parses back to them.
    #[test]
    fn trust_domain_new_agrees_with_the_rules(
        input in prop_oneof![
            any::<String>(),
            proptest::collection::vec(id_char(), 0..40).prop_map(|c| c.into_iter().collect()),
            trust_domain_name(MAX_TD_LEN + 3),
        ]
    ) {
        let parsed = TrustDomain::new(&input);
        prop_assert_eq!(parsed.is_ok(), model_trust_domain(&input), "{:?}: {:?}", input, parsed);
        if let Ok(td) = parsed {
            prop_assert_eq!(td.as_str(), input.as_str());
            prop_assert_eq!(td.to_string(), input.clone());
            prop_assert_eq!(input.parse::<TrustDomain>().ok(), Some(td.clone()));
            let id = SpiffeId::parse(&td.id_string())
                .map_err(|e| TestCaseError::fail(format!("{td}: {e}")))?;
            prop_assert_eq!(id.trust_domain(), td.clone());
            prop_assert_eq!(id.path(), "");
            let json = serde_json::to_string(&td).map_err(fail)?;
            prop_assert_eq!(serde_json::from_str::<TrustDomain>(&json).ok(), Some(td));
        } else {
            let json = serde_json::to_string(&input).map_err(fail)?;
            prop_assert!(serde_json::from_str::<TrustDomain>(&json).is_err());
        }
    }
}

// ---------------------------------------------------------------- selectors

/// `type:value` with a non-empty `[a-z0-9_-]` type and a non-empty value.
fn model_selector(input: &str) -> bool {
    match input.split_once(':') {
        Some((kind, value)) => {
            !kind.is_empty()
                && kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
                && !value.is_empty()
        }
        None => false,
    }
}

/// Characters that matter to a selector parser.
fn selector_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "unix:uidgpathsha/0123456789abcdef-+ ._U".chars().collect::<Vec<_>>()
        ),
        1 => proptest::sample::select(vec!['\0', '\n', '\r', '\t', '\u{7f}', '\u{85}', '\u{661}', 'é']),
        1 => any::<char>(),
    ]
}

fn selector_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            proptest::sample::select(UNIX_SELECTOR_KEYS.to_vec()),
            proptest::collection::vec(selector_char(), 0..70),
        )
            .prop_map(|(key, value)| format!(
                "unix:{key}:{}",
                value.into_iter().collect::<String>()
            )),
        proptest::collection::vec(selector_char(), 0..40).prop_map(|c| c.into_iter().collect()),
    ]
}

/// A path the kernel could report: absolute, normalised.
fn normalised_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        "[A-Za-z0-9 ._+@-]{1,20}".prop_filter("not a dot segment", |s| s != "." && s != ".."),
        0..6,
    )
    .prop_map(|segments| {
        if segments.is_empty() {
            "/".to_owned()
        } else {
            segments.iter().map(|s| format!("/{s}")).collect()
        }
    })
}

fn is_bad_value(result: &Result<Selector, SelectorError>) -> bool {
    matches!(result, Err(SelectorError::BadValue { .. }))
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text: `parse` never panics, accepts exactly `type:value`,
    /// and what it accepts prints back byte for byte and re-parses equal.
    #[test]
    fn selector_parse_agrees_with_the_rules(input in selector_text()) {
        let parsed = Selector::parse(&input);
        prop_assert_eq!(parsed.is_ok(), model_selector(&input), "{:?}: {:?}", input, parsed);
        if let Ok(selector) = parsed {
            prop_assert_eq!(selector.to_string(), input.clone());
            prop_assert_eq!(format!("{}:{}", selector.kind(), selector.value()), input.clone());
            prop_assert_eq!(Selector::parse(&selector.to_string()).ok(), Some(selector.clone()));
            let json = serde_json::to_string(&selector).map_err(fail)?;
            prop_assert_eq!(serde_json::from_str::<Selector>(&json).ok(), Some(selector));
        }
    }

    /// `parse_known` never panics; what it accepts `parse` accepts too, is a
    /// workload selector of a known kind and key with a non-empty value, prints back byte
    /// for byte and is accepted again from its text.
    #[test]
    fn parse_known_accepts_only_known_selectors_that_round_trip(input in selector_text()) {
        let known = Selector::parse_known(&input);
        if let Ok(selector) = known {
            prop_assert_eq!(Selector::parse(&input).ok(), Some(selector.clone()));
            let keys: &[&str] = match selector.kind() {
                "unix" => &UNIX_SELECTOR_KEYS,
                "systemd" => &SYSTEMD_SELECTOR_KEYS,
                "container" => &CONTAINER_SELECTOR_KEYS,
                other => return Err(fail(format!("{input:?}: unknown kind {other:?} accepted"))),
            };
            let Some((key, value)) = selector.value().split_once(':') else {
                return Err(fail(format!("{input:?} is not <kind>:<key>:<value>")));
            };
            prop_assert!(keys.contains(&key), "{:?}", input);
            prop_assert!(!value.is_empty());
            prop_assert_eq!(selector.to_string(), input.clone());
            prop_assert_eq!(Selector::parse_known(&selector.to_string()), Ok(selector.clone()));
            // No accepted value carries a control character (or a NUL in a path).
            if key != "path" {
                prop_assert!(!value.chars().any(char::is_control), "{:?}", input);
            }
            prop_assert!(!value.contains('\0'));
        }
    }

    /// Every u32 in canonical form is accepted for each numeric key.
    #[test]
    fn every_canonical_u32_is_a_known_id(
        n in any::<u32>(),
        key in proptest::sample::select(vec!["uid", "gid", "supplementary_gid"]),
    ) {
        let input = format!("unix:{key}:{n}");
        let selector = Selector::parse_known(&input)
            .map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
        prop_assert_eq!(selector.to_string(), input);
    }

    /// Non-canonical forms of a number are refused for its value: leading
    /// zero, sign, spaces or tabs around it, other digits, past u32.
    #[test]
    fn non_canonical_numbers_are_refused(
        n in any::<u32>(),
        key in proptest::sample::select(vec!["uid", "gid", "supplementary_gid"]),
        over in 1u64..=u64::from(u32::MAX),
    ) {
        let past = u64::from(u32::MAX) + over;
        for value in [
            format!("0{n}"),
            format!("00{n}"),
            format!("+{n}"),
            format!("-{n}"),
            format!(" {n}"),
            format!("{n} "),
            format!("\t{n}"),
            format!("{n}\n"),
            format!("{n}.0"),
            format!("{n}_0"),
            format!("{n}e0"),
            format!("0x{n:x}"),
            format!("{past}"),
            format!("{n}").chars().map(|d| char::from_u32(u32::from(d) - 0x30 + 0x660).unwrap_or(d)).collect(),
        ] {
            let input = format!("unix:{key}:{value}");
            let refused = Selector::parse_known(&input);
            prop_assert!(is_bad_value(&refused), "{:?} was not refused for its value: {:?}", input, refused);
        }
    }

    /// sha256: exactly 64 lowercase hex digits; upper case or another length is refused.
    #[test]
    fn sha256_values_are_64_lowercase_hex(
        digest in "[0-9a-f]{64}",
        cut in 1usize..64,
        extra in "[0-9a-f]{1,8}",
    ) {
        let full = Selector::parse_known(&format!("unix:sha256:{digest}"));
        prop_assert!(full.is_ok(), "{:?}", full);
        let short = format!("unix:sha256:{}", &digest[..cut]);
        prop_assert!(is_bad_value(&Selector::parse_known(&short)));
        let long = format!("unix:sha256:{digest}{extra}");
        prop_assert!(is_bad_value(&Selector::parse_known(&long)));
        let upper = digest.to_uppercase();
        if upper != digest {
            let refused = Selector::parse_known(&format!("unix:sha256:{upper}"));
            prop_assert!(is_bad_value(&refused), "{:?}", refused);
        }
    }

    /// path: absolute normalised paths are accepted; a relative one, or one
    /// with `.`, `..`, an empty segment or a trailing slash, is refused.
    #[test]
    fn paths_must_be_absolute_and_normalised(
        path in normalised_path(),
        position in any::<usize>(),
        bad in proptest::sample::select(vec!["/.", "/..", "/", "/./x", "/../x", "//x"]),
    ) {
        let accepted = Selector::parse_known(&format!("unix:path:{path}"));
        prop_assert!(accepted.is_ok(), "{:?}: {:?}", path, accepted);
        let relative = Selector::parse_known(&format!("unix:path:{}", &path[1..]));
        prop_assert!(is_bad_value(&relative) || path == "/", "{:?}", relative);
        // Break it at a segment boundary.
        let boundaries: Vec<usize> = path.match_indices('/').map(|(i, _)| i).chain([path.len()]).collect();
        let at = boundaries[position % boundaries.len()];
        let broken = format!("{}{bad}{}", &path[..at], &path[at..]);
        let refused = Selector::parse_known(&format!("unix:path:{broken}"));
        prop_assert!(is_bad_value(&refused), "{:?} was accepted: {:?}", broken, refused);
    }

    /// user/group names: accepted unless they hold a control character.
    #[test]
    fn names_are_refused_exactly_for_control_characters(
        key in proptest::sample::select(vec!["user", "group", "supplementary_group"]),
        name in "\\PC{1,30}",
        position in any::<usize>(),
        control in prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
            Just('\u{7f}'),
            (0x80u32..0xa0).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
        ],
    ) {
        let accepted = Selector::parse_known(&format!("unix:{key}:{name}"));
        prop_assert!(accepted.is_ok(), "{:?}: {:?}", name, accepted);
        let tainted = mutate(&name, position, 0, control);
        let refused = Selector::parse_known(&format!("unix:{key}:{tainted}"));
        prop_assert!(is_bad_value(&refused), "{:?}: {:?}", tainted, refused);
    }
}

// ---------------------------------------------------------------- audiences

/// What `audience::check` must answer, from the rules alone: the first rule
/// broken, in the order the list is read.
fn model_audience(values: &[String]) -> Result<(), AudienceError> {
    if values.is_empty() {
        return Err(AudienceError::Empty);
    }
    if values.len() > MAX_AUDIENCES {
        return Err(AudienceError::TooMany(values.len()));
    }
    for (index, value) in values.iter().enumerate() {
        if value.is_empty() {
            return Err(AudienceError::EmptyValue { index });
        }
        if value.len() > MAX_AUDIENCE_LEN {
            return Err(AudienceError::TooLong {
                index,
                len: value.len(),
            });
        }
        if let Some(found) = value.chars().find(|c| {
            let code = u32::from(*c);
            code < 0x20 || (0x7f..0xa0).contains(&code)
        }) {
            return Err(AudienceError::ControlCharacter { index, found });
        }
    }
    Ok(())
}

/// Audience values around every rule's edge: short text of any kind, long
/// values at the 1024-byte cap (in one-, two- and four-byte characters), and
/// printable values with one control character put in.
fn audience_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{1,40}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => (1020usize..=1028).prop_map(|n| "a".repeat(n)),
        1 => (510usize..=514).prop_map(|n| "é".repeat(n)),
        1 => (254usize..=258).prop_map(|n| "😀".repeat(n)),
        2 => ("\\PC{1,40}", any::<usize>(), (0u32..0xa0).prop_filter_map("a control", |c| {
            char::from_u32(c).filter(|c| c.is_control())
        }))
            .prop_map(|(text, at, c)| mutate(&text, at, 0, c)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Accepted exactly when there are 1 to 16 values of 1 to 1024 bytes
    /// without control characters; otherwise the first rule broken is named.
    #[test]
    fn audience_check_agrees_with_the_rules(
        values in prop_oneof![
            3 => proptest::collection::vec(audience_value(), 0..4),
            1 => proptest::collection::vec(audience_value(), 14..19),
            1 => proptest::collection::vec("[a-z]{1,5}", 15..18),
        ]
    ) {
        let checked = audience::check(&values);
        prop_assert_eq!(&checked, &model_audience(&values));
        if let Err(e) = checked {
            let message = e.to_string();
            prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
        }
    }
}

/// A claim string: literal text with `{{ … }}` templates over known,
/// unknown and malformed references.
fn claim_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z0-9 .:/{}-]{0,12}",
        proptest::sample::select(vec![
            "{{ unix:user }}",
            "{{unix:uid}}",
            "{{ systemd:unit }}",
            "{{ container:label:team }}",
            "{{ spiffe_id.path }}",
            "{{ spiffe_id }}",
            "{{ unix:path }}",
            "{{ k8s:ns }}",
            "{{ unix:supplementary_gid }}",
            "{{ unix:user",
            "}}",
            "{{",
        ])
        .prop_map(str::to_owned),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(config())]

    /// Entry claims (issue 16): any text is refused or accepted without a
    /// panic; accepted claims never set a reserved name, survive their own
    /// compact JSON, and render — given one value per selector they use —
    /// to JSON with no `{{` left from a template and no empty value.
    #[test]
    fn entry_claims_are_checked_and_render_completely(
        names in proptest::collection::vec(
            prop_oneof![
                "[a-z_]{1,8}",
                proptest::sample::select(lanyard_proto::entry_claims::RESERVED_CLAIMS.to_vec())
                    .prop_map(str::to_owned),
            ],
            1..4,
        ),
        values in proptest::collection::vec(claim_string(), 1..4),
        garbage in any::<String>(),
    ) {
        use lanyard_proto::entry_claims::{EntryClaims, RESERVED_CLAIMS};
        let object_like = garbage.trim_start().starts_with('{');
        prop_assert!(EntryClaims::parse(&garbage).is_err() || object_like, "{:?}", garbage);
        let object: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(values.iter().cycle())
            .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let text = serde_json::Value::Object(object.clone()).to_string();
        let Ok(claims) = EntryClaims::parse(&text) else {
            return Ok(());
        };
        prop_assert!(object.keys().all(|k| !RESERVED_CLAIMS.contains(&k.as_str())), "{}", text);
        prop_assert_eq!(EntryClaims::parse(&claims.to_json()).ok(), Some(claims.clone()));
        let caller: Vec<Selector> = [
            "unix:uid:1000",
            "unix:user:alice",
            "systemd:unit:web.service",
            "container:label:team:billing",
        ]
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect();
        let inputs = claims.inputs(&caller).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let id = SpiffeId::parse("spiffe://example.org/w").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rendered = claims.render(&id, &inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (name, value) in &rendered {
            let value = value.as_str().unwrap_or_default();
            let template = object.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            // What stays of `{{` is what the text had outside templates.
            prop_assert!(value.matches("{{").count() <= template.matches("{{").count());
            for reference in ["unix:user", "systemd:unit", "container:label:team", "spiffe_id"] {
                prop_assert!(!value.contains(&format!("{{{{ {reference} }}}}")), "{}", value);
            }
        }
    }
}
