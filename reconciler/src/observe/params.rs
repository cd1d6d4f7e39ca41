//! What a backend's `params` names. Toolstacks put a driver or format
//! before the path (`phy:`, `file:`, `aio:`, `qcow2:`, `tap:aio:`,
//! `tap2:tapdisk:vhd:`...), and a path may itself contain `:`
//! (`/srv/images/a:b.img`), so only known prefixes are taken off, from the
//! left, and everything after them is the path.

/// Prefixes toolstacks write before a path: the xm/xl access kinds, the
/// blktap drivers, and the drivers and image formats qemu and tapdisk take
/// (qemu reads everything before the first `:` of a qdisk's `params` as
/// its format).
const PREFIXES: &[&str] = &[
    "phy",
    "file",
    "tap",
    "tap2",
    "tapdisk",
    "tapdisk2",
    "aio",
    "sync",
    "ioemu",
    "ram",
    "raw",
    "qcow",
    "qcow2",
    "qed",
    "vhd",
    "vhdx",
    "vpc",
    "vmdk",
    "vdi",
    "vvfat",
    "cloop",
    "dmg",
    "bochs",
    "parallels",
    "luks",
    "host_device",
    "host_cdrom",
    "copy-on-read",
];

/// Whether `path` (what is left once known prefixes are off) still looks
/// like `prefix:/path`: a driver or format this list does not know. Such a
/// holder cannot be resolved with certainty.
pub fn has_unknown_prefix(path: &str) -> bool {
    path.split_once(':').is_some_and(|(head, tail)| {
        !head.is_empty() && !head.contains('/') && tail.starts_with('/')
    })
}

/// The path a `params` value names, and the prefixes it was written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params<'a> {
    /// The prefixes, in order (`["tap2", "tapdisk", "aio"]`).
    pub prefixes: Vec<&'a str>,
    /// What is left: a block device or a file.
    pub path: &'a str,
}

/// Splits `params` into its known prefixes and its path.
pub fn parse(params: &str) -> Params<'_> {
    let mut prefixes = Vec::new();
    let mut rest = params;
    while let Some((head, tail)) = rest.split_once(':') {
        if !PREFIXES.contains(&head) {
            break;
        }
        prefixes.push(head);
        rest = tail;
    }
    Params {
        prefixes,
        path: rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_nobody_knows_is_noticed() {
        assert!(has_unknown_prefix("newfmt:/dev/sdb1"));
        assert!(!has_unknown_prefix("/srv/images/a:b.img"));
        assert!(!has_unknown_prefix("/dev/sdb1"));
        assert!(!has_unknown_prefix("relative:thing"));
    }

    #[test]
    fn only_known_prefixes_are_taken_off() {
        let cases = [
            ("/dev/sdb3", vec![], "/dev/sdb3"),
            ("phy:/dev/sdb3", vec!["phy"], "/dev/sdb3"),
            ("aio:/dev/sdb3", vec!["aio"], "/dev/sdb3"),
            ("file:/srv/a.img", vec!["file"], "/srv/a.img"),
            ("qcow2:/srv/a.qcow2", vec!["qcow2"], "/srv/a.qcow2"),
            ("tap:aio:/srv/a.img", vec!["tap", "aio"], "/srv/a.img"),
            (
                "tap2:tapdisk:aio:/srv/a.img",
                vec!["tap2", "tapdisk", "aio"],
                "/srv/a.img",
            ),
            ("/srv/images/a:b.img", vec![], "/srv/images/a:b.img"),
            ("file:/srv/a:b.img", vec!["file"], "/srv/a:b.img"),
            ("aio:relative:x", vec!["aio"], "relative:x"),
            ("", vec![], ""),
            ("raw:", vec!["raw"], ""),
            ("vpc:/dev/sdb1", vec!["vpc"], "/dev/sdb1"),
            ("host_device:/dev/sdb1", vec!["host_device"], "/dev/sdb1"),
        ];
        for (params, prefixes, path) in cases {
            let parsed = parse(params);
            assert_eq!(parsed.prefixes, prefixes, "{params}");
            assert_eq!(parsed.path, path, "{params}");
        }
    }
}
