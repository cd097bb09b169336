//! Parquet and Arrow IPC tables, the HF `datasets` files: columns by name.

use super::*;

/// Parquet or Arrow IPC rows; `line` is the 1-based row. Integer labels (an HF
/// `ClassLabel`) read as their numbers.
pub(super) fn read_columnar(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
    let table = Table::open(path, input::open(path)?)?;
    let names: Vec<&str> = [
        Some(columns.text_a.as_str()),
        columns.text_b.as_deref(),
        columns.label.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for name in &names {
        table.require(
            name,
            "; task.text_a, task.text_b and task.label name columns",
        )?;
    }
    let mut examples = Vec::new();
    table.for_each_batch(&names, &mut |batch| {
        for row in 0..batch.rows() {
            let line = batch.row_number(row);
            let get = |name: &str| batch.required_text(name, row);
            examples.push(Example {
                text_a: get(&columns.text_a)?,
                text_b: columns.text_b.as_deref().map(get).transpose()?,
                label: columns.label.as_deref().map(get).transpose()?,
                line,
            });
        }
        Ok(())
    })?;
    Ok(examples)
}
