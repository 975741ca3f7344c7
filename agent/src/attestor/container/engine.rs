//! The container engine's own word on a container: the Docker Engine API's
//! `GET /containers/<id>/json` (served by Docker and by Podman's
//! `podman system service`) over its Unix socket, with hyper.
//!
//! The engine is configured by the node's operator and trusted for what it
//! says; everything it sends is still bounded: one answer within the
//! configured timeout (connect, request and body together), at most
//! `MAX_BODY_BYTES` of body, `MAX_LABELS` labels and `MAX_SELECTOR_BYTES`
//! of selectors per container. A 404 means the engine does not know the
//! container; the caller then gets no container selectors at all.
//!
//! Answers are cached per container ID while the container lives: with
//! the answer the cache keeps a pin (start time) on the container's init
//! process (`State.Pid`), and an entry whose init process has gone is
//! dropped at its next use, so a restarted container is asked about again.
//! The cache holds at most `CACHE_SIZE` containers (least recently used
//! dropped). What a container says of itself cannot change while it runs,
//! except its name (`docker rename`): a renamed container keeps the name
//! it had when first asked about until it stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use lanyard_proto::Selector;
use lanyard_proto::selector::CONTAINER_SELECTOR_TYPE;
use serde::Deserialize;

use crate::attestor::pin::ProcessPin;
use crate::config::ContainerEngineConfig;
use crate::lru::Lru;

/// Largest inspect answer read (a real one is a few KiB).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most labels a container may have to be given container selectors.
pub(crate) const MAX_LABELS: usize = 256;
/// Most bytes of selectors kept per container (bounds the cache's memory).
pub(crate) const MAX_SELECTOR_BYTES: usize = 64 * 1024;
/// Most containers whose answers are kept.
pub(crate) const CACHE_SIZE: usize = 1024;
/// How long a container the engine did not know stays unknown without
/// asking again: a user who names cgroups in a delegated subtree after
/// made-up containers costs the engine one request per name and period.
pub(crate) const UNKNOWN_FOR: Duration = Duration::from_secs(10);
/// Most engine requests under way at once; others wait their turn within
/// the same timeout.
pub(crate) const MAX_CONCURRENT_LOOKUPS: usize = 8;

/// Why the engine gave no usable answer about a container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EngineError {
    #[error("container engine at {socket}: cannot connect: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container engine at {socket}: {source}")]
    Http {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("container engine at {socket}: cannot read the answer: {source}")]
    Body {
        socket: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("container engine at {socket}: no answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("container engine at {socket}: answer over {MAX_BODY_BYTES} bytes")]
    TooLarge { socket: PathBuf },
    #[error("container engine at {socket}: GET {path} answered {status}")]
    Status {
        socket: PathBuf,
        path: String,
        status: StatusCode,
    },
    #[error("container engine at {socket} does not know container {id}")]
    NotKnown { socket: PathBuf, id: String },
    #[error("container engine at {socket}: malformed answer about container {id}: {source}")]
    Malformed {
        socket: PathBuf,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("container engine at {socket} answered about {answered} when asked about {id}")]
    OtherContainer {
        socket: PathBuf,
        id: String,
        answered: String,
    },
    #[error("container engine at {socket}: container {id} is not running")]
    NotRunning { socket: PathBuf, id: String },
    #[error(
        "container engine at {socket}: container {id} has {count} labels, over the {MAX_LABELS} the agent takes"
    )]
    TooManyLabels {
        socket: PathBuf,
        id: String,
        count: usize,
    },
    #[error(
        "container engine at {socket}: container {id}'s image, name and labels are over {MAX_SELECTOR_BYTES} bytes"
    )]
    TooMuchText { socket: PathBuf, id: String },
    #[error("cannot ask the container engine: {0}")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("container engine at {socket}: the lookup's thread failed")]
    Crashed { socket: PathBuf },
}

/// What the engine says of a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EngineFacts {
    /// `State.Pid`: the container's init process, on this host.
    pub init_pid: i32,
    /// `container:image`, `image_id`, `name` and `label` selectors.
    pub selectors: Vec<Selector>,
}

/// A cached answer and the pin on the init process it is valid for.
#[derive(Debug)]
pub(crate) struct Known {
    pub facts: EngineFacts,
    pub init: ProcessPin,
}

/// The engine's API socket, and what it said about live containers.
#[derive(Debug)]
pub(crate) struct Engine {
    socket: PathBuf,
    timeout: Duration,
    cache: Mutex<Lru<String, Arc<Known>>>,
    /// Containers the engine said it did not know, and when.
    unknown: Mutex<Lru<String, std::time::Instant>>,
    lookups: tokio::sync::Semaphore,
}

impl Engine {
    pub(crate) fn new(config: &ContainerEngineConfig) -> Self {
        Self::with(config.api_socket.clone(), config.timeout)
    }

    pub(crate) fn with(socket: PathBuf, timeout: Duration) -> Self {
        Self {
            socket,
            timeout,
            cache: Mutex::new(Lru::new(CACHE_SIZE)),
            unknown: Mutex::new(Lru::new(CACHE_SIZE)),
            lookups: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// Whether the engine said it did not know `id` within `UNKNOWN_FOR`.
    fn recently_unknown(&self, id: &str) -> bool {
        let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        match unknown.get_mut(&id.to_owned()) {
            Some(since) if since.elapsed() < UNKNOWN_FOR => true,
            Some(_) => {
                unknown.remove(&id.to_owned());
                false
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<String, Arc<Known>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached answer about container `id`, if its init process still
    /// lives; an answer whose init process has gone is dropped.
    pub(crate) fn cached(&self, id: &str) -> Option<Arc<Known>> {
        let mut cache = self.lock();
        let known = cache.get_mut(&id.to_owned())?.clone();
        if known.init.verify().is_ok() {
            Some(known)
        } else {
            cache.remove(&id.to_owned());
            None
        }
    }

    pub(crate) fn remember(&self, id: &str, known: Arc<Known>) {
        self.lock().insert(id.to_owned(), known);
    }

    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(&id.to_owned());
    }

    /// Asks the engine about container `id`, blocking this thread (a
    /// blocking task's) until the agent's runtime (multi-threaded, whose
    /// workers drive the socket and the timer) has the answer.
    pub(crate) fn ask_blocking(&self, id: &str) -> Result<EngineFacts, EngineError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(EngineError::NoRuntime)?;
        // On a thread of its own, outside any runtime context: `block_on`
        // would panic on one of the runtime's worker threads.
        std::thread::scope(|scope| scope.spawn(|| runtime.block_on(self.ask(id))).join())
            .unwrap_or_else(|_| {
                Err(EngineError::Crashed {
                    socket: self.socket.clone(),
                })
            })
    }

    /// What the engine says about running container `id` (64 hex digits).
    pub(crate) async fn ask(&self, id: &str) -> Result<EngineFacts, EngineError> {
        let not_known = || EngineError::NotKnown {
            socket: self.socket.clone(),
            id: id.to_owned(),
        };
        if self.recently_unknown(id) {
            return Err(not_known());
        }
        let path = format!("/containers/{id}/json");
        let asked = async {
            // Closed never: the semaphore lives as long as the engine.
            let _turn = self.lookups.acquire().await;
            self.get(&path).await
        };
        let (status, body) = tokio::time::timeout(self.timeout, asked)
            .await
            .map_err(|_| EngineError::Timeout {
                socket: self.socket.clone(),
                timeout: self.timeout,
            })??;
        match status {
            StatusCode::OK => self.facts(id, &body),
            StatusCode::NOT_FOUND => {
                self.unknown
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.to_owned(), std::time::Instant::now());
                Err(not_known())
            }
            status => Err(EngineError::Status {
                socket: self.socket.clone(),
                path,
                status,
            }),
        }
    }

    /// One GET on a connection of its own; the status and the whole body.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), EngineError> {
        let http = |source| EngineError::Http {
            socket: self.socket.clone(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| EngineError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let connection = AbortOnDrop(tokio::spawn(connection));
        let request = Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| EngineError::Body {
                socket: self.socket.clone(),
                source: Box::new(e),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|source| {
                if source.downcast_ref::<LengthLimitError>().is_some() {
                    EngineError::TooLarge {
                        socket: self.socket.clone(),
                    }
                } else {
                    EngineError::Body {
                        socket: self.socket.clone(),
                        source,
                    }
                }
            })?
            .to_bytes();
        drop(connection);
        Ok((status, body))
    }

    /// The facts in an inspect answer, checked.
    fn facts(&self, id: &str, body: &[u8]) -> Result<EngineFacts, EngineError> {
        let inspect: Inspect =
            serde_json::from_slice(body).map_err(|source| EngineError::Malformed {
                socket: self.socket.clone(),
                id: id.to_owned(),
                source,
            })?;
        if inspect.id != id {
            return Err(EngineError::OtherContainer {
                socket: self.socket.clone(),
                id: id.to_owned(),
                answered: inspect.id,
            });
        }
        let init_pid = i32::try_from(inspect.state.pid).unwrap_or(0);
        if !inspect.state.running || init_pid <= 0 {
            return Err(EngineError::NotRunning {
                socket: self.socket.clone(),
                id: id.to_owned(),
            });
        }
        let config = inspect.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        if labels.len() > MAX_LABELS {
            return Err(EngineError::TooManyLabels {
                socket: self.socket.clone(),
                id: id.to_owned(),
                count: labels.len(),
            });
        }
        let name = inspect
            .name
            .as_deref()
            .map(|n| n.strip_prefix('/').unwrap_or(n));
        let mut texts: Vec<String> = Vec::new();
        let mut add = |key: &str, value: Option<&str>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                texts.push(format!("{CONTAINER_SELECTOR_TYPE}:{key}:{value}"));
            }
        };
        add("image", config.image.as_deref());
        add("image_id", inspect.image.as_deref());
        add("name", name);
        for (key, value) in &labels {
            // `label:<key>:<value>` is split at its first ':', so a key
            // holding one would read as another key: such labels are skipped.
            if !key.is_empty() && !key.contains(':') {
                texts.push(format!("{CONTAINER_SELECTOR_TYPE}:label:{key}:{value}"));
            }
        }
        if texts.iter().map(String::len).sum::<usize>() > MAX_SELECTOR_BYTES {
            return Err(EngineError::TooMuchText {
                socket: self.socket.clone(),
                id: id.to_owned(),
            });
        }
        // Values an entry could never name (control characters, over-long,
        // an image ID that is not sha256:<hex>) give no selector.
        let selectors = texts
            .iter()
            .filter_map(|text| Selector::parse_known(text).ok())
            .collect();
        Ok(EngineFacts {
            init_pid,
            selectors,
        })
    }
}

/// Ends the connection task when the request is done or abandoned (timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The fields of `GET /containers/<id>/json` used; the rest is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    /// The image ID, `sha256:<hex>`.
    image: Option<String>,
    /// `/<name>`.
    name: Option<String>,
    config: Option<InspectConfig>,
    state: InspectState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    /// The image as the user named it.
    image: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    running: bool,
    pid: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use http_body_util::Full;
    use hyper::Response;
    use hyper::service::service_fn;
    use tokio::net::UnixListener;

    pub(crate) const ID: &str = "528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e";

    /// Podman 4.3.1's answer on this project's CI machine, trimmed to the
    /// fields the agent reads (values verbatim).
    pub(crate) fn podman_answer(id: &str, pid: i64) -> String {
        format!(
            r#"{{"Id":"{id}","Image":"sha256:0274e6de65ca37367e94704cfef262b233e2cbcdb686f921f25b5a6ae9b3fd4c","Name":"/lanyard-demo","Config":{{"Image":"localhost/lanyard-test:1","Labels":{{"app":"api","team":"billing"}}}},"State":{{"Status":"running","Running":true,"Pid":{pid}}}}}"#
        )
    }

    /// A fake engine on a Unix socket: every request gets `status` and
    /// `body`, or (`hang`) no answer ever. Counts connections.
    pub(crate) struct FakeEngine {
        _dir: tempfile::TempDir,
        pub socket: PathBuf,
        pub connections: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeEngine {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeEngine {
        pub(crate) fn answering(status: u16, body: impl Into<Vec<u8>>) -> std::io::Result<Self> {
            Self::start(Some((status, body.into())))
        }

        pub(crate) fn hung() -> std::io::Result<Self> {
            Self::start(None)
        }

        fn start(answer: Option<(u16, Vec<u8>)>) -> std::io::Result<Self> {
            let dir = tempfile::tempdir()?;
            let socket = dir.path().join("engine.sock");
            let listener = UnixListener::bind(&socket)?;
            let connections = Arc::new(AtomicUsize::new(0));
            let counter = connections.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let Some((status, body)) = answer else {
                            // Holds the connection open and says nothing.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(stream);
                            return;
                        };
                        let service = service_fn(move |_request| {
                            let body = body.clone();
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap_or_default(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Ok(Self {
                _dir: dir,
                socket,
                connections,
                task,
            })
        }

        pub(crate) fn engine(&self, timeout: Duration) -> Engine {
            Engine::with(self.socket.clone(), timeout)
        }
    }

    fn texts(facts: &EngineFacts) -> Vec<String> {
        facts.selectors.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn an_answer_gives_image_name_and_label_selectors()
    -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeEngine::answering(200, podman_answer(ID, 3459))?;
        let facts = fake.engine(Duration::from_secs(2)).ask(ID).await?;
        assert_eq!(facts.init_pid, 3459);
        assert_eq!(
            texts(&facts),
            [
                "container:image:localhost/lanyard-test:1",
                "container:image_id:sha256:0274e6de65ca37367e94704cfef262b233e2cbcdb686f921f25b5a6ae9b3fd4c",
                "container:name:lanyard-demo",
                "container:label:app:api",
                "container:label:team:billing",
            ]
        );
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
        Ok(())
    }

    /// Labels an entry could never name are skipped; the rest stay.
    #[tokio::test]
    async fn labels_that_cannot_be_selectors_are_skipped() -> Result<(), Box<dyn std::error::Error>>
    {
        let long = "v".repeat(2000);
        let body = format!(
            r#"{{"Id":"{ID}","Image":"not-a-digest","Name":"","Config":{{"Image":"","Labels":{{"a:b":"x","":"y","bell":"\u0007","long":"{long}","url":"https://x:1/","empty":""}}}},"State":{{"Running":true,"Pid":7}}}}"#
        );
        let fake = FakeEngine::answering(200, body)?;
        let facts = fake.engine(Duration::from_secs(2)).ask(ID).await?;
        assert_eq!(
            texts(&facts),
            ["container:label:empty:", "container:label:url:https://x:1/"]
        );
        // No Config, no Labels, no Name at all: just no such selectors.
        let bare = format!(r#"{{"Id":"{ID}","State":{{"Running":true,"Pid":7}}}}"#);
        let fake = FakeEngine::answering(200, bare)?;
        let facts = fake.engine(Duration::from_secs(2)).ask(ID).await?;
        assert!(facts.selectors.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_container_the_engine_does_not_know_is_not_known()
    -> Result<(), Box<dyn std::error::Error>> {
        // Podman's own 404 body.
        let fake = FakeEngine::answering(
            404,
            r#"{"cause":"no such container","message":"no container with name or ID \"nope\" found: no such container","response":404}"#,
        )?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(&error, Err(EngineError::NotKnown { id, .. }) if id == ID),
            "{error:?}"
        );
        let message = error.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(&fake.socket.display().to_string()),
            "{message}"
        );
        assert!(message.contains("does not know container"), "{message}");
        Ok(())
    }

    /// A made-up container is asked about once per `UNKNOWN_FOR`, however
    /// often callers in cgroups named after it ask.
    #[tokio::test]
    async fn an_unknown_container_is_not_asked_about_again_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeEngine::answering(404, "{}")?;
        let engine = fake.engine(Duration::from_secs(2));
        for _ in 0..5 {
            assert!(matches!(
                engine.ask(ID).await,
                Err(EngineError::NotKnown { .. })
            ));
        }
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn an_oversize_answer_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let padding = "x".repeat(MAX_BODY_BYTES);
        let body =
            format!(r#"{{"Id":"{ID}","Padding":"{padding}","State":{{"Running":true,"Pid":7}}}}"#);
        let fake = FakeEngine::answering(200, body)?;
        let error = fake.engine(Duration::from_secs(5)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::TooLarge { .. })),
            "{error:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_hung_engine_times_out() -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeEngine::hung()?;
        let started = Instant::now();
        let engine = fake.engine(Duration::from_millis(300));
        // Bounded here too, so that a client without its timeout fails rather than hangs.
        let error = tokio::time::timeout(Duration::from_secs(5), engine.ask(ID)).await?;
        assert!(
            matches!(error, Err(EngineError::Timeout { .. })),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            error
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("no answer within 300ms")
        );
        Ok(())
    }

    #[tokio::test]
    async fn malformed_answers_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        for body in [
            "{not json".to_owned(),
            String::new(),
            // No State.
            format!(r#"{{"Id":"{ID}"}}"#),
            // A label value that is not text.
            format!(
                r#"{{"Id":"{ID}","Config":{{"Labels":{{"n":1}}}},"State":{{"Running":true,"Pid":7}}}}"#
            ),
        ] {
            let fake = FakeEngine::answering(200, body.clone())?;
            let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
            assert!(
                matches!(error, Err(EngineError::Malformed { .. })),
                "{body}: {error:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn answers_that_do_not_vouch_for_a_running_container_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let other = "b".repeat(64);
        let fake = FakeEngine::answering(200, podman_answer(&other, 7))?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::OtherContainer { .. })),
            "{error:?}"
        );

        // After `podman stop`.
        let stopped = format!(
            r#"{{"Id":"{ID}","State":{{"Status":"exited","Running":false,"Pid":0,"ExitCode":137}}}}"#
        );
        let fake = FakeEngine::answering(200, stopped)?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::NotRunning { .. })),
            "{error:?}"
        );
        let no_pid = format!(r#"{{"Id":"{ID}","State":{{"Running":true,"Pid":0}}}}"#);
        let fake = FakeEngine::answering(200, no_pid)?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::NotRunning { .. })),
            "{error:?}"
        );

        let labels: Vec<String> = (0..=MAX_LABELS).map(|i| format!(r#""k{i}":"v""#)).collect();
        let many = format!(
            r#"{{"Id":"{ID}","Config":{{"Labels":{{{}}}}},"State":{{"Running":true,"Pid":7}}}}"#,
            labels.join(",")
        );
        let fake = FakeEngine::answering(200, many)?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::TooManyLabels { count, .. }) if count == MAX_LABELS + 1),
            "{error:?}"
        );

        let big: Vec<String> = (0..100)
            .map(|i| format!(r#""k{i}":"{}""#, "v".repeat(1000)))
            .collect();
        let wordy = format!(
            r#"{{"Id":"{ID}","Config":{{"Labels":{{{}}}}},"State":{{"Running":true,"Pid":7}}}}"#,
            big.join(",")
        );
        let fake = FakeEngine::answering(200, wordy)?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::TooMuchText { .. })),
            "{error:?}"
        );

        let fake = FakeEngine::answering(500, "{}")?;
        let error = fake.engine(Duration::from_secs(2)).ask(ID).await;
        assert!(
            matches!(&error, Err(EngineError::Status { status, .. }) if status.as_u16() == 500),
            "{error:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_socket_is_named() {
        let engine = Engine::with(
            PathBuf::from("/nonexistent/lanyard/engine.sock"),
            Duration::from_secs(1),
        );
        let error = engine.ask(ID).await;
        assert!(
            matches!(error, Err(EngineError::Connect { .. })),
            "{error:?}"
        );
        assert!(
            error
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("container engine at /nonexistent/lanyard/engine.sock: cannot connect")
        );
    }

    /// Even from one of the runtime's own worker threads (where
    /// `Handle::block_on` would panic) a blocking lookup just works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_lookup_never_panics() -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeEngine::answering(200, podman_answer(ID, 3459))?;
        let engine = fake.engine(Duration::from_secs(2));
        assert_eq!(engine.ask_blocking(ID)?.init_pid, 3459);
        Ok(())
    }

    #[test]
    fn asking_needs_the_agents_runtime() {
        let engine = Engine::with(PathBuf::from("/nonexistent.sock"), Duration::from_secs(1));
        assert!(matches!(
            engine.ask_blocking(ID),
            Err(EngineError::NoRuntime(_))
        ));
    }
}
