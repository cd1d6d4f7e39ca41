use proptest::prelude::*;

use super::*;

/// Debian's xenstore-ls (xenstore-utils 4.17) run against the simulator
/// after xenstore-write put awkward values in it (tests/seeds/README.md).
const TREE: &str = include_str!("../../../../tests/seeds/nasty-tree.txt");
const TREE_P: &str = include_str!("../../../../tests/seeds/nasty-tree-p.txt");
const FULL: &str = include_str!("../../../../tests/seeds/nasty-full.txt");
const FULL_P: &str = include_str!("../../../../tests/seeds/nasty-full-p.txt");

fn seed(text: &str) -> Seed {
    parse_seed(text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> DumpError {
    parse_seed(text).unwrap_err()
}

#[test]
fn the_real_tools_escapes_are_undone() {
    let store = seed(FULL).store;
    let read = |path: &str| store.read(path).unwrap().to_vec();
    assert_eq!(read("/t/ctl"), b"a\x01b\x7fc\xffd");
    assert_eq!(read("/t/nl"), b"l1\nl2\tt\rr\x0cff");
    // `"` is not escaped: a value runs to the last quote of its line.
    assert_eq!(read("/t/quote"), b"say \"hi\"  back");
    assert_eq!(read("/t/eq"), b"x = \"y\"");
    assert_eq!(read("/t/raw"), b"a\\x00b\\x08c\\007d\\\\e");
    assert_eq!(read("/t/esc-long"), [1u8; 40]);
    assert_eq!(read("/t/dots"), b"ends with \\...");
    assert_eq!(read("/t/long"), [b'0'; 120]);
    assert!(seed(FULL).cuts.is_empty(), "-f into a file cuts nothing");
}

#[test]
fn the_four_forms_give_one_store_but_for_what_was_cut() {
    let full_p = seed(FULL_P);
    assert_eq!(seed(FULL).store.entries(), full_p.store.entries());
    assert_eq!(
        full_p.store.get_perms("/t/quote").unwrap(),
        ["n0", "r3", "w5", "b7"]
    );
    let tree = seed(TREE);
    let tree_p = seed(TREE_P);
    assert_eq!(tree.store.entries(), tree_p.store.entries());
    assert_eq!(tree.cuts, tree_p.cuts);
    assert_eq!(
        tree_p.store.get_perms("/t/quote").unwrap(),
        ["n0", "r3", "w5", "b7"]
    );
    for (path, value) in full_p.store.entries() {
        match tree_p.cuts.get(&path) {
            None if path.starts_with("/t/a/very-long") => {}
            None => assert_eq!(tree_p.store.read(&path).unwrap(), value, "{path}"),
            Some(cut) => {
                assert!(value.starts_with(&cut.kept), "{path}");
                assert_eq!(tree_p.store.read(&path).unwrap(), cut.kept);
            }
        }
    }
}

#[test]
fn cut_values_are_kept_and_recorded_with_their_width() {
    let tree = seed(TREE_P);
    let cut = |path: &str| tree.cuts.get(path).unwrap_or_else(|| panic!("{path} cut"));
    let params = "/local/domain/0/backend/vbd/3/51712/params";
    assert_eq!(
        cut(params).kept,
        b"/dev/disk/by-id/ata-VERY_LONG_MODEL_NAME_1234567890-part3-a"
    );
    assert_eq!(cut(params).kind, CutKind::Value { width: 80 });
    assert_eq!(cut(params).line, 8);
    assert_eq!(cut("/t/long").kept, [b'0'; 67]);
    // Cuts inside an escape drop what the escape began.
    assert_eq!(cut("/t/cx").kept, [b'a'; 67]); // `\x` of `\x7f`
    assert_eq!(cut("/t/co").kept, [b'a'; 68]); // `\` of `\001`
    assert_eq!(cut("/t/cb").kept, [b'a'; 68]); // `\` of `\\`
    let mut cd = vec![b'a'; 67];
    cd.push(b'\\');
    assert_eq!(cut("/t/cd").kept, cd); // `\\` whole, then the mark
    // `\\...` 24 columns in is a whole value: a cut would be at 80.
    assert!(!tree.cuts.contains_key("/t/dots"));
    assert_eq!(tree.store.read("/t/dots").unwrap(), b"ends with \\...");
    // A name that reached the width: its value is the mark alone.
    let name = "/t/a/very-long-name-that-goes-on-and-on-and-on-and-on-and-on-and-on-and-on-";
    assert_eq!(cut(name).kind, CutKind::Name);
    assert_eq!(tree.cuts.len(), 7, "{:?}", tree.cuts.keys());
    let read = Seed::cuts_read_by_observation(&tree.cuts);
    let read: Vec<&str> = read.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(read, [params, name]);
    assert!(
        cut(params)
            .describe(params, "host/xenstore.xs")
            .starts_with(&format!(
                "xenstore value {params} was truncated in the seed dump (host/xenstore.xs:8: \
                 xenstore-ls cut it at 80 columns)"
            ))
    );
}

#[test]
fn the_writer_prints_what_xenstore_ls_prints() {
    assert_eq!(write_full_paths(&seed(FULL).store), FULL);
    let full_p = seed(FULL_P);
    assert_eq!(write_seed(&full_p.store, &full_p.cuts), FULL_P);
}

#[test]
fn cuts_survive_writing_and_reading_back() {
    let tree = seed(TREE_P);
    let text = write_seed(&tree.store, &tree.cuts);
    let again = seed(&text);
    assert_eq!(again.store, tree.store);
    assert_eq!(
        again
            .cuts
            .iter()
            .map(|(p, c)| (p, &c.kept))
            .collect::<Vec<_>>(),
        tree.cuts
            .iter()
            .map(|(p, c)| (p, &c.kept))
            .collect::<Vec<_>>()
    );
    assert_eq!(write_seed(&again.store, &again.cuts), text);
    // A node written since the dump is no longer cut.
    let mut store = tree.store.clone();
    store.write("/t/long", b"whole").unwrap();
    let still = tree.cuts_still_in(&store);
    assert!(!still.contains_key("/t/long") && still.contains_key("/t/cx"));
}

#[test]
fn unreadable_nodes_are_kept_empty_with_their_permissions() {
    let text = "/a = \"\"   (n0)\n/a/b = \"x\"   (n0)\n/a/gone:\n  (n0,r2)\n";
    let seed = seed(text);
    assert_eq!(seed.store.read("/a/gone").unwrap(), b"");
    assert_eq!(seed.store.get_perms("/a/gone").unwrap(), ["n0", "r2"]);
    assert_eq!(seed.cuts["/a/gone"].kind, CutKind::Unreadable);
    assert_eq!(write_seed(&seed.store, &seed.cuts), text);
    let tree = super::parse_seed("a = \"\"\n gone:\n b = \"x\"\n").unwrap();
    assert!(tree.store.exists("/a/b"));
}

#[test]
fn a_subtree_dump_seeds_its_parents() {
    let seed = seed("/local/domain/0/backend/vbd/1/51728 = \"\"   (n0,r1)\n");
    assert_eq!(seed.store.read("/local/domain/0").unwrap(), b"");
}

#[test]
fn bad_lines_are_located_and_say_what_to_do() {
    let at = |text: &str| {
        let e = error(text);
        (e.line, e.column, e.message)
    };
    let (line, column, message) = at("a = \"\"\n   b = \"\"\n");
    assert_eq!((line, column), (2, 1));
    assert!(message.contains("indented 3 spaces"), "{message}");
    let (_, column, message) = at("/a/b \"x\"\n");
    assert_eq!(column, 5);
    assert!(message.contains("expected `NAME = \"VALUE\"`"), "{message}");
    let (_, column, message) = at("/a.b = \"x\"\n");
    assert_eq!(column, 3);
    assert!(
        message.contains("`.` cannot be in a xenstore name"),
        "{message}"
    );
    let (_, column, message) = at("/a = \"x\\qy\"\n");
    assert_eq!(column, 8);
    assert!(message.contains("unknown escape `\\q`"), "{message}");
    let (_, column, message) = at("/a = \"\\x4\"\n");
    assert_eq!(column, 7);
    assert!(message.contains("two hexadecimal digits"), "{message}");
    let (_, column, message) = at("/a = \"x\"   (n0,q3)\n");
    assert_eq!(column, 16);
    assert!(message.contains("`q3` is not a permission"), "{message}");
    let (_, column, message) = at("/a = \"x\" junk\n");
    assert_eq!(column, 10);
    assert!(message.contains("unexpected `junk`"), "{message}");
    let (line, _, message) = at("/a = \"x\"\n\n/a = \"y\"\n");
    assert_eq!(line, 3);
    assert!(
        message.contains("listed twice (first at line 1)"),
        "{message}"
    );
    let (line, _, message) = at("/a = \"x\"\nb = \"y\"\n");
    assert_eq!(line, 2);
    assert!(message.contains("began in the full-path form"), "{message}");
    let (_, column, message) = at("/a = \"x\n");
    assert_eq!(column, 8);
    assert!(message.contains("no closing quote"), "{message}");
    let (_, _, message) = at("/a//b = \"x\"\n");
    assert!(message.contains("empty name"), "{message}");
    let (_, _, message) = at("  (n0)\n");
    assert!(
        message.contains("permissions on a line of their own"),
        "{message}"
    );
    let e = parse_bytes(b"/a = \"x\"\n/b = \"\xff\"\n").unwrap_err();
    assert_eq!((e.line, e.column), (2, 7));
    assert!(e.message.contains("0xff"));
    let located = error("/a = \"\\q\"\n")
        .in_file("host/xenstore.xs")
        .to_string();
    assert!(
        located.starts_with("host/xenstore.xs:1:7: in the value of `/a`"),
        "{located}"
    );
    assert!(located.contains("= help: "), "{located}");
}

#[test]
fn older_writers_escapes_are_read() {
    let store = seed("/a = \"\\f\\\"\\377\\101\"\n").store;
    assert_eq!(store.read("/a").unwrap(), b"\x0c\"\xffA");
}

proptest! {
    #[test]
    fn no_text_makes_the_parser_panic(text in ".{0,400}") {
        let _ = parse_bytes(text.as_bytes());
    }

    #[test]
    fn no_dump_like_text_makes_the_parser_panic(
        lines in proptest::collection::vec(r#"[ /a-c0-9=".\\x(),:nrwb\t-]{0,40}"#, 0..12)
    ) {
        let _ = parse_seed(&lines.join("\n"));
    }

    #[test]
    fn any_bytes_are_located_or_read(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = parse_bytes(&bytes) {
            prop_assert!(e.line >= 1 && e.column >= 1);
        }
    }

    #[test]
    fn any_store_reads_back_from_its_seed(
        nodes in proptest::collection::vec(
            ("[a-c]{1,3}(/[a-c0-9_@-]{1,4}){0,3}", proptest::collection::vec(any::<u8>(), 0..30)),
            0..10,
        )
    ) {
        let mut store = Store::default();
        for (path, value) in &nodes {
            store.write(&format!("/{path}"), value).unwrap();
        }
        let text = write_seed(&store, &Default::default());
        let seed = parse_seed(&text).unwrap();
        prop_assert_eq!(seed.store, store);
        prop_assert!(seed.cuts.is_empty());
    }
}
