//! Reading in pieces against reading whole: the same model, the same
//! problems at the same places, and a whole read where a cut could change
//! what the file means.

use std::fmt::Write as _;

use super::super::{Capacities, FileProblems, read_whole};
use super::*;

/// A file of many small entries, several pieces long; `edit` changes the
/// text of entry `i` (of vdisks and of domains alike).
fn large(edit: impl Fn(usize, String) -> String) -> String {
    let mut text = String::from(
        "[settings]\nsharing = \"exclusive\"\n\n[pools.main]\ndevices = [\"/dev/sdb\"]\n\n",
    );
    for i in 0..4000 {
        let entry = format!("[vdisks.vd{i:05}]\npool = \"main\"\nsize = \"1GiB\"\n\n");
        text.push_str(&edit(i, entry));
    }
    for i in 0..1000 {
        let mut entry = format!("[domains.guest{i:04}.disks]\n");
        for (d, vdev) in ["xvda", "xvdb"].iter().enumerate() {
            let v = i * 2 + d;
            writeln!(
                entry,
                "{vdev} = {{ source = \"vdisk:vd{v:05}\", mode = \"w\" }}"
            )
            .unwrap();
        }
        entry.push('\n');
        text.push_str(&edit(i, entry));
    }
    text
}

/// What reading `text` in pieces and reading it whole each give, as text.
fn both(text: &str) -> (String, String) {
    let show = |read: Result<Desired, Vec<Problem>>| match read {
        Ok(desired) => format!("{desired:?}"),
        Err(problems) => FileProblems::new("desired.toml", text, problems).to_string(),
    };
    let capacities = Capacities::new();
    let pieces = cuts(text).expect("the file is cut");
    let in_pieces = read(text, &pieces, &capacities).expect("read in pieces");
    (show(in_pieces), show(read_whole(text, &capacities)))
}

#[test]
fn a_large_file_is_cut_at_headers_into_pieces_that_read_as_the_whole() {
    let text = large(|_, entry| entry);
    let pieces = cuts(&text).unwrap();
    assert!(pieces.len() > 3, "{} pieces", pieces.len());
    for piece in &pieces[1..] {
        assert!(text[piece.clone()].starts_with('['));
    }
    let (in_pieces, whole) = both(&text);
    assert_eq!(in_pieces, whole);
}

#[test]
fn problems_in_a_large_file_are_placed_as_when_it_is_read_whole() {
    let text = large(|i, entry| match i {
        17 => entry.replace("size =", "sise ="),
        1999 => entry.replace("1GiB", "1 gigabyte"),
        3998 => entry.replace("\"main\"", "\"slow\""),
        500 => entry.replace("mode = \"w\"", "mode = \"rw\""),
        999 => entry.replace("vdisk:vd01998", "vdisk:missing"),
        _ => entry,
    });
    let (in_pieces, whole) = both(&text);
    assert!(whole.contains("sise"), "{whole}");
    assert!(whole.contains("missing"), "{whole}");
    assert_eq!(in_pieces, whole);
}

#[test]
fn a_syntax_error_in_a_large_file_is_placed_as_when_it_is_read_whole() {
    let text = large(|i, entry| match i {
        2500 => entry.replace("\"1GiB\"", "\"1GiB"),
        _ => entry,
    });
    let (in_pieces, whole) = both(&text);
    assert!(whole.contains("invalid TOML"), "{whole}");
    assert_eq!(in_pieces, whole);
}

#[test]
fn an_entry_in_two_pieces_sends_the_file_to_be_read_whole() {
    let text = large(|i, entry| match i {
        3990 => entry.replace("[vdisks.vd03990]", "[vdisks.vd00001]"),
        _ => entry,
    });
    let pieces = cuts(&text).unwrap();
    assert!(read(&text, &pieces, &Capacities::new()).is_none());
    let whole = read_whole(&text, &Capacities::new()).unwrap_err();
    let from_str = match super::super::from_str("desired.toml", &text, &Capacities::new()) {
        Err(super::super::LoadError::Invalid(problems)) => problems.problems,
        other => panic!("{other:?}"),
    };
    assert_eq!(from_str, whole);
}

#[test]
fn small_files_and_keys_outside_tables_are_read_whole() {
    assert!(cuts("[settings]\nsharing = \"exclusive\"\n").is_none());
    let text = large(|_, entry| entry);
    assert!(
        cuts(&format!(
            "vdisks.a = {{ pool = \"main\", size = \"1GiB\" }}\n{text}"
        ))
        .is_none()
    );
    // A one-key header after the first cut: a second `[settings]` would
    // be TOML's duplicate, which only a whole read sees.
    assert!(cuts(&format!("{text}[settings]\nsharing = \"unsafe\"\n")).is_none());
}

#[test]
fn brackets_inside_strings_and_arrays_are_not_headers() {
    let text = large(|i, entry| match i {
        2000 => entry.replace("size =", "note = \"\"\"\n[vdisks.fake]\n\"\"\"\nsize ="),
        2001 => entry.replace("size = \"1GiB\"", "size = [\n[1],\n]"),
        _ => entry,
    });
    let pieces = cuts(&text).unwrap();
    assert!(
        !pieces
            .iter()
            .any(|p| text[p.clone()].starts_with("[vdisks.fake]"))
    );
    assert!(!pieces.iter().any(|p| text[p.clone()].starts_with("[1]")));
    let (in_pieces, whole) = both(&text);
    assert!(whole.contains("note"), "{whole}");
    assert_eq!(in_pieces, whole);
}
