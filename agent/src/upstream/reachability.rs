//! Whether the server answers, shared by the sync loop and the mint path so
//! that an outage is logged once when it starts and once when it ends, never
//! per call.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Reachability {
    down: AtomicBool,
}

impl Reachability {
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_down(&self, error: &dyn Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "server unreachable; serving cached SVIDs and bundles, retrying with backoff"
            );
        }
    }

    pub(crate) fn mark_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("server reachable again");
        }
    }
}
