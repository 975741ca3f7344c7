//! Property tests over both config files (issue 11, "standing defence"):
//! any text, and edits of a valid config, never make `AgentConfig::from_toml`
//! or `ServerConfig::from_toml` panic; errors are one line; whatever is
//! accepted keeps the config's promises. They live in the crate that depends
//! on both daemons, so that one set of TOML edits serves both.
//!
//! Bounded for CI: 256 cases per property (`PROPTEST_CASES` for a longer
//! search by hand) and no failure persistence files.

use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One edit: a fragment put in, a span taken out or replaced, a line
/// repeated, dropped or swapped, or a value replaced by another.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, usize, String),
    RepeatLine(usize),
    DropLine(usize),
    SwapLines(usize, usize),
    Value(usize, String),
}

/// Edits built from a daemon's own fragments (made by `fragments`) and `values`.
fn edit<S: Strategy<Value = String> + 'static>(
    fragments: impl Fn() -> S,
    values: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), fragments()).prop_map(|(at, s)| Edit::Insert(at, s)),
        1 => (any::<usize>(), 1usize..12).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => (any::<usize>(), 1usize..6, fragments())
            .prop_map(|(at, n, s)| Edit::Replace(at, n, s)),
        1 => any::<usize>().prop_map(Edit::RepeatLine),
        1 => any::<usize>().prop_map(Edit::DropLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        3 => (any::<usize>(), values).prop_map(|(at, v)| Edit::Value(at, v)),
    ]
}

fn char_floor(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let line = |at: usize| at % lines.len();
    match edit {
        Edit::Insert(at, s) => {
            let at = char_floor(text, *at);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Edit::Delete(at, n) | Edit::Replace(at, n, _) => {
            let start = char_floor(text, *at);
            let end = char_floor(text, start.saturating_add(*n).min(text.len()));
            let with = match edit {
                Edit::Replace(_, _, s) => s.as_str(),
                _ => "",
            };
            format!("{}{with}{}", &text[..start], &text[end.max(start)..])
        }
        Edit::RepeatLine(at) => {
            let i = line(*at);
            let copy = lines[i].clone();
            lines.insert(i, copy);
            lines.join("\n")
        }
        Edit::DropLine(at) => {
            let i = line(*at);
            lines.remove(i);
            lines.join("\n")
        }
        Edit::SwapLines(a, b) => {
            let (a, b) = (line(*a), line(*b));
            lines.swap(a, b);
            lines.join("\n")
        }
        Edit::Value(at, value) => {
            // The value of the chosen `key = value` line, if it is one.
            let i = line(*at);
            if let Some((key, _)) = lines[i].split_once(" = ") {
                lines[i] = format!("{key} = {value}");
            }
            lines.join("\n")
        }
    }
}

mod agent {
    use lanyard_agent::config::{AgentConfig, ServerConnection};
    use lanyard_proto::TrustDomain;
    use proptest::prelude::*;

    use super::apply;

    /// A config with every key the agent reads, valid as it stands.
    const VALID_AGENT_TOML: &str = r#"# lanyard-agent on a node that reaches the server over the network.
    trust_domain = "example.org"
    data_dir = "/var/lib/lanyard/agent"
    sync_interval_seconds = 5

    [server]
    address = "lanyard.example.org:8081"
    trust_bundle = "/etc/lanyard/ca.pem"
    join_token_file = "/etc/lanyard/join-token"
    request_timeout_seconds = 5

    [workload_api]
    socket = "/run/lanyard/agent/api.sock"
    jwt_svid_cache_size = 1000
    x509 = true

    [workload_attestor]
    path_selectors = false
    sha256_selectors = false
    max_binary_bytes = 1073741824
    "#;

    /// Fragments that matter to a TOML parser and to the agent's checks.
    fn toml_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "\"",
                "'",
                "[",
                "]",
                "[[",
                "]]",
                "=",
                "\n",
                "\r\n",
                "\\",
                "#",
                ".",
                ",",
                "{",
                "}",
                " ",
                "\t",
                "\0",
                "é",
                "😀",
                "\u{2028}",
                "\u{feff}",
                "\"\"\"",
                "'''",
                "\\u0000",
                "\\uD800",
                "0",
                "-1",
                "4294967296",
                "18446744073709551616",
                "1e999",
                "nan",
                "inf",
                "-inf",
                "true",
                "1979-05-27T07:32:00Z",
                "0x7f",
                "0o7",
                "0b1",
                "1_000",
                "[]",
                "{}",
                "/",
                "..",
                "unix:",
                "spiffe://",
                ":8081",
                "%2e",
                "example.org",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
            "\\PC{0,12}",
        ]
    }

    /// TOML values of every type, at and past the edges of the agent's checks.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            proptest::sample::select(vec![
                "0",
                "-1",
                "1",
                "60",
                "3600",
                "3601",
                "300",
                "301",
                "1000000",
                "1000001",
                "4294967295",
                "4294967296",
                "9223372036854775807",
                "-9223372036854775808",
                "18446744073709551615",
                "1.5",
                "-0.0",
                "nan",
                "inf",
                "true",
                "false",
                "[]",
                "[1, \"a\"]",
                "{}",
                "{ a = 1 }",
                "\"\"",
                "\"relative/path\"",
                "\"/\"",
                "\"/a/../b\"",
                "\"/run/x y.sock\"",
                "\"/run/%41.sock\"",
                "\"host\"",
                "\":1\"",
                "\"host:99999\"",
                "\"[::1]:8081\"",
                "\"example.org:8081\"",
                "\"Example.org\"",
                "\"spiffe://example.org\"",
                "\"a\\u0000b\"",
                "'literal'",
                "\"\"\"multi\nline\"\"\"",
                "1979-05-27",
                "07:32:00",
            ])
            .prop_map(str::to_owned),
            "\"\\PC{0,30}\"",
        ]
    }

    fn edit() -> impl Strategy<Value = super::Edit> {
        super::edit(toml_fragment, toml_value())
    }

    /// What any config the agent accepts must satisfy.
    fn check_accepted(config: &AgentConfig) -> Result<(), TestCaseError> {
        prop_assert!(config.socket.is_absolute(), "{:?}", config.socket);
        prop_assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
        prop_assert!((1..=3600).contains(&config.sync_interval.as_secs()));
        prop_assert!((1..=300).contains(&config.server_timeout.as_secs()));
        prop_assert!((1..=1_000_000).contains(&config.jwt_svid_cache_size));
        prop_assert!(config.workload_attestor.max_binary_bytes > 0);
        prop_assert!(TrustDomain::new(config.trust_domain.as_str()).is_ok());
        match &config.server {
            ServerConnection::Local { node_socket } => prop_assert!(node_socket.is_absolute()),
            ServerConnection::Remote { address, .. } => {
                let port = address
                    .rsplit_once(':')
                    .map(|(host, port)| (host.is_empty(), port.parse::<u16>()));
                prop_assert!(matches!(port, Some((false, Ok(_)))), "{:?}", address);
            }
        }
        Ok(())
    }

    #[test]
    fn the_valid_agent_config_is_valid() {
        let config = AgentConfig::from_toml(VALID_AGENT_TOML, "agent.toml").expect("valid");
        check_accepted(&config).expect("and as it should be");
    }

    proptest! {
        #![proptest_config(super::config())]

        /// Any text as agent.toml: no panic; whatever is accepted is sound.
        #[test]
        fn agent_config_never_panics_on_any_text(
            text in prop_oneof![
                any::<String>(),
                proptest::collection::vec(toml_fragment(), 0..20).prop_map(|f| f.concat()),
            ]
        ) {
            if let Ok(config) = AgentConfig::from_toml(&text, "agent.toml") {
                check_accepted(&config)?;
            }
        }

        /// A valid agent.toml after 1 to 4 edits: no panic, errors are one
        /// line, and whatever is accepted is sound.
        #[test]
        fn agent_config_never_panics_on_edits_of_a_valid_one(
            edits in proptest::collection::vec(edit(), 1..5)
        ) {
            let text = edits.iter().fold(VALID_AGENT_TOML.to_owned(), |text, e| apply(&text, e));
            match AgentConfig::from_toml(&text, "agent.toml") {
                Ok(config) => check_accepted(&config)?,
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(!message.is_empty());
                    prop_assert!(!message.contains('\n'), "{:?}", message);
                }
            }
        }
    }
}

mod server {
    use lanyard_proto::{Selector, SpiffeId, TrustDomain};
    use lanyard_server::authority::entries::{MAX_HINT_LEN, MAX_X509_SVID_TTL};
    use lanyard_server::config::ServerConfig;
    use proptest::prelude::*;

    use super::apply;

    /// A config with every key the server reads, valid as it stands.
    const VALID_SERVER_TOML: &str = r#"# lanyard-server for one trust domain.
    trust_domain = "example.org"
    server_id = "server-a"
    issuer = "https://oidc.example.org/tenant"
    data_dir = "/var/lib/lanyard/server"

    [oidc]
    listen = "0.0.0.0:8443"
    tls_cert = "/etc/lanyard/oidc/fullchain.pem"
    tls_key = "/etc/lanyard/oidc/privkey.pem"
    plain_http = false

    [datastore]
    url = "postgres://lanyard@db.example.org/lanyard"

    [admin]
    socket = "/run/lanyard-admin/admin.sock"
    uid = 1000

    [node_api]
    listen = "0.0.0.0:8081"
    socket = "/run/lanyard/node.sock"
    agent_svid_ttl_seconds = 3600
    agent_id = "spiffe://example.org/lanyard/agent/local"

    [jwt]
    default_ttl_seconds = 300
    max_ttl_seconds = 3600
    key_type = "ec-p256"
    key_lifetime_seconds = 86400
    publish_lead_seconds = 7200

    [[entries]]
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "unix:gid:1000"]
    jwt_svid_ttl_seconds = 300
    x509_svid_ttl_seconds = 3600
    hint = "web"

    [[entries]]
    spiffe_id = "spiffe://example.org/db"
    parent_id = "spiffe://example.org/node/db-1"
    selectors = ["unix:user:postgres"]
    "#;

    /// Fragments that matter to a TOML parser and to the server's checks.
    fn toml_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "\"",
                "'",
                "[",
                "]",
                "[[",
                "]]",
                "=",
                "\n",
                "\r\n",
                "\\",
                "#",
                ".",
                ",",
                "{",
                "}",
                " ",
                "\t",
                "\0",
                "é",
                "😀",
                "\u{2028}",
                "\u{feff}",
                "\"\"\"",
                "'''",
                "\\u0000",
                "0",
                "-1",
                "4294967296",
                "18446744073709551616",
                "1e999",
                "nan",
                "inf",
                "true",
                "1979-05-27T07:32:00Z",
                "0x7f",
                "1_000",
                "[]",
                "{}",
                "/",
                "..",
                "/lanyard/",
                "unix:",
                "unix:uid:",
                "spiffe://",
                "%2e",
                ":8443",
                "https://",
                "?",
                "@",
                "[[entries]]\n",
                "example.org",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
            "\\PC{0,12}",
        ]
    }

    /// TOML values of every type, at and past the edges of the server's checks.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            proptest::sample::select(vec![
                "0",
                "-1",
                "1",
                "59",
                "60",
                "2592000",
                "2592001",
                "172800",
                "172801",
                "86400",
                "4294967295",
                "4294967296",
                "9223372036854775807",
                "-9223372036854775808",
                "18446744073709551615",
                "1.5",
                "nan",
                "inf",
                "true",
                "false",
                "[]",
                "[\"\"]",
                "[\"unix:uid:01000\"]",
                "[\"unix:path:/bin/sh\"]",
                "[\"k8s:ns:x\"]",
                "{}",
                "{ a = 1 }",
                "\"\"",
                "\"relative\"",
                "\"/\"",
                "\"rsa-2048\"",
                "\"ed25519\"",
                "\"sqlite:///tmp/x\"",
                "\"mysql://x\"",
                "\"spiffe://example.org\"",
                "\"spiffe://example.org/lanyard/server\"",
                "\"spiffe://other.org/x\"",
                "\"spiffe://example.org/a/../b\"",
                "\"spiffe://example.org/%2e%2e\"",
                "\"https://oidc.example.org/\"",
                "\"http://x\"",
                "\"https://u@x\"",
                "\"https://x?q\"",
                "\"[::1]:8443\"",
                "\"0.0.0.0:99999\"",
                "\"a\\u0000b\"",
                "'literal'",
                "\"\"\"multi\nline\"\"\"",
                "1979-05-27",
            ])
            .prop_map(str::to_owned),
            "\"\\PC{0,30}\"",
        ]
    }

    fn edit() -> impl Strategy<Value = super::Edit> {
        super::edit(toml_fragment, toml_value())
    }

    /// What any config the server accepts must satisfy.
    fn check_accepted(config: &ServerConfig) -> Result<(), TestCaseError> {
        let td: &TrustDomain = &config.trust_domain;
        prop_assert!(TrustDomain::new(td.as_str()).is_ok());
        prop_assert!(!config.data_dir.as_os_str().is_empty());
        prop_assert!(
            config.admin.socket.is_absolute(),
            "{:?}",
            config.admin.socket
        );
        prop_assert!(
            config
                .server_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{:?}",
            config.server_id
        );
        prop_assert!(
            config.datastore_url.starts_with("sqlite://")
                || config.datastore_url.starts_with("postgres://")
                || config.datastore_url.starts_with("postgresql://"),
            "{:?}",
            config.datastore_url
        );
        let issuer = config.issuer.as_str();
        prop_assert!(
            issuer.starts_with("https://") || issuer.starts_with("http://"),
            "{:?}",
            issuer
        );
        prop_assert!(
            !issuer.ends_with('/') && !issuer.contains(['?', '#']),
            "{:?}",
            issuer
        );
        prop_assert!(config.node_api.agent_id.is_member_of(td));
        let agent_ttl = config.node_api.agent_svid_ttl.as_secs();
        prop_assert!((60..=30 * 86_400).contains(&agent_ttl), "{}", agent_ttl);
        let (default_ttl, max_ttl) = (config.jwt.default_ttl, config.jwt.max_ttl);
        prop_assert!(!default_ttl.is_zero() && default_ttl <= max_ttl);
        prop_assert!(max_ttl.as_secs() <= 172_800);
        prop_assert!(config.jwt.rotation.validate().is_ok());
        for entry in &config.entries {
            let id: &SpiffeId = &entry.spiffe_id;
            prop_assert!(id.is_member_of(td), "{}", id);
            prop_assert!(id.check_assignable().is_ok(), "{}", id);
            prop_assert!(*id != config.node_api.agent_id, "{}", id);
            prop_assert!(entry.parent_id.is_member_of(td), "{}", entry.parent_id);
            prop_assert!(!entry.selectors.is_empty());
            for selector in &entry.selectors {
                let known = Selector::parse_known(&selector.to_string());
                prop_assert_eq!(known.as_ref().ok(), Some(selector), "{:?}", known);
            }
            prop_assert!(!entry.jwt_svid_ttl.is_zero() && entry.jwt_svid_ttl <= max_ttl);
            prop_assert!(
                !entry.x509_svid_ttl.is_zero() && entry.x509_svid_ttl <= MAX_X509_SVID_TTL
            );
            prop_assert!(entry.hint.len() <= MAX_HINT_LEN);
            prop_assert!(
                !entry.hint.chars().any(char::is_control),
                "{:?}",
                entry.hint
            );
        }
        Ok(())
    }

    #[test]
    fn the_valid_server_config_is_valid() {
        let config = ServerConfig::from_toml(VALID_SERVER_TOML, "server.toml").expect("valid");
        assert_eq!(config.entries.len(), 2);
        check_accepted(&config).expect("and as it should be");
    }

    proptest! {
        #![proptest_config(super::config())]

        /// Any text as server.toml: no panic; whatever is accepted is sound.
        #[test]
        fn server_config_never_panics_on_any_text(
            text in prop_oneof![
                any::<String>(),
                proptest::collection::vec(toml_fragment(), 0..20).prop_map(|f| f.concat()),
            ]
        ) {
            if let Ok(config) = ServerConfig::from_toml(&text, "server.toml") {
                check_accepted(&config)?;
            }
        }

        /// A valid server.toml after 1 to 4 edits: no panic, errors are one
        /// line, and whatever is accepted is sound.
        #[test]
        fn server_config_never_panics_on_edits_of_a_valid_one(
            edits in proptest::collection::vec(edit(), 1..5)
        ) {
            let text = edits.iter().fold(VALID_SERVER_TOML.to_owned(), |text, e| apply(&text, e));
            match ServerConfig::from_toml(&text, "server.toml") {
                Ok(config) => check_accepted(&config)?,
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(!message.is_empty());
                    prop_assert!(!message.contains('\n'), "{:?}", message);
                }
            }
        }
    }
}
