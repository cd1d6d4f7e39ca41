//! Loading the text of `sqlite .dump` as data, never as code.
//!
//! The ancestor's database is SQLite 2, which SQLite 3 cannot open, so it
//! reaches xendisk as the SQL text the ancestor's own `.dump` writes. Run as
//! SQL, that text would run whatever else it holds, as root: an `ATTACH` of
//! the live state DB, a trigger, a `PRAGMA`. So the text is loaded one
//! statement at a time into a private in-memory database that nothing else
//! can reach, behind three gates, each enough on its own for what it checks:
//!
//! 1. A scanner that knows SQL's quotes and comments cuts the text into
//!    statements and remembers the line each starts on, so nothing hides
//!    behind a `;` in a string or a comment, or after another statement on
//!    the same line.
//! 2. Each statement's leading keywords must be `CREATE TABLE` or
//!    `INSERT INTO`; `BEGIN` and `COMMIT` (which `.dump` writes around the
//!    rest) are allowed and skipped, as a scratch database needs no
//!    transaction. Anything else is refused before SQLite sees it.
//! 3. The statement is prepared alone (SQLite refuses a second one after
//!    it) under SQLite's authorizer, which allows only what that kind of
//!    statement does to the ancestor's three tables in the scratch
//!    database's own schema: no other table, database, function, read,
//!    trigger or view. It must also have seen the statement do that, or the
//!    statement is refused: some (`VACUUM`) ask the authorizer nothing.
//!
//! Only then does the statement run. Reading the loaded tables afterwards
//! goes through the authorizer too ([`restrict_to_reading`]), for a SQLite 3
//! file as much as for a dump: a view or trigger in place of a table is
//! refused, not run.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// The ancestor's tables: all a dump may create or fill, and all an import
/// reads.
pub(super) const TABLES: [&str; 3] = ["vdisks", "vdisk_extents", "vdisk_part"];

/// Longest statement text quoted in a message, in characters.
const QUOTE_CHARS: usize = 100;

/// Why a dump was not loaded, at which statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DumpError {
    /// 1-based line the statement starts on.
    pub line: usize,
    /// The statement, whitespace folded, shortened for a message.
    pub statement: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Problem {
    /// Not the ancestor's: the reason, for the operator.
    Refused(String),
    /// One of the allowed kinds, but SQLite could not run it.
    Failed(String),
}

/// One statement of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece<'a> {
    pub line: usize,
    pub text: &'a str,
}

/// What a statement may do, judged from its leading keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CreateTable,
    Insert,
    /// `BEGIN` or `COMMIT`: allowed, not run.
    Transaction,
}

/// What the authorizer is letting through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Load(Kind),
    Read,
}

/// Shared between the loop below and the authorizer callback.
#[derive(Debug)]
struct Gate {
    mode: Mode,
    /// The statement did what its kind is for (created or filled a table).
    did_its_job: bool,
    /// The table the statement creates, once the authorizer has seen it.
    creates: Option<String>,
    /// The first action refused, described.
    refused: Option<String>,
}

/// Loads the dump `text` into a new in-memory database and returns it,
/// restricted to reading the ancestor's tables; or the first statement that
/// is not the ancestor's or does not run.
pub(super) fn load(text: &str) -> Result<Connection, DumpError> {
    let setup = |e: rusqlite::Error| DumpError {
        line: 1,
        statement: String::new(),
        problem: Problem::Failed(format!("cannot set up a scratch database: {e}")),
    };
    let mut connection = Connection::open_in_memory().map_err(setup)?;
    harden(&connection).map_err(setup)?;
    let gate = install(&mut connection, Mode::Load(Kind::Insert)).map_err(setup)?;
    for piece in statements(text) {
        let error = |problem| DumpError {
            line: piece.line,
            statement: quote(piece.text),
            problem,
        };
        let kind = classify(piece.text).map_err(|why| error(Problem::Refused(why)))?;
        if kind == Kind::Transaction {
            continue;
        }
        {
            let mut gate = lock(&gate);
            gate.mode = Mode::Load(kind);
            gate.did_its_job = false;
            gate.creates = None;
            gate.refused = None;
        }
        let refused = || lock(&gate).refused.clone();
        let mut statement = match connection.prepare(piece.text) {
            Ok(statement) => statement,
            Err(e) => {
                return Err(error(match refused() {
                    Some(why) => Problem::Refused(why),
                    None => Problem::Failed(e.to_string()),
                }));
            }
        };
        if !lock(&gate).did_its_job {
            return Err(error(Problem::Refused(
                "it neither creates nor fills one of the ancestor's tables".to_owned(),
            )));
        }
        if let Err(e) = statement.raw_execute() {
            return Err(error(match refused() {
                Some(why) => Problem::Refused(why),
                None => Problem::Failed(e.to_string()),
            }));
        }
    }
    lock(&gate).mode = Mode::Read;
    Ok(connection)
}

/// Restricts an open legacy database to reading the ancestor's tables, as
/// [`load`] leaves a dump's.
pub(super) fn restrict_to_reading(connection: &mut Connection) -> rusqlite::Result<()> {
    harden(connection)?;
    install(connection, Mode::Read).map(|_| ())
}

/// Switches off what no legacy database needs, each a second lock behind
/// the authorizer: triggers and views do not run, and the schema cannot be
/// written as data.
fn harden(connection: &Connection) -> rusqlite::Result<()> {
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    Ok(())
}

fn install(connection: &mut Connection, mode: Mode) -> rusqlite::Result<Arc<Mutex<Gate>>> {
    let gate = Arc::new(Mutex::new(Gate {
        mode,
        did_its_job: false,
        creates: None,
        refused: None,
    }));
    let shared = Arc::clone(&gate);
    connection.authorizer(Some(move |context: AuthContext<'_>| {
        let mut gate = lock(&shared);
        match judge(gate.mode, gate.creates.as_deref(), &context) {
            Verdict::Job => {
                gate.did_its_job = true;
                if let AuthAction::CreateTable { table_name } = context.action {
                    gate.creates = Some(table_name.to_owned());
                }
                Authorization::Allow
            }
            Verdict::Allow => Authorization::Allow,
            Verdict::Refuse(why) => {
                gate.refused.get_or_insert(why);
                Authorization::Deny
            }
        }
    }))?;
    Ok(gate)
}

/// A panic elsewhere while holding the lock leaves nothing half-changed
/// that matters here: every statement resets the gate first.
fn lock(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    gate.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Verdict {
    /// The action the statement's kind exists for.
    Job,
    Allow,
    Refuse(String),
}

fn ancestors(table: &str) -> bool {
    TABLES.iter().any(|t| t.eq_ignore_ascii_case(table))
}

/// The authorizer's decision, for a statement that `creates` a table (once
/// seen) or not: everything not listed is refused.
fn judge(mode: Mode, creates: Option<&str>, context: &AuthContext<'_>) -> Verdict {
    if let Some(accessor) = context.accessor {
        return Verdict::Refuse(format!("it acts through the trigger or view `{accessor}`"));
    }
    let main = context.database_name == Some("main");
    let schema_or_new = |table: &str| {
        table.eq_ignore_ascii_case("sqlite_master")
            || creates.is_some_and(|new| new.eq_ignore_ascii_case(table))
    };
    match (mode, context.action) {
        // Creating a table records it in the schema table (a row inserted,
        // then filled in by its rowid): part of the job. So is the index
        // SQLite makes itself for a PRIMARY KEY or UNIQUE column.
        (
            Mode::Load(Kind::CreateTable),
            AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Read { table_name, .. },
        ) if main && schema_or_new(table_name) => Verdict::Allow,
        (
            Mode::Load(Kind::CreateTable),
            AuthAction::CreateIndex {
                index_name,
                table_name,
            },
        ) if main && index_name.starts_with("sqlite_autoindex_") && schema_or_new(table_name) => {
            Verdict::Allow
        }
        (Mode::Load(Kind::CreateTable), AuthAction::CreateTable { table_name })
            if main && ancestors(table_name) =>
        {
            Verdict::Job
        }
        (Mode::Load(Kind::Insert), AuthAction::Insert { table_name })
            if main && ancestors(table_name) =>
        {
            Verdict::Job
        }
        (Mode::Read, AuthAction::Select) => Verdict::Allow,
        (Mode::Read, AuthAction::Read { table_name, .. }) if main && ancestors(table_name) => {
            Verdict::Allow
        }
        (_, action) => Verdict::Refuse(describe(action)),
    }
}

/// What a refused action would have done, for the operator.
fn describe(action: AuthAction<'_>) -> String {
    let not_ancestors = "which is not one of the ancestor's tables (vdisks, vdisk_extents, \
                         vdisk_part)";
    match action {
        AuthAction::CreateTable { table_name } => {
            format!("it creates the table `{table_name}`, {not_ancestors}")
        }
        AuthAction::CreateTempTable { table_name } => {
            format!("it creates the temporary table `{table_name}`")
        }
        AuthAction::Insert { table_name } => {
            format!("it writes into the table `{table_name}`, {not_ancestors}")
        }
        AuthAction::Update { table_name, .. } => {
            format!("it changes rows of `{table_name}`")
        }
        AuthAction::Delete { table_name } => format!("it deletes rows of `{table_name}`"),
        AuthAction::Read { table_name, .. } => format!("it reads the table `{table_name}`"),
        AuthAction::Select => "it reads with a SELECT".to_owned(),
        AuthAction::Function { function_name } => {
            format!("it calls the function `{function_name}`")
        }
        AuthAction::Attach { filename } => format!("it opens the file `{filename}`"),
        AuthAction::Pragma { pragma_name, .. } => format!("it sets PRAGMA `{pragma_name}`"),
        other => format!("it does what a dump of the ancestor's tables never does ({other:?})"),
    }
}

/// Judges a statement by its leading keywords, before SQLite parses it.
fn classify(text: &str) -> Result<Kind, String> {
    let words = leading_words(text);
    let word = |i: usize| words.get(i).map(String::as_str);
    match (word(0), word(1)) {
        (Some("CREATE"), Some("TABLE")) => Ok(Kind::CreateTable),
        (Some("INSERT"), Some("INTO")) => Ok(Kind::Insert),
        (Some("BEGIN" | "COMMIT" | "END"), _) if is_transaction(text) => Ok(Kind::Transaction),
        (first, second) => Err(refusal(first, second)),
    }
}

/// `BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION]`, `COMMIT|END
/// [TRANSACTION]`, and nothing else in the statement.
fn is_transaction(text: &str) -> bool {
    let Some(words) = only_words(text) else {
        return false;
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["BEGIN"]
            | ["BEGIN", "TRANSACTION"]
            | ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE"]
            | [
                "BEGIN",
                "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE",
                "TRANSACTION"
            ]
            | ["COMMIT" | "END"]
            | ["COMMIT" | "END", "TRANSACTION"]
    )
}

fn refusal(first: Option<&str>, second: Option<&str>) -> String {
    match (first, second) {
        (Some("ATTACH"), _) => "it opens another database file".to_owned(),
        (Some("PRAGMA"), _) => "it changes how SQLite behaves (a dump written by sqlite3, which \
                                starts with PRAGMA foreign_keys=OFF, is not the ancestor's: \
                                import the SQLite 3 database file itself)"
            .to_owned(),
        (Some("CREATE"), Some(what)) => {
            let what = what.to_ascii_lowercase();
            let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("it creates {article} {what}, not a table")
        }
        (Some("UPDATE" | "DELETE" | "REPLACE" | "DROP" | "ALTER"), _) => {
            "it rewrites what is there; a dump only creates and fills tables".to_owned()
        }
        _ => "it is not CREATE TABLE, INSERT INTO, BEGIN or COMMIT".to_owned(),
    }
}

/// The statement's text on one line, from its first keyword, shortened.
fn quote(text: &str) -> String {
    let folded = skip_space_and_comments(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if folded.chars().count() <= QUOTE_CHARS {
        folded
    } else {
        let short: String = folded.chars().take(QUOTE_CHARS).collect();
        format!("{short}...")
    }
}

/// The scanner's place: in plain SQL, or inside a quote or a comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Within {
    Sql,
    /// Inside a quote that ends at this byte (`'`, `"`, `` ` `` or `]`).
    Quote(u8),
    LineComment,
    BlockComment,
}

/// Cuts SQL text into statements at the `;` outside quotes and comments.
/// Pieces that hold nothing but space and comments are dropped. Every byte
/// compared is ASCII, so the cuts fall on character boundaries.
pub(super) fn statements(text: &str) -> Vec<Piece<'_>> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut within = Within::Sql;
    let mut start = 0;
    let mut line = 1;
    // The line of the piece's first byte that is neither space nor comment.
    let mut first: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let next = bytes.get(i + 1).copied();
        match within {
            Within::Sql => match byte {
                b';' => {
                    if let Some(line) = first.take() {
                        pieces.push(Piece {
                            line,
                            text: &text[start..i],
                        });
                    }
                    start = i + 1;
                }
                b'-' if next == Some(b'-') => {
                    within = Within::LineComment;
                    i += 1;
                }
                b'/' if next == Some(b'*') => {
                    within = Within::BlockComment;
                    i += 1;
                }
                b'\'' | b'"' | b'`' | b'[' => {
                    first.get_or_insert(line);
                    within = Within::Quote(if byte == b'[' { b']' } else { byte });
                }
                _ if byte.is_ascii_whitespace() => {}
                _ => {
                    first.get_or_insert(line);
                }
            },
            // A doubled quote is a quote character inside the quote.
            Within::Quote(end) if byte == end && end != b']' && next == Some(end) => i += 1,
            Within::Quote(end) if byte == end => within = Within::Sql,
            Within::Quote(_) => {}
            Within::LineComment if byte == b'\n' => within = Within::Sql,
            Within::LineComment => {}
            Within::BlockComment if byte == b'*' && next == Some(b'/') => {
                within = Within::Sql;
                i += 1;
            }
            Within::BlockComment => {}
        }
        if byte == b'\n' {
            line += 1;
        }
        i += 1;
    }
    if let Some(line) = first {
        pieces.push(Piece {
            line,
            text: &text[start..],
        });
    }
    pieces
}

/// The statement's tokens up to its first that is not a bare word, words
/// upper-cased; comments and space skipped.
fn leading_words(text: &str) -> Vec<String> {
    words(text).0
}

/// All the statement's tokens, if every one is a bare word.
fn only_words(text: &str) -> Option<Vec<String>> {
    let (words, rest) = words(text);
    rest.trim().is_empty().then_some(words)
}

/// Bare words from the start of `text`, and the text after the last one.
fn words(text: &str) -> (Vec<String>, &str) {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = skip_space_and_comments(rest);
        let length = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if length == 0 {
            return (words, rest);
        }
        words.push(rest[..length].to_ascii_uppercase());
        rest = &rest[length..];
    }
}

fn skip_space_and_comments(mut text: &str) -> &str {
    loop {
        let trimmed = text.trim_start();
        if let Some(comment) = trimmed.strip_prefix("--") {
            text = comment.find('\n').map_or("", |end| &comment[end..]);
        } else if let Some(comment) = trimmed.strip_prefix("/*") {
            text = comment.find("*/").map_or("", |end| &comment[end + 2..]);
        } else {
            return trimmed;
        }
    }
}
