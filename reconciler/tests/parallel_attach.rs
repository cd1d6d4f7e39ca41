//! 100 attaches, then 100 detaches, at `--parallelism 10` against a
//! xenstored that answers slowly: none gives up. An attach makes its
//! directories outside its transaction and a detach removes them outside
//! one, so two on the same guest do not conflict over the guest's list of
//! disks; what conflicts still (the last detaches emptying a guest's
//! directory) is tried again after a jittered pause. Read-only disks: a
//! writable one is preceded by a fresh look at the whole host, which is
//! not what this checks.

mod host;

use std::time::Duration;

use host::{Host, assert_exit, text};
use xendisk::sim::{Faults, GuestPolicy};

const GUESTS: u32 = 10;
const DISKS: u32 = 10;

fn domains() -> String {
    let mut dump = String::from("/local/domain/0/name = \"Domain-0\"\n");
    for g in 1..=GUESTS {
        dump.push_str(&format!("/local/domain/{g}/name = \"g{g}\"\n"));
    }
    dump
}

/// Every guest with its disks, or (`attached` false) with none.
fn desired(attached: bool) -> String {
    let mut text = String::from("[settings]\ntoolstack = \"xenstore\"\n\n");
    for g in 1..=GUESTS {
        text.push_str(&format!("[domains.g{g}.disks]\n"));
        for d in 0..DISKS * u32::from(attached) {
            let vdev = format!("xvd{}", char::from(b'b' + d as u8));
            text.push_str(&format!(
                "{vdev} = {{ source = \"file:/srv/images/g{g}-{vdev}.img\", mode = \"r\" }}\n"
            ));
        }
        text.push('\n');
    }
    text
}

#[test]
fn a_hundred_parallel_attaches_and_detaches_never_give_up_on_a_slow_xenstored() {
    for delay in [1, 5] {
        let faults = Faults {
            reply_delay: Duration::from_millis(delay),
            ..Faults::default()
        };
        let host = Host::seeded(&domains(), GuestPolicy::default(), faults);
        host.file("desired.toml", &desired(true));
        let applied = host.apply("desired.toml", &["--parallelism", "10"]);
        assert_exit(&applied, 0);
        assert!(!text(&applied).contains("EAGAIN"), "{}", text(&applied));
        for g in 1..=GUESTS {
            assert_eq!(host.attached(g).len(), DISKS as usize, "{delay} ms: g{g}");
        }
        assert_exit(&host.run(&["plan", "desired.toml"]), 0);

        host.file("none.toml", &desired(false));
        let detached = host.apply("none.toml", &["--parallelism", "10"]);
        assert_exit(&detached, 0);
        assert!(!text(&detached).contains("EAGAIN"), "{}", text(&detached));
        let store = host.simulator.store();
        for g in 1..=GUESTS {
            assert!(host.attached(g).is_empty(), "{delay} ms: g{g}");
            // The directories the disks emptied went with them.
            for gone in [
                format!("/local/domain/0/backend/vbd/{g}"),
                format!("/local/domain/{g}/device/vbd"),
                format!("/libxl/{g}"),
            ] {
                assert!(!store.exists(&gone), "{delay} ms: {gone}");
            }
        }
        assert_exit(&host.run(&["plan", "none.toml"]), 0);
    }
}
