//! Seeds: reading and writing `xenstore-ls` dumps, as the real tool prints
//! them (xen's tools/xs-clients/xenstore_client.c, `do_ls` and
//! `sanitise_value`), so that a dump taken on a real host seeds the
//! simulator as it is.
//!
//! # The seed format
//!
//! One node a line, in either of the tool's two forms (one form a file):
//!
//! - the indented tree (`xenstore-ls`): `name = "value"`, one space of
//!   indentation per level below the root;
//! - full paths (`xenstore-ls -f`): `/path/to/name = "value"`.
//!
//! With `-p` each line ends with the node's permissions, `(n0,r1)`, after
//! padding (`. . .` in the indented form, spaces with `-f`); without them a
//! node takes its parent's. Values are escaped as the tool escapes them:
//! printable ASCII but `\` as is (a `"` too: the value runs to the last
//! quote of the line), `\t`, `\n`, `\r`, `\\`, `\NNN` in octal for bytes
//! below 8 and `\xNN` for the other bytes (older writers' `\f`, `\"` and
//! octal up to `\377` are read too). Blank lines are skipped.
//!
//! **Cut values.** xenstore-ls cuts lines to 80 columns when its output is
//! not a terminal, and to the terminal's width less 2 when it is, ending a
//! cut value with `\...` (there is no option to change the width; `-f`
//! lifts the limit, but only off a terminal). A cut value is kept, as the
//! part that was printed (a half-printed escape dropped), and recorded in
//! [`Seed::cuts`] with the width it was cut at, so that whoever needs it
//! can say so (see [`Seed::cuts_read_by_observation`]). In the indented
//! form the name is cut too when it reaches the width: a line whose value
//! is nothing but `\...` may name its node only in part. A value ending in
//! a backslash and three dots is taken as cut (a whole value `…\...` is
//! printed so, but so is a cut one). A line `name:` is a node the tool
//! could not read (it vanished while it was listed, or access was
//! refused): kept, empty, and recorded as such.
//!
//! Anything else is an error located at its line and column, saying what
//! the tool would have printed and what to do ([`DumpError`]). No input
//! makes the parser panic (a property test feeds it arbitrary text).
//!
//! The writer prints the `-f -p` form byte for byte as `xenstore-ls -f -p`
//! does into a file, and a cut value as the tool would have cut it, so
//! that a seed written by `xendisk capture` reads back to the same nodes and
//! the same cuts.

mod parse;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::fmt;

pub use parse::{parse, parse_bytes, parse_seed};
pub use write::{escape, write_full_paths, write_seed};

use super::store::Store;

/// What xenstore-ls printed but could not print whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The line of the dump it was read from (1-based).
    pub line: usize,
    /// What the store holds for it: the part of the value that was printed.
    pub kept: Vec<u8>,
    pub kind: CutKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// The value was cut at this many columns.
    Value { width: usize },
    /// Its value was cut to nothing: in the indented form the name reached
    /// the width, and names are cut there too, so the node may be named
    /// only in part.
    Name,
    /// The tool could not read the value (`name:`).
    Unreadable,
}

/// A dump read: the store it describes and what it could not give whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seed {
    pub store: Store,
    /// By path.
    pub cuts: BTreeMap<String, Cut>,
}

impl Seed {
    /// The cuts that still hold in `store` (this seed's store after a run):
    /// a node written since holds a value of its own, not the cut one.
    pub fn cuts_still_in(&self, store: &Store) -> BTreeMap<String, Cut> {
        self.cuts
            .iter()
            .filter(|(path, cut)| store.read(path).is_ok_and(|value| value == cut.kept))
            .map(|(path, cut)| (path.clone(), cut.clone()))
            .collect()
    }

    /// The cuts observation would read (a domain's name, an attachment's
    /// backend leaves), and every cut name (the tree itself is then
    /// uncertain there).
    pub fn cuts_read_by_observation(cuts: &BTreeMap<String, Cut>) -> Vec<(&String, &Cut)> {
        cuts.iter()
            .filter(|(path, cut)| cut.kind == CutKind::Name || crate::observe::reads_value(path))
            .collect()
    }
}

impl Cut {
    /// A sentence for a warning: what was cut, where, and how to dump it whole.
    pub fn describe(&self, path: &str, file: &str) -> String {
        let dump_again = "dump the host again with `xenstore-ls -f -p > xenstore.xs` \
                          (into a file: on a terminal xenstore-ls cuts lines even with -f; \
                          it has no option to change the width) or with `xendisk capture`";
        match self.kind {
            CutKind::Value { width } => format!(
                "xenstore value {path} was truncated in the seed dump ({file}:{}: xenstore-ls cut it \
                 at {width} columns); the simulator serves the {} bytes it printed; {dump_again}",
                self.line,
                self.kept.len()
            ),
            CutKind::Name => format!(
                "xenstore node {path} may be named only in part in the seed dump ({file}:{}: \
                 its value was cut to nothing, so its name reached the width, where xenstore-ls \
                 cuts names too); {dump_again}",
                self.line
            ),
            CutKind::Unreadable => format!(
                "xenstore value {path} was not in the seed dump ({file}:{}: xenstore-ls could not \
                 read it, `name:`); the simulator serves it empty; {dump_again}",
                self.line
            ),
        }
    }
}

/// A line of a dump that could not be read: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct DumpError {
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl DumpError {
    /// The error in a named file, as `FILE:LINE:COLUMN: ...`.
    pub fn in_file(self, file: impl fmt::Display) -> SeedError {
        SeedError {
            file: file.to_string(),
            error: self,
        }
    }
}

/// A [`DumpError`] in a named file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{file}:{line}:{column}: {message}\n  = help: {hint}",
    line = error.line,
    column = error.column,
    message = error.message,
    hint = error.hint
)]
pub struct SeedError {
    pub file: String,
    pub error: DumpError,
}

/// Reads a seed file (any bytes: an error is located, never a panic).
pub fn load(path: &std::path::Path) -> anyhow::Result<Seed> {
    use anyhow::Context;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the seed dump {}", path.display()))?;
    parse_bytes(&bytes).map_err(|e| e.in_file(path.display()).into())
}
