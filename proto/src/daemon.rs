//! What both binaries do at their edges: log to stderr, report a fatal error
//! on one line, and stop on SIGTERM or SIGINT.

use std::fmt::Display;
use std::process::ExitCode;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default` (a filter such
/// as `warn`; short-lived client commands keep their stderr for errors).
pub fn init_logging_with_default(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The process exit code for `result`, printing an error as `<binary>: error: …`.
pub fn exit_code<E: Display>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted,
    }
}

/// How long a stopping daemon lets open connections finish their calls.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits for a daemon's `tasks` after shutdown was signalled, for at most
/// [`SHUTDOWN_GRACE`], then aborts the rest: graceful shutdown waits for every
/// open connection, and a peer that keeps one open (an idle client, a
/// bundle stream) must not keep the daemon from stopping.
pub async fn drain<T: 'static>(tasks: &mut tokio::task::JoinSet<T>, daemon: &str) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            daemon,
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; closing them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_never_ends_is_aborted_after_the_grace_period() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async {});
        tasks.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        drain(&mut tasks, "test").await;
        assert!(tasks.is_empty());
        // Virtual time: the wait is the grace period, no more.
        assert_eq!(started.elapsed(), SHUTDOWN_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_end_are_not_kept_waiting() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async {});
        let started = tokio::time::Instant::now();
        drain(&mut tasks, "test").await;
        assert!(started.elapsed() < SHUTDOWN_GRACE);
    }
}
