//! The trust domain's JWT signing keys: the key types, the private key files,
//! and the (pure) rotation schedule over their public records.

mod key_dir;
mod key_type;
mod manager;
pub mod schedule;
mod signing_key;

pub use key_dir::KeyDir;
pub use key_type::{KeyType, UnknownKeyType};
pub use manager::{KeyManager, KeyManagerError, KeySet};
pub use schedule::{KeyRecord, NewKey, PolicyError, RotationPolicy};
pub use signing_key::{JwtSigningKey, KeyError, KeyParseError};
