//! One trust bundle per trust domain. Each server of an HA group has its own
//! X.509 CA (its keys never leave its data directory) and publishes the CA
//! certificates it holds in the datastore; the trust bundle is the union of
//! its own live set and every other server's unexpired published ones,
//! deduplicated, its own first (so a lone server's bundle is exactly its own
//! set, in its own order).
//!
//! The union is what the mTLS Node API trusts for client certificates, what
//! agents receive at attestation, renewal and sync (and build the workload
//! X.509 bundle from), and what `<data_dir>/ca/bundle.pem` holds. Each server
//! refreshes it from the datastore every [`REFRESH_INTERVAL`] and right after
//! its own CA rotates, so a rotation on one server reaches the others (and,
//! through them, every agent within a sync interval). A server that stops for
//! good leaves its certificates in the union until they expire: SVIDs it
//! signed stay valid that long. Certificates read from the datastore are
//! accepted only as CAs of this trust domain.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lanyard_host::clock;
use lanyard_host::private_files::{self, FsError};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Mutex, watch};

use super::ca::{self, CertificateAuthority};
use crate::store::{self, CaCertificateRow, Datastore, StoreError};

/// How often every server reads the group's CA certificates (and publishes
/// its own when they changed).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("trust bundle: {0}")]
    Store(#[from] StoreError),
    #[error("trust bundle file: {0}")]
    File(#[from] FsError),
}

/// Another server's CA certificate, as last read from the datastore.
#[derive(Debug, Clone)]
struct Remote {
    cert: CertificateDer<'static>,
    not_after: i64,
}

/// Where this server publishes and reads the group's certificates.
#[derive(Debug)]
struct Group {
    store: Datastore,
    server_id: String,
}

#[derive(Debug, Default)]
struct RefreshState {
    /// The union as of the last refresh.
    union: Vec<CertificateDer<'static>>,
}

/// The trust domain's X.509 trust bundle: this server's CA and the group's.
#[derive(Debug)]
pub struct TrustBundle {
    ca: Arc<CertificateAuthority>,
    group: Option<Group>,
    remote: ArcSwap<Vec<Remote>>,
    /// Serialises refreshes (the periodic one and the one after a rotation).
    state: Mutex<RefreshState>,
    /// Bumped whenever the union changes.
    changes: watch::Sender<u64>,
}

impl TrustBundle {
    /// The bundle of a server sharing `store` as `server_id`. Nothing of the
    /// group is known until [`TrustBundle::refresh`].
    pub(crate) fn new(ca: Arc<CertificateAuthority>, store: Datastore, server_id: String) -> Self {
        Self::with_group(ca, Some(Group { store, server_id }))
    }

    /// A bundle of this CA alone, published nowhere.
    #[cfg(test)]
    pub(crate) fn local(ca: Arc<CertificateAuthority>) -> Self {
        Self::with_group(ca, None)
    }

    fn with_group(ca: Arc<CertificateAuthority>, group: Option<Group>) -> Self {
        Self {
            ca,
            group,
            remote: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(RefreshState::default()),
            changes: watch::channel(0).0,
        }
    }

    /// This server's own CA, which signs its SVIDs and its Node API certificate.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The union: this server's CA certificates (live, so a rotation counts
    /// at once), then the other servers' unexpired ones not already there.
    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        let now = clock::now();
        let mut union = self.ca.bundle();
        for remote in self.remote.load().iter() {
            if remote.not_after > now && !union.contains(&remote.cert) {
                union.push(remote.cert.clone());
            }
        }
        union
    }

    /// Tells when the union changes (at a refresh).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Publishes this server's CA certificates when the datastore's rows of
    /// this server differ from them, reads the group's, rewrites `bundle.pem` when it differs
    /// from the union, and tells subscribers. Returns whether the union
    /// changed. On a datastore error the last known union stays in force.
    pub async fn refresh(&self) -> Result<bool, BundleError> {
        let mut state = self.state.lock().await;
        let now = clock::now();
        if let Some(group) = &self.group {
            let rows = store::bounded(group.store.ca_certificates(now)).await?;
            let mut held = self.ca.held();
            held.retain(|ca| ca.not_after > now);
            let mut mine: Vec<&str> = rows
                .iter()
                .filter(|row| row.server_id == group.server_id)
                .map(|row| row.serial.as_str())
                .collect();
            let mut serials: Vec<&str> = held.iter().map(|ca| ca.serial.as_str()).collect();
            mine.sort_unstable();
            serials.sort_unstable();
            // Compared with what the datastore holds, not with what was last
            // written: rows lost or changed by anyone are put back.
            if mine != serials {
                let rows: Vec<CaCertificateRow> = held
                    .iter()
                    .map(|ca| CaCertificateRow {
                        server_id: group.server_id.clone(),
                        serial: ca.serial.clone(),
                        cert_pem: lanyard_host::pem::encode("CERTIFICATE", &ca.cert),
                        not_before: ca.not_before,
                        not_after: ca.not_after,
                    })
                    .collect();
                store::bounded(
                    group
                        .store
                        .replace_ca_certificates(&group.server_id, &rows, now),
                )
                .await?;
                tracing::info!(
                    serials = ?serials,
                    "published this server's CA certificates to the datastore"
                );
            }
            let remote: Vec<Remote> = rows
                .iter()
                .filter(|row| row.server_id != group.server_id)
                .filter_map(|row| self.accept(row, now))
                .collect();
            self.remote.store(Arc::new(remote));
        }
        let union = self.certificates();
        self.write_file(&union)?;
        if union == state.union {
            return Ok(false);
        }
        tracing::info!(
            certificates = union.len(),
            "the trust domain's X.509 bundle changed"
        );
        state.union = union;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(true)
    }

    /// Another server's row, when it holds one unexpired CA certificate of
    /// this trust domain.
    fn accept(&self, row: &CaCertificateRow, now: i64) -> Option<Remote> {
        let cert = rustls_pemfile::certs(&mut row.cert_pem.as_bytes())
            .next()
            .and_then(Result::ok);
        let valid = cert.as_ref().and_then(|cert| {
            ca::trust_domain_ca_validity(cert, self.ca.trust_domain())
                .filter(|(_, not_after)| *not_after > now)
        });
        match (cert, valid) {
            (Some(cert), Some((_, not_after))) => Some(Remote { cert, not_after }),
            _ => {
                tracing::warn!(
                    server_id = row.server_id,
                    serial = row.serial,
                    "ignoring a datastore CA certificate that is not an unexpired CA of this trust domain"
                );
                None
            }
        }
    }

    /// `bundle.pem` holds the union (the CA writes its own set there when it
    /// rotates; this puts the group's back).
    fn write_file(&self, union: &[CertificateDer<'static>]) -> Result<(), FsError> {
        let pem: String = union
            .iter()
            .map(|cert| lanyard_host::pem::encode("CERTIFICATE", cert))
            .collect();
        let path = self.ca.bundle_file();
        if std::fs::read(&path).ok().as_deref() != Some(pem.as_bytes()) {
            private_files::write_private_file(&path, pem.as_bytes())?;
        }
        Ok(())
    }
}

/// Refreshes `bundle` every [`REFRESH_INTERVAL`] until shutdown. A datastore
/// error is logged and the next round tries again; it never ends the task.
pub(crate) async fn maintain(bundle: Arc<TrustBundle>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = bundle.refresh().await {
            tracing::warn!(error = %e, "refreshing the trust bundle failed; keeping the last one and retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use lanyard_proto::TrustDomain;

    use super::*;
    use crate::store::test_support::datastores;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ca(dir: &std::path::Path, domain: &str) -> Arc<CertificateAuthority> {
        let td = TrustDomain::new(domain).unwrap();
        Arc::new(CertificateAuthority::load_or_generate(dir, &td, SystemTime::now()).unwrap())
    }

    fn file_certs(bundle: &TrustBundle) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(bundle.ca().bundle_file()).unwrap();
        rustls_pemfile::certs(&mut pem.as_slice())
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn a_lone_server_trusts_exactly_its_own_cas() {
        for (dir, store) in datastores().await {
            let own = ca(&dir.path().join("a"), "example.org");
            let bundle = TrustBundle::new(own.clone(), store.clone(), "a".into());
            assert!(
                bundle.refresh().await.unwrap(),
                "the first refresh sets the union"
            );
            assert_eq!(bundle.certificates(), own.bundle());
            assert_eq!(file_certs(&bundle), own.bundle());
            assert!(!bundle.refresh().await.unwrap(), "nothing changed");
            store.close().await;
        }
    }

    /// Two servers on one datastore trust, hand out and write the union, and
    /// a rotation on one reaches the other at its next refresh.
    #[tokio::test]
    async fn servers_of_a_group_share_one_bundle_and_rotations_reach_all() {
        for (dir, store) in datastores().await {
            let (ca_a, ca_b) = (
                ca(&dir.path().join("a"), "example.org"),
                ca(&dir.path().join("b"), "example.org"),
            );
            let a = TrustBundle::new(ca_a.clone(), store.clone(), "a".into());
            let b = TrustBundle::new(ca_b.clone(), store.clone(), "b".into());
            let mut b_changes = b.subscribe();
            b_changes.borrow_and_update();
            a.refresh().await.unwrap();
            b.refresh().await.unwrap();
            a.refresh().await.unwrap();
            let (a1, b1) = (ca_a.bundle()[0].clone(), ca_b.bundle()[0].clone());
            assert_eq!(a.certificates(), [a1.clone(), b1.clone()]);
            assert_eq!(b.certificates(), [b1.clone(), a1.clone()]);
            assert_eq!(file_certs(&a), a.certificates());
            assert_eq!(file_certs(&b), b.certificates());
            assert!(b_changes.has_changed().unwrap());
            b_changes.borrow_and_update();

            // A rotates: its successor counts at A at once, at B after A
            // published it and B refreshed.
            assert!(ca_a.rotate(SystemTime::now() + 306 * DAY).unwrap());
            let a2 = ca_a.bundle()[1].clone();
            assert_eq!(a.certificates(), [a1.clone(), a2.clone(), b1.clone()]);
            assert!(!b.certificates().contains(&a2));
            assert!(a.refresh().await.unwrap());
            assert!(b.refresh().await.unwrap());
            assert_eq!(b.certificates(), [b1.clone(), a1.clone(), a2.clone()]);
            assert_eq!(file_certs(&b), b.certificates());
            assert!(b_changes.has_changed().unwrap());

            // A server restarting with the same CAs adds nothing twice.
            let a_again = TrustBundle::new(ca_a.clone(), store.clone(), "a".into());
            a_again.refresh().await.unwrap();
            assert_eq!(a_again.certificates(), a.certificates());
            let rows = store.ca_certificates(clock::now()).await.unwrap();
            assert_eq!(rows.len(), 3, "{rows:?}");
            store.close().await;
        }
    }

    /// Rows that are not CAs of this trust domain are never trusted.
    #[tokio::test]
    async fn foreign_or_malformed_rows_are_ignored() {
        for (dir, store) in datastores().await {
            let own = ca(&dir.path().join("a"), "example.org");
            let foreign = ca(&dir.path().join("x"), "other.org");
            let now = clock::now();
            let row = |serial: &str, cert_pem: String| CaCertificateRow {
                server_id: String::new(),
                serial: serial.to_owned(),
                cert_pem,
                not_before: 0,
                not_after: now + 3600,
            };
            let foreign_pem = lanyard_host::pem::encode("CERTIFICATE", &foreign.bundle()[0]);
            store
                .replace_ca_certificates("x", &[row("f", foreign_pem)], now)
                .await
                .unwrap();
            store
                .replace_ca_certificates("y", &[row("g", "garbage".into())], now)
                .await
                .unwrap();
            let bundle = TrustBundle::new(own.clone(), store.clone(), "a".into());
            bundle.refresh().await.unwrap();
            assert_eq!(bundle.certificates(), own.bundle());
            store.close().await;
        }
    }

    /// With the datastore gone the last union stays in force.
    #[tokio::test]
    async fn a_datastore_error_keeps_the_last_union() {
        for (dir, store) in datastores().await {
            let (ca_a, ca_b) = (
                ca(&dir.path().join("a"), "example.org"),
                ca(&dir.path().join("b"), "example.org"),
            );
            let a = TrustBundle::new(ca_a.clone(), store.clone(), "a".into());
            let b = TrustBundle::new(ca_b.clone(), store.clone(), "b".into());
            a.refresh().await.unwrap();
            b.refresh().await.unwrap();
            let union = b.certificates();
            assert_eq!(union.len(), 2);
            store.close().await;
            assert!(b.refresh().await.is_err());
            assert_eq!(b.certificates(), union);
        }
    }
}
