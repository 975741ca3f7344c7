//! Lanyard examples: the quickstart, and one runnable exchange per cloud token
//! service. Each exchange reads its JWT-SVID with the `spiffe` crate (the way
//! any SPIFFE workload would, from `SPIFFE_ENDPOINT_SOCKET`) and trades it at
//! the service's real wire interface; every endpoint can be overridden.
#![allow(
    unused_crate_dependencies,
    reason = "the dependencies serve the example binaries; this library holds only what they share"
)]

use anyhow::Context;
use spiffe::WorkloadApiClient;

/// This process's JWT-SVID for `audience`, from the Workload API named by
/// `SPIFFE_ENDPOINT_SOCKET`. Returns (SPIFFE ID, token).
pub async fn fetch_jwt_svid(audience: &str) -> anyhow::Result<(String, String)> {
    let client = WorkloadApiClient::connect_env()
        .await
        .context("connecting to the Workload API (is SPIFFE_ENDPOINT_SOCKET set?)")?;
    let svid = client
        .fetch_jwt_svid([audience], None)
        .await
        .with_context(|| format!("fetching a JWT-SVID for audience {audience:?}"))?;
    Ok((svid.spiffe_id().to_string(), svid.token().to_owned()))
}

/// A short, non-secret name for a credential, so examples can show which one
/// they received without printing it: the first 12 hex digits of its SHA-256.
pub fn fingerprint(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    lanyard_host::encoding::hex(&digest.as_ref()[..6])
}

/// An HTTPS client trusting the system's web PKI roots, plus the PEM
/// certificates in `extra_ca` (e.g. `VAULT_CACERT` for a private Vault).
pub fn http_client(extra_ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = extra_ca {
        let pem =
            std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
        // Input without PEM blocks (DER, a key) parses as an empty bundle.
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no PEM CERTIFICATE block",
            path.display()
        );
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// The JSON body of a successful response; otherwise an error carrying the
/// status and the service's own error body, which names the problem.
pub async fn json_or_error(
    what: &str,
    response: reqwest::Response,
) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("{what}: reading the response"))?;
    if !status.is_success() {
        anyhow::bail!("{what} refused ({status}): {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: the response is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_and_stable() {
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(fingerprint("abc").len(), 12);
    }
}

/// The sample deployment files in `examples/deploy/` must stay loadable by the
/// code they configure.
#[cfg(test)]
mod deploy_samples {
    use std::path::PathBuf;

    fn sample(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name)
    }

    #[test]
    fn server_and_agent_configs_pass_their_loaders() {
        let server = std::fs::read_to_string(sample("server.toml")).unwrap();
        let config =
            lanyard_server::config::ServerConfig::from_toml(&server, "deploy/server.toml").unwrap();
        assert_eq!(config.trust_domain.to_string(), "example.org");
        assert!(config.log.audit_file.is_some());
        let agent = std::fs::read_to_string(sample("agent.toml")).unwrap();
        let agent =
            lanyard_agent::config::AgentConfig::from_toml(&agent, "deploy/agent.toml").unwrap();
        assert!(agent.log.audit_file.is_some());
    }

    #[test]
    fn fleet_samples_pass_their_loaders() {
        // The server reads its fleet CA at load: the sample's path, given a real CA.
        let dir = tempfile_dir();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let bundle = dir.join("fleet-ca.pem");
        std::fs::write(&bundle, ca_pem).unwrap();
        let server = std::fs::read_to_string(sample("server-fleet.toml"))
            .unwrap()
            .replace("/etc/lanyard/fleet-ca.pem", bundle.to_str().unwrap());
        lanyard_server::config::ServerConfig::from_toml(&server, "deploy/server-fleet.toml")
            .unwrap();
        for agent in ["agent-x509pop.toml", "agent-sshpop.toml"] {
            let text = std::fs::read_to_string(sample(agent)).unwrap();
            lanyard_agent::config::AgentConfig::from_toml(&text, agent).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A fresh directory under the system's temporary directory.
    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lanyard-samples-{}-{}",
            std::process::id(),
            lanyard_host::random::identifier::<8>().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cloud_samples_name_valid_roles_and_providers() {
        let aws = std::fs::read_to_string(sample("cloud/aws-config")).unwrap();
        let arns: Vec<&str> = aws
            .lines()
            .filter_map(|l| l.split("--role-arn ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert_eq!(arns.len(), 2);
        // Each helper command line is one the agent's CLI accepts as it stands
        // (Google's libraries pass the audience in GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE).
        let gcp_config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(sample("cloud/gcp-credential-config.json")).unwrap(),
        )
        .unwrap();
        let gcp_command = format!(
            "{} --audience {}",
            gcp_config["credential_source"]["executable"]["command"]
                .as_str()
                .unwrap(),
            gcp_config["audience"].as_str().unwrap()
        );
        let commands: Vec<&str> = aws
            .lines()
            .filter_map(|l| l.strip_prefix("credential_process = "))
            .chain([gcp_command.as_str()])
            .collect();
        assert_eq!(commands.len(), 3);
        for command in commands {
            <lanyard_agent::client::cli::Cli as clap::Parser>::try_parse_from(
                command.split_whitespace(),
            )
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        }
        for arn in arns {
            let request = lanyard_agent::client::cloud::aws::Request {
                role_arn: arn.into(),
                session_name: None,
                duration_seconds: Some(900),
                region: None,
                timeout_seconds: lanyard_agent::client::cloud::aws::DEFAULT_TIMEOUT_SECONDS,
            };
            request.validate().unwrap();
        }
        let gcp: serde_json::Value = serde_json::from_slice(
            &std::fs::read(sample("cloud/gcp-credential-config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(gcp["type"], "external_account");
        assert_eq!(
            gcp["subject_token_type"],
            lanyard_agent::client::cloud::gcp::JWT_TOKEN_TYPE
        );
        assert!(
            gcp["audience"]
                .as_str()
                .unwrap()
                .starts_with("//iam.googleapis.com/projects/")
        );
    }
}
