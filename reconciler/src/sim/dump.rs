//! Reading and writing `xenstore-ls` dumps, in the two forms operators paste:
//! the indented tree (`xenstore-ls`, one space per level) and full paths
//! (`xenstore-ls -f`), each line `name = "value"`, optionally followed by
//! permissions in parentheses (`-p`). Values are escaped as xenstore-ls
//! escapes them: `\t \n \r \f \\` and octal `\NNN` for other bytes.

use super::store::{Errno, Store};

/// A line that could not be read, with its number and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DumpError {
    pub line: usize,
    pub message: String,
}

/// Builds a store from a dump in either form (they may not be mixed).
pub fn parse(text: &str) -> Result<Store, DumpError> {
    let mut store = Store::default();
    // Names of the current node's ancestors, by depth, for the indented form.
    let mut stack: Vec<String> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |message: String| DumpError {
            line: line_number,
            message,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let (key, value, perms) = split_line(raw).map_err(&error)?;
        let path = if key.starts_with('/') {
            key.to_owned()
        } else {
            let depth = key.len() - key.trim_start_matches(' ').len();
            if depth > stack.len() {
                return Err(error(format!(
                    "indented {depth} spaces but the previous node is only {} deep",
                    stack.len()
                )));
            }
            stack.truncate(depth);
            stack.push(key.trim_start().to_owned());
            format!("/{}", stack.join("/"))
        };
        store
            .write(&path, &value)
            .map_err(|e| error(format!("`{path}` is not a valid xenstore path ({e})")))?;
        if let Some(perms) = perms {
            store
                .set_perms(&path, perms)
                .map_err(|e: Errno| error(format!("invalid permissions ({e})")))?;
        }
    }
    Ok(store)
}

/// One dump line: the name or path as written, the value, the permissions.
type Line<'a> = (&'a str, Vec<u8>, Option<Vec<String>>);

/// `name = "value"` with an optional `(perms)` after the value.
fn split_line(line: &str) -> Result<Line<'_>, String> {
    let Some((key, rest)) = line.split_once(" = \"") else {
        return Err(format!("expected `name = \"value\"`, found `{line}`"));
    };
    let Some(end) = rest.rfind('"') else {
        return Err(format!(
            "the value of `{}` has no closing quote",
            key.trim()
        ));
    };
    let value =
        unescape(&rest[..end]).map_err(|e| format!("the value of `{}`: {e}", key.trim()))?;
    let tail = rest[end + 1..].trim().trim_start_matches(['.', ' ']);
    let perms = match tail.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(list) => Some(list.split(',').map(|p| p.trim().to_owned()).collect()),
        None if tail.is_empty() => None,
        None => {
            return Err(format!(
                "unexpected `{tail}` after the value of `{}`",
                key.trim()
            ));
        }
    };
    Ok((key.trim_end(), value, perms))
}

fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let next = *bytes.get(i + 1).ok_or("a lone backslash at the end")?;
        i += 2;
        out.push(match next {
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            b'f' => 0x0c,
            b'\\' => b'\\',
            b'"' => b'"',
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match bytes.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                u8::try_from(value).map_err(|_| format!("octal escape \\{value:o} is above 255"))?
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        });
    }
    Ok(out)
}

fn escape(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        match b {
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            0x0c => out.push_str("\\f"),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

/// The store in the `-f` form, one node a line.
pub fn write_full_paths(store: &Store) -> String {
    let mut out = String::new();
    for (path, value) in store.entries() {
        out.push_str(&format!("{path} = \"{}\"\n", escape(&value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_give_the_same_store() {
        let tree = "local = \"\"\n domain = \"\"\n  0 = \"\"\n   name = \"Domain-0\"\n  3 = \"\"\n   name = \"web \\\"01\\\"\\t\\101\"\nvm = \"\"\n";
        let full = "/local = \"\"\n/local/domain = \"\"\n/local/domain/0 = \"\"\n/local/domain/0/name = \"Domain-0\"\n/local/domain/3 = \"\"\n/local/domain/3/name = \"web \\\"01\\\"\\tA\"\n/vm = \"\"\n";
        let from_tree = parse(tree).unwrap();
        assert_eq!(from_tree, parse(full).unwrap());
        assert_eq!(
            from_tree.read("/local/domain/3/name").unwrap(),
            b"web \"01\"\tA"
        );
        assert_eq!(parse(&write_full_paths(&from_tree)).unwrap(), from_tree);
    }

    #[test]
    fn permissions_after_the_value_are_kept() {
        let store = parse("/local/domain/3/name = \"web\" . . . . (n0,r3)\n").unwrap();
        assert_eq!(
            store.get_perms("/local/domain/3/name").unwrap(),
            ["n0", "r3"]
        );
    }

    #[test]
    fn bad_lines_are_located() {
        let error = parse("a = \"\"\n   b = \"\"\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(
            parse("/a/b \"x\"\n")
                .unwrap_err()
                .message
                .contains("expected")
        );
        assert!(
            parse("/a.b = \"x\"\n")
                .unwrap_err()
                .message
                .contains("not a valid xenstore path")
        );
    }
}
