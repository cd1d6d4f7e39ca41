//! The README's quick start, as written: the walkthrough applied to the
//! simulated demo host, after which a plan finds nothing to do.

mod host;

use std::fs;
use std::path::Path;
use std::process::Command;

#[test]
fn the_walkthrough_applies_to_the_simulated_demo_host() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = tempfile::tempdir().unwrap();
    let demo = scratch.path().join("demo");
    host::copy_demo_host(&demo);
    let xendisk = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
            .arg("--sim")
            .arg(&demo)
            .args(args)
            .current_dir(&repo)
            .env_remove("XENSTORED_PATH")
            .env_remove("XENDISK_STATE")
            .env_remove("XENDISK_NOW")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (code, text) = xendisk(&["apply", "examples/walkthrough.toml", "--yes"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = xendisk(&["plan", "examples/walkthrough.toml"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("No changes"), "{text}");
    let (code, text) = xendisk(&["apply", "examples/walkthrough-boot.toml", "--yes"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("detach xvda") && text.contains("attach xvda"),
        "{text}"
    );
    let (code, text) = xendisk(&["plan", "examples/walkthrough-boot.toml"]);
    assert_eq!(code, Some(0), "{text}");
    let kept = fs::read_to_string(demo.join(".sim/xenstore.xs")).unwrap();
    assert!(
        kept.contains(
            "/local/domain/0/backend/vbd/4/51712/params = \"/dev/mapper/xendisk-guest1-root\""
        ),
        "{kept}"
    );
}

/// `-o /dev/null` (or a pipe) is written into, never replaced: saving an
/// output file by renaming a temporary over it once turned the machine's
/// /dev/null into a regular file. A pipe stands in for the device here.
#[test]
fn an_output_that_is_not_a_regular_file_is_written_into_not_replaced() {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let scratch = tempfile::tempdir().unwrap();
    let demo = scratch.path().join("demo");
    host::copy_demo_host(&demo);
    let pipe = scratch.path().join("pipe");
    let status = Command::new("mkfifo").arg(&pipe).status().unwrap();
    assert!(status.success());
    let reader = {
        let pipe = pipe.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            fs::File::open(&pipe)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        })
    };
    let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .arg("--sim")
        .arg(&demo)
        .args(["snapshot", "-o"])
        .arg(&pipe)
        .env_remove("XENSTORED_PATH")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(reader.join().unwrap().contains("\"format_version\""));
    assert!(
        fs::metadata(&pipe).unwrap().file_type().is_fifo(),
        "the pipe was replaced"
    );
}
