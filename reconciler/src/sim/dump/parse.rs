//! Reading a dump, line by line (see the module above for the format).

use std::borrow::Cow;
use std::collections::HashMap;

use super::{Cut, CutKind, DumpError, Seed};
use crate::sim::store::{Errno, Store, elements};

/// Columns of ` = "` and `\..."` around a cut value (xenstore-ls's TAG).
const TAG_WIDTH: usize = 8;

/// Where xenstore-ls cuts when its output is not a terminal.
const OFF_TERMINAL_WIDTH: usize = 80;

/// Largest value xenstored holds (XENSTORE_PAYLOAD_MAX).
const VALUE_MAX: usize = 4096;

const REDUMP: &str = "dump the host again with `xenstore-ls -f -p > xenstore.xs` (into a file: \
                      on a terminal it cuts long lines) or `xendisk capture DIR`, and do not \
                      edit the dump by hand";

/// Builds a store from a dump in either form, dropping what it says of cuts.
pub fn parse(text: &str) -> Result<Store, DumpError> {
    parse_seed(text).map(|seed| seed.store)
}

/// Reads a dump given as bytes: text that is not UTF-8 is an error at its
/// first bad byte.
pub fn parse_bytes(bytes: &[u8]) -> Result<Seed, DumpError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_seed(text),
        Err(error) => {
            let good = &bytes[..error.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            Err(DumpError {
                line,
                column,
                message: format!(
                    "byte 0x{:02x} is not UTF-8 text",
                    bytes[error.valid_up_to()]
                ),
                hint: format!(
                    "xenstore-ls escapes every byte outside printable ASCII (\\xNN), so this \
                     is not its output as it printed it; {REDUMP}"
                ),
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Tree,
    Full,
}

impl Form {
    fn describe(self) -> &'static str {
        match self {
            Form::Tree => "the indented form (`xenstore-ls`)",
            Form::Full => "the full-path form (`xenstore-ls -f`)",
        }
    }
}

/// Where a problem is, as a byte offset into its line.
struct Problem {
    at: usize,
    message: String,
    hint: String,
}

fn problem(at: usize, message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        at,
        message: message.into(),
        hint: hint.into(),
    }
}

/// The reader's state between lines.
#[derive(Default)]
struct Reader<'a> {
    seed: Seed,
    /// The form of the first node, and its line.
    form: Option<(Form, usize)>,
    /// Names of the current node's ancestors, by depth (indented form).
    stack: Vec<String>,
    /// Every path read, with its line.
    seen: HashMap<Cow<'a, str>, usize>,
    /// The last node, when it was a `name:` line (its permissions may
    /// follow on a line of their own).
    unreadable: Option<String>,
    /// Values that end in `\\...`: whole, or cut after a backslash, with
    /// the width the cut would have been at.
    maybe_cut: Vec<(String, Cut, usize)>,
    /// Some node's permissions say more than "dom0's alone": the dump was
    /// made with `-p`.
    recorded: bool,
}

/// Builds a store from a dump in either form, keeping what was cut.
pub fn parse_seed(text: &str) -> Result<Seed, DumpError> {
    let mut reader = Reader::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        reader.line(line, number).map_err(|p| DumpError {
            line: number,
            column: column(line, p.at),
            message: p.message,
            hint: p.hint,
        })?;
    }
    let recorded = reader.recorded;
    let mut seed = reader.finish();
    // A dump made without `-p` did not write permissions down: a host's
    // are assumed, so that the simulated guests can use their disks.
    if !recorded {
        crate::sim::perms::assume_as_on_a_xen_host(&mut seed.store);
    }
    Ok(seed)
}

/// The 1-based column of a byte offset (clamped to the line, and to a
/// character boundary).
fn column(line: &str, at: usize) -> usize {
    let mut at = at.min(line.len());
    while !line.is_char_boundary(at) {
        at -= 1;
    }
    line[..at].chars().count() + 1
}

impl<'a> Reader<'a> {
    /// A value that may be whole or cut is cut if the cut would be at the
    /// width of the dump's other cuts, or, in the indented form, at 80
    /// (off a terminal; `-f` cuts nothing there).
    fn finish(mut self) -> Seed {
        let mut widths: Vec<usize> = Vec::new();
        if matches!(self.form, Some((Form::Tree, _))) {
            widths.push(OFF_TERMINAL_WIDTH);
        }
        widths.extend(self.seed.cuts.values().filter_map(|cut| match cut.kind {
            CutKind::Value { width } => Some(width),
            _ => None,
        }));
        for (path, cut, width) in std::mem::take(&mut self.maybe_cut) {
            if widths.contains(&width) && self.seed.store.write(&path, &cut.kept).is_ok() {
                self.seed.cuts.insert(path, cut);
            }
        }
        self.seed
    }

    fn line(&mut self, line: &'a str, number: usize) -> Result<(), Problem> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = &line[indent..];
        // `name:` then, with -p, its permissions alone on the next line.
        if indent > 0 && body.starts_with('(') {
            let Some(path) = self.unreadable.take() else {
                return Err(problem(
                    indent,
                    "permissions on a line of their own, not after a node that could not be read",
                    format!(
                        "xenstore-ls -p prints permissions alone only after a `name:` line; {REDUMP}"
                    ),
                ));
            };
            let perms = perms(body, indent)?;
            return self.set_perms(&path, perms, indent);
        }
        self.unreadable = None;
        let form = if body.starts_with('/') {
            if indent > 0 {
                return Err(problem(
                    0,
                    "a full path after spaces",
                    format!("in `xenstore-ls -f` output every line starts with its path; {REDUMP}"),
                ));
            }
            Form::Full
        } else {
            Form::Tree
        };
        match self.form {
            None => self.form = Some((form, number)),
            Some((first, first_line)) if first != form => {
                return Err(problem(
                    indent,
                    format!(
                        "this line is in {}, but the dump began in {} at line {first_line}",
                        form.describe(),
                        first.describe()
                    ),
                    format!("a seed is the output of one xenstore-ls run: {REDUMP}"),
                ));
            }
            Some(_) => {}
        }

        let (name_end, rest) = match line.find(" = \"") {
            Some(at) => (at, Some(&line[at + 4..])),
            None => match line.trim_end().strip_suffix(':') {
                Some(name) if !name.trim().contains(' ') => (name.len(), None),
                _ => {
                    let at = line[indent..].find(' ').map_or(line.len(), |i| indent + i);
                    return Err(problem(
                        at,
                        "expected `NAME = \"VALUE\"` (or `NAME:` for a node xenstore-ls could not read)",
                        format!(
                            "every line of a dump is one node, its value in double quotes; {REDUMP}"
                        ),
                    ));
                }
            },
        };
        let name = &line[indent..name_end];
        check_name(name, form).map_err(|(at, message)| {
            problem(
                indent + at,
                message,
                "xenstore names are letters, digits and `-_@`, paths absolute with one `/` \
                 between names",
            )
        })?;
        let path: Cow<'a, str> = match form {
            Form::Full => Cow::Borrowed(name),
            Form::Tree => {
                if indent > self.stack.len() {
                    return Err(problem(
                        0,
                        format!(
                            "indented {indent} spaces, but the node above is only {} deep",
                            self.stack.len()
                        ),
                        format!(
                            "xenstore-ls indents each level by one space below its parent; \
                             {REDUMP}"
                        ),
                    ));
                }
                self.stack.truncate(indent);
                self.stack.push(name.to_owned());
                Cow::Owned(format!("/{}", self.stack.join("/")))
            }
        };
        if let Some(first) = self.seen.insert(path.clone(), number) {
            return Err(problem(
                indent,
                format!("`{path}` is listed twice (first at line {first})"),
                format!("xenstore-ls lists each node once (are two dumps put together?): {REDUMP}"),
            ));
        }

        let Some(rest) = rest else {
            self.write(&path, &[], indent)?;
            self.seed.cuts.insert(
                path.to_string(),
                Cut {
                    line: number,
                    kept: Vec::new(),
                    kind: CutKind::Unreadable,
                },
            );
            self.unreadable = Some(path.into_owned());
            return Ok(());
        };
        let value_at = name_end + 4;
        let Some(close) = rest.rfind('"') else {
            return Err(problem(
                line.len(),
                format!("the value of `{path}` has no closing quote"),
                format!(
                    "a value runs to the last `\"` of its line (xenstore-ls writes a newline \
                     in a value as \\n); {REDUMP}"
                ),
            ));
        };
        let tail_at = value_at + close + 1;
        let perms = tail_perms(&rest[close + 1..], tail_at)?;
        let value = unescape(&rest[..close]).map_err(|(at, message)| {
            problem(
                value_at + at,
                format!("in the value of `{path}`: {message}"),
                format!(
                    "xenstore-ls writes printable ASCII as is, and \\t, \\n, \\r, \\\\, \\NNN \
                     (octal, bytes below 8) and \\xNN for the other bytes; {REDUMP}"
                ),
            )
        })?;
        if value.bytes.len() > VALUE_MAX {
            return Err(problem(
                value_at,
                format!(
                    "the value of `{path}` is {} bytes long; xenstored holds at most {VALUE_MAX}",
                    value.bytes.len()
                ),
                REDUMP,
            ));
        }
        if let Some(printed) = value.cut_after {
            // xenstore-ls counts the indentation and the name (not a -f path).
            let before = match form {
                Form::Tree => indent + name.chars().count(),
                Form::Full => 0,
            };
            let width = TAG_WIDTH + before + printed;
            let kind = if printed == 0 {
                CutKind::Name
            } else {
                CutKind::Value { width }
            };
            let cut = Cut {
                line: number,
                kept: value.bytes,
                kind,
            };
            match value.whole {
                Some(whole) => {
                    self.write(&path, &whole, indent)?;
                    self.maybe_cut.push((path.to_string(), cut, width));
                }
                None => {
                    self.write(&path, &cut.kept, indent)?;
                    self.seed.cuts.insert(path.to_string(), cut);
                }
            }
        } else if let Some((perms, at)) = perms {
            // The usual line of a `-p` dump: the node and its permissions
            // in one walk of the store.
            self.recorded |= perms != ["n0"];
            return self
                .seed
                .store
                .write_with_perms(&path, &value.bytes, perms)
                .map_err(|e| match e {
                    Errno::Einval if elements(&path).is_ok() => {
                        problem(at, format!("invalid permissions ({e})"), REDUMP)
                    }
                    _ => problem(
                        indent,
                        format!("`{path}` is not a valid xenstore path ({e})"),
                        "xenstore paths are at most 3072 characters",
                    ),
                });
        } else {
            self.write(&path, &value.bytes, indent)?;
        }
        if let Some((perms, at)) = perms {
            self.set_perms(&path, perms, at)?;
        }
        Ok(())
    }

    fn write(&mut self, path: &str, value: &[u8], at: usize) -> Result<(), Problem> {
        self.seed.store.write(path, value).map_err(|e| {
            problem(
                at,
                format!("`{path}` is not a valid xenstore path ({e})"),
                "xenstore paths are at most 3072 characters",
            )
        })
    }

    fn set_perms(&mut self, path: &str, perms: Vec<String>, at: usize) -> Result<(), Problem> {
        self.recorded |= perms != ["n0"];
        self.seed
            .store
            .set_perms(path, perms)
            .map_err(|e: Errno| problem(at, format!("invalid permissions ({e})"), REDUMP))
    }
}

/// A name in the indented form, a path in the `-f` form: the offset of
/// what is wrong with it.
fn check_name(name: &str, form: Form) -> Result<(), (usize, String)> {
    if name.is_empty() {
        return Err((0, "a node without a name".to_owned()));
    }
    if name == "/" {
        return Err((
            0,
            "the root itself, which xenstore-ls does not list".to_owned(),
        ));
    }
    for (at, c) in name.char_indices() {
        let slash_ok = form == Form::Full;
        let fine = c.is_ascii_alphanumeric() || "-_@".contains(c) || (c == '/' && slash_ok);
        if !fine {
            let what = match c {
                '/' => "`/` inside a name (the indented form names one node a line)".to_owned(),
                c if c.is_whitespace() => format!("{c:?} in a name"),
                c => format!("`{c}` cannot be in a xenstore name"),
            };
            return Err((at, what));
        }
        if c == '/' && (name[at + 1..].starts_with('/') || at + 1 == name.len()) {
            return Err((
                at,
                "an empty name between slashes, or after the last".to_owned(),
            ));
        }
    }
    Ok(())
}

/// What follows a value's closing quote: nothing, or padding (` . . .`
/// or spaces) then `(perms)`. Returns the permissions and their offset.
#[allow(clippy::type_complexity)]
fn tail_perms(tail: &str, at: usize) -> Result<Option<(Vec<String>, usize)>, Problem> {
    let list = tail.trim_start_matches([' ', '.']);
    let list_at = at + tail.len() - list.len();
    let list = list.trim_end();
    if list.is_empty() {
        return Ok(None); // (with -p, xenstore-ls leaves the padding when it cannot read them)
    }
    if !list.starts_with('(') {
        return Err(problem(
            list_at,
            format!("unexpected `{list}` after the value's closing quote"),
            format!(
                "after a value xenstore-ls -p prints only padding and `(PERMISSIONS)`; {REDUMP}"
            ),
        ));
    }
    perms(list, list_at).map(|p| Some((p, list_at)))
}

/// `(n0,r1,...)`.
fn perms(text: &str, at: usize) -> Result<Vec<String>, Problem> {
    let hint = "xenstore-ls -p prints permissions as (OWNER,ENTRY...): each a letter n (none), \
                r (read), w (write) or b (both) then a domain id, the first naming the owner";
    let Some(inner) = text
        .trim_end()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
    else {
        return Err(problem(
            at,
            format!("`{text}` is not `(PERMISSIONS)`"),
            hint,
        ));
    };
    let mut out = Vec::new();
    let mut offset = at + 1;
    for entry in inner.split(',') {
        let mut chars = entry.chars();
        let valid = matches!(chars.next(), Some('n' | 'r' | 'w' | 'b'))
            && !chars.as_str().is_empty()
            && chars.as_str().bytes().all(|b| b.is_ascii_digit())
            && chars.as_str().parse::<u32>().is_ok();
        if !valid {
            return Err(problem(
                offset,
                format!("`{entry}` is not a permission"),
                hint,
            ));
        }
        out.push(entry.to_owned());
        offset += entry.len() + 1;
    }
    Ok(out)
}

/// A value read back: its bytes, and, if xenstore-ls cut it, how many
/// characters it printed before `\...`.
struct Value {
    bytes: Vec<u8>,
    cut_after: Option<usize>,
    /// When the text ends in `\\...`, the value may also be whole (an
    /// escaped backslash, then three dots): these are its bytes then.
    whole: Option<Vec<u8>>,
}

/// Undoes xenstore-ls's escaping; a value ending in `\...` was cut, and
/// an escape the cut fell into is dropped. Errors give a byte offset.
fn unescape(text: &str) -> Result<Value, (usize, String)> {
    let Some(printed) = text.strip_suffix("\\...") else {
        return Ok(Value {
            bytes: decode(text, false)?,
            cut_after: None,
            whole: None,
        });
    };
    let cut_after = Some(printed.chars().count());
    // Backslashes before the mark's own: an odd count leaves it unescaped.
    let before = printed.len() - printed.trim_end_matches('\\').len();
    if before % 2 == 0 {
        return Ok(Value {
            bytes: decode(printed, true)?,
            cut_after,
            whole: None,
        });
    }
    let whole = decode(text, false)?;
    Ok(match decode(printed, true) {
        Ok(bytes) => Value {
            bytes,
            cut_after,
            whole: Some(whole),
        },
        Err(_) => Value {
            bytes: whole,
            cut_after: None,
            whole: None,
        },
    })
}

fn decode(text: &str, cut: bool) -> Result<Vec<u8>, (usize, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let start = i;
        let Some(&kind) = bytes.get(i + 1) else {
            if cut {
                break; // the cut fell after the backslash
            }
            return Err((start, "a lone backslash at the end".to_owned()));
        };
        match kind {
            b't' | b'n' | b'r' | b'\\' | b'f' | b'"' => {
                out.push(match kind {
                    b't' => b'\t',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'f' => 0x0c,
                    other => other,
                });
                i += 2;
            }
            b'x' => {
                let digits = &bytes[i + 2..bytes.len().min(i + 4)];
                let hex = digits.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                if hex == 2 {
                    let text = std::str::from_utf8(digits).unwrap_or("00");
                    out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                    i += 4;
                } else if cut && i + 2 + hex == bytes.len() {
                    break;
                } else {
                    return Err((
                        start,
                        "`\\x` must be followed by two hexadecimal digits".into(),
                    ));
                }
            }
            b'0'..=b'7' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(*b))
                    .count();
                if cut && digits < 3 && i + 1 + digits == bytes.len() {
                    break;
                }
                let value = bytes[i + 1..i + 1 + digits]
                    .iter()
                    .fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                let byte = u8::try_from(value)
                    .map_err(|_| (start, format!("octal escape \\{value:o} is above \\377")))?;
                out.push(byte);
                i += 1 + digits;
            }
            _ => {
                let shown: String = text[i + 1..].chars().next().into_iter().collect();
                return Err((start, format!("unknown escape `\\{shown}`")));
            }
        }
    }
    Ok(out)
}
