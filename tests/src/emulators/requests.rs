//! Requests to the emulators as the services' real clients send them, for
//! the test modules that send them without an SDK. The fields are spelled
//! out here rather than taken from the emulators' constants, so that a
//! mistake on either side shows.

use serde_json::{Value, json};

use super::entra::Entra;
use super::gcp::Gcp;

/// The HTTP status and JSON body of an emulator's answer.
pub async fn status_and_json(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    Ok((response.status().as_u16(), response.json().await?))
}

/// Google STS token exchange as JSON, in the REST reference's camelCase.
pub async fn gcp_exchange(gcp: &Gcp, audience: &str, token: &str) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(gcp.token_url())
        .json(&json!({
            "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": audience,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "subjectToken": token,
            "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
        }))
        .send()
        .await?;
    status_and_json(response).await
}

/// Google STS token exchange as an RFC 8693 form, as Google's client
/// libraries send it, with the subject token typed `token_type`.
pub async fn gcp_exchange_form(
    gcp: &Gcp,
    audience: &str,
    token: &str,
    token_type: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(gcp.token_url())
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("audience", audience),
            ("scope", "https://www.googleapis.com/auth/cloud-platform"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token", token),
            ("subject_token_type", token_type),
        ])
        .send()
        .await?;
    status_and_json(response).await
}

/// Entra client credentials with `assertion` as the federated client assertion.
pub async fn entra_token(
    entra: &Entra,
    client_id: &str,
    scope: &str,
    assertion: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(entra.token_url())
        .form(&[
            ("client_id", client_id),
            ("scope", scope),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await?;
    status_and_json(response).await
}
