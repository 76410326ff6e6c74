//! JSONL events from a file or standard input, one event per line. Blank lines
//! are skipped; every other line is a record, valid or not. A line longer than
//! an event may be keeps only its first `max_event_bytes + 1` bytes, so that the
//! decoder refuses it as too large while the rest is read past, never held.

use std::io::{self, BufRead};

use super::{EventSource, Origin, RawRecord};
use crate::event::UTF8_BOM;
use crate::model::Limits;

pub struct JsonlSource<R> {
    reader: R,
    name: String,
    line: u64,
    buffer: Vec<u8>,
    bytes_read: u64,
    max_event_bytes: usize,
}

impl<R: BufRead> JsonlSource<R> {
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self {
            reader,
            name: name.into(),
            line: 0,
            buffer: Vec::new(),
            bytes_read: 0,
            max_event_bytes: Limits::default().event_bytes,
        }
    }

    /// Lines longer than `bytes` are cut (the default is `Limits`').
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads one line into `buffer`, keeping at most `max_event_bytes + 1`
    /// bytes of it; returns the bytes consumed (0 at the end) and whether the
    /// line was cut.
    fn read_line(&mut self) -> io::Result<(usize, bool)> {
        self.buffer.clear();
        let keep = self.max_event_bytes + 1;
        let mut consumed = 0;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok((consumed, self.buffer.len() == keep));
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let taken = newline.map_or(available.len(), |at| at + 1);
            let room = keep - self.buffer.len();
            self.buffer.extend_from_slice(&available[..taken.min(room)]);
            self.reader.consume(taken);
            consumed += taken;
            if newline.is_some() {
                return Ok((consumed, self.buffer.len() == keep && taken > room));
            }
        }
    }
}

impl<R: BufRead> EventSource for JsonlSource<R> {
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<RawRecord>> {
        let mut batch = Vec::with_capacity(max.min(4096));
        while batch.len() < max {
            let (read, cut) = self.read_line()?;
            if read == 0 {
                break;
            }
            self.bytes_read += read as u64;
            self.line += 1;
            // A cut line stays as long as it was read, so it cannot pass for a short one.
            let mut payload = if cut { &self.buffer[..] } else { self.buffer.trim_ascii() };
            // Files saved by some Windows tools start with a byte order mark.
            if self.line == 1 {
                payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
            }
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

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_not_part_of_it() {
        let mut source = JsonlSource::new(&b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF{\"b\":2}\n"[..], "mem");
        let batch = source.next_batch(10).unwrap();
        assert_eq!(batch[0].payload, b"{\"a\":1}");
        assert_eq!(batch[1].payload, b"\xEF\xBB\xBF{\"b\":2}", "only a file's first bytes can be its mark");
    }

    #[test]
    fn a_line_longer_than_an_event_is_cut_and_reading_goes_on_at_the_next() {
        let max = Limits::default().event_bytes;
        let mut input = vec![b' '; 3 * max];
        input[max] = b'x';
        input.extend_from_slice(b"\n{\"b\":2}\n");
        input.extend(std::iter::repeat_n(b'y', max + 1));
        // A small buffer makes the long lines arrive in many reads.
        let mut source = JsonlSource::new(io::BufReader::with_capacity(4096, &input[..]), "mem");
        let batch = source.next_batch(10).unwrap();
        let lengths: Vec<usize> = batch.iter().map(|r| r.payload.len()).collect();
        assert_eq!(lengths, [max + 1, 7, max + 1]);
        assert_eq!(batch[1].payload, b"{\"b\":2}");
        assert_eq!(source.bytes_read(), input.len() as u64);
        let event_sized = format!("{}\n", "z".repeat(max));
        let batch = JsonlSource::new(event_sized.as_bytes(), "mem").next_batch(10).unwrap();
        assert_eq!(batch[0].payload.len(), max, "an event of the largest size is whole");
        let batch = JsonlSource::new(event_sized.as_bytes(), "mem").with_max_event_bytes(10).next_batch(10).unwrap();
        assert_eq!(batch[0].payload.len(), 11, "a configured limit is the one applied");
    }
}
