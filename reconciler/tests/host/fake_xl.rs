//! A stand-in for `xl` that plays libxl on the simulated xenstore, so that
//! the xl toolstack can be run end to end and its calls checked.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xendisk::sim::Store;
use xendisk::vdev::Vdev;

use super::{Host, Wire, attachment_dump};

/// One `xl` call: its arguments, and the store when it came.
pub struct XlCall {
    pub argv: Vec<String>,
    pub store: Store,
}

pub fn lines(calls: &[XlCall]) -> Vec<String> {
    calls
        .iter()
        .map(|call| call.argv.iter().map(|a| format!("{a}|")).collect())
        .collect()
}

/// A stand-in for `xl` on PATH. The script hands each call to a thread of
/// the test ([`FakeXl::serve`]), which does on the simulator what libxl
/// would do (`block-detach` removes the backend the guest's frontend names
/// and the frontend; `block-attach` writes a connected vbd) and records the
/// call with the store as it was when the call came. Called when no test
/// serves it, it gives up after 30 s.
pub struct FakeXl {
    bin: PathBuf,
    requests: PathBuf,
}

impl FakeXl {
    pub fn new(host: &Host) -> FakeXl {
        let bin = host.dir.path().join("bin");
        let requests = host.dir.path().join("xl-requests");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&requests).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             dir='{}'\n\
             for a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$dir/$$.tmp\"\n\
             mv \"$dir/$$.tmp\" \"$dir/$$.req\"\n\
             n=0\n\
             while [ ! -e \"$dir/$$.done\" ]; do\n\
               n=$((n + 1)); [ $n -gt 3000 ] && {{ echo 'fake xl: no answer in 30s' >&2; exit 99; }}\n\
               sleep 0.01\n\
             done\n\
             code=$(cat \"$dir/$$.done\")\n\
             rm -f \"$dir/$$.done\"\n\
             exit \"$code\"\n",
            requests.display()
        );
        let xl = bin.join("xl");
        std::fs::write(&xl, script).unwrap();
        std::fs::set_permissions(&xl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        FakeXl { bin, requests }
    }

    pub fn apply(&self, host: &Host, file: &str, extra: &[&str]) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut args = vec!["apply", file, "--yes", "--no-devices"];
        args.extend_from_slice(extra);
        host.command(&args, &[("PATH", path)]).output().unwrap()
    }

    /// Runs `body` while answering its `xl` calls; the calls, in order.
    pub fn serve<T>(&self, host: &Host, body: impl FnOnce() -> T) -> (T, Vec<XlCall>) {
        let done = AtomicBool::new(false);
        let calls = Mutex::new(Vec::new());
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut wire = host.wire();
                while !done.load(Ordering::Relaxed) {
                    for request in self.pending() {
                        let argv: Vec<String> = std::fs::read_to_string(&request)
                            .unwrap()
                            .lines()
                            .map(str::to_owned)
                            .collect();
                        let store = host.simulator.store();
                        let code = play_libxl(&mut wire, &argv);
                        calls.lock().unwrap().push(XlCall { argv, store });
                        std::fs::remove_file(&request).unwrap();
                        let answer = request.with_extension("answer");
                        std::fs::write(&answer, code.to_string()).unwrap();
                        std::fs::rename(&answer, request.with_extension("done")).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            let result = body();
            done.store(true, Ordering::Relaxed);
            result
        });
        (result, calls.into_inner().unwrap())
    }

    fn pending(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.requests)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "req"))
            .collect();
        found.sort();
        found
    }
}

/// What libxl does for `xl block-detach DOMID DEVICE` and `xl block-attach
/// DOMID SPEC`, as far as xenstore shows it; xl's exit code.
fn play_libxl(wire: &mut Wire, argv: &[String]) -> i32 {
    let device_id = |text: &str| {
        text.parse::<u32>()
            .ok()
            .or_else(|| Vdev::parse(text).ok().map(|v| v.device_id()))
    };
    match argv {
        [command, domid, device] if command == "block-detach" => {
            let Some(devid) = device_id(device) else {
                return 1;
            };
            let frontend = format!("/local/domain/{domid}/device/vbd/{devid}");
            // libxl finds the backend through the frontend.
            let Some(backend) = wire.read(&format!("{frontend}/backend")) else {
                return 1; // "Error: Device ... not connected."
            };
            wire.rm(&backend).unwrap();
            wire.rm(&frontend).unwrap();
            let parent = backend.rsplit_once('/').unwrap().0;
            if wire.directory(parent).is_some_and(|c| c.is_empty()) {
                wire.rm(parent).unwrap();
            }
            0
        }
        [command, domid, spec] if command == "block-attach" => {
            let field = |key: &str| {
                spec.split(", ")
                    .find_map(|part| part.strip_prefix(&format!("{key}=")))
                    .unwrap()
            };
            let Some(devid) = device_id(field("vdev")) else {
                return 1;
            };
            let mode = if field("access") == "rw" { "w" } else { "r" };
            let domid: u32 = domid.parse().unwrap();
            wire.write_dump(&attachment_dump(
                "vbd",
                domid,
                devid,
                spec.split_once("target=").unwrap().1,
                mode,
            ));
            0
        }
        _ => 2,
    }
}
