//! The log's one writer. Every record is scrubbed of secrets (URL passwords and every
//! secret value the config loaded: a client library may echo what it was given), and in
//! the text format its control characters (a newline in a routing key, an ANSI escape
//! in a topic) are written as escapes, so one record is always one line and a sender
//! cannot forge one. The JSON format escapes them by itself.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::secret;

/// Makes a writer per record for stderr.
#[derive(Debug, Clone, Copy)]
pub struct LogOutput {
    /// Escape control characters (the text format).
    pub escape: bool,
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = RecordWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        RecordWriter::new(io::stderr(), self.escape)
    }
}

/// Collects one record, and writes it cleaned when dropped (the formatter writes a
/// record, then drops its writer).
pub struct RecordWriter<W: Write> {
    record: Vec<u8>,
    out: W,
    escape: bool,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(out: W, escape: bool) -> Self {
        Self {
            record: Vec::with_capacity(256),
            out,
            escape,
        }
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.record.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RecordWriter<W> {
    fn drop(&mut self) {
        let record = secret::scrub(&String::from_utf8_lossy(&self.record));
        let record = if self.escape {
            escape_record(&record)
        } else {
            record
        };
        let _ = self.out.write_all(record.as_bytes());
        let _ = self.out.flush();
    }
}

/// The record with every control character (C0, DEL, C1) written as `\n`, `\r`, `\t`
/// or `\u{..}`; a final newline stays a newline.
pub fn escape_record(record: &str) -> String {
    let (body, end) = match record.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (record, ""),
    };
    let mut out = String::with_capacity(record.len());
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_line_stays_inside_its_record() {
        let record = "INFO refused path=/hooks/x\n2026-01-01 ERROR forged\x1b[31m red\r\n";
        let text = escape_record(record);
        assert_eq!(
            text,
            "INFO refused path=/hooks/x\\n2026-01-01 ERROR forged\\u{1b}[31m red\\r\n"
        );
        assert_eq!(text.matches('\n').count(), 1, "one record, one line");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let record = "INFO bridge up: grüße, 温度\n";
        assert_eq!(escape_record(record), record);
    }

    #[test]
    fn the_writer_scrubs_and_escapes_each_record() {
        let mut sink = Vec::new();
        {
            let mut writer = RecordWriter::new(&mut sink, true);
            writer.write_all(b"failed: amqp://u:").unwrap();
            writer.write_all(b"secret@h\nforged\n").unwrap();
        }
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "failed: amqp://u:***@h\\nforged\n"
        );
        let mut sink = Vec::new();
        {
            let mut writer = RecordWriter::new(&mut sink, false);
            writer
                .write_all(b"{\"url\":\"amqp://u:secret@h\"}\n")
                .unwrap();
        }
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "{\"url\":\"amqp://u:***@h\"}\n"
        );
    }
}
