//! Applying a large desired state to a simulated host: N vdisks of one
//! 1 MiB extent each, created, realised (by path: a simulated host makes
//! no block devices) and attached read-only to the demo host's three
//! guests, then a second apply with nothing to do. Each run is the release
//! `xendisk` in its own process on a fresh copy of `examples/hosts/demo`;
//! figures go to BENCHMARKS.md.
//!
//! cargo bench --bench apply [-- N...]   (default: 1000 3000)

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A vdev name for the `index`th disk of a guest: xvda, ..., xvdz, xvdaa...
fn vdev(index: usize) -> String {
    let mut letters = Vec::new();
    let mut rest = index + 1;
    while rest > 0 {
        rest -= 1;
        letters.push(char::from(b'a' + (rest % 26) as u8));
        rest /= 26;
    }
    letters
        .iter()
        .rev()
        .fold(String::from("xvd"), |mut name, c| {
            name.push(*c);
            name
        })
}

fn desired(vdisks: usize) -> String {
    let mut text = String::from(
        "[settings]\ntoolstack = \"xenstore\"\n\n[pools.p]\nextent_size = \"1MiB\"\n\
         devices = [\"/dev/sdb3\"]\nscrub = \"never\"\n\n",
    );
    for v in 0..vdisks {
        let _ = write!(text, "[vdisks.v{v}]\npool = \"p\"\nsize = \"1MiB\"\n\n");
    }
    let guests = ["guest1", "mirage-www", "archive"];
    let per_guest = vdisks.div_ceil(guests.len());
    for (g, guest) in guests.iter().enumerate() {
        let _ = writeln!(text, "[domains.{guest}.disks]");
        for d in 0..per_guest {
            let v = g * per_guest + d;
            if v >= vdisks {
                break;
            }
            let _ = writeln!(
                text,
                "{} = {{ source = \"vdisk:v{v}\", mode = \"r\" }}",
                vdev(d + 1)
            );
        }
        text.push('\n');
    }
    text
}

/// A fresh copy of the demo host, without what earlier commands kept.
fn copy_host(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
    let _ = std::fs::remove_dir_all(to.join(".sim"));
}

/// Seconds an apply of `file` on `host` took, with `parallelism`.
fn apply(host: &Path, file: &Path, parallelism: u32) -> f64 {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .arg("--sim")
        .arg(host)
        .arg("apply")
        .arg(file)
        .args(["--yes", "--parallelism", &parallelism.to_string()])
        .env_remove("XENSTORED_PATH")
        .env_remove("XENDISK_STATE")
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 3000]
    } else {
        sizes
    };
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/demo");
    println!("| vdisks | parallelism | apply (s) | again, nothing to do (s) |");
    println!("|---:|---:|---:|---:|");
    for vdisks in sizes {
        for parallelism in [1, 10] {
            let dir = tempfile::tempdir().unwrap();
            let host = dir.path().join("host");
            copy_host(&demo, &host);
            let file = dir.path().join("desired.toml");
            std::fs::write(&file, desired(vdisks)).unwrap();
            let first = apply(&host, &file, parallelism);
            let again = apply(&host, &file, parallelism);
            println!("| {vdisks} | {parallelism} | {first:.2} | {again:.2} |");
        }
    }
}
