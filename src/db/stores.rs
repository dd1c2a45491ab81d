//! Store master queries: bulk upsert, and which of a job's store ids are known.

use std::collections::HashSet;

use serde_json::json;
use sqlx::AssertSqlSafe;

use super::{Db, DbError, err};
use crate::stores::Store;

const CHUNK: usize = 5000;

/// Inserts or refreshes stores (never deletes). Returns how many rows were written.
pub async fn upsert(db: &Db, stores: &[Store]) -> Result<usize, DbError> {
    let now = db.now_ms();
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await.map_err(err)?;
    // `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
    let sql = format!(
        "INSERT INTO stores (store_id, store_name, area_code, updated_at) \
         SELECT t.value ->> 'id', t.value ->> 'name', t.value ->> 'area', $1 FROM {} WHERE true \
         ON CONFLICT (store_id) DO UPDATE SET store_name = excluded.store_name, \
         area_code = excluded.area_code, updated_at = excluded.updated_at",
        db.json_rows("$2")
    );
    for chunk in stores.chunks(CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|s| json!({"id": s.store_id, "name": s.store_name, "area": s.area_code}))
            .collect();
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(serde_json::Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
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
    let sql = format!(
        "SELECT store_id FROM stores WHERE store_id IN (SELECT t.value ->> 'id' FROM {})",
        db.json_rows("$1")
    );
    let mut found = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<_> = chunk.iter().map(|id| json!({ "id": id })).collect();
        let q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()))
            .bind(serde_json::Value::Array(rows).to_string());
        found.extend(q.fetch_all(db.pool()).await.map_err(err)?);
    }
    Ok(found)
}
