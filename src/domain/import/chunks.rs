//! Splitting an uploaded file into chunks of whole rows as its bytes arrive, so that a file of
//! any size is checked and stored a piece at a time, and each piece parses on its own with the
//! file's header. Row ends are found by the same CSV parser that reads the rows later, so a
//! line break inside a quoted field never splits a row.

use serde::{Deserialize, Serialize};

use super::file::{Delimiter, Header, reader, strip_bom};
use crate::domain::order::FieldError;

/// Chunks hold about this much: a chunk ends at the first row end past it.
/// A chunk is also what a worker issues in one go (its planned numbers kept, then its records
/// stored), so it stays small: about 2,400 rows with every input, 10,000 short ones.
pub const CHUNK_BYTES: usize = 256 << 10;
/// The header row must end within this many bytes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Nor may any other row be longer: a row with every input at its longest is under 2 KiB, and
/// a file that never ends its row must not be held whole.
pub const MAX_ROW_BYTES: usize = 64 << 10;

/// Whole rows of the file, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

/// What a whole file turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub delimiter: Delimiter,
    pub header: Header,
    /// The header row as it came, for the results' header.
    pub names: csv::ByteRecord,
    pub rows: u64,
}

/// What a job needs of its upload besides the chunks themselves: the header row as it came,
/// and how many rows each chunk holds. Stored once, when the upload has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The header row's names (checked to be UTF-8 when the upload was read).
    pub names: Vec<String>,
    pub chunk_rows: Vec<u64>,
}

impl Manifest {
    pub fn new(upload: &Upload, chunk_rows: Vec<u64>) -> Manifest {
        let names = upload
            .names
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        Manifest { names, chunk_rows }
    }

    /// The header row, as a record.
    pub fn names(&self) -> csv::ByteRecord {
        csv::ByteRecord::from(self.names.clone())
    }

    /// The header, read again (it was checked when the upload arrived).
    pub fn header(&self) -> Result<Header, Vec<FieldError>> {
        Header::parse(&self.names())
    }

    /// The number of the first row of `chunk` (rows count from 1, the header not included).
    pub fn first_row(&self, chunk: usize) -> u64 {
        1 + self.chunk_rows.iter().take(chunk).sum::<u64>()
    }
}

pub struct Chunker {
    given: Option<Delimiter>,
    chunk_bytes: usize,
    stage: Stage,
}

enum Stage {
    /// Before the header row has ended: the file's bytes so far.
    Header(Vec<u8>),
    Rows(Box<Rows>),
}

struct Rows {
    delimiter: Delimiter,
    header: Header,
    names: csv::ByteRecord,
    parser: csv_core::Reader,
    /// Bytes not yet handed out: whole rows, then the start of the next one.
    pending: Vec<u8>,
    /// How much of `pending` the parser has read.
    read: usize,
    /// How much of `pending` is whole rows, and how many.
    whole: usize,
    whole_rows: u64,
    rows: u64,
    /// The parser writes fields here; only where rows end matters.
    scratch: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunker {
    /// A chunker for a file with the `given` delimiter, or one detected from its header.
    pub fn new(given: Option<Delimiter>, chunk_bytes: usize) -> Chunker {
        Chunker {
            given,
            chunk_bytes: chunk_bytes.max(1),
            stage: Stage::Header(Vec::new()),
        }
    }

    /// Takes the file's next bytes; returns the chunks they completed. A bad header is an
    /// error naming each bad column.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Chunk>, Vec<FieldError>> {
        let mut chunks = Vec::new();
        match &mut self.stage {
            Stage::Header(start) => {
                start.extend_from_slice(bytes);
                // Only a line end can end the header row.
                let may_end = bytes.iter().any(|&b| b == b'\n' || b == b'\r');
                if !may_end && start.len() > MAX_HEADER_BYTES {
                    return Err(endless_header());
                }
                if may_end && let Some(rows) = self.header_ended(false)? {
                    self.stage = Stage::Rows(rows);
                    self.scan(&mut chunks);
                }
            }
            Stage::Rows(rows) => {
                rows.pending.extend_from_slice(bytes);
                self.scan(&mut chunks);
            }
        }
        if let Stage::Rows(rows) = &self.stage
            && rows.pending.len() - rows.whole > MAX_ROW_BYTES
        {
            return Err(vec![FieldError::new(
                "body",
                format!("row {} does not end within 64 KiB", rows.rows + 1),
            )]);
        }
        Ok(chunks)
    }

    /// The file has ended: the chunks left (whole rows; a last row needs no line end), and
    /// what the file holds.
    pub fn finish(mut self) -> Result<(Vec<Chunk>, Upload), Vec<FieldError>> {
        let mut rows = match self.stage {
            Stage::Rows(rows) => rows,
            // At the end of the file the header has ended too.
            Stage::Header(_) => self.header_ended(true)?.ok_or_else(|| {
                vec![FieldError::new(
                    "header",
                    "the file ended inside its first row",
                )]
            })?,
        };
        let mut chunks = Vec::new();
        rows.parse(true, self.chunk_bytes, &mut chunks);
        if rows.whole_rows > 0 {
            chunks.push(Chunk {
                bytes: std::mem::take(&mut rows.pending),
                rows: rows.whole_rows,
            });
        }
        let upload = Upload {
            delimiter: rows.delimiter,
            header: rows.header,
            names: rows.names,
            rows: rows.rows,
        };
        Ok((chunks, upload))
    }

    /// Reads the header row once it has ended (or the file has, `at_end`), and starts the
    /// rows with the bytes after it. None while the header row goes on.
    fn header_ended(&mut self, at_end: bool) -> Result<Option<Box<Rows>>, Vec<FieldError>> {
        let Stage::Header(start) = &mut self.stage else {
            return Ok(None);
        };
        let text = strip_bom(start);
        let delimiter = self.given.unwrap_or_else(|| Delimiter::detect(text));
        let mut parser = parser(delimiter);
        let (mut scratch, mut ends) = (vec![0; 1024], vec![0; 64]);
        let mut read = 0;
        loop {
            let input = if read < text.len() || !at_end {
                &text[read..]
            } else {
                &[][..]
            };
            let (result, nin, _, _) = parser.read_record(input, &mut scratch, &mut ends);
            read += nin;
            match result {
                csv_core::ReadRecordResult::Record => break,
                csv_core::ReadRecordResult::End => break,
                csv_core::ReadRecordResult::InputEmpty if !at_end => {
                    if text.len() > MAX_HEADER_BYTES {
                        return Err(endless_header());
                    }
                    return Ok(None);
                }
                _ => {}
            }
        }
        if read > MAX_HEADER_BYTES {
            return Err(endless_header());
        }
        let mut names = csv::ByteRecord::new();
        let _ = reader(delimiter, &text[..read]).read_byte_record(&mut names);
        let header = Header::parse(&names)?;
        let pending = text[read..].to_vec();
        Ok(Some(Box::new(Rows {
            delimiter,
            header,
            names,
            parser,
            pending,
            read: 0,
            whole: 0,
            whole_rows: 0,
            rows: 0,
            scratch,
            ends,
        })))
    }

    /// Hands out every chunk of whole rows that has reached the chunk size.
    fn scan(&mut self, chunks: &mut Vec<Chunk>) {
        if let Stage::Rows(rows) = &mut self.stage {
            rows.parse(false, self.chunk_bytes, chunks);
        }
    }
}

impl Rows {
    /// Parses what has arrived (past the end of the file when `at_end`), handing out a chunk
    /// at the first row end at or past `chunk_bytes`.
    fn parse(&mut self, at_end: bool, chunk_bytes: usize, chunks: &mut Vec<Chunk>) {
        loop {
            let input = &self.pending[self.read..];
            if input.is_empty() && !at_end {
                return;
            }
            let (result, nin, _, _) =
                self.parser
                    .read_record(input, &mut self.scratch, &mut self.ends);
            self.read += nin;
            match result {
                csv_core::ReadRecordResult::Record => {
                    self.whole = self.read;
                    self.whole_rows += 1;
                    self.rows += 1;
                    if self.whole >= chunk_bytes {
                        chunks.push(self.take_whole());
                    }
                }
                csv_core::ReadRecordResult::InputEmpty if !at_end => return,
                csv_core::ReadRecordResult::End => return,
                // The parser's own output is of no use here: go on with the same buffers.
                _ => {}
            }
        }
    }

    /// Cuts the whole rows off the front as a chunk.
    fn take_whole(&mut self) -> Chunk {
        let rest = self.pending.split_off(self.whole);
        let bytes = std::mem::replace(&mut self.pending, rest);
        self.read -= self.whole;
        self.whole = 0;
        Chunk {
            bytes,
            rows: std::mem::take(&mut self.whole_rows),
        }
    }
}

fn endless_header() -> Vec<FieldError> {
    vec![FieldError::new(
        "header",
        "the first row must name the columns and end within 64 KiB",
    )]
}

fn parser(delimiter: Delimiter) -> csv_core::Reader {
    csv_core::ReaderBuilder::new()
        .delimiter(delimiter.byte())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `file` in pieces of `step` bytes.
    fn split(file: &[u8], step: usize, chunk_bytes: usize) -> (Vec<Chunk>, Upload) {
        let mut chunker = Chunker::new(None, chunk_bytes);
        let mut chunks = Vec::new();
        for piece in file.chunks(step.max(1)) {
            chunks.extend(chunker.feed(piece).unwrap());
        }
        let (last, upload) = chunker.finish().unwrap();
        chunks.extend(last);
        (chunks, upload)
    }

    /// Rows as the csv crate reads the whole file at once (its header row not counted).
    fn rows_of(file: &[u8], delimiter: Delimiter) -> Vec<csv::ByteRecord> {
        let mut rows: Vec<_> = reader(delimiter, strip_bom(file))
            .byte_records()
            .map(Result::unwrap)
            .collect();
        rows.remove(0);
        rows
    }

    fn tricky_file() -> Vec<u8> {
        let mut file = b"\xEF\xBB\xBFcustomer_name;weight;order_id\r\n".to_vec();
        for i in 0..500 {
            let row = match i % 5 {
                0 => format!("\"line\nbreak {i}\";1.5;A{i}\r\n"),
                1 => format!("\"semi;colon \"\"quoted\"\" {i}\";2;B{i}\n"),
                2 => format!("plain {i};3;C{i}\n\n"),
                3 => format!("\"\";;D{i}\r\n"),
                _ => format!("last-ish {i};4;E{i}\n"),
            };
            file.extend_from_slice(row.as_bytes());
        }
        file.extend_from_slice(b"no line end;5;F");
        file
    }

    #[test]
    fn chunks_hold_whole_rows_however_the_bytes_arrive() {
        let file = tricky_file();
        let expected = rows_of(&file, Delimiter::Semicolon);
        for (step, chunk_bytes) in [(1, 64), (7, 300), (4096, 1000), (file.len(), 1 << 20)] {
            let (chunks, upload) = split(&file, step, chunk_bytes);
            assert_eq!(upload.delimiter, Delimiter::Semicolon);
            assert_eq!(
                upload.header.columns(),
                ["customer_name", "weight", "order_id"]
            );
            assert_eq!(upload.rows, expected.len() as u64, "step {step}");
            let mut seen = Vec::new();
            for chunk in &chunks {
                let rows: Vec<_> = reader(upload.delimiter, &chunk.bytes[..])
                    .byte_records()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(
                    rows.len() as u64,
                    chunk.rows,
                    "each chunk parses on its own"
                );
                seen.extend(rows);
            }
            assert_eq!(seen, expected, "step {step}, chunks of {chunk_bytes}");
            let sizes: Vec<usize> = chunks.iter().map(|c| c.bytes.len()).collect();
            // A chunk ends at the first row end past the limit: at most one row over it.
            assert!(
                sizes.iter().all(|&size| size < chunk_bytes + 64),
                "{sizes:?}"
            );
            if chunk_bytes < file.len() / 4 {
                assert!(chunks.len() > 3, "{sizes:?}");
            }
        }
    }

    #[test]
    fn a_header_alone_has_no_rows_and_no_chunks() {
        for file in [
            &b"weight,order_id"[..],
            b"weight,order_id\r\n",
            b"weight\n\n\n",
        ] {
            let (chunks, upload) = split(file, 3, 64);
            assert!(chunks.is_empty(), "{file:?}");
            assert_eq!(upload.rows, 0);
        }
    }

    #[test]
    fn a_given_delimiter_wins_over_detection() {
        let file = b"customer_name\nsemi;colon,comma\n";
        let mut chunker = Chunker::new(Some(Delimiter::Pipe), 1 << 20);
        assert!(chunker.feed(file).unwrap().is_empty());
        let (chunks, upload) = chunker.finish().unwrap();
        assert_eq!(upload.delimiter, Delimiter::Pipe);
        let rows: Vec<_> = reader(Delimiter::Pipe, &chunks[0].bytes[..])
            .byte_records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(&rows[0][0], b"semi;colon,comma");
    }

    #[test]
    fn a_bad_header_is_refused_as_soon_as_it_ends() {
        let mut chunker = Chunker::new(None, 1 << 20);
        assert!(
            chunker.feed(b"weight,col").unwrap().is_empty(),
            "not ended yet"
        );
        let errors = chunker.feed(b"our,size\n1,2,3\n").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["colour", "size"]);
    }

    #[test]
    fn an_empty_file_or_an_endless_header_is_refused() {
        let errors = Chunker::new(None, 64).finish().unwrap_err();
        assert_eq!(errors[0].field, "header");
        // Refused once it is too long, line end or not: the header is never held whole.
        let long = vec![b'a'; MAX_HEADER_BYTES / 2 + 1];
        let mut chunker = Chunker::new(None, 64);
        assert!(chunker.feed(&long).unwrap().is_empty());
        let errors = chunker.feed(&long).unwrap_err();
        assert_eq!(errors[0].field, "header");
        let mut chunker = Chunker::new(None, 64);
        assert!(chunker.feed(&long).unwrap().is_empty());
        assert!(chunker.feed(&long).is_err());
        let mut chunker = Chunker::new(None, 64);
        assert!(chunker.feed(&long).unwrap().is_empty());
        let mut ended = long.clone();
        ended.extend_from_slice(b"\r\n1\n");
        assert_eq!(chunker.feed(&ended).unwrap_err()[0].field, "header");
    }

    #[test]
    fn a_manifest_gives_back_the_header_and_where_each_chunk_starts() {
        let mut chunker = Chunker::new(None, 16);
        let mut chunk_rows: Vec<u64> = Vec::new();
        let file = b" Weight ;origin_country_id\n1;MY\n2;SG\n3;TH\n4;ID\n5;VN\n";
        chunk_rows.extend(chunker.feed(file).unwrap().iter().map(|c| c.rows));
        let (rest, upload) = chunker.finish().unwrap();
        chunk_rows.extend(rest.iter().map(|c| c.rows));
        let manifest = Manifest::new(&upload, chunk_rows.clone());
        assert_eq!(manifest.names, [" Weight ", "origin_country_id"]);
        assert_eq!(manifest.header().unwrap(), upload.header);
        assert!(chunk_rows.len() > 1, "{chunk_rows:?}");
        assert_eq!(manifest.first_row(0), 1);
        assert_eq!(manifest.first_row(1), 1 + chunk_rows[0]);
        assert_eq!(manifest.first_row(chunk_rows.len()), 6);
    }

    #[test]
    fn a_row_that_never_ends_is_refused_before_it_is_held_whole() {
        let mut chunker = Chunker::new(None, CHUNK_BYTES);
        chunker.feed(b"customer_name\nshort\n\"open quote").unwrap();
        let endless = vec![b'x'; 8 << 10];
        let mut refused = None;
        for _ in 0..16 {
            if let Err(errors) = chunker.feed(&endless) {
                refused = Some(errors);
                break;
            }
        }
        let errors = refused.expect("refused within 128 KiB");
        assert_eq!(errors[0].field, "body");
        assert!(errors[0].message.starts_with("row 2 "), "{errors:?}");
    }
}
