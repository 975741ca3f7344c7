//! Reading a TOML config file into its raw, serde-shaped form, with errors that
//! name the file and line on one line. Each binary validates the raw form itself.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}, line {line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
}

/// Why a daemon's config was refused: the file, or one key's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The refusal of config key `key` (dotted, as written in the file).
pub fn invalid(key: impl Into<String>, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

/// The text of the config file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses TOML `text` (named `origin` in errors) into `T`.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|e| ConfigFileError::Parse {
        origin: origin.to_owned(),
        line: e
            .span()
            .map_or(1, |span| text[..span.start].matches('\n').count() + 1),
        message: e.message().trim().replace('\n', "; "),
    })
}
