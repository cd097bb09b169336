//! JSON Lines: one example per line, fields by name.

use super::*;

pub(super) fn read_jsonl(path: &Path, names: &[&str]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for line in input::lines(path)? {
        let (line_no, line) = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| error(path, format!("line {line_no}: invalid JSON: {e}")))?;
        let get = |name: &&str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                _ => Err(error(path, format!("line {line_no}: no field \"{name}\""))),
            }
        };
        rows.push(Row {
            fields: names.iter().map(get).collect::<Result<_>>()?,
            line: line_no,
        });
    }
    Ok(rows)
}
