//! Parquet and Arrow IPC tables, the HF `datasets` files: columns by name.

use super::*;

/// Parquet or Arrow IPC rows; `line` is the 1-based row. Integer columns (an HF
/// `ClassLabel`) read as their numbers.
pub(super) fn read_columnar(path: &Path, names: &[&str]) -> Result<Vec<Row>> {
    let table = Table::open(path, input::open(path)?)?;
    for name in names {
        table.require(name, "; the task section's keys name the columns")?;
    }
    let mut rows = Vec::new();
    table.for_each_batch(names, &mut |batch| {
        for row in 0..batch.rows() {
            rows.push(Row {
                fields: names
                    .iter()
                    .map(|name| batch.required_text(name, row))
                    .collect::<Result<_>>()?,
                line: batch.row_number(row),
            });
        }
        Ok(())
    })?;
    Ok(rows)
}
