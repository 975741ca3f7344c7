//! The SVID caches in front of the server: JWT-SVIDs by identity and
//! audience, X509-SVIDs by entry (keys made on the node), and the small LRU
//! map they and the binary-hash cache are bounded by.

pub(crate) mod jwt;
pub(crate) mod lru;
pub(crate) mod x509;
