//! The simulated xenstore's tree of nodes, with xenstored's rules: paths of
//! alphanumerics and `-/_@`, a write creates missing parents with empty
//! values, `rm` of a missing node is fine unless its parent is missing too.
//!
//! Children live in persistent maps (imbl), so copying the whole store for a
//! transaction costs nothing until the transaction writes.

use std::fmt;

use imbl::OrdMap;

/// Longest absolute path xenstored accepts (XENSTORE_ABS_PATH_MAX).
const PATH_MAX: usize = 3072;

/// An xenstore error, sent on the wire as its errno name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    Enoent,
    Einval,
    Eacces,
    Eperm,
    Eexist,
    E2big,
    Eagain,
    Enosys,
    Eio,
}

impl Errno {
    pub fn name(self) -> &'static str {
        match self {
            Errno::Enoent => "ENOENT",
            Errno::Einval => "EINVAL",
            Errno::Eacces => "EACCES",
            Errno::Eperm => "EPERM",
            Errno::Eexist => "EEXIST",
            Errno::E2big => "E2BIG",
            Errno::Eagain => "EAGAIN",
            Errno::Enosys => "ENOSYS",
            Errno::Eio => "EIO",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    /// Permissions as xenstore writes them: `n0`, `r1`, `b0`, ... the first
    /// naming the owner.
    pub perms: Vec<String>,
    pub children: OrdMap<String, Node>,
}

impl Node {
    fn empty_like(parent: &Node) -> Node {
        Node {
            value: Vec::new(),
            perms: parent.perms.clone(),
            children: OrdMap::new(),
        }
    }
}

/// The whole tree. Cloning is cheap: children are shared until written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: Node,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            root: Node {
                value: Vec::new(),
                perms: vec!["n0".to_owned()],
                children: OrdMap::new(),
            },
        }
    }
}

/// Splits a valid absolute path into its elements; `/` has none.
pub fn elements(path: &str) -> Result<Vec<&str>, Errno> {
    let valid_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if !path.starts_with('/') || !valid_chars || path.len() > PATH_MAX {
        return Err(Errno::Einval);
    }
    if path == "/" {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Errno::Einval); // doubled or trailing slash
    }
    Ok(parts)
}

/// Permissions as xenstored takes them: at least one, each `n`, `r`, `w`
/// or `b` and a domid.
fn valid_perms(perms: &[String]) -> bool {
    !perms.is_empty()
        && perms.iter().all(|p| {
            let mut chars = p.chars();
            matches!(chars.next(), Some('n' | 'r' | 'w' | 'b'))
                && chars.as_str().parse::<u32>().is_ok()
        })
}

impl Store {
    fn node(&self, path: &str) -> Result<&Node, Errno> {
        let mut node = &self.root;
        for element in elements(path)? {
            node = node.children.get(element).ok_or(Errno::Enoent)?;
        }
        Ok(node)
    }

    /// The node at `elements`, created with its missing parents if `create`.
    /// Returns it and whether anything was created.
    fn node_mut(&mut self, elements: &[&str], create: bool) -> Result<(&mut Node, bool), Errno> {
        let mut node = &mut self.root;
        let mut created = false;
        for element in elements {
            if !node.children.contains_key(*element) {
                if !create {
                    return Err(Errno::Enoent);
                }
                let child = Node::empty_like(node);
                node.children.insert((*element).to_owned(), child);
                created = true;
            }
            node = node
                .children
                .get_mut(*element)
                .expect("present or just inserted");
        }
        Ok((node, created))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.node(path).is_ok()
    }

    pub fn read(&self, path: &str) -> Result<&[u8], Errno> {
        self.node(path).map(|n| n.value.as_slice())
    }

    pub fn directory(&self, path: &str) -> Result<Vec<&str>, Errno> {
        Ok(self
            .node(path)?
            .children
            .keys()
            .map(String::as_str)
            .collect())
    }

    pub fn get_perms(&self, path: &str) -> Result<&[String], Errno> {
        self.node(path).map(|n| n.perms.as_slice())
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let elements = elements(path)?;
        let (node, _) = self.node_mut(&elements, true)?;
        node.value = value.to_vec();
        Ok(())
    }

    /// Creates the node and its parents; `false` if it existed already.
    pub fn mkdir(&mut self, path: &str) -> Result<bool, Errno> {
        let elements = elements(path)?;
        self.node_mut(&elements, true).map(|(_, created)| created)
    }

    /// Removes a node and everything below it; `false` if it was absent.
    pub fn rm(&mut self, path: &str) -> Result<bool, Errno> {
        let elements = elements(path)?;
        let Some((last, parents)) = elements.split_last() else {
            return Err(Errno::Einval); // the root cannot go
        };
        let (parent, _) = self.node_mut(parents, false)?;
        Ok(parent.children.remove(*last).is_some())
    }

    /// Writes a node and sets its permissions in one walk from the root
    /// (a seed's every line does both).
    pub fn write_with_perms(
        &mut self,
        path: &str,
        value: &[u8],
        perms: Vec<String>,
    ) -> Result<(), Errno> {
        if !valid_perms(&perms) {
            return Err(Errno::Einval);
        }
        let elements = elements(path)?;
        let (node, _) = self.node_mut(&elements, true)?;
        node.value = value.to_vec();
        node.perms = perms;
        Ok(())
    }

    pub fn set_perms(&mut self, path: &str, perms: Vec<String>) -> Result<(), Errno> {
        if !valid_perms(&perms) {
            return Err(Errno::Einval);
        }
        let elements = elements(path)?;
        let (node, _) = self.node_mut(&elements, false)?;
        node.perms = perms;
        Ok(())
    }

    /// Every node below the root as `(path, value)`, depth first, children
    /// in name order.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        self.visit(|path, value, _| out.push((path.to_owned(), value.to_vec())));
        out
    }

    /// Calls `visit` with every node below the root (path, value,
    /// permissions) in the order of [`Store::entries`].
    pub fn visit(&self, mut visit: impl FnMut(&str, &[u8], &[String])) {
        let mut stack: Vec<(String, &Node)> = self
            .root
            .children
            .iter()
            .rev()
            .map(|(name, node)| (format!("/{name}"), node))
            .collect();
        while let Some((path, node)) = stack.pop() {
            visit(&path, &node.value, &node.perms);
            for (name, child) in node.children.iter().rev() {
                stack.push((format!("{path}/{name}"), child));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_create_parents_and_rm_removes_subtrees() {
        let mut store = Store::default();
        store.write("/local/domain/1/name", b"guest").unwrap();
        assert_eq!(store.read("/local/domain/1").unwrap(), b"");
        assert_eq!(store.directory("/local/domain").unwrap(), ["1"]);
        assert!(store.rm("/local/domain/1").unwrap());
        assert!(
            !store.rm("/local/domain/1").unwrap(),
            "absent node: no error"
        );
        assert_eq!(store.rm("/nowhere/at/all"), Err(Errno::Enoent));
        assert_eq!(store.rm("/"), Err(Errno::Einval));
        assert_eq!(store.read("/local/domain/1/name"), Err(Errno::Enoent));
    }

    #[test]
    fn paths_follow_xenstored_rules() {
        let mut store = Store::default();
        for bad in ["relative", "/a//b", "/a/", "/a.b", "/a b", ""] {
            assert_eq!(store.write(bad, b"x"), Err(Errno::Einval), "{bad:?}");
        }
        store.write("/a-b/c_d/@e", b"x").unwrap();
    }

    #[test]
    fn a_copy_is_independent() {
        let mut store = Store::default();
        store.write("/a/b", b"1").unwrap();
        let copy = store.clone();
        store.write("/a/b", b"2").unwrap();
        assert_eq!(copy.read("/a/b").unwrap(), b"1");
        assert_eq!(
            store.entries(),
            vec![
                ("/a".to_owned(), vec![]),
                ("/a/b".to_owned(), b"2".to_vec())
            ]
        );
    }

    #[test]
    fn permissions_are_inherited_and_set() {
        let mut store = Store::default();
        store.write("/a", b"").unwrap();
        store
            .set_perms("/a", vec!["n1".into(), "r0".into()])
            .unwrap();
        store.write("/a/b", b"").unwrap();
        assert_eq!(store.get_perms("/a/b").unwrap(), ["n1", "r0"]);
        assert_eq!(store.set_perms("/a", vec!["x1".into()]), Err(Errno::Einval));
    }
}
