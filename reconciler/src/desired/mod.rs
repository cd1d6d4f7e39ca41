//! The desired state: what the operator declared in TOML.
//!
//! Owns reading a desired-state file, decoding it into the plain [`Desired`]
//! model, and validating it, with every problem reported at once and located
//! at `file:line:column`. Knows nothing of the host: the observed state,
//! the state DB and xenstore belong to other modules.

mod model;
mod parse;
mod pieces;
mod validate;
pub mod values;

use std::path::Path;

pub use model::{Desired, Disk, Domain, Pool, Settings, Vdisk, default_extent_size};
pub use validate::{Capacities, MAX_VDISK_NAME};
pub use values::{Expiry, Format, Mode, Realise, Scrub, Sharing, Size, Source, Toolstack};

use crate::diagnostic::{FileProblems, Problem};

/// Why a desired-state file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read desired-state file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(FileProblems),
}

/// Reads, decodes and validates a desired-state file.
pub fn load(path: &Path, capacities: &Capacities) -> Result<Desired, LoadError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: name.clone(),
        source,
    })?;
    from_bytes(&name, &bytes, capacities)
}

/// Decodes and validates the bytes of a desired-state file named `name`.
pub fn from_bytes(name: &str, bytes: &[u8], capacities: &Capacities) -> Result<Desired, LoadError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let at = error.valid_up_to();
            let problem = Problem::new(Some(at..at + 1), "the file is not valid UTF-8").with_note(
                "desired-state files are TOML, which must be UTF-8; re-save the file as UTF-8",
            );
            let lossy = String::from_utf8_lossy(bytes);
            return Err(LoadError::Invalid(FileProblems::new(
                name,
                lossy,
                vec![problem],
            )));
        }
    };
    from_str(name, text, capacities)
}

/// Decodes and validates the text of a desired-state file named `name`.
pub fn from_str(name: &str, text: &str, capacities: &Capacities) -> Result<Desired, LoadError> {
    let read = pieces::cuts(text)
        .and_then(|cuts| pieces::read(text, &cuts, capacities))
        .unwrap_or_else(|| read_whole(text, capacities));
    read.map_err(|problems| LoadError::Invalid(FileProblems::new(name, text, problems)))
}

/// Parses, decodes and validates a file in one piece.
fn read_whole(text: &str, capacities: &Capacities) -> Result<Desired, Vec<Problem>> {
    let (document, mut problems) = parse::parse_document(text);
    let Some(document) = document else {
        return Err(problems);
    };
    let (desired, undecoded) = parse::decode(&document, &mut problems);
    for finding in validate::validate(&desired, capacities, &undecoded) {
        let span = parse::locate(&document, &finding.path, finding.point);
        let mut problem = Problem::new(span, finding.message);
        problem.notes = finding.notes;
        problems.push(problem);
    }
    if problems.is_empty() {
        Ok(desired)
    } else {
        Err(problems)
    }
}

/// Checks a desired state that did not come from a file (a saved plan
/// carries one): the same rules as [`load`], each problem as
/// `where: what` (`vdisks.data.size: ...`).
pub fn check(desired: &Desired, capacities: &Capacities) -> Vec<String> {
    validate::validate(desired, capacities, &parse::Undecoded::default())
        .into_iter()
        .map(|finding| {
            let place: Vec<String> = finding
                .path
                .iter()
                .map(|step| match step {
                    parse::Step::Key(key) => key.clone(),
                    parse::Step::Index(index) => index.to_string(),
                })
                .collect();
            format!("{}: {}", place.join("."), finding.message)
        })
        .collect()
}

#[cfg(test)]
mod tests;
