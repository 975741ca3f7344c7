//! The SVID caches in front of the server: JWT-SVIDs by identity and
//! audience, X509-SVIDs by entry (keys made on the node), and the small LRU
//! the bounded LRU map (`crate::lru`).

pub(crate) mod jwt;
pub(crate) mod mint_batch;
pub(crate) mod x509;
