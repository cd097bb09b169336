//! GLUE-style TSV and CSV, read verbatim (no quoting in TSV), columns by header name
//! or 0-based index.

use super::*;

pub(super) fn read_delimited(
    path: &Path,
    columns: &Columns,
    delimiter: u8,
    quoting: bool,
) -> Result<Vec<Example>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(columns.header)
        .flexible(true)
        .from_reader(input::text(path)?);
    let (headers, ColumnIndices { a, b, l }) = delimited_columns(&mut reader, path, columns)?;
    let mut examples = Vec::new();
    // Every row has as many fields as the header (or, without one, the first row): GLUE
    // TSV is read verbatim, so a tab inside a quoted text splits it into two fields,
    // and an extra field read as text or label would train on the wrong column.
    let mut width = columns.header.then_some(headers.len());
    for record in reader.records() {
        let record = record.map_err(|e| error(path, e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let expected = *width.get_or_insert(record.len());
        if record.len() > expected {
            return Err(error(
                path,
                format!(
                    "line {line}: {} fields where {} has {expected} (a {} inside a text field?)",
                    record.len(),
                    if columns.header {
                        "the header"
                    } else {
                        "the first row"
                    },
                    if delimiter == b'\t' { "tab" } else { "comma" }
                ),
            ));
        }
        let field = |i: usize, name: &str| -> Result<String> {
            record.get(i).map(str::to_string).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "line {line}: no column \"{name}\" ({} fields)",
                        record.len()
                    ),
                )
            })
        };
        examples.push(Example {
            text_a: field(a, &columns.text_a)?,
            text_b: b
                .map(|i| field(i, columns.text_b.as_deref().unwrap_or_default()))
                .transpose()?,
            label: l
                .map(|i| {
                    field(i, columns.label.as_deref().unwrap_or_default())
                        .map(|s| s.trim().to_string())
                })
                .transpose()?,
            line,
        });
    }
    Ok(examples)
}

/// Where a row's first text, second text and label are.
struct ColumnIndices {
    a: usize,
    b: Option<usize>,
    l: Option<usize>,
}

/// The header of a TSV/CSV file (empty without one) and the indices of the text
/// columns and the label (each named, or a 0-based index without a header).
fn delimited_columns<R: std::io::Read>(
    reader: &mut csv::Reader<R>,
    path: &Path,
    columns: &Columns,
) -> Result<(Vec<String>, ColumnIndices)> {
    let index = |name: &str, headers: &[String]| -> Result<usize> {
        if columns.header {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "no column \"{name}\" in the header (columns: {})",
                        headers.join(", ")
                    ),
                )
            })
        } else {
            name.parse().map_err(|_| {
                error(
                    path,
                    format!("column \"{name}\": without a header, columns are 0-based indices"),
                )
            })
        }
    };
    let headers: Vec<String> = if columns.header {
        reader
            .headers()
            .map_err(|e| error(path, e.to_string()))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect()
    } else {
        Vec::new()
    };
    if columns.header && headers.iter().all(String::is_empty) {
        return Err(error(
            path,
            "no header line (the file holds only blank lines)",
        ));
    }
    let a = index(&columns.text_a, &headers)?;
    let b = columns
        .text_b
        .as_deref()
        .map(|c| index(c, &headers))
        .transpose()?;
    let l = columns
        .label
        .as_deref()
        .map(|c| index(c, &headers))
        .transpose()?;
    Ok((headers, ColumnIndices { a, b, l }))
}
