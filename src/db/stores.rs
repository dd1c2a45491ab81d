//! Store master queries: bulk upsert, and which of a job's store ids are known.

use std::collections::HashSet;

use sqlx::AssertSqlSafe;

use super::{Db, DbError, err, now_ms, values_list};
use crate::stores::Store;

const CHUNK: usize = 500;

/// Inserts or refreshes stores (never deletes). Returns how many rows were written.
pub async fn upsert(db: &Db, stores: &[Store]) -> Result<usize, DbError> {
    let now = now_ms();
    let mut tx = db.pool().begin().await.map_err(err)?;
    for chunk in stores.chunks(CHUNK) {
        let values = values_list(chunk.len(), &["", "", ""], 2, "$1");
        let sql = format!(
            "INSERT INTO stores (store_id, store_name, area_code, updated_at) VALUES {values} \
             ON CONFLICT (store_id) DO UPDATE SET store_name = excluded.store_name, \
             area_code = excluded.area_code, updated_at = excluded.updated_at"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(now);
        for s in chunk {
            q = q.bind(&s.store_id).bind(&s.store_name).bind(&s.area_code);
        }
        q.execute(&mut *tx).await.map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(stores.len())
}

pub async fn count(db: &Db) -> Result<i64, DbError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM stores")
        .fetch_one(db.pool())
        .await
        .map_err(err)
}

/// The subset of `ids` present in the store master.
pub async fn known(db: &Db, ids: &[&str]) -> Result<HashSet<String>, DbError> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT store_id FROM stores WHERE store_id IN ({list})");
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        found.extend(q.fetch_all(db.pool()).await.map_err(err)?);
    }
    Ok(found)
}
