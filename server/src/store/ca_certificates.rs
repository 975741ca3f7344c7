//! The CA certificates of every server sharing the datastore. Each server
//! writes the set it holds (current, next and previous generations) under its
//! own server ID; every server reads the unexpired rows of all of them and
//! trusts the union (see `authority::bundle`). Certificates only: CA private
//! keys never leave their server's data directory.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Datastore, StoreError};

/// One CA certificate a server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaCertificateRow {
    pub(crate) server_id: String,
    /// Lowercase hex, as the CA names its files.
    pub(crate) serial: String,
    pub(crate) cert_pem: String,
    /// Unix seconds.
    pub(crate) not_before: i64,
    /// Unix seconds; the row is ignored, then pruned, from then on.
    pub(crate) not_after: i64,
}

fn decode(row: &AnyRow) -> Result<CaCertificateRow, StoreError> {
    Ok(CaCertificateRow {
        server_id: row.try_get("server_id")?,
        serial: row.try_get("serial")?,
        cert_pem: row.try_get("cert_pem")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
    })
}

impl Datastore {
    /// Replaces every row of `server_id` with `certificates` (whose
    /// `server_id` is not looked at), and prunes every server's rows expired
    /// at `now`, in one transaction.
    pub(crate) async fn replace_ca_certificates(
        &self,
        server_id: &str,
        certificates: &[CaCertificateRow],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM ca_certificates WHERE server_id = $1 OR not_after <= $2")
            .bind(server_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for cert in certificates.iter().filter(|c| c.not_after > now) {
            sqlx::query(
                "INSERT INTO ca_certificates (server_id, serial, cert_pem, not_before, not_after, published_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(server_id)
            .bind(&cert.serial)
            .bind(&cert.cert_pem)
            .bind(cert.not_before)
            .bind(cert.not_after)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every server's CA certificates unexpired at `now`, oldest first.
    pub(crate) async fn ca_certificates(
        &self,
        now: i64,
    ) -> Result<Vec<CaCertificateRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT server_id, serial, cert_pem, not_before, not_after FROM ca_certificates \
             WHERE not_after > $1 ORDER BY not_before, server_id, serial",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::datastores;

    fn row(serial: &str, not_after: i64) -> CaCertificateRow {
        CaCertificateRow {
            server_id: String::new(),
            serial: serial.to_owned(),
            cert_pem: format!("pem of {serial}"),
            not_before: 0,
            not_after,
        }
    }

    #[tokio::test]
    async fn each_server_replaces_its_own_rows_and_expired_ones_go() {
        for (_dir, store) in datastores().await {
            store
                .replace_ca_certificates("a", &[row("a1", 100), row("a2", 200)], 10)
                .await
                .unwrap();
            store
                .replace_ca_certificates("b", &[row("b1", 300)], 10)
                .await
                .unwrap();
            let names = |rows: Vec<CaCertificateRow>| -> Vec<(String, String)> {
                rows.into_iter().map(|r| (r.server_id, r.serial)).collect()
            };
            let pair = |s: &str, n: &str| (s.to_owned(), n.to_owned());
            assert_eq!(
                names(store.ca_certificates(10).await.unwrap()),
                [pair("a", "a1"), pair("a", "a2"), pair("b", "b1")]
            );
            // a rotates: its set is replaced, b's is untouched.
            store
                .replace_ca_certificates("a", &[row("a2", 200), row("a3", 400)], 20)
                .await
                .unwrap();
            assert_eq!(
                names(store.ca_certificates(20).await.unwrap()),
                [pair("a", "a2"), pair("a", "a3"), pair("b", "b1")]
            );
            // Expired rows are not read, and the next write prunes them.
            assert_eq!(
                names(store.ca_certificates(250).await.unwrap()),
                [pair("a", "a3"), pair("b", "b1")]
            );
            store.replace_ca_certificates("b", &[], 250).await.unwrap();
            let left: i64 = sqlx::Row::get(
                &sqlx::query("SELECT COUNT(*) AS n FROM ca_certificates")
                    .fetch_one(store.pool())
                    .await
                    .unwrap(),
                "n",
            );
            assert_eq!(left, 1, "only a3 is left");
            store.close().await;
        }
    }
}
