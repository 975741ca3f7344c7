//! The JOSE header and claims of a JWT-SVID.

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtHeader {
    pub alg: String,
    pub kid: String,
    pub typ: String,
}

/// Claims of a JWT-SVID. `aud` is written as a string when there is one audience
/// (the form every cloud STS accepts) and as an array otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSvidClaims {
    pub iss: String,
    pub sub: String,
    #[serde(
        serialize_with = "serialize_audience",
        deserialize_with = "deserialize_audience"
    )]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jti: Option<String>,
    /// The entry's own claims, rendered (see [`crate::entry_claims`]); never
    /// one of the names above, which the entry's checks refuse.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn serialize_audience<S: Serializer>(aud: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    match aud {
        [single] => serializer.serialize_str(single),
        many => many.serialize(serializer),
    }
}

fn deserialize_audience<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(a) => Ok(vec![a]),
        OneOrMany::Many(v) if v.is_empty() => Err(de::Error::custom("aud is an empty array")),
        OneOrMany::Many(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &[&str]) -> JwtSvidClaims {
        JwtSvidClaims {
            iss: "https://issuer".into(),
            sub: "spiffe://td/x".into(),
            aud: aud.iter().map(|s| s.to_string()).collect(),
            exp: 20,
            iat: 10,
            jti: None,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn single_audience_is_a_string_many_an_array() -> serde_json::Result<()> {
        let one = serde_json::to_value(claims(&["a"]))?;
        assert_eq!(one["aud"], serde_json::json!("a"));
        let two = serde_json::to_value(claims(&["a", "b"]))?;
        assert_eq!(two["aud"], serde_json::json!(["a", "b"]));
        assert_eq!(
            serde_json::from_value::<JwtSvidClaims>(two)?,
            claims(&["a", "b"])
        );
        assert_eq!(
            serde_json::from_value::<JwtSvidClaims>(one)?,
            claims(&["a"])
        );
        Ok(())
    }
}
