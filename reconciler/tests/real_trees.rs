//! The simulator seeded with xenstore trees captured on a real Xen host
//! (tests/realxen/fixtures): xendisk adopts what `xl block-attach` made,
//! finds nothing to change, and detaches it as libxl would, its record
//! included, so that `xl block-list` would agree.

mod host;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/realxen/fixtures")
        .join(name)
}

/// A `--sim` host: the demo dom0 with a real captured xenstore tree.
fn real_host(dir: &Path, tree: &str) -> PathBuf {
    let root = dir.join("host");
    host::copy_demo_host(&root);
    fs::copy(fixture(tree), root.join("xenstore.xs")).unwrap();
    root
}

/// Its exit code, and what it printed (standard output, then error).
fn xendisk(root: &Path, cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .arg("--sim")
        .arg(root)
        .args(args)
        .current_dir(cwd)
        .env_remove("XENSTORED_PATH")
        .env_remove("XENDISK_STATE")
        .env_remove("XENDISK_NOW")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn an_xl_made_disk_is_adopted_unchanged_then_detached_with_libxl_s_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = real_host(dir.path(), "xl-block-attach-loop0-rw.xs");
    // The state DB first, so that `generate` prints nothing but the file.
    assert_eq!(xendisk(&root, dir.path(), &["state"]).0, Some(0));
    let (code, generated) = xendisk(&root, dir.path(), &["generate"]);
    assert_eq!(code, Some(0), "{generated}");
    assert!(
        generated.contains("[domains.domu1.disks.xvdb]\nsource = \"phy:/dev/loop0\"\nmode = \"w\""),
        "{generated}"
    );
    fs::write(dir.path().join("adopted.toml"), &generated).unwrap();
    let (code, plan) = xendisk(&root, dir.path(), &["plan", "adopted.toml"]);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains("No changes"), "{plan}");

    let without = generated.replace(
        "[domains.domu1.disks.xvdb]\nsource = \"phy:/dev/loop0\"\nmode = \"w\"\n",
        "[domains.domu1.disks]\n",
    );
    fs::write(dir.path().join("detached.toml"), without).unwrap();
    let (code, applied) = xendisk(&root, dir.path(), &["apply", "detached.toml", "--yes"]);
    assert_eq!(code, Some(0), "{applied}");
    assert!(applied.contains("detach xvdb"), "{applied}");
    let kept = fs::read_to_string(root.join(".sim/xenstore.xs")).unwrap();
    for gone in [
        "/local/domain/0/backend/vbd/1/51728",
        "/local/domain/1/device/vbd/51728",
        // libxl's record: left behind, `xl block-list` would still show it.
        "/libxl/1/device/vbd/51728",
    ] {
        assert!(!kept.contains(gone), "{gone} is left:\n{kept}");
    }
    // What else libxl keeps for the domain stays.
    assert!(kept.contains("/libxl/1/device/console/0/backend"), "{kept}");
    let (code, plan) = xendisk(&root, dir.path(), &["plan", "detached.toml"]);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains("No changes"), "{plan}");
}
