//! Reading a large desired-state file a piece at a time.
//!
//! toml's parser holds a whole document at once as tokens, then events,
//! then a spanned tree: about fifty times the text in memory. A file of
//! 100,000 vdisks is cut instead at table headers into pieces of at least
//! [`PIECE_BYTES`]; each piece is parsed, decoded into the model and let go
//! before the next. Errors keep their places: spans are moved by where the
//! piece begins, and a validation finding is located by parsing the pieces
//! again, one at a time, until each finding is found.
//!
//! A cut must not change what the file means, so a file is cut only where
//! TOML's rules cannot reach across the cut: never between two headers of
//! one entry (`[domains.a.disks]`, `[domains.a.disks.xvda]`), not at all
//! when a key is set outside any table or a one-key header (`[vdisks]`)
//! comes after the first cut, and the pieces are read again whole when one
//! entry, `[settings]` or an unknown section turns up in two pieces, or a
//! section is not a table (TOML would call those duplicates, or report
//! them once). Files smaller than two pieces are read whole.

use std::collections::HashSet;
use std::ops::Range;

use toml::de::DeValue;
use toml_parser::Source;
use toml_parser::lexer::TokenKind;

use super::parse::{self, Document, Undecoded};
use super::validate::{self, Capacities};
use super::{Desired, Problem};

/// The least size of a piece: its parse holds about fifty times this.
const PIECE_BYTES: usize = 16 * 1024;

/// Where to cut `text`, as the byte ranges of its pieces; `None` when it
/// is read whole (see the module's doc).
pub fn cuts(text: &str) -> Option<Vec<Range<usize>>> {
    if text.len() < 2 * PIECE_BYTES {
        return None;
    }
    let mut starts = vec![0];
    let mut tokens = Source::new(text).lex().peekable();
    let mut depth = 0usize;
    let mut line_start = true;
    let mut line_begins = 0;
    let mut headers_seen = false;
    let mut last_entry: Option<(&str, &str)> = None;
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Newline => {
                line_start = true;
                line_begins = token.span().end();
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::LeftSquareBracket if line_start && depth == 0 => {
                headers_seen = true;
                let mut segments: Vec<&str> = Vec::new();
                for token in tokens.by_ref() {
                    match token.kind() {
                        TokenKind::RightSquareBracket | TokenKind::Newline | TokenKind::Eof => {
                            break;
                        }
                        TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => {
                            let span = token.span();
                            segments.push(text.get(span.start()..span.end()).unwrap_or(""));
                        }
                        _ => {}
                    }
                }
                match segments.as_slice() {
                    [section, name, ..] => {
                        let entry = (*section, *name);
                        let starts_entry = last_entry != Some(entry);
                        let piece = line_begins.saturating_sub(starts.last().copied().unwrap_or(0));
                        if starts_entry && piece >= PIECE_BYTES {
                            starts.push(line_begins);
                        }
                        last_entry = Some(entry);
                    }
                    _ if starts.len() > 1 => return None,
                    _ => last_entry = None,
                }
            }
            _ if line_start && depth == 0 && !headers_seen => return None,
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        line_start = false;
    }
    if starts.len() < 2 {
        return None;
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    Some(starts.iter().zip(ends).map(|(&s, e)| s..e).collect())
}

/// Reads the pieces of `text`, as [`super::from_str`] reads a whole file;
/// `None` when the pieces must be read whole after all.
pub fn read(
    text: &str,
    pieces: &[Range<usize>],
    capacities: &Capacities,
) -> Option<Result<Desired, Vec<Problem>>> {
    let mut desired = Desired::default();
    let mut undecoded = Undecoded::default();
    let mut seen = Seen::default();
    let mut syntax = Vec::new();
    let mut problems = Vec::new();
    for piece in pieces {
        let (document, errors) = parse::parse_document(text.get(piece.clone())?);
        syntax.extend(moved(errors, piece.start));
        let Some(document) = document else {
            continue;
        };
        if !syntax.is_empty() {
            continue; // only syntax errors are reported then, as for a whole file
        }
        if !seen.admit(&document, &desired, &undecoded) {
            return None;
        }
        let mut found = Vec::new();
        parse::decode_into(&document, &mut found, &mut desired, &mut undecoded);
        problems.extend(moved(found, piece.start));
    }
    if !syntax.is_empty() {
        return Some(Err(syntax));
    }
    let findings = validate::validate(&desired, capacities, &undecoded);
    let mut spans: Vec<Option<Range<usize>>> = vec![None; findings.len()];
    for piece in pieces {
        if spans.iter().all(Option::is_some) {
            break;
        }
        let Some(part) = text.get(piece.clone()) else {
            continue;
        };
        let (Some(document), _) = parse::parse_document(part) else {
            continue;
        };
        for (finding, span) in findings.iter().zip(&mut spans) {
            if span.is_none() {
                *span = parse::locate(&document, &finding.path, finding.point)
                    .map(|s| s.start + piece.start..s.end + piece.start);
            }
        }
    }
    for (finding, span) in findings.into_iter().zip(spans) {
        let mut problem = Problem::new(span, finding.message);
        problem.notes = finding.notes;
        problems.push(problem);
    }
    Some(if problems.is_empty() {
        Ok(desired)
    } else {
        Err(problems)
    })
}

/// Problems of a piece, placed in the whole file.
fn moved(problems: Vec<Problem>, by: usize) -> impl Iterator<Item = Problem> {
    problems.into_iter().map(move |mut problem| {
        problem.span = problem.span.map(|s| s.start + by..s.end + by);
        problem
    })
}

/// What earlier pieces declared, beyond what the model records.
#[derive(Default)]
struct Seen {
    settings: bool,
    unknown_sections: HashSet<String>,
    /// Domains whose entry was no table, which the model leaves out.
    odd_domains: HashSet<String>,
}

impl Seen {
    /// Whether a piece declares only what no earlier piece did, so that
    /// reading it alone means what reading the file whole would.
    fn admit(&mut self, document: &Document<'_>, desired: &Desired, undecoded: &Undecoded) -> bool {
        for (key, value) in document.get_ref().iter() {
            let section = key.get_ref().as_ref();
            let DeValue::Table(table) = value.get_ref() else {
                return false;
            };
            let mut names = table.keys().map(|name| name.get_ref().as_ref());
            let fresh = match section {
                "settings" => !std::mem::replace(&mut self.settings, true),
                "pools" => names.all(|name: &str| {
                    !desired.pools.contains_key(name) && !undecoded.pools.contains(name)
                }),
                "vdisks" => names.all(|name: &str| {
                    !desired.vdisks.contains_key(name) && !undecoded.vdisks.contains(name)
                }),
                "domains" => {
                    let fresh = names.all(|name: &str| {
                        !desired.domains.contains_key(name) && !self.odd_domains.contains(name)
                    });
                    self.odd_domains.extend(
                        table
                            .iter()
                            .filter(|(_, entry)| entry.get_ref().as_table().is_none())
                            .map(|(name, _)| name.get_ref().to_string()),
                    );
                    fresh
                }
                other => self.unknown_sections.insert(other.to_owned()),
            };
            if !fresh {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
