//! Writing a store as `xenstore-ls -f` (and `-f -p`) prints it into a file.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Cut, CutKind};
use crate::sim::store::Store;

/// A value as xenstore-ls prints it (`sanitise_value`): printable ASCII
/// but `\` as is, `\t \n \r \\`, `\NNN` below 8 and `\xNN` otherwise.
pub fn escape(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        match b {
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(b as char),
            0..=7 => {
                let _ = write!(out, "\\{b:03o}");
            }
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// The store as `xenstore-ls -f > FILE` prints it, one node a line.
pub fn write_full_paths(store: &Store) -> String {
    let mut out = String::new();
    for (path, value) in store.entries() {
        let _ = writeln!(out, "{path} = \"{}\"", escape(&value));
    }
    out
}

/// The store as `xenstore-ls -f -p > FILE` prints it, permissions after
/// each value, with `cuts` written as xenstore-ls writes what it cut (a
/// cut value ends in `\...`, an unreadable node is `path:`), so that they
/// read back as the same cuts.
pub fn write_seed(store: &Store, cuts: &BTreeMap<String, Cut>) -> String {
    let mut out = String::new();
    store.visit(|path, value, perms| {
        let perms = perms.join(",");
        match cuts.get(path).filter(|cut| cut.kept == value) {
            Some(Cut {
                kind: CutKind::Unreadable,
                ..
            }) => {
                let _ = writeln!(out, "{path}:\n  ({perms})");
            }
            Some(_) => {
                let _ = writeln!(out, "{path} = \"{}\\...\"  ({perms})", escape(value));
            }
            None => {
                let _ = writeln!(out, "{path} = \"{}\"   ({perms})", escape(value));
            }
        }
    });
    out
}
