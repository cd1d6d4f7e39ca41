//! Simulated hosts under concurrent commands: a simulator that stops wakes
//! and removes only its own socket, and `xendisk --sim DIR` commands run
//! at once neither hang nor lose each other's changes.

mod host;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use host::Wire;
use xendisk::sim::{Faults, GuestPolicy, Simulator, dump};

fn simulator(socket: &Path, name: &str) -> Simulator {
    let store = dump::parse(&format!("/local/domain/0/name = \"{name}\"\n")).unwrap();
    Simulator::start(socket, store, GuestPolicy::default(), Faults::default()).unwrap()
}

/// Drops `simulator` on another thread; whether it returned within 5 s.
fn stops_in_time(simulator: Simulator) -> bool {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        drop(simulator);
        let _ = done.send(());
    });
    finished.recv_timeout(Duration::from_secs(5)).is_ok()
}

/// Why: a simulator's shutdown connected to its socket path to wake its
/// acceptor; when a second simulator had taken the path meanwhile, that
/// woke the second one's acceptor instead, and the first waited forever
/// for its own. It then removed the second one's socket.
#[test]
fn a_simulator_that_lost_its_socket_path_stops_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("xenstored.socket");
    let first = simulator(&socket, "first");
    fs::remove_file(&socket).unwrap();
    let second = simulator(&socket, "second");
    assert!(stops_in_time(first), "the first simulator hung on stopping");
    assert!(
        socket.exists(),
        "the first simulator removed the second's socket"
    );
    assert_eq!(
        Wire::connect(&socket)
            .read("/local/domain/0/name")
            .as_deref(),
        Some("second"),
        "the second simulator no longer answers"
    );
    assert!(
        stops_in_time(second),
        "the second simulator hung on stopping"
    );
    assert!(!socket.exists(), "a simulator left its own socket behind");
}

fn spawn(demo: &Path, repo: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .arg("--sim")
        .arg(demo)
        .args(args)
        .current_dir(repo)
        .env_remove("XENSTORED_PATH")
        .env_remove("XENDISK_STATE")
        .env_remove("XENDISK_NOW")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every child until `deadline`; kills them all and fails when
/// one is still running then. Each child's exit code and output.
fn wait_all(children: Vec<Child>, deadline: Instant) -> Vec<(Option<i32>, String)> {
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let mut running = 0;
        for child in children.iter_mut().flatten() {
            if child.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        if Instant::now() > deadline {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
            }
            panic!("{running} of the concurrent --sim commands hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .iter_mut()
        .map(|child| {
            let output = child.take().unwrap().wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.code(), text)
        })
        .collect()
}

/// Why: four `xendisk --sim DIR` commands at once hung in most rounds (a
/// simulator's shutdown woke the one that owned the socket path then). Now
/// commands on one simulated host take turns: in every round, of four
/// applies of the walkthrough at once exactly one makes the changes, the
/// others find none, a plan then agrees, and the kept xenstore holds the
/// attachment once.
#[test]
fn concurrent_sim_commands_never_hang_and_agree() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for round in 0..5 {
        let scratch = tempfile::tempdir().unwrap();
        let demo = scratch.path().join("demo");
        host::copy_demo_host(&demo);
        let applies = (0..4)
            .map(|_| {
                spawn(
                    &demo,
                    &repo,
                    &["apply", "examples/walkthrough.toml", "--yes"],
                )
            })
            .collect();
        let results = wait_all(applies, Instant::now() + Duration::from_secs(60));
        let all: String = results.iter().map(|(_, text)| text.as_str()).collect();
        for (code, text) in &results {
            assert_eq!(*code, Some(0), "round {round}: {text}");
        }
        assert_eq!(
            all.matches("A fresh plan finds no changes.").count(),
            1,
            "round {round}: {all}"
        );
        assert_eq!(all.matches("No changes").count(), 3, "round {round}: {all}");
        let plans = (0..4)
            .map(|_| spawn(&demo, &repo, &["plan", "examples/walkthrough.toml"]))
            .collect();
        for (code, text) in wait_all(plans, Instant::now() + Duration::from_secs(60)) {
            assert_eq!(code, Some(0), "round {round}: {text}");
        }
        let kept = fs::read_to_string(demo.join(".sim/xenstore.xs")).unwrap();
        // One backend (libxl's record beside it holds a copy of its nodes).
        let backends = kept
            .lines()
            .filter(|line| line.contains("/backend/vbd/"))
            .filter(|line| line.contains("params = \"/dev/mapper/xendisk-guest1-root\""))
            .count();
        assert_eq!(backends, 1, "round {round}: {kept}");
    }
}
