//! Watching the block backends: what changed in xenstore since the last
//! look, without reading every attachment again. Apply looks at the host
//! before each step that writes sectors; on a host of thousands of
//! attachments, a whole reading each time makes an apply quadratic.
//!
//! One connection watches `/local/domain/0/backend` (where observation
//! reads attachments). Each [`BackendWatch::changed`] first makes one round
//! trip, after which xenstored has told every change made before it, then
//! reads again only the backend directories those events name.

use std::collections::BTreeSet;

use super::Attachment;
use super::xenstore::{BLOCK_BACKENDS, BackendDir, Reader, XenstoreError};

const BACKENDS: &str = "/local/domain/0/backend";
const TOKEN: &str = "xendisk-look";

/// A watch on every block backend, and the events not yet looked at.
pub struct BackendWatch {
    reader: Reader,
}

/// What [`BackendWatch::changed`] found in the backend directories the
/// events named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendChanges {
    /// The attachments in them now.
    pub attachments: Vec<Attachment>,
    /// `(backend kind, domid, devid)` of those with no attachment in them
    /// now (removed, or naming nothing to open).
    pub gone: Vec<(String, u32, u32)>,
}

impl BackendWatch {
    /// Connects and sets the watch; changes count from here.
    pub fn start() -> Result<BackendWatch, XenstoreError> {
        BackendWatch::over(Reader::connect()?)
    }

    fn over(mut reader: Reader) -> Result<BackendWatch, XenstoreError> {
        reader
            .client()
            .watch(BACKENDS, TOKEN)
            .map_err(|source| request_error("WATCH", source))?;
        let mut watch = BackendWatch { reader };
        // The watch fires once when set; that is no change.
        watch.sync()?;
        watch.reader.client().take_events();
        Ok(watch)
    }

    /// Forgets what changed up to now: the caller has just read it all.
    pub fn forget(&mut self) -> Result<(), XenstoreError> {
        self.sync()?;
        self.reader.client().take_events();
        Ok(())
    }

    /// The backends changed since the last call (or [`BackendWatch::start`],
    /// or [`BackendWatch::forget`]), as they are now.
    pub fn changed(&mut self) -> Result<BackendChanges, XenstoreError> {
        self.sync()?;
        let events = self.reader.client().take_events();
        let mut dirs: BTreeSet<BackendDir> = BTreeSet::new();
        let mut listings: BTreeSet<(&'static str, Option<String>)> = BTreeSet::new();
        for event in events.iter().filter(|e| e.token == TOKEN) {
            match where_changed(&event.path) {
                Changed::Backend(dir) => {
                    dirs.insert(dir);
                }
                Changed::Guest(kind, domid) => {
                    listings.insert((kind, Some(domid)));
                }
                Changed::Kind(kind) => {
                    listings.insert((kind, None));
                }
                Changed::Everything => {
                    listings.extend(BLOCK_BACKENDS.iter().map(|kind| (*kind, None)));
                }
                Changed::Elsewhere => {}
            }
        }
        // A directory made or removed above the backends: what is under it
        // now is what may have come.
        let bases: Vec<_> = listings.into_iter().collect();
        dirs.extend(self.reader.backend_dirs(&bases)?);
        let dirs: Vec<BackendDir> = dirs.into_iter().collect();
        let mut changes = BackendChanges::default();
        for (dir, attachment) in dirs.iter().zip(self.reader.attachments(&dirs)?) {
            match (attachment, dir.domid.parse(), dir.devid.parse()) {
                (Some(attachment), _, _) => changes.attachments.push(attachment),
                (None, Ok(domid), Ok(devid)) => {
                    changes.gone.push((dir.kind.to_owned(), domid, devid));
                }
                // Named otherwise than by numbers, and empty: nothing to say.
                (None, _, _) => {}
            }
        }
        Ok(changes)
    }

    /// Round trips made so far.
    pub fn round_trips(&self) -> u64 {
        self.reader.round_trips()
    }

    fn sync(&mut self) -> Result<(), XenstoreError> {
        self.reader
            .client()
            .sync()
            .map_err(|source| request_error("READ", source))
    }
}

fn request_error(operation: &'static str, source: crate::xs_client::XsError) -> XenstoreError {
    XenstoreError::Request {
        operation,
        path: BACKENDS.to_owned(),
        source: std::io::Error::other(source.to_string()),
    }
}

/// Where under the backends an event's path lies.
#[derive(Debug, PartialEq, Eq)]
enum Changed {
    /// In one backend directory (or the directory itself).
    Backend(BackendDir),
    /// A guest's directory of one kind, made or removed.
    Guest(&'static str, String),
    /// A kind's directory, made or removed.
    Kind(&'static str),
    /// The backends' directory or something above it.
    Everything,
    /// Not a block backend (a network backend, say).
    Elsewhere,
}

fn where_changed(path: &str) -> Changed {
    let Some(rest) = path.strip_prefix(BACKENDS) else {
        return if BACKENDS.starts_with(path) {
            Changed::Everything
        } else {
            Changed::Elsewhere
        };
    };
    if rest.is_empty() {
        return Changed::Everything;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Changed::Elsewhere; // `/local/domain/0/backendfoo`
    };
    let mut parts = rest.split('/');
    let Some(kind) = parts
        .next()
        .and_then(|name| BLOCK_BACKENDS.iter().find(|k| **k == name))
    else {
        return Changed::Elsewhere;
    };
    match (parts.next(), parts.next()) {
        (None, _) => Changed::Kind(kind),
        (Some(domid), None) => Changed::Guest(kind, domid.to_owned()),
        (Some(domid), Some(devid)) => Changed::Backend(BackendDir {
            kind,
            domid: domid.to_owned(),
            devid: devid.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, GuestPolicy, Simulator, dump};
    use crate::xs_client::XsClient;

    /// A backend, as a toolstack leaves it once the script ran.
    fn backend(xs: &mut XsClient, domid: u32, devid: u32, params: &str) {
        let dir = format!("{BACKENDS}/vbd/{domid}/{devid}");
        for (leaf, value) in [
            ("params", params),
            ("mode", "w"),
            ("state", "4"),
            ("physical-device", "fd:3"),
        ] {
            xs.write(0, &format!("{dir}/{leaf}"), value).unwrap();
        }
    }

    #[test]
    fn the_watch_tells_what_changed_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let store = dump::parse(
            "/local/domain/0/name = \"Domain-0\"\n\
             /local/domain/0/backend/vbd/3/51712/params = \"/dev/sdb1\"\n\
             /local/domain/0/backend/vbd/3/51712/state = \"4\"\n",
        )
        .unwrap();
        let socket = dir.path().join("socket");
        let simulator =
            Simulator::start(&socket, store, GuestPolicy::default(), Faults::default()).unwrap();
        let mut xs = XsClient::connect_to(&socket).unwrap();
        let mut watch =
            BackendWatch::over(Reader::over(XsClient::connect_to(&socket).unwrap())).unwrap();
        // Nothing yet: what was there when the watch began is not news.
        assert_eq!(watch.changed().unwrap(), BackendChanges::default());

        backend(&mut xs, 4, 51728, "/dev/sdb2");
        xs.write(0, "/local/domain/4/device/vbd/51728/state", "4")
            .unwrap();
        xs.write(0, "/local/domain/0/backend/vif/4/0/state", "4")
            .unwrap();
        let changes = watch.changed().unwrap();
        assert_eq!(changes.gone, []);
        let found: Vec<_> = changes
            .attachments
            .iter()
            .map(|a| (a.domid, a.devid, a.params.as_str()))
            .collect();
        assert_eq!(found, [(4, 51728, "/dev/sdb2")]);
        // Told once.
        assert_eq!(watch.changed().unwrap(), BackendChanges::default());

        // A guest's whole directory removed, another made at once by a
        // write deep inside it: both seen.
        xs.rm(0, "/local/domain/0/backend/vbd/3").unwrap();
        backend(&mut xs, 5, 51712, "/dev/sdb3");
        let changes = watch.changed().unwrap();
        assert_eq!(changes.gone, []);
        let found: Vec<_> = changes.attachments.iter().map(|a| a.domid).collect();
        assert_eq!(found, [5]);
        // The removed guest's backends are not listed (nothing to list),
        // and the one that stays is not news.
        xs.rm(0, "/local/domain/0/backend/vbd/5/51712").unwrap();
        let changes = watch.changed().unwrap();
        assert_eq!(changes.gone, [("vbd".to_owned(), 5, 51712)]);
        assert!(changes.attachments.is_empty());

        // The whole backend tree removed: everything left is listed again.
        xs.rm(0, "/local/domain/0/backend").unwrap();
        backend(&mut xs, 6, 51712, "/dev/sdb4");
        let changes = watch.changed().unwrap();
        let found: Vec<_> = changes.attachments.iter().map(|a| a.domid).collect();
        assert_eq!(found, [6]);
        drop(simulator);
    }

    #[test]
    fn an_event_is_placed_at_its_backend() {
        assert_eq!(
            where_changed("/local/domain/0/backend/vbd/3/51712/physical-device"),
            Changed::Backend(BackendDir {
                kind: "vbd",
                domid: "3".to_owned(),
                devid: "51712".to_owned(),
            })
        );
        assert_eq!(
            where_changed("/local/domain/0/backend/qdisk/3"),
            Changed::Guest("qdisk", "3".to_owned())
        );
        assert_eq!(
            where_changed("/local/domain/0/backend/vbd3"),
            Changed::Kind("vbd3")
        );
        assert_eq!(
            where_changed("/local/domain/0/backend"),
            Changed::Everything
        );
        assert_eq!(where_changed("/local/domain/0"), Changed::Everything);
        assert_eq!(
            where_changed("/local/domain/0/backend/vif/3/0"),
            Changed::Elsewhere
        );
        assert_eq!(
            where_changed("/local/domain/0/backendish"),
            Changed::Elsewhere
        );
        assert_eq!(
            where_changed("/local/domain/3/device/vbd/51712"),
            Changed::Elsewhere
        );
    }
}
