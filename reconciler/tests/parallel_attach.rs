//! 100 attaches at `--parallelism 10` against a xenstored that answers
//! slowly: every transaction of an attach is tried again after a conflict
//! (two attaches to one guest create siblings), with a jittered pause, and
//! none gives up. Read-only disks: a writable one is preceded by a fresh
//! look at the whole host, which is not what this measures.

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

fn desired() -> String {
    let mut text = String::from("[settings]\ntoolstack = \"xenstore\"\n\n");
    for g in 1..=GUESTS {
        text.push_str(&format!("[domains.g{g}.disks]\n"));
        for d in 0..DISKS {
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
fn a_hundred_parallel_attaches_never_give_up_on_a_slow_xenstored() {
    for delay in [1, 5] {
        let faults = Faults {
            reply_delay: Duration::from_millis(delay),
            ..Faults::default()
        };
        let host = Host::seeded(&domains(), GuestPolicy::default(), faults);
        host.file("desired.toml", &desired());
        let applied = host.apply("desired.toml", &["--parallelism", "10"]);
        assert_exit(&applied, 0);
        assert!(!text(&applied).contains("EAGAIN"), "{}", text(&applied));
        for g in 1..=GUESTS {
            assert_eq!(host.attached(g).len(), DISKS as usize, "{delay} ms: g{g}");
        }
        assert_exit(&host.run(&["plan", "desired.toml"]), 0);
    }
}
