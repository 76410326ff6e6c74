//! Dead letters as JSON lines: the original input kept verbatim (a string when it
//! is UTF-8, hex otherwise) with the reason and where it came from.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use super::{DeadLetter, DeadLetterSink};

pub struct JsonlDeadLetters {
    out: BufWriter<File>,
}

impl JsonlDeadLetters {
    /// Appends, so letters from earlier runs are kept.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { out: BufWriter::new(file) })
    }
}

impl DeadLetterSink for JsonlDeadLetters {
    fn send(&mut self, letter: DeadLetter<'_>) -> io::Result<()> {
        let payload = match std::str::from_utf8(letter.payload) {
            Ok(text) => json!({ "payload": text }),
            Err(_) => json!({ "payload_hex": letter.payload.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
        };
        let mut record = json!({
            "reason": letter.reason,
            "detail": letter.detail,
            "source": letter.origin.source,
            "position": letter.origin.position,
        });
        if let (Some(record), serde_json::Value::Object(payload)) = (record.as_object_mut(), payload) {
            record.extend(payload);
        }
        serde_json::to_writer(&mut self.out, &record)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}
