//! RoBERTa's byte-level BPE through the HF `tokenizers` crate, from `tokenizer.json` or
//! from GPT-2-style `vocab.json` + `merges.txt`, with RoBERTa's special tokens checked.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";

/// Ids of the tokens RoBERTa gives a meaning to (also recorded in a corpus's `meta.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    pub bos: u32,
    pub pad: u32,
    pub eos: u32,
    pub unk: u32,
    pub mask: u32,
}

impl SpecialTokens {
    pub fn contains(&self, id: u32) -> bool {
        [self.bos, self.pad, self.eos, self.unk, self.mask].contains(&id)
    }
}

/// One encoded text: ids with the character (not byte) span of each token in the input;
/// special tokens span `(0, 0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

#[derive(Clone)]
pub struct RobertaTokenizer {
    inner: Tokenizer,
    specials: SpecialTokens,
    source: PathBuf,
}

impl std::fmt::Debug for RobertaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobertaTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("specials", &self.specials)
            .finish()
    }
}

impl RobertaTokenizer {
    /// Loads `tokenizer.json`, or a directory holding it or `vocab.json` + `merges.txt`.
    /// One of the two GPT-2 files alone is named as such rather than parsed as JSON.
    pub fn load(path: &Path) -> Result<Self> {
        if let Some(file) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| [VOCAB_FILE, MERGES_FILE].contains(n))
            .filter(|_| path.is_file())
        {
            return Err(DataError::PartialTokenizer {
                path: path.to_path_buf(),
                file: file.to_string(),
            });
        }
        if path.is_dir() {
            let json = path.join(TOKENIZER_FILE);
            if json.exists() {
                return Self::from_file(&json);
            }
            let (vocab, merges) = (path.join(VOCAB_FILE), path.join(MERGES_FILE));
            if vocab.exists() && merges.exists() {
                return Self::from_vocab_merges(&vocab, &merges);
            }
            return Err(DataError::NoTokenizer {
                path: path.to_path_buf(),
            });
        }
        Self::from_file(path)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        crate::input::open(path)?;
        let inner = Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::new(inner, path)
    }

    /// Builds what HF's `RobertaTokenizerFast` builds from the two GPT-2 files.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let err = |e: tokenizers::Error| DataError::Tokenizer {
            path: vocab.to_path_buf(),
            message: e.to_string(),
        };
        crate::input::open(vocab)?;
        crate::input::open(merges)?;
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(err)?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::new(true, true, true)));
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| DataError::MissingSpecialToken {
                    path: vocab.to_path_buf(),
                    token: t.to_string(),
                })
        };
        let (bos, eos) = (id("<s>")?, id("</s>")?);
        inner.with_post_processor(Some(
            RobertaProcessing::new(("</s>".into(), eos), ("<s>".into(), bos))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
        let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>"]
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .chain([AddedToken::from("<mask>", true).lstrip(true)])
            .collect();
        inner.add_special_tokens(specials).map_err(err)?;
        Self::new(inner, vocab)
    }

    fn new(inner: Tokenizer, source: &Path) -> Result<Self> {
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| DataError::MissingSpecialToken {
                    path: source.to_path_buf(),
                    token: t.to_string(),
                })
        };
        let specials = SpecialTokens {
            bos: id("<s>")?,
            pad: id("<pad>")?,
            eos: id("</s>")?,
            unk: id("<unk>")?,
            mask: id("<mask>")?,
        };
        Ok(Self {
            inner,
            specials,
            source: source.to_path_buf(),
        })
    }

    pub fn specials(&self) -> SpecialTokens {
        self.specials
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// `<s> text </s>` with special tokens, or the bare tokens without.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| self.encode_error(e))?;
        Ok(Self::encoded(&encoding))
    }

    /// `<s> a </s></s> b </s>`.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode_char_offsets((a, b), true)
            .map_err(|e| self.encode_error(e))?;
        Ok(Self::encoded(&encoding))
    }

    fn encoded(encoding: &tokenizers::Encoding) -> Encoded {
        Encoded {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        }
    }

    fn encode_error(&self, e: tokenizers::Error) -> DataError {
        DataError::Tokenizer {
            path: self.source.clone(),
            message: e.to_string(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| self.encode_error(e))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The smallest vocabulary `train_bpe` makes: the 256 byte symbols of the byte-level
/// alphabet and RoBERTa's 5 special tokens, without a single merge.
pub const MIN_VOCAB_SIZE: usize = 256 + 5;

/// The largest vocabulary `train_bpe` accepts. The trainer sizes its tables by the
/// request up front, so an absurd one overflows or exhausts memory before it reads a
/// byte; 2^24 is 300 times RoBERTa's, far beyond any useful BPE, and its ids fit the u32
/// shards and an embedding table.
pub const MAX_VOCAB_SIZE: usize = 1 << 24;

/// Trains a byte-level BPE as RoBERTa's: `<s> <pad> </s> <unk>` at ids 0–3, the learned
/// merges, and `<mask>` as the last id.
pub fn train_bpe(
    files: &[PathBuf],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<RobertaTokenizer> {
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::BpeTrainer;

    if vocab_size < MIN_VOCAB_SIZE {
        return Err(DataError::Invalid(format!(
            "--vocab-size {vocab_size} is too small: the 256 byte symbols and 5 special tokens alone take {MIN_VOCAB_SIZE}; give at least {MIN_VOCAB_SIZE}"
        )));
    }
    if vocab_size > MAX_VOCAB_SIZE {
        return Err(DataError::Invalid(format!(
            "--vocab-size {vocab_size} is too large: give at most {MAX_VOCAB_SIZE} (2^24; RoBERTa's is 50265)"
        )));
    }
    let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>"]
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab_size - 1)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(true, true, true)));
    let inner_files: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    for f in files {
        crate::input::open(f)?;
    }
    if !any_text(files)? {
        const SHOWN: usize = 3;
        let mut names: Vec<String> = files
            .iter()
            .take(SHOWN)
            .map(|f| f.display().to_string())
            .collect();
        if files.len() > SHOWN {
            names.push(format!("and {} more", files.len() - SHOWN));
        }
        return Err(DataError::NoText {
            files: names.join(", "),
        });
    }
    tokenizer
        .train_from_files(&mut trainer, inner_files)
        .map_err(|e| DataError::Tokenizer {
            path: files.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
    tokenizer
        .add_special_tokens([AddedToken::from("<mask>", true).lstrip(true)])
        .map_err(|e| DataError::Invalid(format!("adding <mask>: {e}")))?;
    let id = |t: &str| tokenizer.token_to_id(t).expect("special token added");
    let (bos, eos) = (id("<s>"), id("</s>"));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new(("</s>".into(), eos), ("<s>".into(), bos))
            .trim_offsets(true)
            .add_prefix_space(false),
    ));
    RobertaTokenizer::new(
        tokenizer,
        files
            .first()
            .map_or(Path::new("<trained>"), PathBuf::as_path),
    )
}

/// Whether any of `files` holds a byte that is not ASCII whitespace: without one, BPE
/// learns nothing and the tokenizer is only its byte alphabet. Every line is read, so a
/// file the trainer would choke on is named first, with the line: one that is not UTF-8,
/// or a line over [`crate::input::MAX_LINE_BYTES`] (the trainer holds a line whole).
fn any_text(files: &[PathBuf]) -> Result<bool> {
    let mut text = false;
    for f in files {
        for line in crate::input::lines(f)? {
            let (_, line) = line?;
            text = text || line.bytes().any(|b| !b.is_ascii_whitespace());
        }
    }
    Ok(text)
}

impl RobertaTokenizer {
    /// Writes `tokenizer.json`, `vocab.json` and `merges.txt` into `dir`: a directory
    /// being written through [`roberta_fs::write_dir`], which syncs them.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.write_files(dir, dir)
    }

    /// Writes the three files of [`save_dir`](Self::save_dir) as the new directory `dir`
    /// (through [`roberta_fs::write_dir`]), so that a full disk or a kill leaves no
    /// directory that looks like a tokenizer. An existing `dir` is refused, never
    /// replaced.
    pub fn save_new_dir(&self, dir: &Path) -> Result<()> {
        let exists = || DataError::OutputExists {
            path: dir.to_path_buf(),
        };
        if std::fs::symlink_metadata(dir).is_ok() {
            return Err(exists());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        roberta_fs::write_dir(dir, roberta_fs::Publish::New, |tmp| {
            self.write_files(tmp, dir)
        })
        .map_err(|e| match e {
            // A directory made there meanwhile.
            DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                exists()
            }
            e => e,
        })
    }

    /// Writes the three files into `dir`; errors name them as in `shown`, the directory
    /// the user asked for.
    fn write_files(&self, dir: &Path, shown: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| DataError::Tokenizer {
                path: shown.join(TOKENIZER_FILE),
                message: e.to_string(),
            })?;
        std::fs::write(dir.join(TOKENIZER_FILE), json).map_err(|source| DataError::Io {
            path: shown.join(TOKENIZER_FILE),
            source,
        })?;
        tokenizers::Model::save(self.inner.get_model(), dir, None).map_err(|e| match e
            .downcast::<std::io::Error>(
        ) {
            Ok(source) => DataError::Io {
                path: shown.to_path_buf(),
                source: *source,
            },
            Err(e) => DataError::Tokenizer {
                path: shown.to_path_buf(),
                message: e.to_string(),
            },
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::shared;

    #[test]
    fn roberta_base_specials_and_pairs() {
        let Some(dir) = shared("roberta_base_tokenizer") else {
            return;
        };
        let tok = RobertaTokenizer::load(&dir).unwrap();
        assert_eq!(
            tok.specials(),
            SpecialTokens {
                bos: 0,
                pad: 1,
                eos: 2,
                unk: 3,
                mask: 50264
            }
        );
        let e = tok.encode("Hello world", true).unwrap();
        assert_eq!(e.ids, vec![0, 31414, 232, 2]);
        assert_eq!(e.offsets, vec![(0, 0), (0, 5), (6, 11), (0, 0)]);
        let p = tok.encode_pair("Hello", "world").unwrap();
        assert_eq!(p.ids, vec![0, 31414, 2, 2, 8331, 2]);
    }

    #[test]
    fn vocab_merges_equal_tokenizer_json() {
        let Some(dir) = shared("roberta_base_tokenizer") else {
            return;
        };
        let json = RobertaTokenizer::from_file(&dir.join(TOKENIZER_FILE)).unwrap();
        let files =
            RobertaTokenizer::from_vocab_merges(&dir.join(VOCAB_FILE), &dir.join(MERGES_FILE))
                .unwrap();
        for text in [
            "The quick brown fox <mask> over   the lazy dog.",
            "Café naïve — 東京 🙂  spaces\tand\nnewlines",
            "<mask>",
        ] {
            assert_eq!(
                json.encode(text, true).unwrap(),
                files.encode(text, true).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn trains_a_roberta_style_bpe() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(
            &text,
            "the cat sat on the mat.\nthe dog sat on the log.\n".repeat(50),
        )
        .unwrap();
        let tok = train_bpe(&[text], 320, 2).unwrap();
        assert_eq!(
            tok.specials(),
            SpecialTokens {
                bos: 0,
                pad: 1,
                eos: 2,
                unk: 3,
                mask: tok.vocab_size() as u32 - 1
            }
        );
        tok.save_dir(&dir.path().join("out")).unwrap();
        let back = RobertaTokenizer::load(&dir.path().join("out")).unwrap();
        let files = RobertaTokenizer::from_vocab_merges(
            &dir.path().join("out/vocab.json"),
            &dir.path().join("out/merges.txt"),
        )
        .unwrap();
        let e = back.encode("the cat <mask> on the mat.", true).unwrap();
        assert_eq!(e.ids.first(), Some(&0));
        assert!(e.ids.contains(&back.specials().mask));
        assert_eq!(
            files.encode("the cat sat", true).unwrap(),
            back.encode("the cat sat", true).unwrap()
        );
    }

    #[test]
    fn training_on_files_without_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        let blank = dir.path().join("blank.txt");
        std::fs::write(&empty, "").unwrap();
        std::fs::write(&blank, " \n\n\t\r\n").unwrap();
        let err = train_bpe(&[empty.clone(), blank.clone()], 320, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty.txt") && err.contains("blank.txt") && err.contains("no text"),
            "{err}"
        );
        train_bpe(&[empty, write_text(dir.path())], 300, 2).unwrap();
    }

    #[test]
    fn a_vocab_or_merges_file_alone_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tok = train_bpe(&[write_text(dir.path())], 300, 2).unwrap();
        tok.save_dir(dir.path()).unwrap();
        for file in [VOCAB_FILE, MERGES_FILE] {
            let err = RobertaTokenizer::load(&dir.path().join(file))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(file) && err.contains("pass the directory that holds vocab.json"),
                "{err}"
            );
        }
        RobertaTokenizer::load(&dir.path().join(TOKENIZER_FILE)).unwrap();
        RobertaTokenizer::load(dir.path()).unwrap();
    }

    #[test]
    fn vocabulary_sizes_outside_the_trainable_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = write_text(dir.path());
        // The minimum the message states is one that trains: bytes and specials only.
        let tok = train_bpe(std::slice::from_ref(&text), MIN_VOCAB_SIZE, 2).unwrap();
        assert_eq!(tok.vocab_size(), MIN_VOCAB_SIZE);
        assert_eq!(tok.specials().mask, MIN_VOCAB_SIZE as u32 - 1);
        let err = train_bpe(std::slice::from_ref(&text), MIN_VOCAB_SIZE - 1, 2)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--vocab-size 260 is too small: the 256 byte symbols and 5 special tokens alone take 261; give at least 261"
        );
        for huge in [MAX_VOCAB_SIZE + 1, 1 << 40, usize::MAX] {
            let err = train_bpe(std::slice::from_ref(&text), huge, 2)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "--vocab-size {huge} is too large: give at most 16777216 (2^24; RoBERTa's is 50265)"
                )
            );
        }
    }

    #[test]
    fn a_new_directory_is_complete_or_absent_and_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let tok = train_bpe(&[write_text(dir.path())], 300, 2).unwrap();
        let out = dir.path().join("a/b/tok");
        tok.save_new_dir(&out).unwrap();
        assert_eq!(
            RobertaTokenizer::load(&out).unwrap().vocab_size(),
            tok.vocab_size()
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["tok"], "no temporary left");
        // Existing paths, even an empty directory, are refused and left as they were.
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join(VOCAB_FILE), "my notes").unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        for taken in [&mine, &empty, &dir.path().join("t.txt")] {
            let err = tok.save_new_dir(taken).unwrap_err();
            assert!(matches!(err, DataError::OutputExists { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("{} already exists", taken.display()))
            );
        }
        assert_eq!(
            std::fs::read_to_string(mine.join(VOCAB_FILE)).unwrap(),
            "my notes"
        );
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    }

    fn write_text(dir: &Path) -> PathBuf {
        let text = dir.join("t.txt");
        std::fs::write(&text, "the cat sat on the mat.\n".repeat(20)).unwrap();
        text
    }

    #[test]
    fn rejects_a_tokenizer_without_roberta_specials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VOCAB_FILE), r#"{"a": 0, "b": 1, "ab": 2}"#).unwrap();
        std::fs::write(dir.path().join(MERGES_FILE), "#version: 0.2\na b\n").unwrap();
        let err = RobertaTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("<s>"), "{err}");
    }
}
