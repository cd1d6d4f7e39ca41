//! Who may do what to a node, as xenstored decides it
//! (docs/misc/xenstore.txt "Permissions"; xenstored_core.c
//! `perm_for_conn`): dom0 may do anything; a node's owner (the domain of
//! its first entry) may do anything to it; any other domain gets the
//! entry that names it, else the first entry's letter: `n` none, `r` read,
//! `w` write, `b` both.
//!
//! The server asks before every operation of a connection that acts as a
//! guest; the store itself knows nothing of connections.

use super::store::{Errno, Store};

/// What an operation needs of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One entry of a permission list: `r4` is domain 4 may read.
fn entry(text: &str) -> Option<(char, u32)> {
    let mut chars = text.chars();
    let letter = chars
        .next()
        .filter(|l| matches!(l, 'n' | 'r' | 'w' | 'b'))?;
    let domid = chars.as_str().parse().ok()?;
    Some((letter, domid))
}

/// Whether `domid` may `access` a node with `perms`.
pub fn allows(perms: &[String], domid: u32, access: Access) -> bool {
    if domid == 0 {
        return true;
    }
    let entries: Vec<(char, u32)> = perms.iter().filter_map(|p| entry(p)).collect();
    let Some(&(default, owner)) = entries.first() else {
        return false;
    };
    if owner == domid {
        return true;
    }
    let letter = entries[1..]
        .iter()
        .find(|(_, id)| *id == domid)
        .map_or(default, |(letter, _)| *letter);
    matches!(
        (letter, access),
        ('b', _) | ('r', Access::Read) | ('w', Access::Write)
    )
}

/// The owner of a node with `perms`.
pub fn owner(perms: &[String]) -> Option<u32> {
    perms.first().and_then(|p| entry(p)).map(|(_, id)| id)
}

/// Checks `access` to the node at `path`, which must exist.
pub fn check(store: &Store, path: &str, domid: u32, access: Access) -> Result<(), Errno> {
    let perms = store.get_perms(path)?;
    if allows(perms, domid, access) {
        Ok(())
    } else {
        Err(Errno::Eacces)
    }
}

/// The check before writing `path`: the node itself if it exists, else the
/// nearest ancestor that does (the one that gains a child).
pub fn check_write(store: &Store, path: &str, domid: u32) -> Result<(), Errno> {
    let mut at = path;
    while !store.exists(at) {
        at = match at.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &at[..i],
        };
    }
    check(store, at, domid, Access::Write)
}

/// Gives a store seeded without permissions those a Xen host has (as
/// captured from libxl 4.17; tests/realxen/fixtures): each domain's home
/// readable by it, its `data` its own, each frontend its own (dom0 may
/// read), each backend dom0's (its guest may read). Without them no
/// simulated guest could touch its own disks.
pub fn assume_as_on_a_xen_host(store: &mut Store) {
    let set = |store: &mut Store, path: &str, perms: Vec<String>| {
        let _ = store.set_perms(path, perms);
    };
    let paths: Vec<String> = store.entries().into_iter().map(|(path, _)| path).collect();
    for path in paths {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["", "local", "domain", id, rest @ ..] if !id.is_empty() => {
                let Ok(domid) = id.parse::<u32>() else {
                    continue;
                };
                let perms = match rest {
                    ["backend", _, guest, ..] => guest
                        .parse::<u32>()
                        .map(|guest| vec!["n0".to_owned(), format!("r{guest}")])
                        .ok(),
                    ["device", _, _, ..] => Some(vec![format!("n{domid}"), "r0".to_owned()]),
                    ["data", ..] => Some(vec![format!("n{domid}")]),
                    _ if domid != 0 => Some(vec!["n0".to_owned(), format!("r{domid}")]),
                    _ => None,
                };
                if let Some(perms) = perms {
                    set(store, &path, perms);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn the_owner_and_dom0_may_do_anything() {
        let frontend = perms(&["n4", "r0"]);
        assert!(allows(&frontend, 4, Access::Write));
        assert!(allows(&frontend, 0, Access::Write));
        assert!(!allows(&frontend, 5, Access::Read));
    }

    #[test]
    fn a_named_domain_gets_its_entry_others_the_first_letter() {
        let backend = perms(&["n0", "r4"]);
        assert!(allows(&backend, 4, Access::Read));
        assert!(!allows(&backend, 4, Access::Write));
        assert!(!allows(&backend, 5, Access::Read));
        let open = perms(&["b0", "n7"]);
        assert!(allows(&open, 5, Access::Write));
        assert!(!allows(&open, 7, Access::Read));
        let shared = perms(&["n0", "w3", "b4"]);
        assert!(allows(&shared, 3, Access::Write));
        assert!(!allows(&shared, 3, Access::Read));
        assert!(allows(&shared, 4, Access::Read));
    }

    #[test]
    fn a_node_without_valid_permissions_is_dom0_s_alone() {
        assert!(!allows(&[], 4, Access::Read));
        assert!(!allows(&perms(&["x4"]), 4, Access::Read));
        assert!(allows(&[], 0, Access::Write));
    }
}
