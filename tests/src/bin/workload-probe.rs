//! A workload for tests: asks the Workload API at `SPIFFE_ENDPOINT_SOCKET` for a
//! JWT-SVID through the `spiffe` crate and prints `ok <spiffe-id>` (with
//! `--token` after the audience: `ok <spiffe-id> <token>`) or
//! `denied <message>`/`error <message>`. Tests run it under other uids.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::process::ExitCode;

use spiffe::{WorkloadApiClient, WorkloadApiError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let audience = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "probe".to_owned());
    let print_token = std::env::args().nth(2).as_deref() == Some("--token");
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default();
    let client = match WorkloadApiClient::connect_to(&endpoint).await {
        Ok(client) => client,
        Err(e) => {
            println!("error connect: {e}");
            return ExitCode::from(2);
        }
    };
    match client.fetch_jwt_svid([audience.as_str()], None).await {
        Ok(svid) if print_token => {
            println!("ok {} {}", svid.spiffe_id(), svid.token());
            ExitCode::SUCCESS
        }
        Ok(svid) => {
            println!("ok {}", svid.spiffe_id());
            ExitCode::SUCCESS
        }
        Err(WorkloadApiError::PermissionDenied(m)) => {
            println!("denied {m}");
            ExitCode::from(1)
        }
        Err(WorkloadApiError::NoIdentityIssued) => {
            println!("denied no identity issued");
            ExitCode::from(1)
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::from(2)
        }
    }
}
