//! JSON Web Key Sets as published by the OIDC endpoint and handed out as JWT bundles.
//! Only public fields exist here, so a private key cannot be serialised by mistake.

use serde::{Deserialize, Serialize};

/// One public signing key (RFC 7517), EC P-256 or RSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
}

/// `use` of every published key: they sign, and only sign.
pub const KEY_USE_SIGNATURE: &str = "sig";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The distinct `alg`s of the published keys, in first-seen order (for discovery).
    pub fn algorithms(&self) -> Vec<String> {
        let mut algs: Vec<String> = Vec::new();
        for key in &self.keys {
            if !algs.contains(&key.alg) {
                algs.push(key.alg.clone());
            }
        }
        algs
    }
}
