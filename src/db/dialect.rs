//! The SQL the two backends write differently, for the statements that pass their rows as
//! one JSON parameter and pick rows by primary key.

use super::{Backend, Db};

impl Db {
    /// A `FROM` item `t` with the typed `columns` (name, `BIGINT` or `TEXT`) of the objects of
    /// one JSON-array parameter, one row per element (a key an object lacks reads NULL). For
    /// the bulk statements on the queue's path: PostgreSQL parses the array into typed
    /// columns in one pass (`json_to_recordset`; measured 2.9 µs a row of nine fields against
    /// 4.0 for `jsonb_array_elements` and a `->>` per field).
    pub(crate) fn json_records(&self, param: &str, columns: &[(&str, &str)]) -> String {
        match self.backend {
            Backend::Sqlite => {
                let fields: Vec<String> = columns
                    .iter()
                    .map(|(name, ty)| match *ty {
                        "TEXT" => format!("j.value ->> '{name}' AS {name}"),
                        _ => format!("CAST(j.value ->> '{name}' AS {ty}) AS {name}"),
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM json_each({param}) AS j) AS t",
                    fields.join(", ")
                )
            }
            Backend::Postgres => {
                let fields: Vec<String> = columns
                    .iter()
                    .map(|(name, ty)| format!("{name} {ty}"))
                    .collect();
                format!(
                    "json_to_recordset(CAST({param} AS json)) AS t({})",
                    fields.join(", ")
                )
            }
        }
    }

    /// A subquery selecting the integers of one JSON-array parameter (`[1,2,3]`). PostgreSQL
    /// reads the text as `json` (measured 0.46 µs an id against 0.85 as `jsonb`).
    pub(crate) fn json_ids(&self, param: &str) -> String {
        match self.backend {
            Backend::Sqlite => {
                format!("SELECT CAST(t.value AS BIGINT) FROM json_each({param}) AS t")
            }
            Backend::Postgres => {
                format!("SELECT CAST(json_array_elements_text(CAST({param} AS json)) AS BIGINT)")
            }
        }
    }

    /// A primary-key match of `COLUMN` against the values `SUBQUERY` selects.
    /// `COLUMN` is one of the values `SUBQUERY` selects, written so that each value is one
    /// primary-key probe. On PostgreSQL that is `= ANY(ARRAY(…))`: as `IN (…)` the planner,
    /// which cannot know how many rows a JSON parameter holds, may instead walk every row the
    /// other conditions match and compare each with every value (measured: a 512-outcome
    /// write beside 4,000 leased images took 0.5 s). SQLite already probes by rowid for `IN`.
    pub(crate) fn any_of(&self, column: &str, subquery: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("{column} IN ({subquery})"),
            Backend::Postgres => format!("{column} = ANY(ARRAY({subquery}))"),
        }
    }

    /// "Leased to `owner` and still running", for statements that already pick their rows
    /// by primary key ([`Db::any_of`]). On PostgreSQL the status test is written so that it
    /// cannot match the predicate of the partial indexes of running images: statistics read
    /// before the claims began say that almost no image runs, and the planner would then
    /// walk every running image of the partial index (thousands, with thousands of slots)
    /// and compare each with every value of the `ANY` instead of probing the primary key
    /// (measured: a 500-outcome write beside 2,000 leased images took 20 ms, a heartbeat of
    /// 2,000 leases 0.5 s).
    pub(crate) fn held_by(&self, owner: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("lease_owner = {owner} AND status = 'running'"),
            Backend::Postgres => format!("lease_owner = {owner} AND status || '' = 'running'"),
        }
    }

    /// The text value under the key `key` (an SQL text expression) of the JSON object in
    /// parameter `param`, or NULL.
    pub(crate) fn json_key(&self, param: &str, key: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("({param} ->> {key})"),
            Backend::Postgres => format!("(CAST({param} AS jsonb) ->> {key})"),
        }
    }

    /// A `FROM` item that expands one JSON-array parameter into rows, one per element, each
    /// element an object read with `t.value ->> 'key'` (or a scalar, `t.value`). Bulk statements
    /// pass their rows this way: one parameter and one statement text whatever the batch size, so the statement is
    /// prepared once and no backend's parameter limit is ever near.
    pub(crate) fn json_rows(&self, param: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("json_each({param}) AS t"),
            Backend::Postgres => {
                format!("jsonb_array_elements(CAST({param} AS jsonb)) AS t(value)")
            }
        }
    }
}
