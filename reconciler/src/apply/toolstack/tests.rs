//! Both toolstacks against an in-process simulator, one backend kind at a
//! time; `xl` is a script that records its arguments.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::sim::{Faults, GuestPolicy, Simulator, Store};

const XVDA: u32 = 51712;

struct Setup {
    simulator: Simulator,
    dir: tempfile::TempDir,
}

/// Domains 4 (`guest1`) and 7 (named `3`), and an attachment of
/// `params` at xvda of domid 4 under each kind in `kinds`.
fn setup(kinds: &[&str], params: &str, never_close: &[u32]) -> Setup {
    let mut store = Store::default();
    let mut put = |path: String, value: &str| store.write(&path, value.as_bytes()).unwrap();
    put("/local/domain/4/name".into(), "guest1");
    put("/local/domain/7/name".into(), "3");
    for kind in kinds {
        let backend = backend_path(kind, 4, XVDA);
        let frontend = frontend_path(4, XVDA);
        for (leaf, value) in [
            ("frontend", frontend.as_str()),
            ("online", "1"),
            ("state", "4"),
            ("params", params),
            ("mode", "w"),
        ] {
            put(format!("{backend}/{leaf}"), value);
        }
        put(format!("{frontend}/backend"), &backend);
        put(format!("{frontend}/state"), "4");
    }
    // With the permissions libxl gives them: each guest owns its frontend.
    crate::sim::perms::assume_as_on_a_xen_host(&mut store);
    let dir = tempfile::tempdir().unwrap();
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(10),
        never_close: never_close.iter().copied().collect::<BTreeSet<u32>>(),
    };
    let simulator =
        Simulator::start(&dir.path().join("socket"), store, guests, Faults::default()).unwrap();
    Setup { simulator, dir }
}

impl Setup {
    fn client(&self) -> XsClient {
        XsClient::connect_to(self.simulator.socket()).unwrap()
    }

    fn xenstore(&self, timeout: Duration, force: bool) -> XenstoreToolstack {
        XenstoreToolstack::with_client(self.client(), BackendHost::Simulated, timeout, force)
    }

    /// An `xl` that records its arguments, one call a line.
    fn xl(&self) -> (XlToolstack, PathBuf) {
        let log = self.dir.path().join("xl.log");
        let script = self.dir.path().join("xl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s|' \"$a\"; done >> '{}'\necho >> '{}'\n",
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let program = script.to_string_lossy().into_owned();
        (XlToolstack::with_client(self.client(), program), log)
    }

    fn exists(&self, path: &str) -> bool {
        self.simulator.store().exists(path)
    }

    fn read(&self, path: &str) -> String {
        String::from_utf8_lossy(self.simulator.store().read(path).unwrap()).into_owned()
    }
}

fn detach(kind: &str) -> DetachRequest {
    DetachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvda".into(),
        devid: XVDA,
        backend: kind.into(),
        closing: false,
    }
}

fn attach(target: &str) -> AttachRequest {
    AttachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvda".into(),
        devid: XVDA,
        target: target.into(),
        mode: Mode::Write,
        format: Format::Raw,
    }
}

fn recorded(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn the_xenstore_toolstack_detaches_under_every_backend_kind() {
    for kind in BLOCK_BACKENDS {
        let setup = setup(&[kind], "aio:/dev/sdc", &[]);
        let mut toolstack = setup.xenstore(Duration::from_secs(5), false);
        toolstack.detach(&detach(kind)).unwrap();
        for path in [
            backend_path(kind, 4, XVDA),
            format!("/local/domain/0/backend/{kind}/4"),
            frontend_path(4, XVDA),
        ] {
            assert!(!setup.exists(&path), "{kind}: {path} is left");
        }
    }
}

#[test]
fn a_guest_that_keeps_a_qdisk_or_vbd3_disk_is_asked_then_waited_for() {
    for kind in ["qdisk", "vbd3"] {
        let setup = setup(&[kind], "aio:/dev/sdc", &[4]);
        let backend = backend_path(kind, 4, XVDA);
        let mut toolstack = setup.xenstore(Duration::from_millis(100), false);
        let error = toolstack.detach(&detach(kind)).unwrap_err();
        assert!(
            matches!(&error, ToolstackError::NotReleased { state, .. } if state == "4"),
            "{kind}: {error}"
        );
        assert_eq!(setup.read(&format!("{backend}/online")), "0", "{kind}");
        assert_eq!(setup.read(&format!("{backend}/state")), CLOSING, "{kind}");
        // Forced, it goes without the guest.
        let mut forced = setup.xenstore(Duration::from_millis(100), true);
        forced.detach(&detach(kind)).unwrap();
        assert!(!setup.exists(&backend), "{kind}");
    }
}

#[test]
fn a_detach_that_finds_nothing_under_its_kind_is_an_error() {
    // vbd3 is planned, but the attachment there is a vbd.
    let setup = setup(&["vbd"], "/dev/sdc", &[]);
    let (mut xl, log) = setup.xl();
    let mut xenstore = setup.xenstore(Duration::from_secs(5), false);
    for closing in [false, true] {
        let request = DetachRequest {
            closing,
            ..detach("vbd3")
        };
        for toolstack in [&mut xenstore as &mut dyn Toolstack, &mut xl] {
            let error = toolstack.detach(&request).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, ToolstackError::Vanished { .. })
                    && text.contains(
                        "the plan expected an attachment at /local/domain/0/backend/vbd3/4/51712"
                    )
                    && text.contains("nothing is there")
                    && text.ends_with("plan again"),
                "{text}"
            );
            assert_eq!(text.contains("already being torn down"), closing, "{text}");
        }
    }
    assert_eq!(recorded(&log), "", "xl is not run");
    // The vbd at the same device id is not touched.
    assert_eq!(
        setup.read(&format!("{}/online", backend_path("vbd", 4, XVDA))),
        "1"
    );
}

#[test]
fn a_backend_kind_that_is_not_a_block_backend_is_refused() {
    let setup = setup(&["vbd"], "/dev/sdc", &[]);
    let (mut xl, log) = setup.xl();
    let mut xenstore = setup.xenstore(Duration::from_secs(5), false);
    for kind in ["vif", "../vbd", ""] {
        for toolstack in [&mut xenstore as &mut dyn Toolstack, &mut xl] {
            let error = toolstack.detach(&detach(kind)).unwrap_err();
            assert!(
                matches!(error, ToolstackError::UnknownBackend { .. }),
                "{kind:?}: {error}"
            );
        }
    }
    assert_eq!(recorded(&log), "");
    assert!(setup.exists(&backend_path("vbd", 4, XVDA)));
}

#[test]
fn a_frontend_that_names_another_backend_is_left_to_it() {
    let setup = setup(&["qdisk", "vbd"], "/dev/sdc", &[]);
    // The frontend names the vbd, written last.
    let mut toolstack = setup.xenstore(Duration::from_secs(5), true);
    toolstack.detach(&detach("qdisk")).unwrap();
    assert!(!setup.exists("/local/domain/0/backend/qdisk/4"));
    assert_eq!(
        setup.read(&format!("{}/backend", frontend_path(4, XVDA))),
        backend_path("vbd", 4, XVDA)
    );
}

#[test]
fn an_attach_onto_a_device_id_another_kind_holds_is_refused() {
    // The same target, even: the xenstore toolstack would make a vbd and
    // take the qdisk's frontend.
    let held = setup(&["qdisk"], "/dev/sdc", &[]);
    let mut toolstack = held.xenstore(Duration::from_secs(5), false);
    let error = toolstack.attach(&attach("/dev/sdc")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "xvda of domain guest1 already has /dev/sdc at /local/domain/0/backend/qdisk/4/51712; \
         nothing was attached: plan again (a fresh plan detaches it first)"
    );
    assert!(!held.exists("/local/domain/0/backend/vbd"));
    // The same attachment made by this toolstack is left as it is.
    let made = setup(&["vbd"], "/dev/sdc", &[]);
    let mut toolstack = made.xenstore(Duration::from_secs(5), false);
    toolstack.attach(&attach("/dev/sdc")).unwrap();
}

#[test]
fn xl_attach_looks_under_every_kind_and_is_given_the_domid() {
    // xl made this qdisk itself (an image file): it is the attachment.
    let setup = setup(&["qdisk"], "aio:/srv/a.img", &[]);
    let (mut xl, log) = setup.xl();
    xl.attach(&attach("/srv/a.img")).unwrap();
    assert_eq!(recorded(&log), "");
    // The same file read as qcow2 is another attachment.
    let qcow2 = AttachRequest {
        format: Format::Qcow2,
        ..attach("/srv/a.img")
    };
    let error = xl.attach(&qcow2).unwrap_err();
    assert!(matches!(&error, ToolstackError::Occupied { .. }), "{error}");
    let error = xl.attach(&attach("/dev/sdc")).unwrap_err();
    assert!(
        matches!(&error, ToolstackError::Occupied { path, .. } if path.contains("/qdisk/")),
        "{error}"
    );
    assert_eq!(recorded(&log), "");
    // Domain `3` is domid 7.
    let request = AttachRequest {
        domain: "3".into(),
        domid: 7,
        ..attach("/dev/sdc")
    };
    xl.attach(&request).unwrap();
    assert_eq!(
        recorded(&log),
        "block-attach|7|format=raw, vdev=xvda, access=rw, target=/dev/sdc|\n"
    );
}

#[test]
fn xl_detach_is_checked_in_xenstore_afterwards() {
    let setup = setup(&["vbd3"], "aio:/dev/sdc", &[]);
    let (mut xl, log) = setup.xl();
    // The stand-in does nothing: the backend is still connected.
    let error = xl.detach(&detach("vbd3")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "`xl block-detach` reported success for xvda of domain guest1, but \
         /local/domain/0/backend/vbd3/4/51712 is still there and not closing (online 1, \
         state 4); see `xl block-list 4` and xl's log under /var/log/xen, then apply again"
    );
    assert_eq!(recorded(&log), "block-detach|4|51712|\n");
    // A backend closing (libxl still removing it) is a detach done.
    let mut client = setup.client();
    client
        .write(0, &format!("{}/online", backend_path("vbd3", 4, XVDA)), "0")
        .unwrap();
    xl.detach(&detach("vbd3")).unwrap();
    // Forced, xl is told not to wait for the guest.
    xl.force_detach = true;
    xl.detach(&detach("vbd3")).unwrap();
    assert!(
        recorded(&log).ends_with("block-detach|--force|4|51712|\n"),
        "{}",
        recorded(&log)
    );
}

#[test]
fn what_an_interrupted_attach_left_empty_is_taken_away_and_nothing_else() {
    // Guest 4 holds a vbd at xvda; an attach of xvdb (51728) was stopped
    // after making its directories, before filling them.
    let setup = setup(&["vbd"], "/dev/sdc", &[]);
    let xvdb = 51728;
    let mut client = setup.client();
    for directory in [
        format!("/libxl/4/device/vbd/{xvdb}"),
        frontend_path(4, xvdb),
        backend_path("vbd", 4, xvdb),
    ] {
        client.mkdir(0, &directory).unwrap();
    }
    let mut toolstack = setup.xenstore(Duration::from_secs(5), false);
    toolstack.tidy_interrupted_attach(4, xvdb).unwrap();
    // Asked of a disk that is there, it leaves it as it is.
    toolstack.tidy_interrupted_attach(4, XVDA).unwrap();
    for gone in [
        "/libxl".to_owned(),
        frontend_path(4, xvdb),
        backend_path("vbd", 4, xvdb),
    ] {
        assert!(!setup.exists(&gone), "{gone}");
    }
    assert_eq!(
        setup.read(&format!("{}/params", backend_path("vbd", 4, XVDA))),
        "/dev/sdc"
    );
    assert!(setup.exists(&format!("{}/state", frontend_path(4, XVDA))));
}
