//! The OIDC discovery document and JWKS endpoint relying parties (clouds,
//! Vault) fetch, and the certificate it presents.

pub mod certificate;
pub mod endpoint;
