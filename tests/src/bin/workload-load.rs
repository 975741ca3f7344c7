//! A workload that keeps calling, for rate-limit tests: over one connection
//! to the Workload API at `SPIFFE_ENDPOINT_SOCKET`, `--callers` concurrent
//! loops fetch JWT-SVIDs for `--seconds`, each for the same audience (cached
//! after the first) or, with `--distinct`, a new one every call (each a cache
//! miss). Prints one JSON line: calls, ok, refused by a rate limit (with the
//! smallest retry hint seen), other errors, and latency percentiles of the
//! successful calls in microseconds. Tests run it under other uids.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use lanyard_host::rate_limit::RETRY_PUSHBACK_HEADER;
use lanyard_host::transport::unix_channel;
use lanyard_proto::workload::JwtsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "load")]
    audience: String,
    /// A new audience every call.
    #[arg(long)]
    distinct: bool,
    #[arg(long, default_value_t = 1)]
    callers: usize,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(Default)]
struct Tally {
    calls: u64,
    ok: u64,
    exhausted: u64,
    other: Vec<String>,
    min_pushback_ms: Option<u64>,
    latencies_us: Vec<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default();
    let Some(path) = endpoint.strip_prefix("unix://") else {
        println!("{{\"error\": \"SPIFFE_ENDPOINT_SOCKET is not unix://…\"}}");
        return ExitCode::from(2);
    };
    let client = SpiffeWorkloadApiClient::new(unix_channel(std::path::Path::new(path)));
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let loops = (0..args.callers).map(|caller| {
        let (mut client, audience, distinct) =
            (client.clone(), args.audience.clone(), args.distinct);
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < until {
                let audience = match distinct {
                    true => format!("{audience}-{caller}-{}", tally.calls),
                    false => audience.clone(),
                };
                let mut request = tonic::Request::new(JwtsvidRequest {
                    audience: vec![audience],
                    spiffe_id: String::new(),
                });
                if let Ok(value) = "true".parse() {
                    request.metadata_mut().insert("workload.spiffe.io", value);
                }
                let started = Instant::now();
                let answer = client.fetch_jwtsvid(request).await;
                tally.calls += 1;
                match answer {
                    Ok(_) => {
                        tally.ok += 1;
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.latencies_us.push(us);
                    }
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        tally.exhausted += 1;
                        let pushback = status
                            .metadata()
                            .get(RETRY_PUSHBACK_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        tally.min_pushback_ms = match (tally.min_pushback_ms, pushback) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(status) => {
                        tally
                            .other
                            .push(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
            tally
        })
    });
    let mut all = Tally::default();
    for tally in futures::future::join_all(loops).await.into_iter().flatten() {
        all.calls += tally.calls;
        all.ok += tally.ok;
        all.exhausted += tally.exhausted;
        all.other.extend(tally.other);
        all.latencies_us.extend(tally.latencies_us);
        all.min_pushback_ms = match (all.min_pushback_ms, tally.min_pushback_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    all.latencies_us.sort_unstable();
    let percentile = |p: f64| -> u64 {
        let n = all.latencies_us.len();
        if n == 0 {
            return 0;
        }
        let index = ((n as f64 - 1.0) * p).round() as usize;
        all.latencies_us[index.min(n - 1)]
    };
    let summary = serde_json::json!({
        "calls": all.calls,
        "ok": all.ok,
        "exhausted": all.exhausted,
        "min_pushback_ms": all.min_pushback_ms,
        "other_errors": all.other.iter().take(5).collect::<Vec<_>>(),
        "p50_us": percentile(0.5),
        "p99_us": percentile(0.99),
    });
    println!("{summary}");
    ExitCode::SUCCESS
}
