//! GLUE-style TSV and CSV, read verbatim (no quoting in TSV), columns by header name
//! or 0-based index.

use std::io::Read;

use super::*;

pub(super) fn read_delimited(
    path: &Path,
    names: &[&str],
    header: bool,
    delimiter: u8,
    quoting: bool,
) -> Result<Vec<Row>> {
    let mut bytes = Vec::new();
    input::text(path)?
        .read_to_end(&mut bytes)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(header)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let (headers, indices) = delimited_columns(&mut reader, path, names, header)?;
    let mut rows = Vec::new();
    // Every row has as many fields as the header (or, without one, the first row): GLUE
    // TSV is read verbatim, so a tab inside a quoted text splits it into two fields,
    // and an extra field read as text or label would train on the wrong column.
    let mut width = header.then_some(headers.len());
    for record in reader.records() {
        let record = record.map_err(|e| error(path, e.to_string()))?;
        // A record's position is where the reader began, before the blank lines it
        // skipped and the `\n` of a CRLF ending (which closes a record at its `\r`).
        let line = record.position().map_or(0, |p| {
            let skipped = bytes[p.byte() as usize..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .filter(|&&b| b == b'\n')
                .count();
            p.line() as usize + skipped
        });
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
                    if header {
                        "the header"
                    } else {
                        "the first row"
                    },
                    if delimiter == b'\t' { "tab" } else { "comma" }
                ),
            ));
        }
        let field = |(&i, name): (&usize, &&str)| -> Result<String> {
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
        rows.push(Row {
            fields: indices
                .iter()
                .zip(names)
                .map(field)
                .collect::<Result<_>>()?,
            line,
        });
    }
    Ok(rows)
}

/// The header of a TSV/CSV file (empty without one) and the index of each named
/// column (a 0-based index without a header).
fn delimited_columns<R: std::io::Read>(
    reader: &mut csv::Reader<R>,
    path: &Path,
    names: &[&str],
    header: bool,
) -> Result<(Vec<String>, Vec<usize>)> {
    let index = |name: &str, headers: &[String]| -> Result<usize> {
        if header {
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
    let headers: Vec<String> = if header {
        reader
            .headers()
            .map_err(|e| error(path, e.to_string()))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect()
    } else {
        Vec::new()
    };
    if header && headers.iter().all(String::is_empty) {
        return Err(error(
            path,
            "no header line (the file holds only blank lines)",
        ));
    }
    let indices = names
        .iter()
        .map(|name| index(name, &headers))
        .collect::<Result<_>>()?;
    Ok((headers, indices))
}
