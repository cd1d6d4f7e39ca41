use proptest::prelude::*;

use super::*;

fn load(text: &str) -> Result<Desired, FileProblems> {
    load_with(text, &Capacities::new())
}

fn load_with(text: &str, capacities: &Capacities) -> Result<Desired, FileProblems> {
    match from_str("test.toml", text, capacities) {
        Ok(desired) => Ok(desired),
        Err(LoadError::Invalid(problems)) => Err(problems),
        Err(other) => panic!("unexpected error {other}"),
    }
}

const POOL_AND_VDISK: &str = r#"
[pools.main]
extent_size = "64MiB"
devices = ["/dev/sdb3"]

[vdisks.root]
pool = "main"
size = "100MiB"
"#;

#[test]
fn defaults_are_filled_in() {
    let desired = load(POOL_AND_VDISK).unwrap();
    assert_eq!(desired.settings.sharing, Sharing::Exclusive);
    assert_eq!(desired.settings.toolstack, Toolstack::Xl);
    let pool = &desired.pools["main"];
    assert_eq!(pool.scrub, Scrub::OnRelease);
    assert_eq!(pool.extent_size.bytes(), 64 << 20);
    let vdisk = &desired.vdisks["root"];
    assert_eq!(vdisk.expires, Expiry::Never);
    assert!(!vdisk.prevent_destroy);
    assert_eq!(vdisk.size.bytes(), 100 << 20);
}

#[test]
fn the_default_extent_size_applies_when_omitted() {
    let desired = load("[pools.p]\ndevices = []\n").unwrap();
    assert_eq!(desired.pools["p"].extent_size, default_extent_size());
    assert_eq!(default_extent_size().bytes(), 64 << 20);
}

#[test]
fn a_vdisk_larger_than_a_known_pool_is_refused() {
    // 100MiB rounds up to two 64MiB extents: 128MiB.
    let fits = Capacities::from([("/dev/sdb3".to_owned(), "130MiB".parse().unwrap())]);
    assert!(load_with(POOL_AND_VDISK, &fits).is_ok());
    // 127MiB holds only one whole extent.
    let short = Capacities::from([("/dev/sdb3".to_owned(), "127MiB".parse().unwrap())]);
    // A device of unknown size means an unknown capacity: no check.
    assert!(
        load_with(
            POOL_AND_VDISK,
            &Capacities::from([("/dev/sdz".to_owned(), "1MiB".parse().unwrap())])
        )
        .is_ok()
    );
    let problems = load_with(POOL_AND_VDISK, &short).unwrap_err();
    assert_eq!(problems.problems.len(), 1);
    let problem = &problems.problems[0];
    assert_eq!(
        problem.message,
        "vdisk `root` needs 128MiB but pool `main` holds only 64MiB"
    );
    assert_eq!(problems.location(problem), "test.toml:8:8");
}

#[test]
fn problems_in_different_entries_are_all_reported() {
    let text = r#"
[pools.a]
devices = ["/dev/sdb1"]
bogus = 1

[vdisks.x]
pool = "a"
size = "lots"

[vdisks.y]
pool = "nowhere"
size = "1GiB"

[domains.g.disks]
xvd = { source = "vdisk:y", mode = "w" }
xvdb = { source = "vdisk:z", mode = "q" }
"#;
    let problems = load(text).unwrap_err();
    let located: Vec<String> = problems
        .problems
        .iter()
        .map(|p| problems.location(p))
        .collect();
    assert_eq!(
        located,
        [
            "test.toml:4:1",
            "test.toml:8:8",
            "test.toml:11:8",
            "test.toml:15:1",
            "test.toml:16:37"
        ]
    );
}

#[test]
fn a_reference_to_an_undecodable_entry_is_not_called_unknown() {
    let text = r#"
[pools.main]
devices = ["/dev/sdb1"]

[vdisks.root]
pool = "main"
size = "huge"

[domains.g.disks]
xvda = { source = "vdisk:root", mode = "w" }
"#;
    let problems = load(text).unwrap_err();
    assert_eq!(problems.problems.len(), 1, "{problems}");
    assert!(problems.problems[0].message.starts_with("invalid size"));
}

#[test]
fn a_non_canonical_device_id_is_refused_where_it_is_written() {
    // 923 (major 3, minor 155) would be hdc27, whose id is 5659: accepted,
    // it would plan an attach at 5659 and never match an attachment at 923.
    let text = r#"
[domains.g.disks]
xvda = { source = "phy:/dev/sr0", mode = "r" }
923 = { source = "phy:/dev/sr1", mode = "r" }
"#;
    let problems = load(text).unwrap_err();
    assert_eq!(problems.problems.len(), 1, "{problems}");
    let problem = &problems.problems[0];
    assert_eq!(problems.location(problem), "test.toml:4:1");
    assert!(
        problem.message.contains("device id 923") && problem.message.contains("5659"),
        "{}",
        problem.message
    );
}

#[test]
fn modes_are_normalised_and_sizes_exact() {
    let text = r#"
[pools.p]
devices = ["/dev/sdb1"]
extent_size = "1MiB"

[vdisks.v]
pool = "p"
size = 1000

[domains.g.disks]
xvda = { source = "vdisk:v", mode = "rw" }
xvdb = { source = "phy:/dev/sr0", mode = "ro" }
xvdc = { source = "file:/srv/shared.img", mode = "w!" }
"#;
    let desired = load(text).unwrap();
    assert_eq!(desired.vdisks["v"].size.bytes(), 1024);
    let disks = &desired.domains["g"].disks;
    assert_eq!(disks["xvda"].mode, Mode::Write);
    assert_eq!(disks["xvdb"].mode, Mode::Read);
    assert_eq!(disks["xvdc"].mode, Mode::WriteShared);
}

#[test]
fn a_model_serialises_back_to_toml_that_loads_the_same() {
    let desired = load(POOL_AND_VDISK).unwrap();
    let text = toml::to_string(&desired).unwrap();
    assert_eq!(load(&text).unwrap(), desired);
}

proptest! {
    /// Whatever the bytes, loading returns a value or located problems: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = from_bytes("fuzz.toml", &bytes, &Capacities::new());
    }

    /// Near-valid files, with one token replaced, never panic and always locate.
    #[test]
    fn mutated_files_locate_every_problem(cut in 0usize..200, insert in "[ -~]{0,6}") {
        let text = POOL_AND_VDISK;
        let cut = cut.min(text.len());
        let mutated = format!("{}{insert}{}", &text[..cut], &text[cut..]);
        if let Err(LoadError::Invalid(problems)) = from_str("m.toml", &mutated, &Capacities::new()) {
            prop_assert!(!problems.problems.is_empty());
            for problem in &problems.problems {
                prop_assert!(problem.span.is_some(), "unlocated: {}", problem.message);
            }
            let _ = problems.render(true);
        }
    }
}
