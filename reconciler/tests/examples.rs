//! Every desired-state example loads without a problem and points editors
//! at the committed schema, so a new example is covered by being added.

use std::fs;
use std::path::Path;

use xendisk::desired::{self, Capacities};

#[test]
fn every_example_validates_and_names_the_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("example is readable");
        assert_eq!(
            text.lines().next(),
            Some("#:schema ../schemas/xendisk.schema.json"),
            "{} must start with the #:schema line",
            path.display()
        );
        if let Err(error) = desired::load(&path, &Capacities::new()) {
            panic!("{} does not validate:\n{error}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected at least the four issue examples, found {checked}"
    );
}
