//! The CSV of `atpctl import`: initial stock as one count per (sku, location).
//!
//! ```text
//! event_id,sku,location_id,on_hand,as_of_ms
//! init-1,sku-1,dc-east,120,1700000000000
//! init-2,sku-1,store-12,4,
//! ```
//!
//! The header is required and is exactly `event_id,sku,location_id,on_hand`,
//! optionally followed by `,as_of_ms` (ms since the Unix epoch; an empty cell
//! or a missing column means the import's default, now unless `--as-of-ms`
//! says otherwise). Fields are separated by plain commas and
//! trimmed; quoted fields are not supported. Blank lines are skipped. The
//! whole file is checked before anything is sent: a bad row stops the import.

use std::collections::HashMap;
use std::fmt;

use atp_core::ids::validate_id;
use atp_proto::v1::stock_event::Kind;
use atp_proto::v1::{Counted, StockEvent};

/// Most rows one import may have.
pub const MAX_IMPORT_ROWS: usize = 10_000_000;
/// Most bad rows listed in one error (the count of all of them is still given).
const MAX_LISTED_ERRORS: usize = 20;

const COLUMNS: [&str; 4] = ["event_id", "sku", "location_id", "on_hand"];
const OPTIONAL_COLUMN: &str = "as_of_ms";

/// One data row: a count of `on_hand` units of `sku` at `location_id` as of `as_of_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountRow {
    /// 1-based line number in the file, for error reports.
    pub line: usize,
    pub event_id: String,
    pub sku: String,
    pub location_id: String,
    pub on_hand: i64,
    pub as_of_ms: i64,
    /// The file gave no `as_of_ms`: the import's default was used.
    pub as_of_defaulted: bool,
}

impl CountRow {
    pub fn to_event(&self) -> StockEvent {
        StockEvent {
            event_id: self.event_id.clone(),
            sku: self.sku.clone(),
            location_id: self.location_id.clone(),
            kind: Some(Kind::Counted(Counted { on_hand: self.on_hand, as_of_ms: self.as_of_ms })),
        }
    }
}

/// Why a file was refused: a bad header, or the bad rows (line number and reason).
#[derive(Debug, PartialEq, Eq)]
pub enum ImportFileError {
    Header(String),
    Rows { errors: Vec<(usize, String)>, total: usize },
    TooManyRows,
}

impl fmt::Display for ImportFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportFileError::Header(reason) => write!(
                f,
                "{reason}; the header must be event_id,sku,location_id,on_hand[,as_of_ms]"
            ),
            ImportFileError::Rows { errors, total } => {
                let plural = if *total == 1 { "row" } else { "rows" };
                write!(f, "{total} bad {plural}; nothing was sent")?;
                for (line, reason) in errors {
                    write!(f, "\n  line {line}: {reason}")?;
                }
                if *total > errors.len() {
                    write!(f, "\n  … and {} more", total - errors.len())?;
                }
                Ok(())
            }
            ImportFileError::TooManyRows => {
                write!(f, "more than {MAX_IMPORT_ROWS} rows; split the file")
            }
        }
    }
}

impl std::error::Error for ImportFileError {}

/// Reads every row of `text`; `default_as_of_ms` is the `as_of_ms` of rows that give none.
pub fn parse_counts(text: &str, default_as_of_ms: i64) -> Result<Vec<CountRow>, ImportFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().map(|(index, line)| (index + 1, line.trim()));
    let Some((_, header)) = lines.by_ref().find(|(_, line)| !line.is_empty()) else {
        return Err(ImportFileError::Header("the file is empty".to_owned()));
    };
    let has_as_of = parse_header(header)?;
    let column_count = if has_as_of { COLUMNS.len() + 1 } else { COLUMNS.len() };

    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut total_errors = 0;
    let mut first_line_of_event: HashMap<String, usize> = HashMap::new();
    for (line, text) in lines.filter(|(_, line)| !line.is_empty()) {
        if rows.len() >= MAX_IMPORT_ROWS {
            return Err(ImportFileError::TooManyRows);
        }
        let result = parse_row(line, text, column_count, default_as_of_ms).and_then(|row| {
            match first_line_of_event.insert(row.event_id.clone(), line) {
                Some(first) => {
                    Err(format!("event id {:?} is already used on line {first}", row.event_id))
                }
                None => Ok(row),
            }
        });
        match result {
            Ok(row) => rows.push(row),
            Err(reason) => {
                total_errors += 1;
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push((line, reason));
                }
            }
        }
    }
    if total_errors > 0 {
        return Err(ImportFileError::Rows { errors, total: total_errors });
    }
    Ok(rows)
}

/// Checks the header; returns whether it has the `as_of_ms` column.
fn parse_header(header: &str) -> Result<bool, ImportFileError> {
    if header.contains('"') {
        return Err(ImportFileError::Header("quoted fields are not supported".to_owned()));
    }
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    if names.as_slice() == COLUMNS.as_slice() {
        return Ok(false);
    }
    if names.len() == COLUMNS.len() + 1
        && names[..COLUMNS.len()] == COLUMNS
        && names[COLUMNS.len()] == OPTIONAL_COLUMN
    {
        return Ok(true);
    }
    Err(ImportFileError::Header(format!("unexpected header {header:?}")))
}

fn parse_row(
    line: usize,
    text: &str,
    column_count: usize,
    default_as_of_ms: i64,
) -> Result<CountRow, String> {
    if text.contains('"') {
        return Err("quoted fields are not supported".to_owned());
    }
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if fields.len() != column_count {
        return Err(format!("{} fields; the header has {column_count}", fields.len()));
    }
    for (name, value) in COLUMNS.iter().zip(&fields).take(3) {
        validate_id(name, value)
            .map_err(|violation| format!("{}: {}", violation.field, violation.description))?;
    }
    let on_hand: i64 =
        fields[3].parse().map_err(|_| format!("on_hand: {:?} is not a whole number", fields[3]))?;
    if on_hand < 0 {
        return Err(format!("on_hand: {on_hand} is negative"));
    }
    let as_of_ms = match fields.get(4) {
        None | Some(&"") => None,
        Some(value) => {
            let as_of_ms: i64 =
                value.parse().map_err(|_| format!("as_of_ms: {value:?} is not a whole number"))?;
            if as_of_ms <= 0 {
                return Err(format!(
                    "as_of_ms: {as_of_ms} must be positive (ms since the Unix epoch)"
                ));
            }
            Some(as_of_ms)
        }
    };
    Ok(CountRow {
        line,
        event_id: fields[0].to_owned(),
        sku: fields[1].to_owned(),
        location_id: fields[2].to_owned(),
        on_hand,
        as_of_ms: as_of_ms.unwrap_or(default_as_of_ms),
        as_of_defaulted: as_of_ms.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn rows_of(text: &str) -> Vec<CountRow> {
        parse_counts(text, NOW_MS).expect("a valid file")
    }

    fn row_errors(text: &str) -> Vec<(usize, String)> {
        match parse_counts(text, NOW_MS) {
            Err(ImportFileError::Rows { errors, .. }) => errors,
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn reads_rows_with_and_without_as_of() {
        let rows = rows_of(
            "\u{feff}event_id,sku,location_id,on_hand,as_of_ms\r\n\
             e1,sku-1,dc-east,120,1600000000000\r\n\
             \r\n\
             e2 , sku-1 , store-12 , 4 ,\r\n",
        );
        assert_eq!(
            rows,
            [
                CountRow {
                    line: 2,
                    event_id: "e1".into(),
                    sku: "sku-1".into(),
                    location_id: "dc-east".into(),
                    on_hand: 120,
                    as_of_ms: 1_600_000_000_000,
                    as_of_defaulted: false,
                },
                CountRow {
                    line: 4,
                    event_id: "e2".into(),
                    sku: "sku-1".into(),
                    location_id: "store-12".into(),
                    on_hand: 4,
                    as_of_ms: NOW_MS,
                    as_of_defaulted: true,
                },
            ]
        );
    }

    #[test]
    fn the_four_column_header_means_now() {
        let rows = rows_of("event_id,sku,location_id,on_hand\ne1,s,l,0\n");
        assert_eq!((rows[0].on_hand, rows[0].as_of_ms), (0, NOW_MS));
        let event = rows[0].to_event();
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.kind, Some(Kind::Counted(Counted { on_hand: 0, as_of_ms: NOW_MS })));
    }

    #[test]
    fn a_header_only_file_has_no_rows() {
        assert!(rows_of("event_id,sku,location_id,on_hand\n").is_empty());
    }

    #[test]
    fn bad_headers_are_refused() {
        for text in [
            "",
            "\n\n",
            "sku,location_id,on_hand\n",
            "event_id,sku,location_id,on_hand,as_of\n",
            "event_id,sku,location_id,on_hand,as_of_ms,extra\n",
            "e1,s,l,5\n",
            "\"event_id\",sku,location_id,on_hand\n",
        ] {
            let error = parse_counts(text, NOW_MS).expect_err(text);
            assert!(matches!(error, ImportFileError::Header(_)), "{text:?}: {error:?}");
            assert!(error.to_string().contains("event_id,sku,location_id,on_hand[,as_of_ms]"));
        }
    }

    #[test]
    fn bad_rows_are_all_reported_with_line_numbers() {
        let errors = row_errors(
            "event_id,sku,location_id,on_hand,as_of_ms\n\
             e1,s,l,5,\n\
             e2,s,l\n\
             e3,s,l,five,\n\
             e4,s,l,-1,\n\
             e5,\"s,1\",l,1,\n\
             e6,,l,1,\n\
             e7,s,l,1,yesterday\n\
             e8,s,l,1,-5\n\
             e1,s,l2,1,\n\
             e9,s,l,1,2,3\n",
        );
        let expected = [
            (3, "3 fields; the header has 5"),
            (4, "on_hand: \"five\" is not a whole number"),
            (5, "on_hand: -1 is negative"),
            (6, "quoted fields are not supported"),
            (7, "sku: must not be empty"),
            (8, "as_of_ms: \"yesterday\" is not a whole number"),
            (9, "as_of_ms: -5 must be positive (ms since the Unix epoch)"),
            (10, "event id \"e1\" is already used on line 2"),
            (11, "6 fields; the header has 5"),
        ];
        let expected: Vec<(usize, String)> =
            expected.iter().map(|(line, reason)| (*line, (*reason).to_owned())).collect();
        assert_eq!(errors, expected);
    }

    #[test]
    fn the_error_lists_at_most_twenty_rows_and_counts_the_rest() {
        let mut text = String::from("event_id,sku,location_id,on_hand\n");
        for index in 0..25 {
            text.push_str(&format!("e{index},s,l,x\n"));
        }
        let error = parse_counts(&text, NOW_MS).expect_err("bad rows");
        let message = error.to_string();
        assert!(message.starts_with("25 bad rows; nothing was sent"), "{message}");
        assert_eq!(message.matches("\n  line ").count(), MAX_LISTED_ERRORS);
        assert!(message.ends_with("and 5 more"), "{message}");
    }
}
