//! CoNLL token tags: a word and its tag per line, sentences between blank lines; words
//! encoded with their first sub-token labelled.

use super::*;

/// A CoNLL sentence: words and their tags.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub line: usize,
}

/// Reads CoNLL-style files: one `word … tag` per line (the tag is the last
/// whitespace-separated column), blank lines between sentences, `-DOCSTART-` ignored.
pub fn read_conll(path: &Path) -> Result<Vec<TaggedSentence>> {
    let mut sentences = Vec::new();
    let mut current = TaggedSentence {
        words: Vec::new(),
        tags: Vec::new(),
        line: 1,
    };
    // Every token line has the columns of the first: with one fewer, the last column
    // would be another one (a POS tag) taken as the tag.
    let mut width: Option<(usize, usize)> = None;
    let mut sentence_bytes = 0;
    for line in input::lines(path)? {
        let (n, line) = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            sentence_bytes = 0;
            if !current.words.is_empty() {
                sentences.push(std::mem::replace(
                    &mut current,
                    TaggedSentence {
                        words: Vec::new(),
                        tags: Vec::new(),
                        line: n + 1,
                    },
                ));
            } else {
                current.line = n + 1;
            }
            continue;
        }
        if fields.len() < 2 {
            return Err(error(
                path,
                format!("line {n}: expected a word and a tag, found {line:?}"),
            ));
        }
        let (columns, first) = *width.get_or_insert((fields.len(), n));
        if fields.len() != columns {
            return Err(error(
                path,
                format!(
                    "line {n}: {} columns where line {first} has {columns}: the tag is the last column of every line",
                    fields.len()
                ),
            ));
        }
        current.words.push(fields[0].to_string());
        current.tags.push(fields[fields.len() - 1].to_string());
        sentence_bytes += fields[0].len();
        if sentence_bytes > MAX_TEXT_BYTES {
            return Err(error(
                path,
                format!(
                    "the sentence from line {}: {}",
                    current.line,
                    too_long("sentence", sentence_bytes)
                ),
            ));
        }
    }
    if !current.words.is_empty() {
        sentences.push(current);
    }
    if sentences.is_empty() {
        return Err(error(path, "no sentences (empty split)"));
    }
    Ok(sentences)
}

/// Token ids of pre-split words (each with a leading space, as HF's `add_prefix_space`),
/// with `labels[i]` on each word's first sub-word and [`IGNORE_INDEX`] elsewhere.
pub fn encode_words(
    tokenizer: &RobertaTokenizer,
    words: &[String],
    labels: &[usize],
) -> Result<(Vec<u32>, Vec<i64>)> {
    let s = tokenizer.specials();
    let (mut ids, mut targets) = (vec![s.bos], vec![IGNORE_INDEX]);
    for (word, &label) in words.iter().zip(labels) {
        let pieces = tokenizer.encode(&format!(" {word}"), false)?.ids;
        for (k, id) in pieces.into_iter().enumerate() {
            ids.push(id);
            targets.push(if k == 0 { label as i64 } else { IGNORE_INDEX });
        }
    }
    ids.push(s.eos);
    targets.push(IGNORE_INDEX);
    Ok((ids, targets))
}
