//! A workload for tests: asks the Workload API at `SPIFFE_ENDPOINT_SOCKET` for a
//! JWT-SVID through the `spiffe` crate and prints `ok <spiffe-id>` (with
//! `--token` after the audience: `ok <spiffe-id> <token>`) or
//! `denied <message>`/`error <message>`. Tests run it under other uids.
//!
//! With `--all` after the audience it prints every identity it is given,
//! sorted: `ok <spiffe-id> <spiffe-id>…`.
//!
//! With `--stdin-steps` after the audience (as well as or instead of
//! `--token`) it waits for a line on stdin
//! before it connects, asks and prints, then waits for another line and asks
//! again on the same connection (audience `<audience>-again`): a test can
//! move it (into a cgroup, say) before it connects and between the calls.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::io::{BufRead, Write};
use std::process::ExitCode;

use spiffe::{WorkloadApiClient, WorkloadApiError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let audience = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "probe".to_owned());
    let flags: Vec<String> = std::env::args().skip(2).collect();
    let print_token = flags.iter().any(|f| f == "--token");
    let steps = flags.iter().any(|f| f == "--stdin-steps");
    let all = flags.iter().any(|f| f == "--all");
    if steps && !next_step() {
        return ExitCode::from(2);
    }
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default();
    let client = match WorkloadApiClient::connect_to(&endpoint).await {
        Ok(client) => client,
        Err(e) => {
            println!("error connect: {e}");
            return ExitCode::from(2);
        }
    };
    if all {
        return fetch_all(&client, &audience).await;
    }
    let first = fetch(&client, &audience, print_token).await;
    if !steps || !next_step() {
        return first;
    }
    fetch(&client, &format!("{audience}-again"), print_token).await
}

/// Waits for the test's go-ahead; false at the end of stdin.
fn next_step() -> bool {
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0)
}

async fn fetch_all(client: &WorkloadApiClient, audience: &str) -> ExitCode {
    match client.fetch_all_jwt_svids([audience], None).await {
        Ok(svids) => {
            let mut ids: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
            ids.sort();
            println!("ok {}", ids.join(" "));
            ExitCode::SUCCESS
        }
        Err(e) => refused(e),
    }
}

async fn fetch(client: &WorkloadApiClient, audience: &str, print_token: bool) -> ExitCode {
    match client.fetch_jwt_svid([audience], None).await {
        Ok(svid) if print_token => {
            println!("ok {} {}", svid.spiffe_id(), svid.token());
            ExitCode::SUCCESS
        }
        Ok(svid) => {
            println!("ok {}", svid.spiffe_id());
            ExitCode::SUCCESS
        }
        Err(e) => refused(e),
    }
}

/// Prints a refusal as `denied …` (exit 1) or any other failure as `error …` (exit 2).
fn refused(error: WorkloadApiError) -> ExitCode {
    match error {
        WorkloadApiError::PermissionDenied(m) => {
            println!("denied {m}");
            ExitCode::from(1)
        }
        WorkloadApiError::NoIdentityIssued => {
            println!("denied no identity issued");
            ExitCode::from(1)
        }
        e => {
            println!("error {e}");
            ExitCode::from(2)
        }
    }
}
