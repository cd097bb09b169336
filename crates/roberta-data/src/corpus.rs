//! Corpus readers, streaming: documents are handed out one at a time, never the whole
//! corpus in memory. Plain text (one sentence per line, a blank line ends a document; or
//! one document per line) and JSONL (a text field per record).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::input::{self, Kind, MAX_LINE_BYTES};

/// Text a document may hold before it is cut: a file with no blank line would otherwise
/// be one document held whole in memory (and tokenized as one piece of work, which a
/// stop signal waits for). A cut costs one document separator in a very long text.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusFormat {
    Text,
    Jsonl,
    /// Apache Parquet, one document per row of the text column.
    Parquet,
    /// Arrow IPC, stream or file format (HF `datasets` caches), one document per row.
    Arrow,
}

impl CorpusFormat {
    /// By extension: `.jsonl`/`.json`/`.ndjson`, `.parquet`, `.arrow`/`.ipc`/`.feather`;
    /// anything else is text.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "json" | "ndjson") => Self::Jsonl,
            Some("parquet") => Self::Parquet,
            Some("arrow" | "ipc" | "feather") => Self::Arrow,
            _ => Self::Text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Overrides the format guessed from each file's extension.
    pub format: Option<CorpusFormat>,
    /// The JSONL field, or Arrow/Parquet column, holding a document's text.
    pub text_field: String,
    /// Text files hold one document per line instead of one sentence per line.
    pub doc_per_line: bool,
    /// Skip lines that are not valid UTF-8 (and count them) instead of failing.
    pub skip_invalid: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            format: None,
            text_field: "text".into(),
            doc_per_line: false,
            skip_invalid: false,
        }
    }
}

/// Files named by `inputs`: files as given, directories walked recursively (sorted, hidden
/// entries skipped), and `*`/`?` globs. The result is sorted and de-duplicated, so the
/// same inputs always give the same order. A directory reached twice through links (a
/// link back to an ancestor, or two links to one place) is walked once, and a file
/// reached twice is read once. `stopped` is asked between entries: a walk over a huge
/// tree ends when a stop signal arrives ([`DataError::Interrupted`]).
/// Names that are not UTF-8 are refused: `meta.json` records the sources as strings and
/// the tokenizer trainer opens files by string, so such a file could not be recorded or
/// would be looked for under a mangled name. So are inputs that are not regular files
/// (a FIFO or a device would be read forever) and links that lead nowhere.
pub fn expand_inputs(inputs: &[PathBuf], stopped: &dyn Fn() -> bool) -> Result<Vec<PathBuf>> {
    let mut walk = Walk {
        files: Vec::new(),
        seen: std::collections::HashSet::new(),
        stopped,
    };
    for input in inputs {
        require_utf8(input)?;
        let text = input.to_string_lossy();
        if text.contains('*') || text.contains('?') {
            let matches: Vec<PathBuf> = glob::glob(&text)
                .map_err(|e| DataError::Corpus {
                    path: input.clone(),
                    message: format!("bad glob: {e}"),
                })?
                .filter_map(std::result::Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if matches.is_empty() {
                return Err(DataError::Corpus {
                    path: input.clone(),
                    message: "the pattern matches no file".into(),
                });
            }
            walk.files.extend(matches);
            continue;
        }
        match input::kind(input)? {
            Kind::Dir(id) => {
                let before = walk.files.len();
                walk.seen.insert(id);
                walk.dir(input)?;
                if walk.files.len() == before {
                    return Err(DataError::Corpus {
                        path: input.clone(),
                        message: "the directory holds no file".into(),
                    });
                }
            }
            Kind::File(_) => walk.files.push(input.clone()),
        }
    }
    let mut files = walk.files;
    for file in &files {
        require_utf8(file)?;
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn require_utf8(path: &Path) -> Result<()> {
    match path.to_str() {
        Some(_) => Ok(()),
        None => Err(DataError::NonUtf8Path {
            path: path.to_path_buf(),
        }),
    }
}

/// A walk over input directories: the files found, and every directory and file seen.
struct Walk<'a> {
    files: Vec<PathBuf>,
    seen: std::collections::HashSet<(u64, u64)>,
    stopped: &'a dyn Fn() -> bool,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path) -> Result<()> {
        let io = |source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort();
        for path in entries {
            if (self.stopped)() {
                return Err(DataError::Interrupted {
                    path: dir.to_path_buf(),
                });
            }
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            match input::kind(&path)? {
                Kind::Dir(id) => {
                    if self.seen.insert(id) {
                        self.dir(&path)?;
                    }
                }
                Kind::File(id) => {
                    if self.seen.insert(id) {
                        self.files.push(path);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Streams the documents of `path` (each a list of sentences) into `sink`.
/// Returns the number of lines skipped as invalid UTF-8.
pub fn read_documents(
    path: &Path,
    options: &ReadOptions,
    sink: &mut dyn FnMut(Vec<String>) -> Result<()>,
) -> Result<u64> {
    let format = options
        .format
        .unwrap_or_else(|| CorpusFormat::from_path(path));
    match format {
        CorpusFormat::Parquet | CorpusFormat::Arrow => {
            return read_columnar_documents(path, input::open(path)?, &options.text_field, sink);
        }
        CorpusFormat::Text | CorpusFormat::Jsonl => {}
    }
    // A byte-order mark is not text to train on.
    let mut reader = input::text(path)?;
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut skipped = 0u64;
    let mut doc: Vec<String> = Vec::new();
    let mut doc_bytes = 0;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .read_until(b'\n', &mut line)
            .map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += n as u64;
        let Some(text) = line_text(path, &line, (line_no, start), options)? else {
            skipped += 1;
            continue;
        };
        match format {
            CorpusFormat::Text if options.doc_per_line => {
                if !text.trim().is_empty() {
                    sink(vec![text.to_string()])?;
                }
            }
            CorpusFormat::Text => {
                if text.trim().is_empty() || doc_bytes >= MAX_DOCUMENT_BYTES {
                    if !doc.is_empty() {
                        sink(std::mem::take(&mut doc))?;
                    }
                    doc_bytes = 0;
                }
                if !text.trim().is_empty() {
                    doc_bytes += text.len();
                    doc.push(text.to_string());
                }
            }
            CorpusFormat::Jsonl => {
                let sentences = jsonl_document(path, line_no, text, &options.text_field)?;
                if !sentences.is_empty() {
                    sink(sentences)?;
                }
            }
            CorpusFormat::Parquet | CorpusFormat::Arrow => {
                unreachable!("columnar formats return above")
            }
        }
    }
    if !doc.is_empty() {
        sink(doc)?;
    }
    Ok(skipped)
}

/// A line of a text or JSONL corpus (`at`: its number and first byte) without its line
/// ending; `None` for invalid UTF-8 that `skip_invalid` skips. Refused: a line over
/// the size limit, invalid UTF-8 and NUL bytes (binary data).
fn line_text<'a>(
    path: &Path,
    line: &'a [u8],
    at: (u64, u64),
    options: &ReadOptions,
) -> Result<Option<&'a str>> {
    let (line_no, start) = at;
    let n = line.len();
    if n > MAX_LINE_BYTES {
        return Err(DataError::Corpus {
            path: path.to_path_buf(),
            message: format!(
                "line {line_no} (byte {start}) is {n} bytes, over the {} MiB limit: not sentence- or document-per-line text",
                MAX_LINE_BYTES >> 20
            ),
        });
    }
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim_end_matches(['\n', '\r']),
        Err(_) if options.skip_invalid => return Ok(None),
        Err(e) => {
            return Err(DataError::InvalidUtf8 {
                path: path.to_path_buf(),
                offset: start + e.valid_up_to() as u64,
            });
        }
    };
    if text.contains('\0') && !options.skip_invalid {
        return Err(DataError::Corpus {
            path: path.to_path_buf(),
            message: format!(
                "line {line_no} (byte {start}) holds a NUL byte: binary data, not text"
            ),
        });
    }
    Ok(Some(text))
}

/// The document of a JSONL line: its text field's non-blank lines (none for a blank
/// line).
fn jsonl_document(path: &Path, line_no: u64, text: &str, field: &str) -> Result<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::Corpus {
        path: path.to_path_buf(),
        message: format!("line {line_no}: invalid JSON: {e}"),
    })?;
    let text = value
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| DataError::Corpus {
            path: path.to_path_buf(),
            message: format!("line {line_no}: no string field \"{field}\" (set --text-field)"),
        })?;
    Ok(split_lines(text))
}

/// Parquet and Arrow IPC rows, each a document: the text column's non-blank lines.
fn read_columnar_documents(
    path: &Path,
    file: std::fs::File,
    column: &str,
    sink: &mut dyn FnMut(Vec<String>) -> Result<()>,
) -> Result<u64> {
    let columns = crate::columnar::Table::open(path, file)?;
    columns.require_text(column, "; set --text-field")?;
    columns.for_each_batch(&[column], &mut |batch| {
        for row in 0..batch.rows() {
            if let Some(text) = batch.text(column, row)? {
                let sentences = split_lines(&text);
                if !sentences.is_empty() {
                    sink(sentences)?;
                }
            }
        }
        Ok(())
    })?;
    Ok(0)
}

/// A record's text as sentences: its non-blank lines.
fn split_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(path: &Path, options: &ReadOptions) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::new();
        read_documents(path, options, &mut |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn text_blank_lines_break_documents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "one.\ntwo.\n\n\nthree.\r\n").unwrap();
        assert_eq!(
            docs(&p, &ReadOptions::default()).unwrap(),
            vec![vec!["one.", "two."], vec!["three."]]
        );
        let per_line = ReadOptions {
            doc_per_line: true,
            ..Default::default()
        };
        assert_eq!(docs(&p, &per_line).unwrap().len(), 3);
    }

    #[test]
    fn jsonl_field_and_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"text\": \"a.\\nb.\"}\n{\"body\": \"c\"}\n").unwrap();
        let err = docs(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"text\""), "{err}");
        let body = ReadOptions {
            text_field: "body".into(),
            ..Default::default()
        };
        assert!(docs(&p, &body).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn invalid_utf8_names_the_byte_or_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"good\nba\xffd\nfine\n").unwrap();
        let err = docs(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("byte 7"), "{err}");
        let skip = ReadOptions {
            skip_invalid: true,
            ..Default::default()
        };
        let mut n = 0;
        let skipped = read_documents(&p, &skip, &mut |d| {
            n += d.len();
            Ok(())
        })
        .unwrap();
        assert_eq!((n, skipped), (2, 1));
    }

    fn batch(large: bool) -> arrow_array::RecordBatch {
        use std::sync::Arc;
        let text: arrow_array::ArrayRef = if large {
            Arc::new(arrow_array::LargeStringArray::from(vec![
                Some("a.\nb."),
                None,
                Some("c."),
            ]))
        } else {
            Arc::new(arrow_array::StringArray::from(vec![
                Some("a.\nb."),
                None,
                Some("c."),
            ]))
        };
        let id: arrow_array::ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1, 2, 3]));
        arrow_array::RecordBatch::try_from_iter([("id", id), ("text", text)]).unwrap()
    }

    #[test]
    fn parquet_and_arrow_rows_are_documents() {
        let dir = tempfile::tempdir().unwrap();
        for large in [false, true] {
            let b = batch(large);
            let pq = dir.path().join(format!("d{large}.parquet"));
            let mut w = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&pq).unwrap(),
                b.schema(),
                None,
            )
            .unwrap();
            w.write(&b).unwrap();
            w.close().unwrap();
            let stream = dir.path().join(format!("d{large}.arrow"));
            let mut w = arrow_ipc::writer::StreamWriter::try_new(
                std::fs::File::create(&stream).unwrap(),
                &b.schema(),
            )
            .unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            let file = dir.path().join(format!("f{large}.arrow"));
            let mut w = arrow_ipc::writer::FileWriter::try_new(
                std::fs::File::create(&file).unwrap(),
                &b.schema(),
            )
            .unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            for p in [&pq, &stream, &file] {
                assert_eq!(
                    docs(p, &ReadOptions::default()).unwrap(),
                    vec![vec!["a.", "b."], vec!["c."]],
                    "{}",
                    p.display()
                );
                let wrong = ReadOptions {
                    text_field: "body".into(),
                    ..Default::default()
                };
                let err = docs(p, &wrong).unwrap_err().to_string();
                assert!(
                    err.contains("no column \"body\"") && err.contains("id, text"),
                    "{err}"
                );
                let ints = ReadOptions {
                    text_field: "id".into(),
                    ..Default::default()
                };
                assert!(docs(p, &ints).unwrap_err().to_string().contains("not text"));
            }
        }
    }

    #[test]
    fn a_huge_line_is_refused_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.txt");
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES + 1));
        std::fs::write(&p, text).unwrap();
        let err = docs(&p, &ReadOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("huge.txt") && err.contains("line 2") && err.contains("limit"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_blank_lines_is_cut_into_documents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.txt");
        let line = "a sentence of text\n";
        let lines = 2 * MAX_DOCUMENT_BYTES / line.len() + 10;
        std::fs::write(&p, line.repeat(lines)).unwrap();
        let docs = docs(&p, &ReadOptions::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs.iter().map(Vec::len).sum::<usize>(), lines);
        assert!(
            docs.iter()
                .all(|d| d.len() * (line.len() - 1) <= MAX_DOCUMENT_BYTES + line.len())
        );
    }

    #[test]
    fn inputs_expand_dirs_and_globs_and_reject_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), "x").unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let files = expand_inputs(&[dir.path().to_path_buf()], &|| false).unwrap();
        assert_eq!(files.len(), 2);
        let glob = dir.path().join("*.txt");
        assert_eq!(expand_inputs(&[glob], &|| false).unwrap().len(), 1);
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        assert!(expand_inputs(&[dir.path().join("empty")], &|| false).is_err());
        assert!(expand_inputs(&[dir.path().join("*.none")], &|| false).is_err());
    }

    /// `loop/self -> ../loop` and `loop/a/up -> ..` once made the walk run for ten
    /// minutes and gigabytes: every directory is walked once now, every file read once.
    #[cfg(unix)]
    #[test]
    fn links_back_into_the_tree_are_walked_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("loop");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/text.txt"), "x\n").unwrap();
        std::fs::write(root.join("top.txt"), "x\n").unwrap();
        symlink("../loop", root.join("self")).unwrap();
        symlink("..", root.join("a/up")).unwrap();
        symlink("top.txt", root.join("again.txt")).unwrap();
        let files = expand_inputs(std::slice::from_ref(&root), &|| false).unwrap();
        assert_eq!(files, [root.join("a/text.txt"), root.join("again.txt")]);
        // A stop request ends the walk.
        let err = expand_inputs(&[root], &|| true).unwrap_err();
        assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn inputs_that_are_not_files_say_what_they_are() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("me");
        symlink(&me, &me).unwrap();
        let nowhere = dir.path().join("nowhere");
        symlink(dir.path().join("absent"), &nowhere).unwrap();
        for (input, says) in [
            (
                PathBuf::from("/dev/zero"),
                "not a regular file (a character device)",
            ),
            (me, "a symbolic link loop"),
            (nowhere, "a symbolic link to nothing"),
            (dir.path().join("absent"), "no such file or directory"),
        ] {
            let err = expand_inputs(std::slice::from_ref(&input), &|| false)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&input.display().to_string()) && err.contains(says),
                "{err}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn names_that_are_not_utf8_are_refused_whether_given_or_found() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
        std::fs::write(&bad, "text\n").unwrap();
        std::fs::write(dir.path().join("good.txt"), "text\n").unwrap();
        for input in [dir.path().to_path_buf(), bad.clone()] {
            let err = expand_inputs(&[input], &|| false).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "{}: the name is not valid UTF-8, which meta.json and the tokenizer trainer cannot hold: rename it",
                    dir.path().join("caf\u{fffd}.txt").display()
                )
            );
        }
        assert_eq!(
            expand_inputs(&[dir.path().join("good.txt")], &|| false)
                .unwrap()
                .len(),
            1
        );
    }
}
