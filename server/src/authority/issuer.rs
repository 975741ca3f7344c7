//! The OIDC issuer URL: compared byte for byte by every cloud, and mapped to
//! paths under a directory by `oidc publish`, so only plain URLs pass.

/// The OIDC issuer URL, byte for byte as it appears in `iss` and in discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    url: String,
    path_start: usize,
}

/// Why an issuer URL is refused; each variant is one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    #[error("must be an https:// URL (http:// only behind a TLS-terminating proxy)")]
    Scheme,
    #[error("must not have a query or fragment")]
    QueryOrFragment,
    #[error("{0:?} is not allowed in a URL (percent-encode it)")]
    Character(char),
    #[error("must not end with '/' (clouds compare `iss` byte for byte)")]
    TrailingSlash,
    #[error("must name a host and no userinfo")]
    Host,
    #[error("must not have an empty path segment (\"//\")")]
    EmptySegment,
    #[error("must not have a {0:?} path segment (the path must name one place)")]
    DotSegment(String),
}

/// What RFC 3986 allows in a URL besides letters and digits; anything else
/// (spaces, quotes, control characters, non-ASCII) is no URL a cloud accepts.
const URL_PUNCTUATION: &str = "-._~:/?#[]@!$&'()*+,;=%";

impl Issuer {
    pub fn parse(url: &str) -> Result<Self, IssuerError> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(IssuerError::Scheme)?;
        if url.contains(['?', '#']) {
            return Err(IssuerError::QueryOrFragment);
        }
        if let Some(c) = url
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || URL_PUNCTUATION.contains(c)))
        {
            return Err(IssuerError::Character(c));
        }
        if url.ends_with('/') {
            return Err(IssuerError::TrailingSlash);
        }
        let authority_len = rest.find('/').unwrap_or(rest.len());
        if authority_len == 0 || rest[..authority_len].contains('@') {
            return Err(IssuerError::Host);
        }
        check_path(&rest[authority_len..])?;
        Ok(Self {
            url: url.to_owned(),
            path_start: url.len() - rest.len() + authority_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The URL without its scheme: how AWS IAM names the provider.
    pub fn host_and_path(&self) -> &str {
        &self.url[self.authority_start()..]
    }

    /// The path prefix under which the documents are served ("" at the root).
    pub fn path(&self) -> &str {
        &self.url[self.path_start..]
    }

    fn authority_start(&self) -> usize {
        self.url.find("://").map_or(0, |i| i + 3)
    }

    /// The host part, for the names of a self-signed certificate.
    pub fn host(&self) -> &str {
        let authority = &self.url[self.authority_start()..self.path_start];
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.split(':').next().unwrap_or(authority),
        }
    }

    /// `host:port` to connect to (port 443 or 80 when the URL names none).
    pub fn socket_address(&self) -> String {
        let authority = &self.url[self.authority_start()..self.path_start];
        let has_port = match authority.rfind(']') {
            Some(end) => authority[end..].contains(':'),
            None => authority.contains(':'),
        };
        if has_port {
            authority.to_owned()
        } else if self.is_https() {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        }
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.url)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/keys", self.url)
    }
}

/// `oidc publish` writes the documents under `--out` at this path, and web
/// servers collapse `.`, `..` and `//` before looking files up: such a path
/// would escape `--out` or serve from somewhere other than the issuer says.
fn check_path(path: &str) -> Result<(), IssuerError> {
    let Some(segments) = path.strip_prefix('/') else {
        return Ok(());
    };
    for segment in segments.split('/') {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if segment.is_empty() {
            return Err(IssuerError::EmptySegment);
        }
        if decoded == "." || decoded == ".." {
            return Err(IssuerError::DotSegment(segment.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_good_issuer() -> Result<(), IssuerError> {
        let issuer = Issuer::parse("https://oidc.example.org:8443/tenant-a/v1")?;
        assert_eq!(issuer.host(), "oidc.example.org");
        assert_eq!(issuer.path(), "/tenant-a/v1");
        assert_eq!(issuer.host_and_path(), "oidc.example.org:8443/tenant-a/v1");
        assert!(issuer.is_https());
        assert!(!Issuer::parse("http://10.0.0.1:8080")?.is_https());
        // A dot inside a segment is an ordinary name.
        assert_eq!(
            Issuer::parse("https://a.example/v1.2/..x")?.path(),
            "/v1.2/..x"
        );
        Ok(())
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for url in [
            "https://a.example/..",
            "https://a.example/../../etc",
            "https://a.example/x/./y",
            "https://a.example/x/%2E%2e/y",
            "https://a.example//x",
            "https://a.example/x//y",
        ] {
            let error = Issuer::parse(url).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains("path segment")),
                "{url}: {error:?}"
            );
        }
    }

    #[test]
    fn only_plain_urls_pass() {
        for (url, expected) in [
            ("oidc.example.org", "https://"),
            ("https://oidc.example.org/", "end with '/'"),
            ("https://oidc.example.org?x=1", "query"),
            ("https://oidc.example.org/a b", "not allowed"),
            ("https://oidc.example.org/a\nb", "not allowed"),
            ("https://oidc.example.org/\"x", "not allowed"),
            ("https://user@oidc.example.org", "userinfo"),
        ] {
            let error = Issuer::parse(url).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(expected)),
                "{url}: {error:?}"
            );
        }
    }
}
