//! JSONL events from a file or standard input, one event per line. Blank lines
//! are skipped; every other line is a record, valid or not.

use std::io::{self, BufRead};

use super::{EventSource, Origin, RawRecord};

pub struct JsonlSource<R> {
    reader: R,
    name: String,
    line: u64,
    buffer: Vec<u8>,
    bytes_read: u64,
}

impl<R: BufRead> JsonlSource<R> {
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self { reader, name: name.into(), line: 0, buffer: Vec::new(), bytes_read: 0 }
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

impl<R: BufRead> EventSource for JsonlSource<R> {
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<RawRecord>> {
        let mut batch = Vec::with_capacity(max.min(4096));
        while batch.len() < max {
            self.buffer.clear();
            let read = self.reader.read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                break;
            }
            self.bytes_read += read as u64;
            self.line += 1;
            let payload = self.buffer.trim_ascii();
            if payload.is_empty() {
                continue;
            }
            batch.push(RawRecord {
                payload: payload.to_vec(),
                origin: Origin { source: self.name.clone(), partition: None, position: self.line },
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_numbers_and_blank_lines_are_skipped() {
        let mut source = JsonlSource::new(&b"{\"a\":1}\n\n  \nnot json\n{\"b\":2}"[..], "mem");
        let batch = source.next_batch(10).unwrap();
        let positions: Vec<u64> = batch.iter().map(|r| r.origin.position).collect();
        assert_eq!(positions, [1, 4, 5]);
        assert_eq!(batch[1].payload, b"not json");
        assert!(source.next_batch(10).unwrap().is_empty());
    }
}
