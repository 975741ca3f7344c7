//! The kinds of JWT signing key a trust domain may use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A JWT signing key's algorithm family, as named in the config (`jwt.key_type`)
/// and in the datastore's key records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: JWS `ES256`. The default.
    #[default]
    EcP256,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256: JWS `RS256` (the only one Entra accepts).
    Rsa2048,
}

/// A key type name that is not one of [`KeyType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {given:?}; allowed values: \"ec-p256\", \"rsa-2048\"")]
pub struct UnknownKeyType {
    /// What was given.
    pub given: String,
}

impl KeyType {
    /// Every key type, in the order they are documented.
    pub const ALL: [KeyType; 2] = [KeyType::EcP256, KeyType::Rsa2048];

    /// The config/datastore name: `ec-p256` or `rsa-2048`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }

    /// The JWS `alg` its signatures carry: `ES256` or `RS256`.
    pub fn alg(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ES256",
            KeyType::Rsa2048 => "RS256",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownKeyType {
                given: s.to_owned(),
            })
    }
}

impl TryFrom<String> for KeyType {
    type Error = UnknownKeyType;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<KeyType> for String {
    fn from(value: KeyType) -> Self {
        value.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in KeyType::ALL {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        assert_eq!(KeyType::EcP256.alg(), "ES256");
        assert_eq!(KeyType::Rsa2048.alg(), "RS256");
    }

    #[test]
    fn unknown_names_list_the_allowed_values() {
        let err = "rsa-4096".parse::<KeyType>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(r#"unknown key type "rsa-4096"; allowed values: "ec-p256", "rsa-2048""#)
        );
        assert!("EC-P256".parse::<KeyType>().is_err(), "names are exact");
    }

    #[test]
    fn serde_uses_the_config_names() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&KeyType::Rsa2048)?, r#""rsa-2048""#);
        assert_eq!(
            serde_json::from_str::<KeyType>(r#""ec-p256""#)?,
            KeyType::EcP256
        );
        let err = serde_json::from_str::<KeyType>(r#""p384""#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("allowed values"), "{err}");
        Ok(())
    }
}
