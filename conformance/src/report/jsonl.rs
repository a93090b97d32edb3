//! `results.jsonl`: one JSON object per line — the run header, one record per case as it
//! finishes (flushed at once, so nothing is lost on a crash), then the summary.

use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub struct JsonlWriter {
    out: BufWriter<File>,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> std::io::Result<JsonlWriter> {
        Ok(JsonlWriter {
            out: BufWriter::new(File::create(path)?),
        })
    }

    /// Write one record as a line and flush it to the OS.
    pub fn write<T: Serialize>(&mut self, rec: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, rec)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}
