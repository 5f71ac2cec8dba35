//! Plain-text tables: aligned columns with a header row, and aligned `key  value` lists.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers: right-aligned so digits line up.
    Right,
}

/// A table built row by row and rendered with every column as wide as its widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const COLUMN_GAP: usize = 2;

impl Table {
    /// A table with these columns; a header ending in `>` is right-aligned (the `>` is dropped).
    pub fn new(columns: &[&'static str]) -> Self {
        let mut headers = Vec::with_capacity(columns.len());
        let mut aligns = Vec::with_capacity(columns.len());
        for column in columns {
            match column.strip_suffix('>') {
                Some(header) => {
                    headers.push(header);
                    aligns.push(Align::Right);
                }
                None => {
                    headers.push(*column);
                    aligns.push(Align::Left);
                }
            }
        }
        Table { headers, aligns, rows: Vec::new() }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "a row must have one cell per column");
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row (header first), each ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                if index > 0 {
                    line.push_str(&" ".repeat(COLUMN_GAP));
                }
                let padding = " ".repeat(widths[index] - cell.chars().count());
                match self.aligns[index] {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&padding);
                    }
                    Align::Right => {
                        line.push_str(&padding);
                        line.push_str(cell);
                    }
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// `key  value` lines with the values lined up.
#[derive(Debug, Default)]
pub struct Fields {
    entries: Vec<(&'static str, String)>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &'static str, value: impl ToString) -> &mut Self {
        self.entries.push((key, value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let width = self.entries.iter().map(|(key, _)| key.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.entries {
            let _ = writeln!(out, "{}", format!("{key:<width$}  {value}").trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_numbers_right_aligned() {
        let mut table = Table::new(&["SKU", "QTY>", "NOTE"]);
        table.row(vec!["a".into(), "5".into(), "".into()]);
        table.row(vec!["long-sku".into(), "1234".into(), "x".into()]);
        assert_eq!(
            table.render(),
            "SKU        QTY  NOTE\n\
             a            5\n\
             long-sku  1234  x\n"
        );
    }

    #[test]
    fn fields_line_up_values() {
        let mut fields = Fields::new();
        fields.add("id", "r1").add("channel", "web");
        assert_eq!(fields.render(), "id       r1\nchannel  web\n");
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn a_short_row_is_a_bug() {
        Table::new(&["A", "B"]).row(vec!["x".into()]);
    }
}
