//! The operator's side of the Admin API: runs a CLI verb against a running
//! server's Admin socket and prints the answer for people or scripts.

use lanyard_host::transport::unix_channel;
use lanyard_proto::Selector;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{
    Agent, BanAgentRequest, CreateEntryRequest, DeleteEntryRequest, Entry, EvictAgentRequest,
    GenerateJoinTokenRequest, GetAgentRequest, GetBundleRequest, GetEntryRequest, HealthRequest,
    ListAgentsRequest, ListEntriesRequest, UnbanAgentRequest, UpdateEntryRequest,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::authority::Issuer;
use crate::ops::cli::{
    AdminArgs, AgentCommand, BundleCommand, Command, EntryCommand, OidcCommand, Output,
    TokenCommand,
};
use crate::ops::oidc_tools;
use lanyard_proto::Jwks;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminCliError {
    #[error("{message} ({code:?})")]
    Rpc { code: tonic::Code, message: String },
    #[error("the Admin socket {}: {source} (is the server running? --socket, --config or LANYARD_ADMIN_SOCKET name another)", socket.display())]
    Socket {
        socket: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config: {0}")]
    Config(#[source] crate::config::ConfigError),
    #[error("{0} is not an Admin API verb")]
    NotAVerb(&'static str),
    #[error("server sent a bundle that is not UTF-8 JSON")]
    BadBundle,
    #[error("publishing: the server's issuer {0}")]
    Issuer(#[source] crate::authority::IssuerError),
    #[error("publishing: {0}")]
    Publish(#[source] super::oidc_tools::OidcToolError),
}

impl From<tonic::Status> for AdminCliError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Runs an Admin API verb and returns what to print on stdout.
pub async fn run(command: Command) -> Result<String, AdminCliError> {
    match command {
        Command::Run { .. } => Err(AdminCliError::NotAVerb("run")),
        Command::CheckConfig { .. } => Err(AdminCliError::NotAVerb("check-config")),
        Command::Federation(_) => Err(AdminCliError::NotAVerb("federation")),
        Command::Oidc(OidcCommand::Thumbprint { .. }) => {
            Err(AdminCliError::NotAVerb("oidc thumbprint"))
        }
        Command::Oidc(OidcCommand::Publish { out, admin_args }) => {
            let bundle = client(&admin_args)?
                .get_bundle(GetBundleRequest {})
                .await?
                .into_inner();
            let issuer = Issuer::parse(&bundle.issuer).map_err(AdminCliError::Issuer)?;
            let jwks: Jwks =
                serde_json::from_slice(&bundle.jwks).map_err(|_| AdminCliError::BadBundle)?;
            let written =
                oidc_tools::publish(&issuer, &jwks, &out).map_err(AdminCliError::Publish)?;
            Ok(written
                .iter()
                .map(|p| format!("wrote {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Command::Healthcheck { admin } => {
            let health = client(&admin)?.health(HealthRequest {}).await?.into_inner();
            Ok(match admin.output {
                Output::Human => format!("healthy: trust domain {}, entry revision {}", health.trust_domain, health.entry_revision),
                Output::Json => json!({"healthy": true, "trust_domain": health.trust_domain, "entry_revision": health.entry_revision}).to_string(),
            })
        }
        Command::Entry(verb) => entry(verb).await,
        Command::Token(TokenCommand::Generate {
            spiffe_id,
            ttl,
            admin_args,
        }) => {
            let token = client(&admin_args)?
                .generate_join_token(GenerateJoinTokenRequest {
                    spiffe_id,
                    ttl_seconds: ttl,
                })
                .await?
                .into_inner();
            Ok(match admin_args.output {
                Output::Human => format!("Token: {}\nAgent SPIFFE ID: {}\nExpires at: {}", token.token, token.spiffe_id, token.expires_at),
                Output::Json => json!({"token": token.token, "spiffe_id": token.spiffe_id, "expires_at": token.expires_at}).to_string(),
            })
        }
        Command::Agent(verb) => agent(verb).await,
        Command::Bundle(BundleCommand::Show { admin_args }) => {
            let bundle = client(&admin_args)?
                .get_bundle(GetBundleRequest {})
                .await?
                .into_inner();
            String::from_utf8(bundle.jwks).map_err(|_| AdminCliError::BadBundle)
        }
    }
}

async fn agent(verb: AgentCommand) -> Result<String, AdminCliError> {
    match verb {
        AgentCommand::List { admin_args } => {
            let agents = client(&admin_args)?
                .list_agents(ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            Ok(match admin_args.output {
                Output::Human if agents.is_empty() => "No agents attested.".to_owned(),
                Output::Human => agents
                    .iter()
                    .map(|a| {
                        format!(
                            "SPIFFE ID : {}\nType      : {}\nSerial    : {}\nLast seen : {}\nEvicted   : {}\nBanned    : {}",
                            a.spiffe_id, a.attestation_type, a.serial, a.last_seen, a.evicted, a.banned
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n\n"),
                Output::Json => serde_json::Value::from(
                    agents.iter().map(agent_json).collect::<Vec<_>>(),
                )
                .to_string(),
            })
        }
        AgentCommand::Show {
            spiffe_id,
            admin_args,
        } => {
            let agent = client(&admin_args)?
                .get_agent(GetAgentRequest { spiffe_id })
                .await?
                .into_inner();
            Ok(match admin_args.output {
                Output::Human => render_agent(&agent),
                Output::Json => agent_json(&agent).to_string(),
            })
        }
        AgentCommand::Evict {
            spiffe_id,
            admin_args,
        } => {
            client(&admin_args)?
                .evict_agent(EvictAgentRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await?;
            Ok(agent_done(
                &admin_args.output,
                "Evicted",
                "evicted",
                &spiffe_id,
            ))
        }
        AgentCommand::Ban {
            spiffe_id,
            admin_args,
        } => {
            client(&admin_args)?
                .ban_agent(BanAgentRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await?;
            Ok(agent_done(
                &admin_args.output,
                "Banned",
                "banned",
                &spiffe_id,
            ))
        }
        AgentCommand::Unban {
            spiffe_id,
            admin_args,
        } => {
            client(&admin_args)?
                .unban_agent(UnbanAgentRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await?;
            Ok(agent_done(
                &admin_args.output,
                "Unbanned",
                "unbanned",
                &spiffe_id,
            ))
        }
    }
}

/// An agent for scripts (`agent list` keeps its earlier keys).
fn agent_json(agent: &Agent) -> serde_json::Value {
    json!({
        "spiffe_id": agent.spiffe_id,
        "serial": agent.serial,
        "last_seen": agent.last_seen,
        "evicted": agent.evicted,
        "attestation_type": agent.attestation_type,
        "banned": agent.banned,
        "attested_at": agent.attested_at,
        "selectors": agent.selectors,
    })
}

/// One agent for people, one node selector a line.
fn render_agent(agent: &Agent) -> String {
    let mut text = format!(
        "SPIFFE ID   : {}\nType        : {}\nSerial      : {}\nAttested at : {}\nLast seen   : {}\nEvicted     : {}\nBanned      : {}",
        agent.spiffe_id,
        agent.attestation_type,
        agent.serial,
        agent.attested_at,
        agent.last_seen,
        agent.evicted,
        agent.banned
    );
    for selector in &agent.selectors {
        text.push_str(&format!("\nSelector    : {selector}"));
    }
    text
}

async fn entry(verb: EntryCommand) -> Result<String, AdminCliError> {
    match verb {
        EntryCommand::Create {
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl,
            x509_svid_ttl,
            hint,
            claims,
            admin,
            node,
            admin_args,
        } => {
            let entry = client(&admin_args)?
                .create_entry(CreateEntryRequest {
                    node,
                    spiffe_id,
                    parent_id,
                    selectors,
                    jwt_svid_ttl_seconds: jwt_svid_ttl,
                    admin,
                    x509_svid_ttl_seconds: x509_svid_ttl,
                    hint,
                    claims,
                })
                .await?
                .into_inner();
            Ok(render(&[entry], admin_args.output))
        }
        EntryCommand::Show { id, admin_args } => {
            let entry = client(&admin_args)?
                .get_entry(GetEntryRequest { id })
                .await?
                .into_inner();
            Ok(render(&[entry], admin_args.output))
        }
        EntryCommand::List {
            spiffe_id,
            parent_id,
            selector,
            admin_args,
        } => {
            let entries = client(&admin_args)?
                .list_entries(ListEntriesRequest {
                    spiffe_id,
                    parent_id,
                    selector,
                })
                .await?
                .into_inner()
                .entries;
            Ok(match admin_args.output {
                Output::Human if entries.is_empty() => "No entries.".to_owned(),
                output => render(&entries, output),
            })
        }
        EntryCommand::Update {
            id,
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl,
            x509_svid_ttl,
            hint,
            claims,
            admin,
            admin_args,
        } => {
            let mut admin_client = client(&admin_args)?;
            let mut entry = admin_client
                .get_entry(GetEntryRequest { id: id.clone() })
                .await?
                .into_inner();
            if let Some(v) = spiffe_id {
                entry.spiffe_id = v;
            }
            if let Some(v) = parent_id {
                entry.parent_id = v;
            }
            if !selectors.is_empty() {
                entry.selectors = selectors;
            }
            if let Some(v) = jwt_svid_ttl {
                entry.jwt_svid_ttl_seconds = v;
            }
            if let Some(v) = x509_svid_ttl {
                entry.x509_svid_ttl_seconds = v;
            }
            if let Some(v) = hint {
                entry.hint = v;
            }
            if let Some(v) = claims {
                entry.claims = v;
            }
            if let Some(v) = admin {
                entry.admin = v;
            }
            let updated = admin_client
                .update_entry(UpdateEntryRequest {
                    id,
                    entry: Some(entry),
                })
                .await?
                .into_inner();
            Ok(render(&[updated], admin_args.output))
        }
        EntryCommand::Delete { id, admin_args } => {
            client(&admin_args)?
                .delete_entry(DeleteEntryRequest { id: id.clone() })
                .await?;
            Ok(match admin_args.output {
                Output::Human => format!("Deleted entry {id}"),
                Output::Json => json!({"deleted": id}).to_string(),
            })
        }
    }
}

fn client(args: &AdminArgs) -> Result<AdminClient<Channel>, AdminCliError> {
    let socket = args.socket_path().map_err(AdminCliError::Config)?;
    // Named up front: the transport's own error would not say which path.
    std::fs::metadata(&socket).map_err(|source| AdminCliError::Socket {
        socket: socket.clone(),
        source,
    })?;
    Ok(AdminClient::new(unix_channel(&socket)))
}

/// What `entry list`/`show` say of an entry stored before the rule that a
/// binary selector needs a uid or gid beside it (see
/// [`lanyard_proto::selector::check_anchored`]): agents will not issue it.
pub const BINARY_WITHOUT_UID_WARNING: &str =
    "selects a binary without unix:uid or unix:gid; the agent will not issue it";

/// Why agents will not issue `entry`, if they will not: today only an entry
/// stored before binary selectors needed a uid or gid.
fn entry_warnings(entry: &Entry) -> Vec<&'static str> {
    let selectors: Vec<Selector> = entry
        .selectors
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect();
    match lanyard_proto::selector::check_anchored(&selectors) {
        Ok(()) => Vec::new(),
        Err(_) => vec![BINARY_WITHOUT_UID_WARNING],
    }
}

/// An entry's claims as JSON: the object, or null for none.
fn claims_json(claims: &str) -> serde_json::Value {
    serde_json::from_str(claims).unwrap_or(serde_json::Value::Null)
}

/// Entries for people (one block each, a `Warning       : …` line for each
/// reason agents will not issue it) or as a JSON array whose objects carry,
/// besides the entry's fields, `"issuable"` (false when agents will not issue
/// it) and `"warnings"` (why, one sentence each; empty when issuable).
fn render(entries: &[Entry], output: Output) -> String {
    match output {
        Output::Json => serde_json::Value::from(
            entries
                .iter()
                .map(|e| {
                    let warnings = entry_warnings(e);
                    json!({
                        "id": e.id,
                        "spiffe_id": e.spiffe_id,
                        "parent_id": e.parent_id,
                        "selectors": e.selectors,
                        "jwt_svid_ttl_seconds": e.jwt_svid_ttl_seconds,
                        "x509_svid_ttl_seconds": e.x509_svid_ttl_seconds,
                        "hint": e.hint,
                        "claims": claims_json(&e.claims),
                        "admin": e.admin,
                        "created_at": e.created_at,
                        "updated_at": e.updated_at,
                        "revision": e.revision,
                        "node": e.node,
                        "issuable": warnings.is_empty(),
                        "warnings": warnings,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .to_string(),
        Output::Human => entries
            .iter()
            .map(|e| {
                let mut text = format!(
                    "Entry ID      : {}\nSPIFFE ID     : {}\nParent ID     : {}\nRevision      : {}\nJWT-SVID TTL  : {}s\nX509-SVID TTL : {}s\nAdmin         : {}",
                    e.id, e.spiffe_id, e.parent_id, e.revision, e.jwt_svid_ttl_seconds, e.x509_svid_ttl_seconds, e.admin
                );
                if e.node {
                    text.push_str("\nNode alias    : true");
                }
                if !e.hint.is_empty() {
                    text.push_str(&format!("\nHint          : {}", e.hint));
                }
                if !e.claims.is_empty() {
                    text.push_str(&format!("\nClaims        : {}", e.claims));
                }
                for selector in &e.selectors {
                    text.push_str(&format!("\nSelector      : {selector}"));
                }
                for warning in entry_warnings(e) {
                    text.push_str(&format!("\nWarning       : {warning}"));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("\n\n"),
    }
}

/// What an agent verb prints once done: `<Done> <ID>` for people, or
/// `{"<key>": "<ID>"}`.
fn agent_done(output: &Output, done: &str, key: &str, spiffe_id: &str) -> String {
    match output {
        Output::Human => format!("{done} {spiffe_id}"),
        Output::Json => {
            serde_json::Value::Object([(key.to_owned(), spiffe_id.into())].into_iter().collect())
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(selectors: &[&str]) -> Entry {
        Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            ..Entry::default()
        }
    }

    /// An entry stored before binary selectors needed a uid or gid is marked,
    /// for people and for scripts; others are not.
    #[test]
    fn entries_agents_will_not_issue_are_marked() -> Result<(), serde_json::Error> {
        let old = entry(&["unix:path:/usr/bin/sleep"]);
        let fine = entry(&["unix:path:/usr/bin/sleep", "unix:uid:1000"]);

        let human = render(std::slice::from_ref(&old), Output::Human);
        assert!(
            human.ends_with(&format!("\nWarning       : {BINARY_WITHOUT_UID_WARNING}")),
            "{human}"
        );
        assert!(!render(std::slice::from_ref(&fine), Output::Human).contains("Warning"));

        let json: serde_json::Value = serde_json::from_str(&render(&[old, fine], Output::Json))?;
        assert_eq!(json[0]["issuable"], false);
        assert_eq!(
            json[0]["warnings"],
            serde_json::json!([BINARY_WITHOUT_UID_WARNING])
        );
        assert_eq!(json[1]["issuable"], true);
        assert_eq!(json[1]["warnings"], serde_json::json!([]));
        Ok(())
    }
}
