//! The OIDC discovery document and JWKS endpoint relying parties (clouds,
//! Vault) fetch, and the certificate it presents.

pub(crate) mod certificate;
pub(crate) mod endpoint;
