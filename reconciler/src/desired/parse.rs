//! TOML text to [`Desired`], collecting every problem instead of stopping at
//! the first.
//!
//! The document is parsed once into toml's spanned tree; each entry (the
//! settings, one pool, one vdisk, one disk of a domain) is then deserialised
//! on its own, so a mistake in one entry does not hide a mistake in another.
//! The same tree later turns a validation finding's key path into a span.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::model::{Desired, Domain};
use crate::diagnostic::Problem;

/// A step in a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Which part of a `key = value` line a finding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Key,
    Value,
}

pub type Document<'a> = Spanned<DeTable<'a>>;

const SECTIONS: &str = "`settings`, `pools`, `vdisks` or `domains`";

/// Parses the text; on syntax errors the document is `None`.
pub fn parse_document(text: &str) -> (Option<Document<'_>>, Vec<Problem>) {
    let (document, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        (Some(document), Vec::new())
    } else {
        // The parser recovers and goes on, but what it reports after the first
        // error on a line is mostly that error's echo: keep one per line.
        let mut lines_seen = BTreeSet::new();
        let problems = errors
            .into_iter()
            .filter(|e| {
                let start = e.span().map_or(0, |s| s.start).min(text.len());
                lines_seen.insert(text[..start].matches('\n').count())
            })
            .map(|e| {
                Problem::new(e.span(), format!("invalid TOML: {}", e.message()))
                    .with_note("see https://toml.io for the syntax")
            })
            .collect();
        (None, problems)
    }
}

/// Names of entries that are declared but could not be decoded: they exist
/// for the checks of references to them, which would otherwise add a false
/// "unknown vdisk" to the real problem.
#[derive(Debug, Default)]
pub struct Undecoded {
    pub pools: BTreeSet<String>,
    pub vdisks: BTreeSet<String>,
}

/// Builds the model from a parsed document, entry by entry.
pub fn decode(document: &Document<'_>, problems: &mut Vec<Problem>) -> (Desired, Undecoded) {
    let mut desired = Desired::default();
    let mut undecoded = Undecoded::default();
    decode_into(document, problems, &mut desired, &mut undecoded);
    (desired, undecoded)
}

/// Adds a parsed document's entries to a model: the whole file's, or
/// one piece's of a large file (see [`super::pieces`]).
pub fn decode_into(
    document: &Document<'_>,
    problems: &mut Vec<Problem>,
    desired: &mut Desired,
    undecoded: &mut Undecoded,
) {
    for (key, value) in document.get_ref().iter() {
        match key.get_ref().as_ref() {
            "settings" => {
                if let Some(settings) = decode_value(value, problems) {
                    desired.settings = settings;
                }
            }
            "pools" => desired.pools.extend(decode_entries(
                value,
                "pools",
                problems,
                &mut undecoded.pools,
            )),
            "vdisks" => desired.vdisks.extend(decode_entries(
                value,
                "vdisks",
                problems,
                &mut undecoded.vdisks,
            )),
            "domains" => desired.domains.extend(decode_domains(value, problems)),
            other => problems.push(
                Problem::new(Some(key.span()), format!("unknown section `{other}`"))
                    .with_note(format!("expected {SECTIONS}")),
            ),
        }
    }
}

fn decode_value<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let span = error.span().unwrap_or_else(|| value.span());
            problems.push(if holds_datetime_at(value, &span) {
                // TOML has a native datetime type, but expiries are strings
                // because they may also be "never" or "30d".
                Problem::new(Some(span), "found a TOML datetime, expected a string")
                    .with_note("write times as strings: expires = \"2027-01-31T00:00:00Z\"")
            } else {
                Problem::new(Some(span), error.message())
            });
            None
        }
    }
}

/// Whether the value at `span`, somewhere inside `value`, is a TOML datetime.
fn holds_datetime_at(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    if value.span() == *span && value.get_ref().is_datetime() {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(table) => table.values().any(|v| holds_datetime_at(v, span)),
        DeValue::Array(array) => array.iter().any(|v| holds_datetime_at(v, span)),
        _ => false,
    }
}

/// A table of named entries, each decoded separately.
fn decode_entries<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
    section: &str,
    problems: &mut Vec<Problem>,
    undecoded: &mut BTreeSet<String>,
) -> BTreeMap<String, T> {
    let mut entries = BTreeMap::new();
    let Some(table) = table_of(value, section, "NAME", problems) else {
        return entries;
    };
    for (name, entry) in table.iter() {
        match decode_value(entry, problems) {
            Some(decoded) => {
                entries.insert(name.get_ref().to_string(), decoded);
            }
            None => {
                undecoded.insert(name.get_ref().to_string());
            }
        }
    }
    entries
}

/// `[domains.NAME]` holds only `disks`; each disk is decoded separately.
fn decode_domains(
    value: &Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Domain> {
    let mut domains = BTreeMap::new();
    let Some(table) = table_of(value, "domains", "NAME.disks", problems) else {
        return domains;
    };
    for (name, entry) in table.iter() {
        let mut domain = Domain::default();
        let section = format!("domains.{}", name.get_ref());
        let Some(fields) = table_of(entry, &section, "disks", problems) else {
            continue;
        };
        for (field, disks) in fields.iter() {
            if field.get_ref() == "disks" {
                let section = format!("{section}.disks");
                domain.disks = decode_entries(disks, &section, problems, &mut BTreeSet::new());
            } else {
                problems.push(
                    Problem::new(Some(field.span()), format!("unknown field `{}`", field.get_ref()))
                        .with_note(format!(
                            "a domain has only `disks`: [domains.{}.disks] xvda = {{ source = \"...\", mode = \"w\" }}",
                            name.get_ref()
                        )),
                );
            }
        }
        domains.insert(name.get_ref().to_string(), domain);
    }
    domains
}

fn table_of<'v, 'i>(
    value: &'v Spanned<DeValue<'i>>,
    section: &str,
    sub_section: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'v DeTable<'i>> {
    let table = value.get_ref().as_table();
    if table.is_none() {
        problems.push(
            Problem::new(
                Some(value.span()),
                format!(
                    "`{section}` must be a table, found {}",
                    value.get_ref().type_str()
                ),
            )
            .with_note(format!("write it as [{section}.{sub_section}] sections")),
        );
    }
    table
}

/// The span of the key or value at `path`, if the document has it.
pub fn locate(document: &Document<'_>, path: &[Step], point: Point) -> Option<Range<usize>> {
    let (last, parents) = path.split_last()?;
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut table = document.get_ref();
    for step in parents {
        let next = match step {
            Step::Key(key) => table.get(key.as_str())?,
            Step::Index(index) => value?.get_ref().as_array()?.get(*index)?,
        };
        value = Some(next);
        if let Some(inner) = next.get_ref().as_table() {
            table = inner;
        }
    }
    match last {
        Step::Key(key) => {
            let (found_key, found_value) = table.get_key_value(key.as_str())?;
            Some(match point {
                Point::Key => found_key.span(),
                Point::Value => found_value.span(),
            })
        }
        Step::Index(index) => Some(value?.get_ref().as_array()?.get(*index)?.span()),
    }
}
