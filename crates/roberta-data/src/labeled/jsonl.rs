//! JSON Lines: one example per line, fields by name.

use super::*;

pub(super) fn read_jsonl(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for line in input::lines(path)? {
        let (line_no, line) = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| error(path, format!("line {line_no}: invalid JSON: {e}")))?;
        let get = |name: &str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                _ => Err(error(path, format!("line {line_no}: no field \"{name}\""))),
            }
        };
        examples.push(Example {
            text_a: get(&columns.text_a)?,
            text_b: columns.text_b.as_deref().map(get).transpose()?,
            label: columns.label.as_deref().map(get).transpose()?,
            line: line_no,
        });
    }
    Ok(examples)
}
