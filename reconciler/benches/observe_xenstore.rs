//! Reading a large host from the simulated xenstored: 10,000 domains with
//! four attachments each (40,000), and a tenth of that, to see how the cost
//! grows. Prints round trips and seconds; figures go to BENCHMARKS.md.
//!
//! cargo bench --bench observe_xenstore

use std::time::Instant;

use xendisk::observe::read_xenstore;
use xendisk::sim::{Faults, GuestPolicy, Simulator, Store};

/// A host like the ones xl builds: each guest with its name, a vm path and
/// four disks, each with the backend nodes xl and the hotplug script write
/// and the frontend nodes the guest writes.
fn host(domains: u32) -> Store {
    let mut store = Store::default();
    let mut write =
        |path: String, value: &str| store.write(&path, value.as_bytes()).expect("valid path");
    write("/local/domain/0/name".into(), "Domain-0");
    for domid in 1..=domains {
        write(
            format!("/local/domain/{domid}/name"),
            &format!("guest-{domid:05}"),
        );
        write(format!("/local/domain/{domid}/vm"), &format!("/vm/{domid}"));
        for disk in 0..4u32 {
            let devid = (202 << 8) | (disk << 4);
            let backend = format!("/local/domain/0/backend/vbd/{domid}/{devid}");
            let frontend = format!("/local/domain/{domid}/device/vbd/{devid}");
            for (leaf, value) in [
                ("frontend", frontend.as_str()),
                ("params", &format!("/dev/mapper/xendisk-g{domid}-{disk}")),
                ("script", "/etc/xen/scripts/block"),
                ("frontend-id", &domid.to_string()),
                ("online", "1"),
                ("removable", "0"),
                ("bootable", "1"),
                ("state", "4"),
                ("dev", &format!("xvd{}", (b'a' + disk as u8) as char)),
                ("type", "phy"),
                ("mode", "w"),
                ("device-type", "disk"),
                ("physical-device", &format!("fd:{:x}", domid * 4 + disk)),
                (
                    "physical-device-path",
                    &format!("/dev/dm-{}", domid * 4 + disk),
                ),
                ("hotplug-status", "connected"),
            ] {
                write(format!("{backend}/{leaf}"), value);
            }
            for (leaf, value) in [
                ("backend", backend.as_str()),
                ("backend-id", "0"),
                ("state", "4"),
                ("virtual-device", &devid.to_string()),
                ("device-type", "disk"),
            ] {
                write(format!("{frontend}/{leaf}"), value);
            }
        }
    }
    store
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("xenstored.socket");
    // Set before any thread starts; the xenstore-rs client reads it.
    unsafe { std::env::set_var("XENSTORED_PATH", &socket) };
    println!(
        "| domains | attachments | round trips | per attachment | seconds | peak RSS (MiB, simulator included) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut seconds = Vec::new();
    for domains in [1_000u32, 10_000] {
        let simulator = Simulator::start(
            &socket,
            host(domains),
            GuestPolicy::default(),
            Faults::default(),
        )
        .expect("the simulator starts");
        let started = Instant::now();
        let view = read_xenstore().expect("the simulated host is readable");
        let elapsed = started.elapsed().as_secs_f64();
        seconds.push(elapsed);
        assert_eq!(view.attachments.len() as u32, domains * 4);
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {} |",
            view.domains.len(),
            view.attachments.len(),
            view.round_trips,
            view.round_trips as f64 / view.attachments.len() as f64,
            elapsed,
            peak_rss_mib()
        );
        drop(simulator);
    }
    println!("\nfull size / tenth: {:.1}x", seconds[1] / seconds[0]);
}
