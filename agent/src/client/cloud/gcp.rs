//! `gcp executable`: the JWT-SVID in Google's executable-sourced credential
//! format, for a workload identity federation credential configuration whose
//! `credential_source.executable.command` runs this helper. Google's auth
//! libraries then exchange the token at STS themselves.

use std::path::Path;

use serde::Serialize;

use super::{CloudError, Svid};

/// The subject token type this helper returns unless the library asks for the
/// other OIDC one (`GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE`).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Version 1 of the executable response, success or failure form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ExecutableResponse {
    Success {
        version: u8,
        success: bool,
        token_type: String,
        id_token: String,
        expiration_time: i64,
    },
    Failure {
        version: u8,
        success: bool,
        code: String,
        message: String,
    },
}

impl ExecutableResponse {
    pub fn success(svid: &Svid, token_type: &str) -> Self {
        Self::Success {
            version: 1,
            success: true,
            token_type: token_type.to_owned(),
            id_token: svid.token.clone(),
            expiration_time: svid.expires_at,
        }
    }

    pub fn failure(code: &str, message: String) -> Self {
        Self::Failure {
            version: 1,
            success: false,
            code: code.to_owned(),
            message,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The token type to answer with: the library's request when it is an OIDC
/// type we can serve, JWT when it states none.
pub fn token_type_for(requested: Option<&str>) -> Result<&'static str, CloudError> {
    match requested {
        None | Some("") | Some(JWT_TOKEN_TYPE) => Ok(JWT_TOKEN_TYPE),
        Some(ID_TOKEN_TYPE) => Ok(ID_TOKEN_TYPE),
        Some(other) => Err(CloudError::Invalid(format!(
            "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE {other:?} is not an OIDC token type: set subject_token_type to {JWT_TOKEN_TYPE} in the credential configuration"
        ))),
    }
}

/// The failure code for an error, as Google's libraries show it to the user.
pub fn failure_code(error: &CloudError) -> &'static str {
    use tonic::Code;
    match error {
        CloudError::Workload(e) => match e.code() {
            Some(Code::PermissionDenied) => "PERMISSION_DENIED",
            Some(Code::InvalidArgument) => "INVALID_ARGUMENT",
            _ => "UNAVAILABLE",
        },
        CloudError::NoSvid | CloudError::Ambiguous(_) => "PERMISSION_DENIED",
        CloudError::Invalid(_) => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

/// The whole helper: the response to print, and whether it is a success.
/// A failure is still a well-formed response (Google's libraries show its
/// code and message), so the caller prints it either way and exits non-zero.
pub async fn executable(
    endpoint: &str,
    audience: &str,
    spiffe_id: Option<&str>,
    requested_type: Option<&str>,
    output_file: Option<&Path>,
) -> ExecutableResponse {
    let answer = async {
        if audience.trim().is_empty() {
            return Err(CloudError::Invalid(
                "--audience (or GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE) must name the workload identity provider".into(),
            ));
        }
        let token_type = token_type_for(requested_type)?;
        let svid = super::fetch_svid(endpoint, &[audience.to_owned()], spiffe_id).await?;
        let response = ExecutableResponse::success(&svid, token_type);
        if let Some(path) = output_file {
            write_output_file(path, &response)?;
        }
        Ok(response)
    };
    answer.await.unwrap_or_else(|error: CloudError| {
        ExecutableResponse::failure(failure_code(&error), error.to_string())
    })
}

/// Writes the success response where the library caches it
/// (`GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE`): owner-only, replaced atomically.
pub fn write_output_file(path: &Path, response: &ExecutableResponse) -> Result<(), CloudError> {
    lanyard_host::private_files::write_private_file(path, response.to_json().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid() -> Svid {
        Svid {
            spiffe_id: "spiffe://td/w".into(),
            token: "h.p.s".into(),
            issued_at: 10,
            expires_at: 310,
        }
    }

    #[test]
    fn success_and_failure_forms() {
        let ok: serde_json::Value =
            serde_json::from_str(&ExecutableResponse::success(&svid(), JWT_TOKEN_TYPE).to_json())
                .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"version": 1, "success": true, "token_type": JWT_TOKEN_TYPE,
                "id_token": "h.p.s", "expiration_time": 310})
        );
        let failed: serde_json::Value = serde_json::from_str(
            &ExecutableResponse::failure("UNAVAILABLE", "agent down".into()).to_json(),
        )
        .unwrap();
        assert_eq!(
            failed,
            serde_json::json!({"version": 1, "success": false, "code": "UNAVAILABLE", "message": "agent down"})
        );
    }

    #[test]
    fn token_type_follows_the_library() {
        assert_eq!(token_type_for(None).unwrap(), JWT_TOKEN_TYPE);
        assert_eq!(token_type_for(Some(ID_TOKEN_TYPE)).unwrap(), ID_TOKEN_TYPE);
        let error = token_type_for(Some("urn:ietf:params:oauth:token-type:saml2")).unwrap_err();
        assert!(error.to_string().contains("saml2"));
    }
}
