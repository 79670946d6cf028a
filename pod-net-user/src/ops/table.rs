//! Plain aligned text tables for the CLI's human output.
use std::fmt::Write as _;

/// Renders `rows` under `headers`, each column as wide as its widest cell.
#[must_use]
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|&header| header.to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let text = render(
            &["IP", "MAC"],
            &[
                vec!["10.244.1.2".into(), "02:00:00:00:00:01".into()],
                vec!["10.9.9.9".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "IP          MAC\n10.244.1.2  02:00:00:00:00:01\n10.9.9.9    -\n"
        );
    }
}
