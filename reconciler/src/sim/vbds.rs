//! What the simulated block script reads of every other vbd backend
//! (`physical-device`, `mode`, `params`, `node`, `physical-device-path`),
//! kept up to date as the store changes. The real script lists and reads
//! every backend for each `add`; the simulator gives the same answers from
//! this index, so that an apply of thousands of disks on a simulated host
//! is not quadratic in the simulator itself.
//!
//! The index is a cache of the store: [`VbdIndex::refresh`] is told of
//! every path that changed, and re-reads the backends under it.

use std::collections::{BTreeMap, BTreeSet};

use super::hotplug::parse_hex;
use super::store::Store;
use crate::extent::DevNum;

/// Where every vbd backend dom0 serves lives.
pub const VBD_BASE: &str = "/local/domain/0/backend/vbd";

/// What the script reads of one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vbd {
    pub physical_device: Option<DevNum>,
    pub mode: Option<String>,
    pub params: Option<String>,
    pub node: Option<String>,
    pub physical_device_path: Option<String>,
}

/// Every vbd backend, by directory, with lookups by what the script asks.
#[derive(Debug, Clone, Default)]
pub struct VbdIndex {
    vbds: BTreeMap<String, Vbd>,
    by_device: BTreeMap<DevNum, BTreeSet<String>>,
    /// Backends by `physical-device-path`, for the device a path was
    /// given before.
    by_device_path: BTreeMap<String, BTreeSet<String>>,
}

impl VbdIndex {
    /// The index of every backend in `store`.
    pub fn of(store: &Store) -> VbdIndex {
        let mut index = VbdIndex::default();
        index.refresh(store, VBD_BASE);
        index
    }

    /// `path` changed (written, made or removed): the backends at or under
    /// it, and the one above it, are read again.
    pub fn refresh(&mut self, store: &Store, path: &str) {
        let Some(rest) = path.strip_prefix(VBD_BASE) else {
            if VBD_BASE.starts_with(path) {
                self.refresh(store, VBD_BASE);
            }
            return;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return;
        }
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        match parts.as_slice() {
            [domid, devid, ..] => self.read_again(store, &format!("{VBD_BASE}/{domid}/{devid}")),
            [domid] => {
                let dir = format!("{VBD_BASE}/{domid}");
                self.forget_under(&dir);
                for devid in store.directory(&dir).unwrap_or_default() {
                    self.read_again(store, &format!("{dir}/{devid}"));
                }
            }
            _ => {
                *self = VbdIndex::default();
                for domid in store.directory(VBD_BASE).unwrap_or_default() {
                    self.refresh(store, &format!("{VBD_BASE}/{domid}"));
                }
            }
        }
    }

    /// The backends whose `physical-device` is `device`, by directory.
    pub fn holding(&self, device: DevNum) -> impl Iterator<Item = (&str, &Vbd)> {
        self.by_device
            .get(&device)
            .into_iter()
            .flatten()
            .filter_map(|dir| Some((dir.as_str(), self.vbds.get(dir)?)))
    }

    /// The highest device in `range` some backend holds.
    pub fn highest_in(&self, range: std::ops::RangeInclusive<DevNum>) -> Option<DevNum> {
        self.by_device
            .range(range)
            .next_back()
            .map(|(device, _)| *device)
    }

    /// The devices of the backends whose `physical-device-path` is `path`.
    pub fn devices_at(&self, path: &str) -> impl Iterator<Item = DevNum> {
        self.by_device_path
            .get(path)
            .into_iter()
            .flatten()
            .filter_map(|dir| self.vbds.get(dir)?.physical_device)
    }

    /// Every backend, by directory.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Vbd)> {
        self.vbds.iter().map(|(dir, vbd)| (dir.as_str(), vbd))
    }

    fn read_again(&mut self, store: &Store, dir: &str) {
        self.forget(dir);
        if !store.exists(dir) {
            return;
        }
        let read = |leaf: &str| {
            store
                .read(&format!("{dir}/{leaf}"))
                .ok()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let vbd = Vbd {
            physical_device: read("physical-device").and_then(|d| parse_hex(&d)),
            mode: read("mode"),
            params: read("params"),
            node: read("node"),
            physical_device_path: read("physical-device-path"),
        };
        if let Some(device) = vbd.physical_device {
            self.by_device
                .entry(device)
                .or_default()
                .insert(dir.to_owned());
        }
        if let Some(path) = &vbd.physical_device_path {
            self.by_device_path
                .entry(path.clone())
                .or_default()
                .insert(dir.to_owned());
        }
        self.vbds.insert(dir.to_owned(), vbd);
    }

    fn forget(&mut self, dir: &str) {
        let Some(vbd) = self.vbds.remove(dir) else {
            return;
        };
        if let Some(device) = vbd.physical_device {
            remove_from(&mut self.by_device, &device, dir);
        }
        if let Some(path) = vbd.physical_device_path {
            remove_from(&mut self.by_device_path, &path, dir);
        }
    }

    fn forget_under(&mut self, dir: &str) {
        let prefix = format!("{dir}/");
        let under: Vec<String> = self
            .vbds
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(path, _)| path.clone())
            .collect();
        for path in under {
            self.forget(&path);
        }
    }
}

fn remove_from<K: Ord>(map: &mut BTreeMap<K, BTreeSet<String>>, key: &K, dir: &str) {
    if let Some(dirs) = map.get_mut(key) {
        dirs.remove(dir);
        if dirs.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(lines: &str) -> Store {
        crate::sim::dump::parse(lines).unwrap()
    }

    #[test]
    fn the_index_follows_the_store() {
        let mut store = store(
            "/local/domain/0/backend/vbd/3/51712/physical-device = \"fd:1\"\n\
             /local/domain/0/backend/vbd/3/51712/mode = \"w\"\n\
             /local/domain/0/backend/vbd/4/51712/params = \"/img\"\n",
        );
        let mut index = VbdIndex::of(&store);
        let dm1 = DevNum::new(253, 1);
        assert_eq!(index.holding(dm1).count(), 1);
        assert_eq!(index.iter().count(), 2);
        store
            .write(
                "/local/domain/0/backend/vbd/4/51712/physical-device",
                b"fd:1",
            )
            .unwrap();
        index.refresh(
            &store,
            "/local/domain/0/backend/vbd/4/51712/physical-device",
        );
        assert_eq!(index.holding(dm1).count(), 2);
        store.rm("/local/domain/0/backend/vbd/3").unwrap();
        index.refresh(&store, "/local/domain/0/backend/vbd/3");
        let left: Vec<&str> = index.holding(dm1).map(|(dir, _)| dir).collect();
        assert_eq!(left, ["/local/domain/0/backend/vbd/4/51712"]);
        store.rm("/local/domain/0/backend").unwrap();
        index.refresh(&store, "/local/domain/0/backend");
        assert_eq!(index.iter().count(), 0);
        // Elsewhere: nothing to do.
        index.refresh(&store, "/local/domain/0/backend/vbdx/1/2");
        index.refresh(&store, "/local/domain/3/device/vbd/51712/state");
    }
}
