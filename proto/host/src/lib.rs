//! What Lanyard's two daemons (and their command-line clients) share on a
//! host, apart from the wire contract in `lanyard-proto`: Unix sockets and the
//! limits every listener keeps, files that hold secrets, config-file loading,
//! signals and logging, and the small encodings and clocks both sides use.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "dev-dependencies serve the integration tests; the library build catches unused dependencies"
    )
)]

pub mod clock;
pub mod config_file;
pub mod daemon;
pub mod encoding;
pub mod logging;
pub mod pem;
pub mod private_files;
pub mod random;
pub mod rate_limit;
pub mod sync;
pub mod telemetry;
pub mod transport;
