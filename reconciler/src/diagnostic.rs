//! Errors located in an input file, rendered for a person.
//!
//! Owns the [`Problem`] (what is wrong, where as a byte span, what was
//! expected) and [`FileProblems`] (all problems of one file, with its text so
//! they can be shown in context). Rendering goes through codespan-reporting,
//! so every message carries `file:line:column` and the offending line.
//! Knows nothing of TOML or of xendisk's model.

use std::fmt;
use std::ops::Range;

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config};

/// One thing wrong with an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Byte range in the file the problem is about; `None` for the file as a whole.
    pub span: Option<Range<usize>>,
    /// What is wrong, naming the offending value.
    pub message: String,
    /// Further lines: what was expected, what to do.
    pub notes: Vec<String>,
}

impl Problem {
    pub fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Problem {
        Problem {
            span,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Problem {
        self.notes.push(note.into());
        self
    }
}

/// Every problem found in one file, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileProblems {
    /// The file's name as the operator gave it.
    pub file: String,
    /// The file's text (lossily decoded if it was not UTF-8), for context lines.
    pub text: String,
    /// In file order.
    pub problems: Vec<Problem>,
}

impl FileProblems {
    pub fn new(
        file: impl Into<String>,
        text: impl Into<String>,
        mut problems: Vec<Problem>,
    ) -> Self {
        // File order reads best; problems without a place go last.
        problems.sort_by_key(|p| p.span.as_ref().map_or(usize::MAX, |s| s.start));
        FileProblems {
            file: file.into(),
            text: text.into(),
            problems,
        }
    }

    /// `file:line:column` of a problem, 1-based, counting columns in characters.
    pub fn location(&self, problem: &Problem) -> String {
        match &problem.span {
            None => self.file.clone(),
            Some(span) => {
                let before = &self.text[..span.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{}:{line}:{column}", self.file)
            }
        }
    }

    /// The full report: each problem with its source line, then a count.
    /// Colour is for terminals only; callers decide.
    pub fn render(&self, colour: bool) -> String {
        let file = SimpleFile::new(self.file.as_str(), self.text.as_str());
        let config = Config {
            chars: Chars::ascii(),
            ..Config::default()
        };
        let mut out = Vec::new();
        for problem in &self.problems {
            let mut diagnostic = Diagnostic::error().with_message(&problem.message);
            if let Some(span) = &problem.span {
                let span = clamp(span, &self.text);
                diagnostic = diagnostic.with_labels(vec![Label::primary((), span)]);
            } else {
                diagnostic = diagnostic.with_notes(vec![format!("in {}", self.file)]);
            }
            diagnostic = diagnostic.with_notes(problem.notes.clone());
            let rendered = if colour {
                let mut writer = termcolor::Ansi::new(Vec::new());
                term::emit_to_write_style(&mut writer, &config, &file, &diagnostic)
                    .map(|()| writer.into_inner())
            } else {
                term::emit_into_string(&config, &file, &diagnostic).map(String::into_bytes)
            };
            // Rendering can only fail on a span outside the text, which
            // `clamp` rules out; fall back to the bare message all the same.
            out.extend(rendered.unwrap_or_else(|_| format!("error: {}\n", problem.message).into()));
        }
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        out.extend(
            format!(
                "error: {} has {count} problem{plural}; nothing was changed\n",
                self.file
            )
            .bytes(),
        );
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for FileProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

/// Keeps a span inside the text and on character boundaries.
fn clamp(span: &Range<usize>, text: &str) -> Range<usize> {
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    start..end
}
