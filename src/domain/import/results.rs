//! An import's results: each input row as it came, with `tracking_number` and `error` columns
//! appended, in the file's own delimiter. Written a chunk at a time, the header once.
//!
//! A spreadsheet runs a cell that begins with `=`, `+`, `-` or `@` as a formula (a tab or a
//! carriage return first can hide one), and the file's cells are whatever the uploader typed:
//! `=HYPERLINK(…)` would become a live link in the admin's sheet. So, as OWASP advises against
//! CSV injection, every such cell is written with a `'` before it; what was imported and
//! issued is the value in the file. A number such as `-5` gets its `'` too.

use std::borrow::Cow;

use super::file::Delimiter;
use super::job::ChunkTally;
use crate::domain::TrackingNumber;
use crate::domain::order::FieldError;

/// The columns appended to every row of the results.
pub const APPENDED: [&str; 2] = ["tracking_number", "error"];

/// A chunk's results as stored: the length of its tally's JSON (4 bytes, big-endian), the
/// tally, then the chunk's rows of CSV. The tally travels with the rows it counts, so a chunk
/// is either done, counts and all, or not done.
pub fn encode_part(tally: &ChunkTally, rows: &[u8]) -> Vec<u8> {
    let tally = serde_json::to_vec(tally).unwrap_or_default();
    let mut part = Vec::with_capacity(4 + tally.len() + rows.len());
    part.extend_from_slice(&(tally.len() as u32).to_be_bytes());
    part.extend_from_slice(&tally);
    part.extend_from_slice(rows);
    part
}

/// A stored chunk of results: its tally and its rows of CSV. None when it is not one.
pub fn decode_part(part: &[u8]) -> Option<(ChunkTally, &[u8])> {
    let (len, rest) = part.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (tally, rows) = rest.split_at(len);
    Some((serde_json::from_slice(tally).ok()?, rows))
}

/// What became of a row, as the results show it.
#[derive(Debug, Clone, Copy)]
pub enum Shown<'a> {
    /// Issued this number.
    Issued(TrackingNumber),
    /// Passed every check (a dry run issues nothing).
    Valid,
    /// Skipped, for these reasons.
    Rejected(&'a [FieldError]),
}

/// Writes results rows in memory, one chunk at a time.
pub struct ResultsWriter {
    writer: csv::Writer<Vec<u8>>,
}

impl ResultsWriter {
    pub fn new(delimiter: Delimiter) -> ResultsWriter {
        ResultsWriter {
            writer: csv::WriterBuilder::new()
                .delimiter(delimiter.byte())
                .flexible(true)
                .from_writer(Vec::new()),
        }
    }

    /// The header row: the file's own names as they were, then the appended columns.
    pub fn header(&mut self, names: &csv::ByteRecord) {
        let appended = APPENDED.iter().map(|name| name.as_bytes());
        self.write(names.iter().chain(appended));
    }

    /// One row as it came, then its number and its errors (`field: message`, joined by `; `).
    pub fn row(&mut self, row: &csv::ByteRecord, shown: Shown<'_>) {
        let (number, error) = match shown {
            Shown::Issued(number) => (number.as_str().to_owned(), String::new()),
            Shown::Valid => (String::new(), String::new()),
            Shown::Rejected(errors) => {
                let error = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                (String::new(), error)
            }
        };
        self.write(row.iter().chain([number.as_bytes(), error.as_bytes()]));
    }

    /// The rows written so far.
    pub fn finish(self) -> Vec<u8> {
        // Writing to a Vec cannot fail, and the writer is flexible about row widths.
        self.writer.into_inner().unwrap_or_default()
    }

    fn write<'a>(&mut self, fields: impl Iterator<Item = &'a [u8]>) {
        // Into a Vec, with rows of any width allowed: this cannot fail.
        let _ = self.writer.write_record(fields.map(defused));
    }
}

/// The bytes a cell may begin with that make a spreadsheet read it as a formula.
const FORMULA_STARTS: [u8; 6] = [b'=', b'+', b'-', b'@', b'\t', b'\r'];

/// `cell` as a spreadsheet shows it as text: with a `'` before it when it could start a
/// formula.
fn defused(cell: &[u8]) -> Cow<'_, [u8]> {
    match cell.first() {
        Some(first) if FORMULA_STARTS.contains(first) => {
            let mut quoted = Vec::with_capacity(cell.len() + 1);
            quoted.push(b'\'');
            quoted.extend_from_slice(cell);
            Cow::Owned(quoted)
        }
        _ => Cow::Borrowed(cell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::import::file::reader;

    fn record(fields: &[&str]) -> csv::ByteRecord {
        csv::ByteRecord::from(fields.to_vec())
    }

    fn read_back(bytes: &[u8], delimiter: Delimiter) -> Vec<Vec<String>> {
        reader(delimiter, bytes)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn rows_come_back_as_they_were_with_their_number_and_errors() {
        let mut results = ResultsWriter::new(Delimiter::Semicolon);
        results.header(&record(&["Customer_Name", "weight"]));
        let number = TrackingNumber::parse("MY123ABC").unwrap();
        results.row(&record(&["a;b \"quoted\"", "1.5"]), Shown::Issued(number));
        let errors = [
            FieldError::new("weight", "must be positive"),
            FieldError::new("row", "has 1 fields"),
        ];
        results.row(&record(&["line\nbreak", "-1"]), Shown::Rejected(&errors));
        results.row(&record(&["valid", "2"]), Shown::Valid);
        let bytes = results.finish();
        assert_eq!(
            read_back(&bytes, Delimiter::Semicolon),
            [
                vec!["Customer_Name", "weight", "tracking_number", "error"],
                vec!["a;b \"quoted\"", "1.5", "MY123ABC", ""],
                vec![
                    "line\nbreak",
                    "'-1",
                    "",
                    "weight: must be positive; row: has 1 fields"
                ],
                vec!["valid", "2", "", ""],
            ]
        );
    }

    #[test]
    fn cells_that_could_start_a_formula_get_a_quote_before_them() {
        let mut results = ResultsWriter::new(Delimiter::Comma);
        let cells = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "@SUM(1)",
            "+cmd|' /C calc'!A0",
            "-5",
            "\t=1",
            "\r=1",
            "plain = fine",
            "'already",
            "",
        ];
        results.row(&record(&cells), Shown::Valid);
        let errors = [FieldError::new("=x", "is wrong")];
        results.row(&record(&["ok"]), Shown::Rejected(&errors));
        let rows = read_back(&results.finish(), Delimiter::Comma);
        assert_eq!(
            rows[0],
            [
                "'=HYPERLINK(\"http://x\",\"y\")",
                "'@SUM(1)",
                "'+cmd|' /C calc'!A0",
                "'-5",
                "'\t=1",
                "'\r=1",
                "plain = fine",
                "'already",
                "",
                "",
                "",
            ]
        );
        assert_eq!(rows[1], ["ok", "", "'=x: is wrong"], "the error column too");
    }

    #[test]
    fn a_short_row_keeps_its_own_width() {
        let mut results = ResultsWriter::new(Delimiter::Tab);
        results.row(
            &record(&["only"]),
            Shown::Rejected(&[FieldError::new("row", "has 1 fields")]),
        );
        let rows = read_back(&results.finish(), Delimiter::Tab);
        assert_eq!(rows, [vec!["only", "", "row: has 1 fields"]]);
    }

    #[test]
    fn chunks_written_apart_join_into_one_file() {
        let mut first = ResultsWriter::new(Delimiter::Comma);
        first.header(&record(&["weight"]));
        first.row(&record(&["1"]), Shown::Valid);
        let mut second = ResultsWriter::new(Delimiter::Comma);
        second.row(&record(&["2"]), Shown::Valid);
        let mut joined = first.finish();
        joined.extend(second.finish());
        assert_eq!(read_back(&joined, Delimiter::Comma).len(), 3);
    }

    #[test]
    fn a_stored_chunk_keeps_its_tally_with_its_rows() {
        let tally = ChunkTally {
            issued: 2,
            valid: 2,
            rejected: 1,
            errors: vec![crate::domain::import::RowError {
                row: 3,
                field: "weight".into(),
                message: "must be positive".into(),
            }],
        };
        let rows = b"a,b,MY1,\n";
        let part = encode_part(&tally, rows);
        let (back, back_rows) = decode_part(&part).unwrap();
        assert_eq!((back, back_rows), (tally, &rows[..]));
        assert!(decode_part(&part[..6]).is_none(), "cut inside the tally");
        assert!(decode_part(b"\0\0").is_none());
        assert!(decode_part(b"\0\0\0\x02{x").is_none(), "not a tally");
    }
}
