//! What a backend's `params` names. Toolstacks put a driver or format
//! before the path (`phy:`, `file:`, `aio:`, `qcow2:`, `tap:aio:`,
//! `tap2:tapdisk:vhd:`...), and a path may itself contain `:`
//! (`/srv/images/a:b.img`), so only known prefixes are taken off, from the
//! left, and everything after them is the path. The prefixes, with the
//! backend kind, also say which image format the backend reads.

use crate::desired::Format;

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

/// Prefixes that name an image format, or a driver that reads its target
/// raw (tapdisk's `aio` and `sync`, qemu's `host_device`/`host_cdrom`);
/// the others of [`PREFIXES`] name access kinds and toolstack drivers.
fn format_of_prefix(prefix: &str) -> Option<Result<Format, &str>> {
    Some(Ok(match prefix {
        "raw" | "aio" | "sync" | "host_device" | "host_cdrom" => Format::Raw,
        "qcow" => Format::Qcow,
        "qcow2" => Format::Qcow2,
        "qed" => Format::Qed,
        "vhd" | "vpc" => Format::Vhd,
        "phy" | "file" | "tap" | "tap2" | "tapdisk" | "tapdisk2" | "ioemu" | "copy-on-read" => {
            return None;
        }
        other => return Some(Err(other)),
    }))
}

/// The image format a backend reads its target as; `Err` with the name of
/// a format xendisk does not declare (`vmdk`).
///
/// - `qdisk` (QEMU) and `vbd3` (tapdisk3): libxl writes `<format>:<path>`
///   (tools/libs/light/libxl_disk.c, `device_disk_add`, with
///   `libxl__device_disk_string_of_format`: `aio` for raw, then `qcow`,
///   `qcow2`, `vhd`, `qed`); `raw:` and qemu's `vpc:` are read too.
/// - `vbd` (blkback) serves the block device the hotplug script found, as
///   it is: raw, whatever `params` says, unless a blktap prefix (`tap:`,
///   `tap2:`) hands the file to tapdisk, which reads the format after it.
///
/// The last format prefix counts (`tap2:tapdisk:vhd:`); none is raw.
pub fn format<'a>(backend: &str, params: &'a str) -> Result<Format, &'a str> {
    let parsed = parse(params);
    let tapdisk = parsed.prefixes.iter().any(|p| matches!(*p, "tap" | "tap2"));
    if backend == "vbd" && !tapdisk {
        return Ok(Format::Raw);
    }
    parsed
        .prefixes
        .iter()
        .rev()
        .find_map(|prefix| format_of_prefix(prefix))
        .unwrap_or(Ok(Format::Raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_read_from_the_prefixes_and_the_backend() {
        let cases = [
            (
                "qdisk",
                "qcow2:/var/lib/xen/images/a.qcow2",
                Ok(Format::Qcow2),
            ),
            ("qdisk", "aio:/srv/a.img", Ok(Format::Raw)),
            ("qdisk", "raw:/srv/a.img", Ok(Format::Raw)),
            ("qdisk", "/srv/a.img", Ok(Format::Raw)),
            ("qdisk", "vhd:/srv/a.vhd", Ok(Format::Vhd)),
            ("qdisk", "vpc:/srv/a.vhd", Ok(Format::Vhd)),
            ("qdisk", "qed:/srv/a.qed", Ok(Format::Qed)),
            ("qdisk", "qcow:/srv/a.qcow", Ok(Format::Qcow)),
            ("qdisk", "vmdk:/srv/a.vmdk", Err("vmdk")),
            ("qdisk", "host_device:/dev/sdb1", Ok(Format::Raw)),
            ("vbd3", "vhd:/srv/a.vhd", Ok(Format::Vhd)),
            ("vbd3", "aio:/srv/a.img", Ok(Format::Raw)),
            ("vbd", "/dev/sdb1", Ok(Format::Raw)),
            ("vbd", "phy:/dev/sdb1", Ok(Format::Raw)),
            // blkback reads the device the hotplug script set up, as it is.
            ("vbd", "qcow2:/srv/a.qcow2", Ok(Format::Raw)),
            ("vbd", "tap:qcow2:/srv/a.qcow2", Ok(Format::Qcow2)),
            ("vbd", "tap2:tapdisk:vhd:/srv/a.vhd", Ok(Format::Vhd)),
            ("vbd", "tap:aio:/srv/a.img", Ok(Format::Raw)),
            // A path with a colon is no format.
            ("qdisk", "/srv/images/qcow2:b.img", Ok(Format::Raw)),
            ("qdisk", "aio:/srv/qcow2:b.img", Ok(Format::Raw)),
        ];
        for (backend, params, expected) in cases {
            assert_eq!(format(backend, params), expected, "{backend} {params}");
        }
    }

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
