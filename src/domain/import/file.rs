//! Reading an import file a row at a time: the CSV dialect (a detected or given delimiter, an
//! optional UTF-8 byte-order mark), the header row that names the columns, and each row read
//! into an issue request with its optional `order_id`.

use std::io::Read;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::order::FieldError;
use crate::domain::request::{INPUT_NAMES, IssueInput, IssueRequest};

/// The column of the caller's own order id.
const ORDER_ID: &str = "order_id";
/// The columns a file may have, in any order: the inputs of an issue (the seven order inputs
/// and when the record expires), then the caller's own order id. Any other is refused.
pub const COLUMNS: [&str; INPUT_NAMES.len() + 1] = {
    let mut columns = [ORDER_ID; INPUT_NAMES.len() + 1];
    let mut at = 0;
    while at < INPUT_NAMES.len() {
        columns[at] = INPUT_NAMES[at];
        at += 1;
    }
    columns
};
/// The longest `order_id`, in characters.
pub const MAX_ORDER_ID: usize = 200;

const MSG_NOT_UTF8: &str = "is not valid UTF-8";
const MSG_ORDER_ID: &str = "must be at most 200 characters, without control characters";

/// What separates the fields of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Delimiter {
    Comma,
    Semicolon,
    Tab,
    Pipe,
}

/// In order of preference when two split a header equally.
const CANDIDATES: [Delimiter; 4] = [
    Delimiter::Comma,
    Delimiter::Semicolon,
    Delimiter::Tab,
    Delimiter::Pipe,
];

impl Delimiter {
    pub fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
            Delimiter::Pipe => b'|',
        }
    }

    /// A delimiter as a caller names it (`?delimiter=`): the character itself, or its name.
    pub fn from_param(text: &str) -> Option<Delimiter> {
        Some(match text {
            "," | "comma" => Delimiter::Comma,
            ";" | "semicolon" => Delimiter::Semicolon,
            "\t" | "tab" => Delimiter::Tab,
            "|" | "pipe" => Delimiter::Pipe,
            _ => return None,
        })
    }

    /// The delimiter of a file that starts with `start` (its BOM already stripped): the one
    /// that splits the first line into the most fields, counting only outside quotes. A comma
    /// when none splits it (a file of one column).
    pub fn detect(start: &[u8]) -> Delimiter {
        let mut counts = [0usize; CANDIDATES.len()];
        let mut quoted = false;
        for &byte in start {
            match byte {
                b'"' => quoted = !quoted,
                b'\n' | b'\r' if !quoted => break,
                _ if !quoted => {
                    for (count, candidate) in counts.iter_mut().zip(CANDIDATES) {
                        *count += usize::from(byte == candidate.byte());
                    }
                }
                _ => {}
            }
        }
        let mut best = 0;
        for (index, &count) in counts.iter().enumerate() {
            if count > counts[best] {
                best = index;
            }
        }
        CANDIDATES[best]
    }
}

/// The bytes without a leading UTF-8 byte-order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// A CSV reader for a file with this delimiter. Rows are read as they are (the header too);
/// [`Header`] checks their width, so one short row is reported rather than ending the file.
pub fn reader<R: Read>(delimiter: Delimiter, input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter.byte())
        .has_headers(false)
        .flexible(true)
        .from_reader(input)
}

/// One bad field of one row, as a job reports it. Rows count from 1, the header not included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowError {
    pub row: u64,
    pub field: String,
    pub message: String,
}

impl RowError {
    pub fn all(row: u64, errors: Vec<FieldError>) -> impl Iterator<Item = RowError> {
        errors.into_iter().map(move |e| RowError {
            row,
            field: e.field,
            message: e.message,
        })
    }
}

/// A row that can be issued: the request, and the caller's order id when it gave one (rows
/// that share one share a number).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    pub request: IssueRequest,
    pub order_id: Option<String>,
}

/// Where each known column sits in a row, from the header row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Per entry of [`COLUMNS`], the index of its field.
    at: [Option<usize>; COLUMNS.len()],
    /// How many fields a row has.
    width: usize,
}

impl Header {
    /// Reads the header row. Names match without surrounding spaces and in any ASCII case.
    /// Every unknown, unnamed or repeated column is reported, each by its name (or position).
    pub fn parse(names: &csv::ByteRecord) -> Result<Header, Vec<FieldError>> {
        let mut at = [None; COLUMNS.len()];
        let mut errors = Vec::new();
        for (index, raw) in names.iter().enumerate() {
            let position = format!("column {}", index + 1);
            let Ok(name) = std::str::from_utf8(raw) else {
                errors.push(FieldError::new(position, MSG_NOT_UTF8));
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                errors.push(FieldError::new(
                    position,
                    "has no name: the first row must name every column",
                ));
                continue;
            }
            match COLUMNS.iter().position(|&column| column == name) {
                Some(known) if at[known].is_some() => {
                    errors.push(FieldError::new(name, "is given more than once"));
                }
                Some(known) => at[known] = Some(index),
                None => errors.push(FieldError::new(
                    shorten(&name),
                    format!("unknown column; the columns are {}", COLUMNS.join(", ")),
                )),
            }
        }
        if names.is_empty() {
            errors.push(FieldError::new(
                "header",
                "the file is empty: its first row must name the columns",
            ));
        }
        if errors.is_empty() {
            Ok(Header {
                at,
                width: names.len(),
            })
        } else {
            Err(errors)
        }
    }

    /// The file's columns, in file order.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut named: Vec<(usize, &'static str)> = self
            .at
            .iter()
            .zip(COLUMNS)
            .filter_map(|(at, column)| at.map(|at| (at, column)))
            .collect();
        named.sort_unstable();
        named.into_iter().map(|(_, column)| column).collect()
    }

    /// Reads one row. A field that is empty (or only spaces) is an input not given. Every bad
    /// field is reported; `now` decides whether `expires_at` is in the future.
    pub fn read(
        &self,
        row: &csv::ByteRecord,
        now: DateTime<Utc>,
    ) -> Result<ImportRow, Vec<FieldError>> {
        if row.len() != self.width {
            return Err(vec![FieldError::new(
                "row",
                format!(
                    "has {} fields, but the header names {}",
                    row.len(),
                    self.width
                ),
            )]);
        }
        let mut input = IssueInput::default();
        let mut order_id = None;
        let mut errors = Vec::new();
        for (column, at) in COLUMNS.iter().zip(self.at) {
            let Some(raw) = at.and_then(|at| row.get(at)) else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(raw) else {
                errors.push(FieldError::new(*column, MSG_NOT_UTF8));
                continue;
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if *column == ORDER_ID {
                order_id = Some(text);
            } else if let Some(slot) = input.slot(column) {
                *slot = Some(text.into());
            }
        }
        let order_id = match order_id {
            Some(id) if id.chars().count() > MAX_ORDER_ID || id.chars().any(char::is_control) => {
                errors.push(FieldError::new(ORDER_ID, MSG_ORDER_ID));
                None
            }
            id => id.map(str::to_owned),
        };
        match input.parse(now) {
            Ok(request) if errors.is_empty() => Ok(ImportRow { request, order_id }),
            Ok(_) => Err(errors),
            Err(mut bad) => {
                bad.extend(errors);
                Err(bad)
            }
        }
    }
}

/// An unknown name as reported: at most 64 characters of it.
fn shorten(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    }

    /// The header and rows of a whole file, read the way a job reads one.
    fn read_file(bytes: &[u8]) -> (Result<Header, Vec<FieldError>>, Vec<csv::ByteRecord>) {
        let bytes = strip_bom(bytes);
        let mut reader = reader(Delimiter::detect(bytes), bytes);
        let mut rows = reader.byte_records().map(Result::unwrap);
        let header = Header::parse(&rows.next().unwrap_or_default());
        (header, rows.collect())
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn each_delimiter_is_detected_from_the_header_line() {
        assert_eq!(
            Delimiter::detect(b"weight,origin_country_id"),
            Delimiter::Comma
        );
        assert_eq!(
            Delimiter::detect(b"weight;origin_country_id"),
            Delimiter::Semicolon
        );
        assert_eq!(
            Delimiter::detect(b"weight\torigin_country_id"),
            Delimiter::Tab
        );
        assert_eq!(
            Delimiter::detect(b"weight|origin_country_id"),
            Delimiter::Pipe
        );
        // One column: nothing splits it.
        assert_eq!(Delimiter::detect(b"weight\n1.5"), Delimiter::Comma);
    }

    #[test]
    fn detection_counts_only_the_first_line_and_only_outside_quotes() {
        // Two semicolons inside a quoted name, one comma outside.
        assert_eq!(Delimiter::detect(b"\"a;b;c\",weight"), Delimiter::Comma);
        // Semicolons in the data rows do not outvote the header's commas.
        assert_eq!(
            Delimiter::detect(b"weight,created_at\n1;2;3;4;5;6,x"),
            Delimiter::Comma
        );
        assert_eq!(
            Delimiter::detect(b"weight;customer_name\r\n1,5;a,b,c"),
            Delimiter::Semicolon
        );
    }

    #[test]
    fn a_delimiter_may_be_named_by_its_character_or_its_name() {
        for (text, delimiter) in [
            (",", Delimiter::Comma),
            ("semicolon", Delimiter::Semicolon),
            ("\t", Delimiter::Tab),
            ("tab", Delimiter::Tab),
            ("|", Delimiter::Pipe),
        ] {
            assert_eq!(Delimiter::from_param(text), Some(delimiter), "{text:?}");
        }
        assert_eq!(Delimiter::from_param(":"), None);
        assert_eq!(Delimiter::from_param(""), None);
    }

    #[test]
    fn a_byte_order_mark_is_dropped_before_the_header() {
        let (header, rows) = read_file(b"\xEF\xBB\xBFweight;order_id\n1.5;A-1\n");
        let header = header.unwrap();
        assert_eq!(header.columns(), ["weight", "order_id"]);
        let row = header.read(&rows[0], now()).unwrap();
        assert_eq!(row.order_id.as_deref(), Some("A-1"));
        assert_eq!(strip_bom(b"abc"), b"abc");
    }

    #[test]
    fn columns_come_in_any_order_and_any_case() {
        let (header, rows) =
            read_file(b"Customer_Slug|weight| ORIGIN_COUNTRY_ID \nredbox-logistics|2.5|MY\n");
        let header = header.unwrap();
        assert_eq!(
            header.columns(),
            ["customer_slug", "weight", "origin_country_id"]
        );
        let row = header.read(&rows[0], now()).unwrap();
        let order = &row.request.order;
        assert_eq!(order.origin_country_id.unwrap().to_string(), "MY");
        assert_eq!(order.weight.unwrap().grams(), 2500);
        assert_eq!(order.customer_slug.as_deref(), Some("redbox-logistics"));
        assert_eq!(row.order_id, None);
    }

    #[test]
    fn every_unknown_unnamed_or_repeated_column_is_named() {
        let (header, _) = read_file(b"weight,colour,,Weight,size\n");
        let errors = header.unwrap_err();
        assert_eq!(fields(&errors), ["colour", "column 3", "weight", "size"]);
        assert!(
            errors[0].message.contains("origin_country_id"),
            "{errors:?}"
        );
        assert!(errors[2].message.contains("more than once"), "{errors:?}");
    }

    #[test]
    fn an_empty_file_has_no_header() {
        let (header, rows) = read_file(b"");
        assert_eq!(fields(&header.unwrap_err()), ["header"]);
        assert!(rows.is_empty());
    }

    #[test]
    fn a_header_alone_is_a_file_of_no_rows() {
        let (header, rows) = read_file(b"weight,order_id\n");
        assert!(header.is_ok());
        assert!(rows.is_empty());
    }

    #[test]
    fn a_row_reads_as_the_same_request_the_query_gives() {
        let (header, rows) = read_file(
            b"origin_country_id,destination_country_id,weight,created_at,customer_id,customer_name,customer_slug,expires_at\n\
              MY,ID,1.234,2018-11-20T19:29:32+08:00,de619854-b59b-425e-9db4-943979e1bd49,\"RedBox, Logistics\",redbox-logistics,2030-01-31T00:00:00Z\n",
        );
        let row = header.unwrap().read(&rows[0], now()).unwrap();
        let mut input = IssueInput::default();
        for (name, value) in [
            ("origin_country_id", "MY"),
            ("destination_country_id", "ID"),
            ("weight", "1.234"),
            ("created_at", "2018-11-20T19:29:32+08:00"),
            ("customer_id", "de619854-b59b-425e-9db4-943979e1bd49"),
            ("customer_name", "RedBox, Logistics"),
            ("customer_slug", "redbox-logistics"),
            ("expires_at", "2030-01-31T00:00:00Z"),
        ] {
            *input.slot(name).unwrap() = Some(value.into());
        }
        assert_eq!(row.request, input.parse(now()).unwrap());
    }

    #[test]
    fn empty_fields_are_inputs_not_given() {
        let (header, rows) = read_file(b"weight,origin_country_id,order_id\n , ,\n");
        let row = header.unwrap().read(&rows[0], now()).unwrap();
        assert_eq!(row.request.order.weight, None);
        assert_eq!(row.request.order.origin_country_id, None);
        assert_eq!(row.order_id, None);
    }

    #[test]
    fn a_bad_row_reports_every_bad_field_by_its_column() {
        let long_id = "x".repeat(MAX_ORDER_ID + 1);
        let file = format!(
            "weight,origin_country_id,expires_at,order_id\n-1,XX,2020-01-01T00:00:00Z,{long_id}\n"
        );
        let (header, rows) = read_file(file.as_bytes());
        let errors = header.unwrap().read(&rows[0], now()).unwrap_err();
        let mut named = fields(&errors);
        named.sort_unstable();
        assert_eq!(
            named,
            ["expires_at", "order_id", "origin_country_id", "weight"]
        );
    }

    #[test]
    fn an_order_id_of_the_longest_length_is_kept() {
        let id = "é".repeat(MAX_ORDER_ID);
        let file = format!("order_id\n{id}\n");
        let (header, rows) = read_file(file.as_bytes());
        let row = header.unwrap().read(&rows[0], now()).unwrap();
        assert_eq!(row.order_id, Some(id));
    }

    #[test]
    fn a_row_of_the_wrong_width_is_reported_not_fatal() {
        let (header, rows) = read_file(b"weight,order_id\n1.5\n2.5,B\n1,2,3\n");
        let header = header.unwrap();
        let short = header.read(&rows[0], now()).unwrap_err();
        assert_eq!(fields(&short), ["row"]);
        assert!(short[0].message.contains("1 fields"), "{short:?}");
        assert!(header.read(&rows[1], now()).is_ok());
        assert_eq!(fields(&header.read(&rows[2], now()).unwrap_err()), ["row"]);
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_column() {
        let (header, rows) = read_file(b"customer_name,weight\n\xff\xfe,1\n");
        let errors = header.unwrap().read(&rows[0], now()).unwrap_err();
        assert_eq!(fields(&errors), ["customer_name"]);
        let (header, _) = read_file(b"weight,\xff\n");
        assert_eq!(fields(&header.unwrap_err()), ["column 2"]);
    }

    #[test]
    fn row_errors_carry_their_row() {
        let errors: Vec<RowError> =
            RowError::all(7, vec![FieldError::new("weight", "bad")]).collect();
        assert_eq!(
            errors,
            [RowError {
                row: 7,
                field: "weight".into(),
                message: "bad".into()
            }]
        );
    }
}
