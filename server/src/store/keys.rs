//! Public key records and their rotation schedule. Every server of an HA group
//! writes its own keys here and publishes the union.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Datastore, StoreError};

/// One public signing key and when it signs and is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecordRow {
    pub kid: String,
    /// The server whose data dir holds the private key.
    pub owner: String,
    pub key_type: String,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: i64,
    pub remove_at: i64,
}

const COLUMNS: &str =
    "kid, owner, key_type, public_jwk, created_at, activate_at, retire_at, remove_at";

fn decode(row: &AnyRow) -> Result<KeyRecordRow, StoreError> {
    Ok(KeyRecordRow {
        kid: row.try_get("kid")?,
        owner: row.try_get("owner")?,
        key_type: row.try_get("key_type")?,
        public_jwk: row.try_get("public_jwk")?,
        created_at: row.try_get("created_at")?,
        activate_at: row.try_get("activate_at")?,
        retire_at: row.try_get("retire_at")?,
        remove_at: row.try_get("remove_at")?,
    })
}

impl Datastore {
    pub async fn insert_key(&self, key: &KeyRecordRow) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO signing_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )))
        .bind(&key.kid)
        .bind(&key.owner)
        .bind(&key.key_type)
        .bind(&key.public_jwk)
        .bind(key.created_at)
        .bind(key.activate_at)
        .bind(key.retire_at)
        .bind(key.remove_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// All key records, oldest activation first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecordRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM signing_keys ORDER BY activate_at, kid"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decode).collect()
    }

    pub async fn set_key_remove_at(&self, kid: &str, remove_at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE signing_keys SET remove_at = $1 WHERE kid = $2")
            .bind(remove_at)
            .bind(kid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::datastores;
    use super::*;

    #[tokio::test]
    async fn key_records_round_trip() {
        for (_dir, store) in datastores().await {
            let key = KeyRecordRow {
                kid: "k1".into(),
                owner: "server-a".into(),
                key_type: "ec-p256".into(),
                public_jwk: "{}".into(),
                created_at: 1,
                activate_at: 2,
                retire_at: 3,
                remove_at: 4,
            };
            store.insert_key(&key).await.unwrap();
            assert!(store.insert_key(&key).await.is_err(), "kid is unique");
            assert_eq!(store.list_keys().await.unwrap(), vec![key]);
            store.delete_key("k1").await.unwrap();
            assert!(store.list_keys().await.unwrap().is_empty());
        }
    }
}
