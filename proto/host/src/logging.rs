//! Where both daemons' logs and audit records go: the `[log]` table of
//! `server.toml` and `agent.toml`, the subscriber built from it, the audit
//! file (JSON lines, 0600, appended, reopened on SIGHUP), and the silent mode
//! of helpers whose output another program parses.
//!
//! - The log goes to stderr, as text (ANSI colour only when stderr is a
//!   terminal) or JSON lines, filtered by `RUST_LOG` when it is set and
//!   valid, else by `[log] level`.
//! - Audit records are `tracing` events with target [`AUDIT_TARGET`] and a
//!   stable `event` field. Without `[log] audit_file` they are part of the
//!   log (and obey its filter). With it they go to that file only, as JSON
//!   lines, whatever the log's filter says, through a writer thread (a slow
//!   disk never holds an async thread for long; nothing queued is lost on a
//!   clean exit, see [`LoggingGuard`]).

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config_file::{ConfigError, invalid};

/// The target of every audit record.
pub const AUDIT_TARGET: &str = "lanyard::audit";

/// Names the file helpers log to when asked (they never log to stdout or
/// stderr: the programs that run them parse what they print).
pub const HELPER_LOG_FILE_ENV: &str = "LANYARD_LOG_FILE";

/// An audit record: `audit!("entry.created", uid, id = %entry.id, "entry created")`.
/// The first argument is the record's stable `event` name; fields and the
/// message (for people reading text logs) follow `tracing`'s syntax;
/// `audit!(warn, …)` records a refusal at warning level.
#[macro_export]
macro_rules! audit {
    (warn, $event:literal, $($fields:tt)*) => {
        ::tracing::warn!(target: $crate::logging::AUDIT_TARGET, event = $event, $($fields)*)
    };
    ($event:literal, $($fields:tt)*) => {
        ::tracing::info!(target: $crate::logging::AUDIT_TARGET, event = $event, $($fields)*)
    };
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// The `[log]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `warn,lanyard::audit=info`, …); `RUST_LOG` wins when set.
    pub level: String,
    /// Where audit records go instead of the log.
    pub audit_file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: DEFAULT_LEVEL.to_owned(),
            audit_file: None,
        }
    }
}

const DEFAULT_LEVEL: &str = "info";

/// The `[log]` table as written (for a config's serde form).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    format: Option<String>,
    level: Option<String>,
    audit_file: Option<PathBuf>,
}

impl RawLog {
    /// Checks each key, naming it (`log.…`) when it is wrong.
    pub fn validate(self) -> Result<LogConfig, ConfigError> {
        let format = match self.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        };
        let level = self.level.unwrap_or_else(|| DEFAULT_LEVEL.to_owned());
        parse_filter(&level).map_err(|e| invalid("log.level", format!("{level:?}: {e}")))?;
        if let Some(path) = &self.audit_file
            && !path.is_absolute()
        {
            return Err(invalid("log.audit_file", "must be an absolute path"));
        }
        Ok(LogConfig {
            format,
            level,
            audit_file: self.audit_file,
        })
    }
}

fn parse_filter(text: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder().parse(text)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    #[error("audit file {path}: {source}")]
    AuditFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helper log file {path}: {source}")]
    HelperFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening for SIGHUP: {0}")]
    Hangup(#[source] std::io::Error),
    #[error("a logger is already installed: {0}")]
    AlreadySet(#[source] tracing_subscriber::util::TryInitError),
}

/// How many lines a writer thread's queue holds. Its slots are allocated
/// and touched up front (tracing-appender's default of 128,000 made 4 MB of
/// every daemon's resident memory); the thread drains the queue as fast as
/// the output takes lines, so this only bounds a burst while a write waits.
const QUEUED_LINES: usize = 8192;

/// Keeps the log's and the audit file's writer threads; dropping it writes
/// out every queued record (a clean shutdown loses none). Hold it until the
/// daemon has stopped.
#[derive(Debug)]
#[must_use = "dropping the guard stops the log and audit writers"]
pub struct LoggingGuard {
    _log: tracing_appender::non_blocking::WorkerGuard,
    _audit: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// `writer` behind a thread of its own (named `name`), through a buffer
/// that the thread writes out whenever it has drained what was queued: the
/// runtime's threads never wait on a write, a busy daemon writes many lines
/// per system call, and an idle one writes each line at once. Never drops a
/// line (callers wait when 8,192 lines are queued); dropping the guard
/// writes out everything queued.
pub fn buffered_writer<W: Write + Send + 'static>(
    writer: W,
    name: &str,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(name)
        .finish(std::io::BufWriter::with_capacity(64 * 1024, writer))
}

/// The filter in force: `RUST_LOG` when set and valid, else `level`.
fn log_filter(level: &str) -> EnvFilter {
    if let Ok(text) = std::env::var(EnvFilter::DEFAULT_ENV)
        && !text.trim().is_empty()
    {
        match parse_filter(&text) {
            Ok(filter) => return filter,
            Err(e) => eprintln!("RUST_LOG {text:?} ignored: {e}"),
        }
    }
    parse_filter(level).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
}

/// Installs a daemon's logging from its `[log]` table. It must be called
/// within a Tokio runtime: from then on SIGHUP reopens the audit file (and
/// never stops the daemon, with or without one).
pub fn init(config: &LogConfig) -> Result<LoggingGuard, LoggingError> {
    let filter = log_filter(&config.level);
    let (audit_layer, guard) = match &config.audit_file {
        Some(path) => {
            let reopen = Arc::new(AtomicBool::new(false));
            let file = AuditFile::open(path.clone(), reopen.clone()).map_err(|source| {
                LoggingError::AuditFile {
                    path: path.clone(),
                    source,
                }
            })?;
            reopen_on_hangup(Some(reopen))?;
            let (writer, guard) = buffered_writer(file, "lanyard-audit");
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(Targets::new().with_target(AUDIT_TARGET, tracing::Level::TRACE));
            (Some(layer), Some(guard))
        }
        None => {
            // SIGHUP still must not kill the daemon (`systemctl reload`).
            reopen_on_hangup(None)?;
            (None, None)
        }
    };
    let to_file = config.audit_file.is_some();
    // With an audit file, audit records are its alone.
    let log_filter = filter.and(filter_fn(move |meta| {
        !(to_file && meta.target() == AUDIT_TARGET)
    }));
    let ansi = std::io::stderr().is_terminal();
    let (stderr, log_guard) = buffered_writer(std::io::stderr(), "lanyard-log");
    let log_layer = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .with_writer(stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(log_layer)
        .with(audit_layer)
        .try_init()
        .map_err(LoggingError::AlreadySet)?;
    Ok(LoggingGuard {
        _log: log_guard,
        _audit: guard,
    })
}

/// Logging for a short-lived command: text to stderr (colour only on a
/// terminal), filtered by `RUST_LOG`, else by `default`.
pub fn init_client(default: &str) {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(log_filter(default));
    // A second logger cannot be installed; the first one stays.
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Logging for a helper whose stdout (and stderr, merged by some callers:
/// google-auth runs executables that way) another program parses: nothing
/// to stdout or stderr, whatever `RUST_LOG` says. Only when
/// [`HELPER_LOG_FILE_ENV`] names a file are logs appended there (text, no
/// colour, created 0600), filtered by `RUST_LOG`, else `info`.
pub fn init_helper() -> Result<(), LoggingError> {
    let Some(path) = std::env::var_os(HELPER_LOG_FILE_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    let file = open_append(&path).map_err(|source| LoggingError::HelperFile {
        path: path.clone(),
        source,
    })?;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter(log_filter(DEFAULT_LEVEL));
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(LoggingError::AlreadySet)
}

/// Opens `path` for appending, creating it owner-only (0600).
fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(path)
}

/// On each SIGHUP: reopen the audit file at its path (logrotate has moved
/// it) and say so there, as the new file's first record. Without an audit
/// file there is nothing to reopen, and the signal is only noted.
fn reopen_on_hangup(reopen: Option<Arc<AtomicBool>>) -> Result<(), LoggingError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).map_err(LoggingError::Hangup)?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &reopen {
                Some(reopen) => {
                    reopen.store(true, Ordering::Release);
                    crate::audit!("audit.reopened", signal = "SIGHUP", "audit file reopened");
                }
                None => tracing::info!("SIGHUP: no audit file to reopen"),
            }
        }
    });
    Ok(())
}

/// The audit file, reopened at its path before the first write after a
/// SIGHUP. Only the writer thread writes to it.
#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
}

impl AuditFile {
    fn open(path: PathBuf, reopen: Arc<AtomicBool>) -> std::io::Result<Self> {
        let file = open_append(&path)?;
        Ok(Self { path, file, reopen })
    }
}

impl Write for AuditFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.reopen.swap(false, Ordering::AcqRel) {
            match open_append(&self.path) {
                Ok(file) => self.file = file,
                // Keep writing to the file held: a record lost is worse.
                Err(e) => eprintln!(
                    "audit file {}: cannot reopen ({e}); still writing to the old one",
                    self.path.display()
                ),
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// What may be logged of a secret (a join token): the first 12 hex digits of
/// its SHA-256, enough to tell tokens apart, nothing to redeem one with.
pub fn secret_fingerprint(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut hex = crate::encoding::hex(digest.as_ref());
    hex.truncate(12);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<LogConfig, ConfigError> {
        let raw: RawLog = toml::from_str(text).map_err(|e| invalid("toml", e))?;
        raw.validate()
    }

    #[test]
    fn defaults_and_keys_are_read() -> Result<(), ConfigError> {
        assert_eq!(raw("")?, LogConfig::default());
        let config = raw(
            "format = \"json\"\nlevel = \"warn,lanyard::audit=info\"\naudit_file = \"/var/log/a.jsonl\"",
        )?;
        assert_eq!(config.format, LogFormat::Json);
        assert_eq!(config.level, "warn,lanyard::audit=info");
        assert_eq!(config.audit_file, Some(PathBuf::from("/var/log/a.jsonl")));
        Ok(())
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("format = \"xml\"", "log.format"),
            ("level = \"info,=[\"", "log.level"),
            ("audit_file = \"audit.log\"", "log.audit_file"),
        ] {
            match raw(text) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// Every line handed to a buffered writer is in its file once the guard
    /// is dropped, however fast they came (issue 17: none lost on a clean
    /// shutdown), and an idle writer has written each line already.
    #[test]
    fn a_buffered_writer_loses_nothing_and_flushes_when_idle() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let (mut writer, guard) = buffered_writer(File::create(&path)?, "test-log");
        for n in 0..50_000 {
            writeln!(writer, "line {n}")?;
        }
        drop(guard);
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text.lines().count(), 50_000);
        assert_eq!(text.lines().last(), Some("line 49999"));

        let path = dir.path().join("idle");
        let (mut writer, _guard) = buffered_writer(File::create(&path)?, "test-idle");
        writeln!(writer, "alone")?;
        // The worker writes out as soon as it has drained the queue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&path)? != "alone\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "an idle line was never written"
            );
            std::thread::yield_now();
        }
        Ok(())
    }

    #[test]
    fn a_fingerprint_is_short_and_stable() {
        let a = secret_fingerprint("token-a");
        assert_eq!(a.len(), 12);
        assert_eq!(a, secret_fingerprint("token-a"));
        assert_ne!(a, secret_fingerprint("token-b"));
        assert!(!a.contains("token"));
    }

    #[test]
    fn the_audit_file_is_created_private_and_reopened_when_asked() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.jsonl");
        let reopen = Arc::new(AtomicBool::new(false));
        let mut file = AuditFile::open(path.clone(), reopen.clone())?;
        file.write_all(b"one\n")?;
        std::fs::rename(&path, dir.path().join("audit.jsonl.1"))?;
        reopen.store(true, Ordering::Release);
        file.write_all(b"two\n")?;
        assert_eq!(std::fs::read_to_string(&path)?, "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit.jsonl.1"))?,
            "one\n"
        );
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        Ok(())
    }
}
