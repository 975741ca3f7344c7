//! What both daemons do at their edges (logging is in [`crate::logging`]): run their tasks until
//! one fails or SIGTERM/SIGINT arrives, stop within a grace period, and
//! report a fatal error on one line.

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

/// The process exit code for `result`, printing an error as `<binary>: error: …`.
pub fn exit_code<E>(binary: &str, result: Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: error: {}", error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes on one line, `outer: inner: …`. Many errors name
/// their cause in their own message and keep it as their source too; a cause
/// already said is not said again.
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
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

/// A daemon's long-running tasks (listeners, refreshers) and the flag that
/// tells them to stop. Tasks watch [`Tasks::stopping`] and end when it
/// turns true.
#[derive(Debug)]
pub struct Tasks<E> {
    daemon: &'static str,
    stop: watch::Sender<bool>,
    set: JoinSet<Result<(), E>>,
}

impl<E: From<JoinError> + Send + 'static> Tasks<E> {
    /// No tasks yet; `daemon` names it in logs.
    pub fn new(daemon: &'static str) -> Self {
        Self {
            daemon,
            stop: watch::channel(false).0,
            set: JoinSet::new(),
        }
    }

    /// A receiver that turns true when the daemon stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// A future that resolves when the daemon stops (for graceful shutdown hooks).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping();
        async move {
            // An error means the sender is gone: the daemon is gone too.
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    pub fn spawn(&mut self, task: impl Future<Output = Result<(), E>> + Send + 'static) {
        self.set.spawn(task);
    }

    /// Waits until a task fails or every task has ended (after [`Tasks::stop`]).
    /// A task with nothing to do may end early and quietly; that stops nothing.
    pub async fn wait(&mut self) -> Result<(), E> {
        while let Some(joined) = self.set.join_next().await {
            joined??;
        }
        Ok(())
    }

    /// Tells every task to stop and waits for them for at most [`SHUTDOWN_GRACE`].
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        drain(&mut self.set, self.daemon).await;
    }
}

/// A started daemon, as [`run_until_signal`] drives it.
pub trait Daemon: Sized {
    type Error;
    /// Resolves when a task fails or every task has ended.
    fn wait(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
    /// Stops the daemon within [`SHUTDOWN_GRACE`].
    fn shutdown(self) -> impl Future<Output = ()>;
}

/// Why [`run_until_signal`] returned an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E: std::error::Error + 'static> {
    #[error("stopped: {0}")]
    Stopped(#[source] E),
    #[error("listening for signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs `daemon` until it stops by itself (an error) or SIGTERM/SIGINT
/// arrives (a clean shutdown).
pub async fn run_until_signal<D>(mut daemon: D) -> Result<(), RunError<D::Error>>
where
    D: Daemon,
    D::Error: std::error::Error + 'static,
{
    tokio::select! {
        result = daemon.wait() => result.map_err(RunError::Stopped),
        signal = shutdown_signal() => {
            signal.map_err(RunError::Signals)?;
            tracing::info!("shutting down");
            daemon.shutdown().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("key file /k: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_is_said_once() {
        let named = Outer {
            source: std::io::Error::other("denied"),
        };
        assert_eq!(error_line(&named), "key file /k: denied");
        let wrapped = std::io::Error::other(named);
        assert_eq!(error_line(&wrapped), "key file /k: denied");
        #[derive(Debug, thiserror::Error)]
        #[error("config")]
        struct Quiet(#[source] std::io::Error);
        assert_eq!(
            error_line(&Quiet(std::io::Error::other("missing"))),
            "config: missing"
        );
    }

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
