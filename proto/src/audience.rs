//! The audience of a JWT-SVID, checked the same way by the agent (before it
//! asks for anything) and by the server (before it signs): 1 to 16 values,
//! each 1 to 1024 bytes of printable text. Cloud audiences are short URLs or
//! ARNs; a control character (NUL, CR LF, DEL, C1) in a signed `aud` only
//! serves to confuse whoever logs or compares it.

/// Most audiences in one token.
pub const MAX_AUDIENCES: usize = 16;
/// Longest accepted audience value.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// Why an audience is refused; each variant is one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudienceError {
    #[error("audience is required")]
    Empty,
    #[error("audience has {0} values, more than {MAX_AUDIENCES}")]
    TooMany(usize),
    #[error("audience value {index} is empty")]
    EmptyValue { index: usize },
    #[error("audience value {index} is {len} bytes, longer than {MAX_AUDIENCE_LEN}")]
    TooLong { index: usize, len: usize },
    #[error(
        "audience value {index} contains the control character {found:?} (U+{code:04X}): only printable characters are allowed",
        code = u32::from(*found)
    )]
    ControlCharacter { index: usize, found: char },
}

/// An audience list that passed [`check`]: what the agent asks the server
/// for and what the server signs into `aud`. Both sides build it with
/// [`Audience::new`], so the rule cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Audience(Vec<String>);

impl Audience {
    pub fn new(values: Vec<String>) -> Result<Self, AudienceError> {
        check(&values)?;
        Ok(Self(values))
    }

    pub fn values(&self) -> &[String] {
        &self.0
    }

    pub fn into_values(self) -> Vec<String> {
        self.0
    }
}

impl TryFrom<Vec<String>> for Audience {
    type Error = AudienceError;

    fn try_from(values: Vec<String>) -> Result<Self, AudienceError> {
        Self::new(values)
    }
}

/// Checks a whole audience list, as FetchJWTSVID and the server's mint get it.
pub fn check(audience: &[String]) -> Result<(), AudienceError> {
    if audience.is_empty() {
        return Err(AudienceError::Empty);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(AudienceError::TooMany(audience.len()));
    }
    audience
        .iter()
        .enumerate()
        .try_for_each(|(index, value)| check_value(index, value))
}

/// Checks one value; `index` (0-based) names it in the error.
pub fn check_value(index: usize, value: &str) -> Result<(), AudienceError> {
    if value.is_empty() {
        return Err(AudienceError::EmptyValue { index });
    }
    if value.len() > MAX_AUDIENCE_LEN {
        return Err(AudienceError::TooLong {
            index,
            len: value.len(),
        });
    }
    // `is_control` is Unicode's Cc: C0, DEL and C1.
    match value.chars().find(|c| c.is_control()) {
        Some(found) => Err(AudienceError::ControlCharacter { index, found }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn cloud_audiences_pass() {
        let long = "a".repeat(MAX_AUDIENCE_LEN);
        let sixteen = vec!["x".to_owned(); MAX_AUDIENCES];
        for audience in [
            owned(&["sts.amazonaws.com"]),
            owned(&[
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
            ]),
            owned(&["api://AzureADTokenExchange", "vault"]),
            owned(&["ünïcode audience with spaces"]),
            vec![long],
            sixteen,
        ] {
            assert_eq!(check(&audience), Ok(()), "{audience:?}");
        }
    }

    #[test]
    fn each_rule_refuses_its_violation() {
        let cases: Vec<(Vec<String>, AudienceError)> = vec![
            (vec![], AudienceError::Empty),
            (
                vec!["x".to_owned(); MAX_AUDIENCES + 1],
                AudienceError::TooMany(17),
            ),
            (owned(&["a", ""]), AudienceError::EmptyValue { index: 1 }),
            (
                vec!["a".repeat(MAX_AUDIENCE_LEN + 1)],
                AudienceError::TooLong {
                    index: 0,
                    len: 1025,
                },
            ),
            (
                owned(&["aud\r\nx"]),
                AudienceError::ControlCharacter {
                    index: 0,
                    found: '\r',
                },
            ),
            (
                owned(&["ok", "a\0b"]),
                AudienceError::ControlCharacter {
                    index: 1,
                    found: '\0',
                },
            ),
            (
                owned(&["tab\there"]),
                AudienceError::ControlCharacter {
                    index: 0,
                    found: '\t',
                },
            ),
            (
                owned(&["del\u{7f}"]),
                AudienceError::ControlCharacter {
                    index: 0,
                    found: '\u{7f}',
                },
            ),
            (
                owned(&["c1\u{9b}"]),
                AudienceError::ControlCharacter {
                    index: 0,
                    found: '\u{9b}',
                },
            ),
        ];
        for (audience, expected) in cases {
            assert_eq!(check(&audience), Err(expected), "{audience:?}");
        }
    }

    #[test]
    fn an_audience_is_built_only_from_a_list_that_passes() {
        let good = owned(&["sts.amazonaws.com", "vault"]);
        assert_eq!(
            Audience::new(good.clone()).map(Audience::into_values),
            Ok(good)
        );
        assert_eq!(Audience::new(vec![]), Err(AudienceError::Empty));
        assert_eq!(
            Audience::try_from(owned(&["a\0"])).map(|a| a.values().len()),
            Err(AudienceError::ControlCharacter {
                index: 0,
                found: '\0'
            })
        );
    }

    #[test]
    fn messages_escape_what_they_name() {
        let message = check(&owned(&["aud\r\nx"])).map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("audience value 0 contains the control character '\\r' (U+000D): only printable characters are allowed".to_owned())
        );
    }
}
