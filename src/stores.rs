//! Reading the store master: a CSV with the columns `AreaCode, StoreName, StoreID`, matched
//! case- and separator-insensitively (`area_code`, `Store ID`, …). Quoted names may hold commas.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

/// The sample store master shipped inside the binary: the default for a first run.
pub const SAMPLE_CSV: &str = include_str!("../data/stores-sample.csv");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub store_id: String,
    pub store_name: String,
    pub area_code: String,
}

#[derive(Debug, Error)]
pub enum StoreMasterError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store master: missing column {0} (expected AreaCode, StoreName, StoreID)")]
    MissingColumn(&'static str),
    #[error("store master line {line}: {message}")]
    Row { line: u64, message: String },
}

pub fn load_file(path: &Path) -> Result<Vec<Store>, StoreMasterError> {
    let text = std::fs::read(path).map_err(|source| StoreMasterError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses CSV bytes. A store id listed twice keeps its last row.
pub fn parse(bytes: &[u8]) -> Result<Vec<Store>, StoreMasterError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| StoreMasterError::Row {
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    let normalized: Vec<String> = headers
        .iter()
        .map(|h| {
            h.trim_start_matches('\u{feff}')
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .collect();
    let column = |name: &'static str| {
        normalized
            .iter()
            .position(|h| h == name)
            .ok_or(StoreMasterError::MissingColumn(name))
    };
    let (area, name, id) = (
        column("areacode")?,
        column("storename")?,
        column("storeid")?,
    );

    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut stores = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| StoreMasterError::Row {
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let get = |i: usize| record.get(i).unwrap_or("").to_string();
        let store = Store {
            store_id: get(id),
            store_name: get(name),
            area_code: get(area),
        };
        if store.store_id.is_empty() {
            if record.iter().all(|f| f.is_empty()) {
                continue; // blank line
            }
            return Err(StoreMasterError::Row {
                line,
                message: "StoreID is empty".into(),
            });
        }
        match by_id.get(&store.store_id) {
            Some(&at) => stores[at] = store,
            None => {
                by_id.insert(store.store_id.clone(), stores.len());
                stores.push(store);
            }
        }
    }
    Ok(stores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_whatever_their_spelling() {
        let csv = "area_code, Store Name ,STORE-ID\n7100015,\"A, B STORE\",RP00001\n";
        let stores = parse(csv.as_bytes()).unwrap();
        assert_eq!(
            stores,
            vec![Store {
                store_id: "RP00001".into(),
                store_name: "A, B STORE".into(),
                area_code: "7100015".into()
            }]
        );
    }

    #[test]
    fn missing_column_is_named() {
        let err = parse(b"AreaCode,StoreName\n1,x\n").unwrap_err();
        assert!(err.to_string().contains("storeid"), "{err}");
    }

    #[test]
    fn duplicate_ids_keep_the_last_row() {
        let stores = parse(b"AreaCode,StoreName,StoreID\n1,a,X\n2,b,X\n").unwrap();
        assert_eq!(stores.len(), 1);
        assert_eq!(stores[0].store_name, "b");
    }

    #[test]
    fn the_sample_holds_the_assignment_stores() {
        let stores = parse(SAMPLE_CSV.as_bytes()).unwrap();
        for id in ["S00339218", "S01408764"] {
            assert!(stores.iter().any(|s| s.store_id == id), "{id} missing");
        }
    }
}
