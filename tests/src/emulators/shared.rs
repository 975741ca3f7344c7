//! What every emulator needs: a controllable clock, an HTTP listener that
//! stops when dropped, a record of what was issued, random identifiers and
//! the small encodings (RFC 3339 times, forms, XML text).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The time an emulator believes it is: the system clock plus an offset a
/// test can move forward, so that a fresh token can be made to look expired
/// without waiting. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_seconds: Arc<AtomicI64>,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Unix seconds, as the emulator sees them.
    pub fn now(&self) -> i64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        system.saturating_add(self.offset_seconds.load(Ordering::SeqCst))
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        let seconds = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.offset_seconds.fetch_add(seconds, Ordering::SeqCst);
    }
}

/// An emulator's HTTP listener on 127.0.0.1; the serving task is aborted
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Listener {
    /// Serves `routes` with `state` shared among their handlers, and hands
    /// the state back so the emulator can read what the handlers recorded.
    pub(crate) async fn serve<S: Send + Sync + 'static>(
        routes: Router<Arc<S>>,
        state: S,
    ) -> anyhow::Result<(Self, Arc<S>)> {
        let state = Arc::new(state);
        let router = routes.with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding an emulator listener on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "emulator listener stopped");
            }
        });
        Ok((Self { addr, task }, state))
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an emulator handed out, in order; tests read a copy.
#[derive(Debug)]
pub(crate) struct Record<T> {
    items: Mutex<Vec<T>>,
}

impl<T: Clone> Record<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn push(&self, item: T) {
        lock(&self.items).push(item);
    }

    pub(crate) fn snapshot(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    /// The first item matching `pred`, copied.
    pub(crate) fn find(&self, pred: impl Fn(&T) -> bool) -> Option<T> {
        lock(&self.items).iter().find(|item| pred(item)).cloned()
    }
}

/// Locks a mutex; a panic elsewhere while holding it leaves data that is
/// still consistent for our append-only uses, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const BASE64_CHARS: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub(crate) const URL_SAFE: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `len` characters drawn uniformly from `alphabet` (at most 256 symbols),
/// from the system CSPRNG through aws-lc-rs.
pub(crate) fn random_string(alphabet: &[u8], len: usize) -> anyhow::Result<String> {
    anyhow::ensure!(
        !alphabet.is_empty() && alphabet.len() <= 256,
        "alphabet size {} out of range",
        alphabet.len()
    );
    // Rejection sampling keeps the distribution uniform.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| anyhow::anyhow!("system RNG failed"))?;
        for byte in buf {
            if out.len() == len {
                break;
            }
            if usize::from(byte) < limit {
                out.push(char::from(alphabet[usize::from(byte) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// A random (version 4) UUID in its usual text form.
pub(crate) fn uuid() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("system RNG failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = lanyard_host::encoding::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Civil date and time (UTC) of a Unix timestamp:
/// (year, month, day, hour, minute, second).
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 in UTC with a `Z`, whole seconds: `2026-11-05T12:00:00Z`.
pub(crate) fn rfc3339(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// RFC 3339 with seven fractional digits, as .NET (and so Entra) prints it.
pub(crate) fn rfc3339_ticks(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.0000000Z")
}

/// `2026-11-05 12:00:00Z`, the timestamp form in Entra error bodies.
pub(crate) fn space_timestamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// An `application/x-www-form-urlencoded` body as a map; a repeated name
/// keeps its first value.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        map.entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    map
}

/// Text escaped for an XML element body or attribute.
pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// The bearer token of an `Authorization` header, if it has one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_ticks(1_700_000_000), "2023-11-14T22:13:20.0000000Z");
        assert_eq!(space_timestamp(1_700_000_000), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn random_strings_use_only_their_alphabet() -> anyhow::Result<()> {
        let s = random_string(UPPER_ALNUM, 500)?;
        assert_eq!(s.len(), 500);
        assert!(s.bytes().all(|b| UPPER_ALNUM.contains(&b)));
        let id = uuid()?;
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        Ok(())
    }

    #[test]
    fn clock_advances_for_every_clone() {
        let clock = Clock::new();
        let other = clock.clone();
        let before = other.now();
        clock.advance(Duration::from_secs(1000));
        assert!(other.now() >= before + 1000);
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
