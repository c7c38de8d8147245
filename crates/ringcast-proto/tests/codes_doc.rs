//! Keeps the code tables of `proto/client.md` equal to [`ErrorCode::ALL`] and
//! [`CloseCode::ALL`]: same codes, same order, same HTTP status, close reason and
//! reconnect advice. A code added to an enum but not to the doc (or the reverse) fails.

use ringcast_proto::{CloseCode, ErrorCode};
use std::path::Path;

const ERROR_HEADER: &str = "| code | HTTP status | meaning |";
const CLOSE_HEADER: &str = "| close code | reason | meaning | reconnect? |";

fn client_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/client.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Splits a Markdown table row into trimmed cells; `\|` inside a cell is a literal bar.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let (mut out, mut cell) = (Vec::new(), String::new());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cell.push('|');
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_owned());
    out
}

/// The body rows of the one table whose header line is exactly `header`.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = doc.lines().collect();
    let starts: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == header).map(|(i, _)| i).collect();
    assert_eq!(starts.len(), 1, "proto/client.md must hold exactly one table with the header `{header}`");
    let start = starts[0];
    let separator = lines.get(start + 1).map(|l| l.trim()).unwrap_or_default();
    assert!(
        separator.starts_with('|') && separator.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')),
        "the table `{header}` must be followed by a separator row, found {separator:?}"
    );
    let columns = cells(header).len();
    lines[start + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let row = cells(l);
            assert_eq!(row.len(), columns, "table `{header}`: row {l:?} has {} cells, not {columns}", row.len());
            row
        })
        .collect()
}

/// The text inside one pair of backticks, or a panic naming the cell.
fn code_span<'a>(cell: &'a str, what: &str) -> &'a str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .filter(|c| !c.contains('`'))
        .unwrap_or_else(|| panic!("{what}: cell {cell:?} must be one `code span`"))
}

#[test]
fn error_table_lists_every_error_code_in_order() {
    let doc = client_md();
    let rows = table(&doc, ERROR_HEADER);
    let documented: Vec<&str> = rows.iter().map(|r| code_span(&r[0], "error table")).collect();
    let enumerated: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        documented, enumerated,
        "the error table of proto/client.md must list ErrorCode::ALL, in order (left: doc, right: enum)"
    );
    for (row, code) in rows.iter().zip(ErrorCode::ALL) {
        let status: u16 =
            row[1].parse().unwrap_or_else(|e| panic!("error table, `{code}`: HTTP status {:?}: {e}", row[1]));
        assert_eq!(status, code.http_status(), "error table, `{code}`: HTTP status vs ErrorCode::http_status()");
        assert!(!row[2].is_empty(), "error table, `{code}`: the meaning is empty");
    }
}

#[test]
fn close_table_lists_every_close_code_in_order() {
    let doc = client_md();
    let rows = table(&doc, CLOSE_HEADER);
    let documented: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (code_span(&r[0], "close table").to_owned(), code_span(&r[1], "close table").to_owned(), r[3].clone()))
        .collect();
    let enumerated: Vec<(String, String, String)> = CloseCode::ALL
        .iter()
        .map(|c| {
            let reconnect = if c.reconnect() { "yes" } else { "no" };
            (c.code().to_string(), c.reason().to_owned(), reconnect.to_owned())
        })
        .collect();
    assert_eq!(
        documented, enumerated,
        "the close table of proto/client.md must list CloseCode::ALL in order as (code, reason, reconnect?) \
         (left: doc, right: enum)"
    );
    for row in &rows {
        assert!(!row[2].is_empty(), "close table, {}: the meaning is empty", row[0]);
    }
}

/// Compile-time guard: a variant added to an enum breaks these exhaustive matches until
/// it is listed here, and the assertions then require it in `ALL` (and so in the doc).
#[test]
fn all_lists_every_variant() {
    fn error_index(c: ErrorCode) -> usize {
        match c {
            ErrorCode::BadRequest => 0,
            ErrorCode::UnknownCommand => 1,
            ErrorCode::NotConnected => 2,
            ErrorCode::AlreadyConnected => 3,
            ErrorCode::Unauthorized => 4,
            ErrorCode::TokenExpired => 5,
            ErrorCode::PermissionDenied => 6,
            ErrorCode::InvalidChannel => 7,
            ErrorCode::UnknownNamespace => 8,
            ErrorCode::InvalidPosition => 9,
            ErrorCode::InvalidIdempotencyKey => 10,
            ErrorCode::MessageTooLarge => 11,
            ErrorCode::TooManyChannels => 12,
            ErrorCode::AlreadySubscribed => 13,
            ErrorCode::NotSubscribed => 14,
            ErrorCode::NotEnabled => 15,
            ErrorCode::RateLimited => 16,
            ErrorCode::Conflict => 17,
            ErrorCode::NotFound => 18,
            ErrorCode::MethodNotAllowed => 19,
            ErrorCode::Unavailable => 20,
            ErrorCode::InsufficientReplicas => 21,
            ErrorCode::CoordinationUnavailable => 22,
            ErrorCode::Internal => 23,
        }
    }
    fn close_index(c: CloseCode) -> usize {
        match c {
            CloseCode::Normal => 0,
            CloseCode::GoingAway => 1,
            CloseCode::ProtocolError => 2,
            CloseCode::UnsupportedData => 3,
            CloseCode::InvalidPayload => 4,
            CloseCode::MessageTooBig => 5,
            CloseCode::Unauthorized => 6,
            CloseCode::TokenExpired => 7,
            CloseCode::ConnectTimeout => 8,
            CloseCode::SlowConsumer => 9,
            CloseCode::RateLimited => 10,
            CloseCode::HeartbeatTimeout => 11,
        }
    }
    const ERROR_VARIANTS: usize = 24;
    const CLOSE_VARIANTS: usize = 12;
    assert_eq!(ErrorCode::ALL.len(), ERROR_VARIANTS, "ErrorCode::ALL vs the variants listed in this test");
    assert_eq!(CloseCode::ALL.len(), CLOSE_VARIANTS, "CloseCode::ALL vs the variants listed in this test");
    for (i, c) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(error_index(*c), i, "ErrorCode::ALL[{i}] = {c:?} appears twice or out of order");
    }
    for (i, c) in CloseCode::ALL.iter().enumerate() {
        assert_eq!(close_index(*c), i, "CloseCode::ALL[{i}] = {c:?} appears twice or out of order");
    }
}
