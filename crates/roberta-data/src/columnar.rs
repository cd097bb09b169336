//! Parquet and Arrow IPC files (what HF `datasets` writes and caches) through arrow-rs, a
//! record batch at a time, reading only the columns asked for. Corpora take a text
//! column from here, labeled data its text, label and answer columns.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{DataError, Result};

const BATCH_ROWS: usize = 1024;

/// `.parquet`, `.arrow`, `.ipc`, `.feather`.
pub fn is_columnar(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("parquet" | "arrow" | "ipc" | "feather")
    )
}

fn error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Corpus {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

enum Source {
    Parquet(ParquetRecordBatchReaderBuilder<File>),
    ArrowFile(arrow_ipc::reader::FileReader<BufReader<File>>),
    ArrowStream(arrow_ipc::reader::StreamReader<BufReader<File>>),
}

/// An open Parquet or Arrow IPC file (stream or file format, told by its magic bytes).
pub struct Table {
    path: PathBuf,
    schema: SchemaRef,
    source: Source,
}

impl Table {
    pub fn open(path: &Path, mut file: File) -> Result<Self> {
        let path = path.to_path_buf();
        // Told by their magic bytes, not the file's name: `--format parquet` reads a
        // Parquet file of any name.
        let mut magic = [0u8; 6];
        let read = file.read(&mut magic).unwrap_or(0);
        file.seek(SeekFrom::Start(0))
            .map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
        let source = if magic[..read.min(4)] == *b"PAR1" {
            Source::Parquet(
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| error(&path, format!("not a readable Parquet file: {e}")))?,
            )
        } else {
            let is_file_format = read == 6 && &magic == b"ARROW1";
            let bad = |e: arrow_schema::ArrowError| {
                error(
                    &path,
                    format!("neither Parquet nor a readable Arrow IPC file: {e}"),
                )
            };
            let file = BufReader::new(file);
            if is_file_format {
                Source::ArrowFile(arrow_ipc::reader::FileReader::try_new(file, None).map_err(bad)?)
            } else {
                Source::ArrowStream(
                    arrow_ipc::reader::StreamReader::try_new(file, None).map_err(bad)?,
                )
            }
        };
        let schema = match &source {
            Source::Parquet(builder) => builder.schema().clone(),
            Source::ArrowFile(reader) => reader.schema(),
            Source::ArrowStream(reader) => reader.schema(),
        };
        Ok(Self {
            path,
            schema,
            source,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.schema.column_with_name(name).is_some()
    }

    /// The column's type, or an error listing the columns there are (and `hint`: which
    /// setting names the column).
    pub fn require(&self, name: &str, hint: &str) -> Result<&DataType> {
        match self.schema.column_with_name(name) {
            Some((_, field)) => Ok(field.data_type()),
            None => {
                let names: Vec<&str> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                Err(error(
                    &self.path,
                    format!("no column \"{name}\" (columns: {}){hint}", names.join(", ")),
                ))
            }
        }
    }

    /// Refuses a column that does not hold strings.
    pub fn require_text(&self, name: &str, hint: &str) -> Result<()> {
        match self.require(name, hint)? {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
            other => Err(error(
                &self.path,
                format!("column \"{name}\" holds {other}, not text"),
            )),
        }
    }

    /// Calls `f` with every record batch of the columns `wanted` (all must exist).
    pub fn for_each_batch(
        self,
        wanted: &[&str],
        f: &mut dyn FnMut(&Batch<'_>) -> Result<()>,
    ) -> Result<()> {
        let path = self.path;
        let mut first_row = 0;
        let mut each = |batch: RecordBatch| -> Result<()> {
            let rows = batch.num_rows();
            f(&Batch {
                path: &path,
                batch,
                first_row,
            })?;
            first_row += rows;
            Ok(())
        };
        match self.source {
            Source::Parquet(builder) => {
                let indices = wanted
                    .iter()
                    .filter_map(|name| builder.schema().index_of(name).ok());
                let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
                let reader = builder
                    .with_projection(mask)
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| error(&path, e.to_string()))?;
                for batch in reader {
                    each(batch.map_err(|e| error(&path, e.to_string()))?)?;
                }
            }
            Source::ArrowFile(reader) => {
                for batch in reader {
                    each(batch.map_err(|e| error(&path, e.to_string()))?)?;
                }
            }
            Source::ArrowStream(reader) => {
                for batch in reader {
                    each(batch.map_err(|e| error(&path, e.to_string()))?)?;
                }
            }
        }
        Ok(())
    }
}

/// One record batch of a file.
pub struct Batch<'a> {
    path: &'a Path,
    batch: RecordBatch,
    /// The file's row index of this batch's first row.
    first_row: usize,
}

impl Batch<'_> {
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The 1-based row of the file, as errors name it.
    pub fn row_number(&self, row: usize) -> usize {
        self.first_row + row + 1
    }

    pub fn column(&self, name: &str) -> Result<&ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| error(self.path, format!("no column \"{name}\"")))
    }

    /// [`Self::text`] of a cell that must not be null; an error names its row.
    pub fn required_text(&self, name: &str, row: usize) -> Result<String> {
        self.text(name, row)?.ok_or_else(|| {
            error(
                self.path,
                format!("row {}: column \"{name}\" is null", self.row_number(row)),
            )
        })
    }

    /// A cell as text: strings as they are, integers, floats and booleans as they print
    /// (an HF `ClassLabel` is an integer column); `None` for a null.
    pub fn text(&self, name: &str, row: usize) -> Result<Option<String>> {
        cell_text(self.path, name, self.column(name)?.as_ref(), row)
    }
}

/// A cell of `array` as text, as [`Batch::text`] reads it.
pub fn cell_text(path: &Path, name: &str, array: &dyn Array, row: usize) -> Result<Option<String>> {
    if array.is_null(row) {
        return Ok(None);
    }
    let text = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
        DataType::Utf8View => array.as_string_view().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(row).to_string(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).to_string(),
        other => {
            return Err(error(
                path,
                format!("column \"{name}\" holds {other}; expected text, integers or numbers"),
            ));
        }
    };
    Ok(Some(text))
}
