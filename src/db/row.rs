//! Reading rows into structs without a proc-macro (see [`from_row`]).

/// Implements `sqlx::FromRow` for a struct whose fields are read from the columns of the same
/// names, so a query can return it with `query_as` (a small stand-in for
/// `#[derive(sqlx::FromRow)]`, whose proc-macro would compile both database drivers a second
/// time). A field of a type that needs converting is read as the column's type first, then
/// parsed (`status: ImageStatus as String`, through `FromStr`) or converted by a function
/// returning `Result<_, String>` (`errors: Vec<StoreError> as Option<String> => decode`).
macro_rules! from_row {
    ($name:ident { $($field:ident : $ty:ty $(as $raw:ty $(=> $conv:expr)?)?),* $(,)? }) => {
        impl<'r> ::sqlx::FromRow<'r, ::sqlx::any::AnyRow> for $name {
            fn from_row(row: &'r ::sqlx::any::AnyRow) -> Result<Self, ::sqlx::Error> {
                use ::sqlx::Row;
                Ok(Self {
                    $($field: $crate::db::from_row!(@get row, $field, $ty $(, $raw $(, $conv)?)?),)*
                })
            }
        }
    };
    (@get $row:ident, $field:ident, $ty:ty) => {
        $row.try_get::<$ty, _>(stringify!($field))?
    };
    (@get $row:ident, $field:ident, $ty:ty, $raw:ty) => {{
        let raw: $raw = $row.try_get(stringify!($field))?;
        <$ty as ::std::str::FromStr>::from_str(&raw).map_err(|e| ::sqlx::Error::ColumnDecode {
            index: stringify!($field).to_string(),
            source: e.into(),
        })?
    }};
    (@get $row:ident, $field:ident, $ty:ty, $raw:ty, $conv:expr) => {{
        let raw: $raw = $row.try_get(stringify!($field))?;
        let converted: Result<$ty, String> = $conv(raw);
        converted.map_err(|e| ::sqlx::Error::ColumnDecode {
            index: stringify!($field).to_string(),
            source: e.into(),
        })?
    }};
}
pub(crate) use from_row;
