//! Credential helpers: the last hop from a JWT-SVID to a cloud. Each helper
//! runs as the workload (it is started by the cloud's SDK or CLI), fetches its
//! JWT-SVID from the agent over the Workload API and hands it on in the form
//! the cloud's tooling reads, so no workload needs glue code.

pub mod aws;
pub mod gcp;
pub mod token_file;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_proto::claims::JwtSvidClaims;

use crate::client::workload_api::{ClientError, FetchedJwt, WorkloadClient};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("fetching the JWT-SVID: {0}")]
    Workload(#[from] ClientError),
    #[error("the agent returned no JWT-SVID for this process")]
    NoSvid,
    #[error(
        "this process has {} identities ({}): choose one with --spiffe-id",
        .0.len(),
        .0.join(", ")
    )]
    Ambiguous(Vec<String>),
    #[error("the agent returned a token that is not a JWT-SVID: {0}")]
    BadToken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exchange(String),
    #[error(transparent)]
    Fs(#[from] lanyard_host::private_files::FsError),
}

/// A JWT-SVID with the times the helpers schedule by.
#[derive(Clone, PartialEq, Eq)]
pub struct Svid {
    pub spiffe_id: String,
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Exactly one JWT-SVID of the calling process for `audience`: the one named by
/// `spiffe_id`, or the only one. A process with several identities must choose,
/// so a helper never hands a cloud an identity nobody picked.
pub async fn fetch_svid(
    endpoint: &str,
    audience: &[String],
    spiffe_id: Option<&str>,
) -> Result<Svid, CloudError> {
    let mut svids = WorkloadClient::new(endpoint)?
        .fetch_jwt(audience.to_vec(), spiffe_id.map(str::to_owned))
        .await?;
    let fetched = match svids.len() {
        0 => return Err(CloudError::NoSvid),
        1 => svids.remove(0),
        _ => {
            return Err(CloudError::Ambiguous(
                svids.into_iter().map(|s| s.spiffe_id).collect(),
            ));
        }
    };
    with_times(fetched)
}

fn with_times(fetched: FetchedJwt) -> Result<Svid, CloudError> {
    let claims = unverified_claims(&fetched.token)?;
    Ok(Svid {
        spiffe_id: fetched.spiffe_id,
        token: fetched.token,
        issued_at: claims.iat,
        expires_at: claims.exp,
    })
}

/// The claims of a token the agent just handed us. Not verified: the agent is
/// trusted here, and the cloud verifies the signature anyway; we only read
/// the times to schedule by.
fn unverified_claims(token: &str) -> Result<JwtSvidClaims, CloudError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| CloudError::BadToken("not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| CloudError::BadToken(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CloudError::BadToken(format!("payload is not JWT-SVID claims: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(payload: &str) -> String {
        format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_issue_and_expiry_times() {
        let token = token_with(
            r#"{"iss":"https://i","sub":"spiffe://td/w","aud":"a","iat":100,"exp":400}"#,
        );
        let svid = with_times(FetchedJwt {
            spiffe_id: "spiffe://td/w".into(),
            token,
        })
        .unwrap();
        assert_eq!((svid.issued_at, svid.expires_at), (100, 400));
    }

    #[test]
    fn refuses_what_is_not_a_jwt_svid() {
        for token in [
            "opaque".to_owned(),
            "a.!!!.c".to_owned(),
            token_with(r#"{"sub":"x"}"#),
        ] {
            assert!(matches!(
                unverified_claims(&token),
                Err(CloudError::BadToken(_))
            ));
        }
    }
}
